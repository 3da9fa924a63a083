//! Regression tests for issue 12: defects found under fault and bad input. Each test is
//! named after its defect and runs the real binary on loopback.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

in_modes!(
    [blocking, threaded, process, nonblocking, poll]
    defect_1_the_longest_accepted_idle_timeout_and_delay_serve_without_panic,
);

/// The largest values clap accepts must serve: a deadline of `now + a year` fits in an
/// `Instant`. (The issue's `--idle-timeout 9223372036854775807` panicked poll on the
/// first connection.)
fn defect_1_the_longest_accepted_idle_timeout_and_delay_serve_without_panic(mode: &str) {
    let (mut server, port) = server(mode, &["--idle-timeout", "31536000"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hello").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"hello", "{}", server.history());
    server.expect_conn("recv", 1);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success(), "{}", server.stderr_text());
}

/// A value past the cap is refused at parse time: clap's usage error (exit 2), one line
/// naming the option and the range, and no panic.
#[test]
fn defect_1_a_huge_idle_timeout_or_delay_is_refused_with_a_clear_error() {
    for (option, value) in [
        ("--idle-timeout", "9223372036854775807"),
        ("--idle-timeout", "18446744073709551615"),
        ("--delay", "18446744073709551615"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--port", "0", option, value])
            .output()
            .expect("run tcp-lab");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option} {value}: {stderr}");
        assert!(
            stderr.contains(option) && stderr.contains("not in"),
            "{option} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    defect_2_a_peer_that_sends_and_never_reads_is_reaped_at_the_idle_timeout,
);

/// A peer that floods and never reads fills our send buffer; the stalled write must not
/// outlive `--idle-timeout` (it did in blocking, threaded and process: echo() went round
/// WouldBlock for ever, and blocking mode served nobody else). Afterwards the server serves.
fn defect_2_a_peer_that_sends_and_never_reads_is_reaped_at_the_idle_timeout(mode: &str) {
    let (mut server, port) = server(mode, &["--idle-timeout", "1", "--quiet"]);
    let (stop, flooder) = flood(raw_peer(port));
    let timeout = server.expect_conn("timeout", 1);
    let idle = timeout["detail"].as_str().unwrap_or_default().to_string();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, _) = flooder.join().unwrap();
    assert!(sent > 1 << 20, "the flood sent only {sent} bytes");
    assert!(
        idle.starts_with("idle 1.") || idle.starts_with("idle 2."),
        "{idle}"
    );

    let mut next = raw_peer(port);
    next.write_all(b"still here").unwrap();
    assert_eq!(read_exactly(&mut next, 10), b"still here");
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success(), "{}", server.stderr_text());
}

/// The notes tcp-lab prints for these closes (src/note.rs), as the learner reads them.
const RST_WORDS: &str = "sends an RST";

fn is_reset(result: &std::io::Result<()>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    defect_3_the_idle_timeout_of_a_peer_that_never_reads_says_rst_as_the_kernel_does,
);

in_modes!(
    [threaded, process, nonblocking, select, poll]
    defect_3_max_conns_turning_away_a_newcomer_that_spoke_first_says_rst,
);

/// The stalled peer's bytes sit unread in our receive buffer when the timeout closes it:
/// the kernel sends an RST (TCPAbortOnClose rises, the peer's read ends in ECONNRESET),
/// and the `timeout` event must say so, with how many bytes were unread.
fn defect_3_the_idle_timeout_of_a_peer_that_never_reads_says_rst_as_the_kernel_does(mode: &str) {
    let (mut server, port) = server(mode, &["--idle-timeout", "1", "--quiet"]);
    let mut peer = raw_peer(port);
    let (stop, flooder) = flood(peer.try_clone().unwrap());
    let aborts_before = tcp_ext("TCPAbortOnClose");
    let timeout = server.expect_conn("timeout", 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The RST's ECONNRESET is reported once, to whichever call comes first: the flooder's
    // write, or else our read (then 0).
    let (_, write_error) = flooder.join().unwrap();
    let ended = match write_error {
        Some(e) => Err(e),
        None => read_to_end_or_error(&mut peer).1,
    };
    let aborts = tcp_ext("TCPAbortOnClose") - aborts_before;
    assert!(
        is_reset(&ended),
        "the peer's calls ended {ended:?}, not ECONNRESET"
    );
    assert!(aborts >= 1, "TCPAbortOnClose rose by {aborts}");
    let unread = timeout["unread"].as_u64().unwrap_or(0);
    assert!(unread > 0, "no unread bytes reported: {timeout}");
    let note = timeout["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(RST_WORDS) && !note.contains("sends our FIN"),
        "{note}"
    );
}

/// Over --max-conns, a newcomer that already sent bytes is closed with them unread: RST.
/// One that said nothing gets the FIN. Each event's note says which.
fn defect_3_max_conns_turning_away_a_newcomer_that_spoke_first_says_rst(mode: &str) {
    let (mut server, port) = server(mode, &["--max-conns", "1"]);
    let mut first = raw_peer(port);
    first.write_all(b"hi").unwrap();
    assert_eq!(read_exactly(&mut first, 2), b"hi");
    let (mut talker, mut silent) = {
        // Both queue while the server is stopped, so the talker's bytes are there before
        // accept() (as when many clients arrive at once), and the silent one's are not.
        let _paused = Paused::new(server.child.id());
        let mut talker = raw_peer(port);
        talker.write_all(b"hello?").unwrap();
        (talker, raw_peer(port))
    };
    let said_rst = server.expect_where("limit", |e| e["unread"].as_u64() == Some(6));
    let said_fin = server.expect_where("limit", |e| e["unread"].is_null());

    let (got, ended) = read_to_end_or_error(&mut talker);
    assert_eq!(got, b"server full\n");
    assert!(
        is_reset(&ended),
        "the talker's read ended {ended:?}, not ECONNRESET"
    );
    assert!(
        said_rst["note"].as_str().unwrap().contains(RST_WORDS),
        "{said_rst}"
    );
    let (got, ended) = read_to_end_or_error(&mut silent);
    assert_eq!(got, b"server full\n");
    assert!(
        ended.is_ok(),
        "the silent peer's read ended {ended:?}, not EOF"
    );
    assert!(
        said_fin["note"].as_str().unwrap().contains("with a FIN"),
        "{said_fin}"
    );
}

/// Blocking mode stopped with connections still queued: each is accepted only to be
/// closed. The one that had sent bytes gets an RST and its event says so; the silent one
/// gets a FIN.
#[test]
fn defect_3_blocking_stop_with_queued_talkers_says_rst() {
    let (mut server, port) = server("blocking", &[]);
    let mut served = raw_peer(port);
    served.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut served, 1), b"x");
    let mut talker = raw_peer(port);
    talker.write_all(b"waiting").unwrap();
    let mut silent = raw_peer(port);
    let aborts_before = tcp_ext("TCPAbortOnClose");
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success(), "{}", server.stderr_text());

    let talker_addr = talker.local_addr().unwrap().to_string();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (_, ended) = read_to_end_or_error(&mut talker);
    assert!(
        is_reset(&ended),
        "the talker's read ended {ended:?}, not ECONNRESET"
    );
    let (_, ended) = read_to_end_or_error(&mut silent);
    assert!(
        ended.is_ok(),
        "the silent peer's read ended {ended:?}, not EOF"
    );
    let aborts = tcp_ext("TCPAbortOnClose") - aborts_before;
    assert!(aborts >= 1, "TCPAbortOnClose rose by {aborts}");

    let talker_event = server.expect_where("abort", |e| e["peer"] == talker_addr.as_str());
    assert_eq!(talker_event["unread"], 7, "{talker_event}");
    assert!(talker_event["note"].as_str().unwrap().contains(RST_WORDS));
    let silent_event = server.expect_where("close", |e| e["peer"] == silent_addr.as_str());
    assert!(silent_event["note"]
        .as_str()
        .unwrap()
        .contains("with a FIN"));
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    defect_4_a_stdout_nobody_reads_stops_neither_the_echo_nor_ctrl_c,
);

/// `tcp-lab serve | sleep 600`: once the pipe is full, events must be shed (and counted),
/// never waited for. 60 clients are echoed (about 2 MB of events, past the pipe and the
/// server's 1 MiB queue), then SIGINT ends the server, exit 0, within a bound, and stderr
/// says how many events were dropped.
fn defect_4_a_stdout_nobody_reads_stops_neither_the_echo_nor_ctrl_c(mode: &str) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = ChildGuard(
        Command::new(BIN)
            .args(["serve", "--mode", mode, "--port", "0", "--format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcp-lab"),
    );
    let child = &mut child.0;
    // Read the first line (the port), then never read stdout again.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut listen = String::new();
    stdout.read_line(&mut listen).unwrap();
    let listen: serde_json::Value = serde_json::from_str(&listen).unwrap();
    let port = port_of(&listen["local"]);
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    for client in 0..60 {
        let mut peer = raw_peer(port);
        for i in 0..40 {
            let message = format!("client {client} says message number {i}");
            peer.write_all(message.as_bytes()).unwrap();
            let echo = read_exactly(&mut peer, message.len());
            assert_eq!(echo, message.as_bytes(), "client {client} message {i}");
        }
    }

    let asked = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let waited = asked.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "still running {waited:?} after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status} after {took:?}");
    let stderr = stderr.join().unwrap();
    assert!(stderr.contains("events were dropped"), "stderr: {stderr}");
    drop(stdout);
}

/// A child killed when the test ends, however it ends (std sends nothing to a child it
/// has already reaped).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

in_modes!(
    [nonblocking, select, poll]
    defect_5_connections_queued_together_are_accepted_in_one_turn,
);

/// Fifty clients connect and speak while the server is stopped; when it runs again, one
/// turn of its loop accepts them all before it reads anyone. Accepting one per turn (the
/// nonblocking loop did) serves the first newcomer before accepting the second.
fn defect_5_connections_queued_together_are_accepted_in_one_turn(mode: &str) {
    raise_open_files_limit();
    let (mut server, port) = server(mode, &[]);
    let peers: Vec<_> = {
        let _paused = Paused::new(server.child.id());
        (0..50)
            .map(|_| {
                let mut peer = raw_peer(port);
                peer.write_all(b"x").unwrap();
                peer
            })
            .collect()
    };
    for conn in 1..=50u64 {
        server.expect_conn("recv", conn);
    }
    let accepts_before_first_recv = server
        .kinds(None)
        .iter()
        .take_while(|kind| *kind != "recv")
        .filter(|kind| *kind == "accept")
        .count();
    assert_eq!(
        accepts_before_first_recv,
        50,
        "only {accepts_before_first_recv} accepts came before the first read:\n{}",
        server.history()
    );
    drop(peers);
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    defect_6_bytes_after_the_bye_word_in_the_same_read_are_counted_as_discarded,
);

/// One write: a line, the bye word, then binary bytes. The line is echoed; the close event
/// says how many bytes were not (the bye word's line and everything after it), where they
/// used to vanish without a word. Then the FIN: nothing was left unread.
fn defect_6_bytes_after_the_bye_word_in_the_same_read_are_counted_as_discarded(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    let mut peer = raw_peer(port);
    let after = b"Bye\nbinary\x00\xffdata\nBye\n";
    let sent = [b"hello\n".as_slice(), after].concat();
    peer.write_all(&sent).unwrap();
    let (echoed, ended) = read_to_end_or_error(&mut peer);
    assert_eq!(echoed, b"hello\n");
    assert!(ended.is_ok(), "the peer's read ended {ended:?}, not EOF");
    let recv = server.expect_conn("recv", 1);
    assert_eq!(recv["bytes"], sent.len(), "one read expected: {recv}");
    let close = server.expect_conn("close", 1);
    assert_eq!(close["discarded"], after.len(), "{close}");
    assert_eq!(
        echoed.len() as u64 + close["discarded"].as_u64().unwrap(),
        sent.len() as u64
    );
}

/// `--bye-word ""` would close on every blank line, and a word longer than one read (64 KiB)
/// could never match: both are usage errors (exit 2) that say why.
#[test]
fn defect_6_an_empty_blank_or_too_long_bye_word_is_a_usage_error() {
    let too_long = "x".repeat(64 * 1024 + 1);
    for (word, why) in [
        ("", "empty"),
        ("  ", "blank"),
        ("Bye ", "whitespace"),
        (too_long.as_str(), "could never match"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--port", "0", "--bye-word", word])
            .output()
            .expect("run tcp-lab");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{word:.10?}: {stderr:.300}");
        assert!(
            stderr.contains("--bye-word") && stderr.contains(why),
            "{word:.10?}: {stderr:.300}"
        );
    }
    // The longest word that fits in one read is accepted.
    let longest = "x".repeat(64 * 1024);
    let (mut server, _port) = server("poll", &["--bye-word", &longest]);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
}

/// The invalid byte 0x9B and the character U+009B (C2 9B in UTF-8) used to print the same
/// `\x9B`. Now the byte is `\x9B` and the character `\u{9B}`, and each reads back to the
/// bytes that arrived.
#[test]
fn defect_7_the_byte_9b_and_the_character_u009b_are_escaped_apart() {
    let (mut server, port) = server("poll", &[]);
    let mut peer = raw_peer(port);
    let mut shown = Vec::new();
    for bytes in [b"a\x9bz".as_slice(), "a\u{9b}z".as_bytes()] {
        peer.write_all(bytes).unwrap();
        assert_eq!(read_exactly(&mut peer, bytes.len()), bytes);
        let recv = server.expect_conn("recv", 1);
        let data = recv["data"].as_str().unwrap().to_string();
        assert_eq!(tcp_lab::event::unescape(&data).as_deref(), Some(bytes));
        shown.push(data);
    }
    assert_eq!(shown, ["a\\x9Bz", "a\\u{9B}z"]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::net::Shutdown;
    use tcp_lab::event::{escape_bytes, unescape};

    /// Whether a character may reach a terminal as it is.
    fn is_safe(c: char) -> bool {
        !c.is_control()
            && !matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }

    proptest! {
        /// Any bytes: the text holds no control character and reads back to the same bytes.
        #[test]
        fn escaping_is_safe_and_reads_back(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = escape_bytes(&bytes);
            prop_assert!(text.chars().all(is_safe), "{text:?}");
            prop_assert_eq!(unescape(&text), Some(bytes));
        }

        /// Text with characters of every width (C1 controls, bidi overrides, CJK) reads back too.
        #[test]
        fn escaping_text_reads_back(text in "\\PC*|[\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\\\x]*") {
            let escaped = escape_bytes(text.as_bytes());
            prop_assert!(escaped.chars().all(is_safe), "{escaped:?}");
            prop_assert_eq!(unescape(&escaped), Some(text.into_bytes()));
        }
    }

    /// Pieces a stream is made of: the bye word (with or without a newline), lines, binary.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"Bye".to_vec()),
            Just(b"Bye\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"Bye \r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 1..40),
        ];
        proptest::collection::vec(piece, 1..12).prop_map(|pieces| pieces.concat())
    }

    /// Send `bytes` in pieces cut at `cuts`, then our FIN; what came back before the end.
    fn send_in_pieces(port: u16, bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut peer = raw_peer(port);
        peer.set_nodelay(true).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort();
        cuts.push(bytes.len());
        let mut start = 0;
        for cut in cuts {
            // The server may have closed already (the bye word): later writes may fail.
            if peer.write_all(&bytes[start..cut.max(start)]).is_err() {
                break;
            }
            start = cut.max(start);
        }
        let _ = peer.shutdown(Shutdown::Write);
        read_to_end_or_error(&mut peer).0
    }

    /// For connection `conn`: the bytes of its recv events and its closing event.
    fn received_and_end(server: &mut Proc, conn: u64) -> (u64, serde_json::Value) {
        // `close` (our FIN), or `abort` if the bye word left bytes unread (an RST).
        let is_end = |e: &serde_json::Value| {
            e["conn"] == conn && (e["kind"] == "close" || e["kind"] == "abort")
        };
        let end = loop {
            if let Some(end) = server.seen.iter().find(|e| is_end(e)) {
                break end.clone();
            }
            let event = server.next_event(WAIT);
            assert!(
                event.is_some(),
                "conn {conn} never closed:\n{}",
                server.history()
            );
        };
        let received = server
            .seen
            .iter()
            .filter(|e| e["conn"] == conn && e["kind"] == "recv")
            .map(|e| e["bytes"].as_u64().unwrap())
            .sum();
        (received, end)
    }

    fn bye_word_accounts_for_every_byte(mode: &str) {
        let (server, port) = server(mode, &[]);
        // One server for every case; its connections are numbered 1, 2, … in order.
        let server = std::cell::RefCell::new((server, 0u64));
        let config = ProptestConfig {
            cases: 40,
            ..ProptestConfig::default()
        };
        let pieces = proptest::collection::vec(any::<usize>(), 0..6);
        proptest!(config, |(bytes in stream(), cuts in pieces)| {
            let (server, conn) = &mut *server.borrow_mut();
            *conn += 1;
            let echoed = send_in_pieces(port, &bytes, &cuts);
            let (received, end) = received_and_end(server, *conn);
            let discarded = end["discarded"].as_u64().unwrap_or(0);
            prop_assert_eq!(echoed.len() as u64 + discarded, received, "{}", end);
            prop_assert_eq!(&echoed[..], &bytes[..echoed.len()]);
        });
    }

    #[test]
    fn bye_word_echoed_plus_discarded_is_every_byte_received_blocking() {
        bye_word_accounts_for_every_byte("blocking");
    }

    #[test]
    fn bye_word_echoed_plus_discarded_is_every_byte_received_poll() {
        bye_word_accounts_for_every_byte("poll");
    }
}

in_modes!(
    [blocking, threaded, nonblocking, select, poll]
    defect_3_a_crash_with_bytes_unread_says_rst,
);

/// `--crash-after 1 --delay 300`: while the handler "works" on `a`, the peer sends `b`,
/// which nobody reads. The crash then closes the socket over it: the kernel sends an RST
/// (the peer reads `a`, then ECONNRESET), and the crash's event says so.
fn defect_3_a_crash_with_bytes_unread_says_rst(mode: &str) {
    let (mut server, port) = server(mode, &["--crash-after", "1", "--delay", "300"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"a").unwrap();
    server.expect_conn("recv", 1); // read, and now waiting out the delay
    peer.write_all(b"b").unwrap();
    let (got, ended) = read_to_end_or_error(&mut peer);
    assert_eq!(got, b"a");
    assert!(
        is_reset(&ended),
        "the peer's read ended {ended:?}, not ECONNRESET"
    );
    let kind = if mode == "threaded" { "exit" } else { "abort" };
    let crash = server.expect_where(kind, |e| e["conn"] == 1 && e["unread"] == 1);
    let note = crash["note"].as_str().unwrap_or_default();
    assert!(note.contains("RST"), "{crash}");
}
