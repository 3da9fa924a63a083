//! `serve --app chat`: the same chat in every mode that can run it (threaded, nonblocking,
//! select, poll), driven by raw sockets that talk the way nc and telnet do, and by
//! `tcp-lab client`. Each test body runs once per mode.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

in_modes!(
    [threaded, nonblocking, select, poll]
    two_hundred_users_in_five_rooms_get_every_line_once_in_order,
    every_command_answers,
    leaving_by_eof_rst_and_timeout_is_announced_with_the_reason,
    lines_in_pieces_and_many_lines_in_one_write,
    an_over_long_line_is_refused_and_closed,
    control_characters_and_invalid_utf8_are_never_relayed_raw,
    a_member_that_never_reads_is_dropped_and_the_room_goes_on,
    a_telnet_style_client_and_tcp_lab_client_can_chat,
);

/// A chat server in `mode`, JSON events on stdout.
fn chat_server(mode: &str, extra: &[&str]) -> (Proc, u16) {
    let mut args = vec!["--app", "chat", "--no-explain"];
    args.extend_from_slice(extra);
    server(mode, &args)
}

/// One chat user on a raw socket, reading line by line.
struct User {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    nick: String,
}

impl User {
    /// Connect and read the welcome, which names us.
    fn join(port: u16) -> User {
        let stream = raw_peer(port);
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut user = User {
            stream,
            reader,
            nick: String::new(),
        };
        let welcome = user.line();
        let nick = welcome
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"));
        user.nick = nick.to_string();
        user
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next line, without its `\n` (bounded by the socket's read timeout).
    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("{}: EOF while waiting for a line", self.nick),
            Ok(_) => line.trim_end_matches('\n').to_string(),
            Err(e) => panic!("{}: no line within the timeout: {e}", self.nick),
        }
    }

    /// Read lines until one satisfies `wanted`; the lines before it are returned too.
    fn until(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.line();
            let done = wanted(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    /// Read until `text` arrives as a whole line.
    fn expect(&mut self, text: &str) {
        let seen = self.until(|l| l == text);
        assert_eq!(seen.last().map(String::as_str), Some(text));
    }

    /// The connection's end: read until EOF (discarding lines), true if it was a FIN.
    fn expect_end(&mut self) -> std::io::Result<()> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).map(|_| ())
    }
}

/// 200 users, 5 rooms, 20 lines each: every line reaches every other member of its room
/// exactly once and in the sender's order, and nobody outside it.
fn two_hundred_users_in_five_rooms_get_every_line_once_in_order(mode: &str) {
    const USERS: usize = 200;
    const ROOMS: usize = 5;
    const LINES: usize = 20;
    raise_open_files_limit();
    let (mut server, port) = chat_server(mode, &["--quiet"]);
    let all_joined = Arc::new(Barrier::new(USERS));
    let users: Vec<_> = (0..USERS)
        .map(|i| {
            let all_joined = Arc::clone(&all_joined);
            thread::spawn(move || {
                let room = i % ROOMS;
                let mut user = User::join(port);
                user.send(format!("/join room{room}\r\n").as_bytes());
                user.until(|l| l.starts_with(&format!("* you are in #room{room} (")));
                all_joined.wait(); // nobody speaks before every room is complete
                for k in 0..LINES {
                    user.send(format!("line {i} {k}\n").as_bytes());
                }
                // Everyone else in the room sends LINES lines: wait for all of them.
                let expected = (USERS / ROOMS - 1) * LINES;
                let mut next: HashMap<usize, usize> = HashMap::new();
                let mut got = 0;
                while got < expected {
                    let line = user.line();
                    if line.starts_with('*') {
                        continue; // joins of latecomers to our room, before the barrier
                    }
                    let text = line.split_once("> ").map_or("", |(_, t)| t);
                    let mut words = text.split(' ').skip(1).map(|w| w.parse::<usize>());
                    let (Some(Ok(from)), Some(Ok(k))) = (words.next(), words.next()) else {
                        panic!("user {i}: unexpected line {line:?}");
                    };
                    assert_eq!(from % ROOMS, room, "user {i} got a line from another room");
                    assert_ne!(from, i, "user {i} got its own line back");
                    let want = next.entry(from).or_insert(0);
                    assert_eq!(k, *want, "user {i}: from {from}, out of order or twice");
                    *want += 1;
                    got += 1;
                }
                user
            })
        })
        .collect();
    let users: Vec<User> = users
        .into_iter()
        .map(|t| t.join().expect("a user thread"))
        .collect();
    drop(users);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    let summary = server.expect("summary");
    assert_eq!(summary["stats"]["messages"], (USERS * (LINES + 1)) as u64);
}

fn every_command_answers(mode: &str) {
    let (mut server, port) = chat_server(mode, &[]);
    let mut alice = User::join(port);
    let mut bob = User::join(port);
    alice.expect(&format!("* {} joined #lobby", bob.nick));

    alice.send(b"/nick alice\n");
    alice.expect("* you are now alice");
    bob.expect(&format!("* {} is now alice", alice.nick));
    server.expect_where("nick", |e| e["nick"] == "alice");
    bob.send(b"/nick alice\n");
    bob.expect("! nick alice is taken");
    bob.send(b"/nick b@d\n");
    bob.expect("! invalid nick \"b@d\": 1-16 of A-Z a-z 0-9 _ -");
    bob.send(b"/nick bob\n");
    bob.expect("* you are now bob");

    bob.send(b"/help\n");
    let help = bob.until(|l| l.starts_with("* anything else"));
    assert!(
        help.iter().any(|l| l.starts_with("* /msg NICK TEXT")),
        "{help:?}"
    );
    bob.send(b"/dance\n");
    bob.expect("! unknown command /dance; /help lists them");

    bob.send(b"/join #rust\n");
    bob.expect("* you are in #rust (1 here)");
    alice.expect("* bob left #lobby");
    server.expect_where("join", |e| e["nick"] == "bob" && e["room"] == "rust");
    bob.send(b"/rooms\n/who\n");
    bob.expect("* rooms: #lobby (1), #rust (1)");
    bob.expect("* in #rust: bob");
    alice.send(b"/msg bob psst\n");
    bob.expect("*alice* psst");
    alice.send(b"/msg carol hi\n");
    alice.expect("! no such nick carol");
    alice.send(b"only the lobby hears this\n");
    alice.send(b"/join rust\n");
    alice.expect("* you are in #rust (2 here)");
    bob.expect("* alice joined #rust");
    let relay = server.expect_where("relay", |e| e["from"] == "alice" && e["room"] == "lobby");
    assert_eq!(relay["to"], 0, "nobody else was in the lobby");

    bob.send(b"/quit\n");
    bob.expect("* bye");
    bob.expect_end().expect("a FIN after /quit, not an RST");
    alice.expect("* bob left #rust (quit)");
    server.expect_where("leave", |e| e["nick"] == "bob" && e["detail"] == "quit");
    server.expect_conn("close", 2);
}

fn leaving_by_eof_rst_and_timeout_is_announced_with_the_reason(mode: &str) {
    let (mut server, port) = chat_server(mode, &["--idle-timeout", "2"]);
    let mut watcher = User::join(port);
    let by_eof = User::join(port);
    let by_rst = User::join(port);
    let sleeper = User::join(port);

    // EOF: its FIN.
    by_eof.stream.shutdown(Shutdown::Write).unwrap();
    keep_talking_until(
        &mut watcher,
        &format!("* {} left #lobby (connection closed)", by_eof.nick),
    );
    // RST: close with SO_LINGER 0.
    socket2::SockRef::from(&by_rst.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let rst_nick = by_rst.nick.clone();
    drop(by_rst);
    keep_talking_until(
        &mut watcher,
        &format!("* {rst_nick} left #lobby (connection reset)"),
    );
    server.expect_where("leave", |e| e["detail"] == "connection reset");
    // Silence: --idle-timeout 2.
    keep_talking_until(
        &mut watcher,
        &format!("* {} left #lobby (idle timeout)", sleeper.nick),
    );
    server.expect_where("timeout", |e| e["conn"] == 4);
    let mut sleeper = sleeper;
    sleeper.expect_end().expect("the timeout closes with a FIN");
}

/// Wait for `wanted`, sending `/who` whenever nothing arrived for 300 ms: the watcher is
/// never idle long enough for --idle-timeout itself.
fn keep_talking_until(watcher: &mut User, wanted: &str) {
    watcher
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    watcher.send(b"/who\n");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{wanted:?} never came");
        let mut line = String::new();
        match watcher.reader.read_line(&mut line) {
            Ok(0) => panic!("the watcher was closed"),
            Ok(_) if line.trim_end() == wanted => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                watcher.send(b"/who\n");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn lines_in_pieces_and_many_lines_in_one_write(mode: &str) {
    let (_server, port) = chat_server(mode, &[]);
    let mut alice = User::join(port);
    let mut bob = User::join(port);
    alice.expect(&format!("* {} joined #lobby", bob.nick));
    alice.stream.set_nodelay(true).unwrap();
    // One line, one byte per write (TCP may merge some; the lines are the same).
    for byte in b"one line, many writes\r\n" {
        alice.send(&[*byte]);
    }
    let from = alice.nick.clone();
    bob.expect(&format!("<{from}> one line, many writes"));
    // Many lines and the start of the next in one write, the rest later.
    alice.send(b"first\nsecond\r\nthird\nfou");
    bob.expect(&format!("<{from}> first"));
    bob.expect(&format!("<{from}> second"));
    bob.expect(&format!("<{from}> third"));
    alice.send(b"rth\n");
    bob.expect(&format!("<{from}> fourth"));
    // Exactly --max-line bytes is still a line.
    let full = "x".repeat(1024 - "/msg ".len() - bob.nick.len() - 1);
    let line = format!("/msg {} {full}\r\n", bob.nick);
    assert_eq!(line.len(), 1024 + 2);
    alice.send(line.as_bytes());
    bob.expect(&format!("*{from}* {full}"));
}

fn an_over_long_line_is_refused_and_closed(mode: &str) {
    let (mut server, port) = chat_server(mode, &["--max-line", "100"]);
    let mut alice = User::join(port);
    let mut bob = User::join(port);
    alice.expect(&format!("* {} joined #lobby", bob.nick));
    alice.send(b"fine\n");
    alice.send(&[b'y'; 3000]); // no newline, 30 times the limit
    bob.expect(&format!("<{}> fine", alice.nick));
    alice.expect("! line longer than 100 bytes");
    alice
        .expect_end()
        .expect("closed with a FIN (the rest was read first)");
    bob.expect(&format!("* {} left #lobby (line too long)", alice.nick));
    let limit = server.expect("limit");
    assert_eq!(limit["detail"], "a line longer than 100 bytes (--max-line)");
}

fn control_characters_and_invalid_utf8_are_never_relayed_raw(mode: &str) {
    let (_server, port) = chat_server(mode, &[]);
    let mut alice = User::join(port);
    let mut bob = User::join(port);
    alice.expect(&format!("* {} joined #lobby", bob.nick));
    // ESC sequences, a C1 CSI (U+009B), BEL, DEL, a TAB, and bytes that are not UTF-8.
    alice.send(b"\x1b[2J\x1b]0;owned\x07 \xc2\x9b31m red\x7f\tok \xff\xfe\xc4\xe3\n");
    let mut raw = Vec::new();
    bob.reader.read_until(b'\n', &mut raw).unwrap();
    for bad in [&b"\x1b"[..], b"\xc2\x9b", b"\x07", b"\x7f", b"\t", b"\xff"] {
        assert!(
            !raw.windows(bad.len()).any(|w| w == bad),
            "{bad:?} relayed raw: {raw:?}"
        );
    }
    let text = String::from_utf8(raw).expect("valid UTF-8");
    assert_eq!(
        text,
        // \xff, \xfe, and \xc4 and \xe3 (each a lead byte without its continuation).
        format!(
            "<{}> [2J]0;owned 31m red ok {}\n",
            alice.nick,
            "\u{FFFD}".repeat(4)
        )
    );
}

/// bob never reads. alice sends 16 MB of lines, at the pace carol reads them: bob's queue
/// reaches 64 KiB and he is dropped, carol gets every line, and the server's memory stays
/// small.
fn a_member_that_never_reads_is_dropped_and_the_room_goes_on(mode: &str) {
    const LINES: usize = 16_000;
    /// Lines alice sends before she waits for carol to have them all: 32 KB, within
    /// carol's queue however slowly her thread reads.
    const BATCH: usize = 32;
    const RSS_LIMIT_KB: u64 = 48 * 1024;
    let (mut server, port) = chat_server(mode, &["--quiet"]);
    let pid = server.child.id();
    let mut alice = User::join(port);
    let bob = User::join(port);
    // bob's kernel takes little: what the server cannot hand to it queues at the server.
    socket2::SockRef::from(&bob.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut carol = User::join(port);
    alice.expect(&format!("* {} joined #lobby", carol.nick));
    let (alice_nick, bob_nick) = (alice.nick.clone(), bob.nick.clone());
    let (progress, carol_has) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        let mut got = 0;
        let mut saw_drop = false;
        while got < LINES {
            let line = carol.line();
            if line == format!("* {bob_nick} dropped: not reading") {
                saw_drop = true;
                continue;
            }
            let prefix = format!("<{alice_nick}> {got:05} ");
            assert!(
                line.starts_with(&prefix),
                "carol: {line:?}, wanted {prefix}"
            );
            got += 1;
            if got % BATCH == 0 {
                let _ = progress.send(got);
            }
        }
        (carol, saw_drop)
    });
    let filler = "z".repeat(1000);
    for k in 0..LINES {
        alice.send(format!("{k:05} {filler}\n").as_bytes());
        if (k + 1) % BATCH == 0 {
            let got = carol_has.recv_timeout(WAIT).expect("carol keeps up");
            assert_eq!(got, k + 1);
        }
    }
    let (_carol, saw_drop) = reader.join().expect("carol got every line");
    assert!(saw_drop, "carol was told bob was dropped");
    let limit = server.expect("limit");
    assert_eq!(limit["conn"], 2);
    server.expect_where("abort", |e| e["conn"] == 2);
    let peak = status_kb(pid, "VmHWM");
    assert!(peak < RSS_LIMIT_KB, "{mode}: peak RSS {peak} kB");
    // bob's connection was reset: what is left to read ends in ECONNRESET (or EOF).
    let mut bob = bob;
    let mut sink = Vec::new();
    let end = bob.stream.read_to_end(&mut sink);
    assert!(
        end.is_ok() || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(sink.len() < 4 * 1024 * 1024, "bob got {} bytes", sink.len());
}

/// A raw socket sending `\r\n` (telnet, nc -C) and `tcp-lab client` with its stdin piped.
fn a_telnet_style_client_and_tcp_lab_client_can_chat(mode: &str) {
    let (_server, port) = chat_server(mode, &[]);
    let mut telnet = User::join(port);
    let mut client = client(port, &["--no-explain"]);
    client.expect("connect");
    let joined = telnet.until(|l| l.ends_with("joined #lobby"));
    let client_nick = joined.last().unwrap()[2..]
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    client.write_stdin(b"hello from tcp-lab client\n");
    telnet.expect(&format!("<{client_nick}> hello from tcp-lab client"));
    telnet.send(b"hi back\r\n");
    let wanted = format!("<{}> hi back\\n", telnet.nick);
    client.expect_where("recv", |e| {
        e["data"].as_str().is_some_and(|d| d.contains(&wanted))
    });
    client.close_stdin(); // end of input: the client closes, the room hears it
    telnet.expect(&format!("* {client_nick} left #lobby (connection closed)"));
}

#[test]
fn blocking_and_process_refuse_the_chat_and_say_why() {
    for (mode, why) in [("blocking", "nobody to talk to"), ("process", "own memory")] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--app", "chat", "--mode", mode, "--port", "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{mode}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{mode}: {stderr}");
        assert!(out.stdout.is_empty(), "{mode}: nothing listened");
    }
}

/// A talk server in `mode`, its operator's stdin a pipe the test writes to.
fn talk_server(mode: &str) -> (Proc, u16) {
    server(mode, &["--app", "talk", "--no-explain"])
}

/// The `recv` or `send` event carrying `data` (escaped, as in the events).
fn data_event(server: &mut Proc, kind: &str, data: &str) -> usize {
    server.expect_where(kind, |e| e["data"] == data);
    server.seen.len() - 1
}

/// Blocking talk is half-duplex, as seed 004: the client's second line is not read until
/// the operator has answered the first, and the operator is prompted only after a line.
#[test]
fn talk_in_blocking_mode_is_half_duplex() {
    let (mut server, port) = talk_server("blocking");
    let mut client = raw_peer(port);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    client.write_all(b"hello server\n").unwrap();
    data_event(&mut server, "recv", "hello server\\n");
    // The client goes on without waiting; the server is waiting for its operator.
    client.write_all(b"are you there?\n").unwrap();
    server.write_stdin(b"hello client\n");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello client\n");
    let sent = data_event(&mut server, "send", "hello client\\n");
    let second = data_event(&mut server, "recv", "are you there?\\n");
    assert!(
        sent < second,
        "the second line was read only after the reply was sent"
    );
    server.write_stdin(b"yes\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "yes\n");
    // The operator's end of input is only read when the operator is asked, after the
    // client's next line: then our FIN, and the server stops.
    server.close_stdin();
    client.write_all(b"bye then\n").unwrap();
    data_event(&mut server, "recv", "bye then\\n");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("a FIN, not an RST");
    assert!(rest.is_empty());
    assert!(server.wait_exit().success());
    server.expect("close");
    server.expect("summary");
    let stderr = server.stderr_text();
    assert!(stderr.contains("> waiting for the client..."), "{stderr:?}");
}

in_modes!([poll, threaded] talk_is_full_duplex);

/// poll and threaded talk are full-duplex: the client's lines are read while the operator
/// says nothing, and the operator may speak twice without being spoken to.
fn talk_is_full_duplex(mode: &str) {
    let (mut server, port) = talk_server(mode);
    let mut client = raw_peer(port);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    server.expect("accept");
    // The operator first, unprompted, twice.
    server.write_stdin(b"welcome\nanyone?\n");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "welcome\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "anyone?\n");
    // The client twice, without an answer in between: both are read at once.
    client.write_all(b"one\n").unwrap();
    data_event(&mut server, "recv", "one\\n");
    client.write_all(b"two\n").unwrap();
    data_event(&mut server, "recv", "two\\n");
    server.write_stdin(b"got both\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "got both\n");
    server.close_stdin();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("a FIN, not an RST");
    assert!(server.wait_exit().success());
    server.expect("close");
}

#[test]
fn talk_refuses_the_loops_that_have_no_operator() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--app", "talk", "--mode", "select", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("half-duplex"));
}

#[test]
fn the_echos_options_are_refused_with_the_chat() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--app", "chat", "--delay", "100", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--delay shapes the echo"), "{stderr}");
}
