//! `--wire`: the packets, captured on `lo`, checked against what tcp-lab says.
//!
//! Capturing needs root or CAP_NET_RAW. CI runs as root, so there every test here captures
//! for real; elsewhere (a learner's `cargo test` without privileges, CI unset) the tests
//! that need a capture say why and return.
//!
//! Two kinds of test:
//! - every demo with `--wire`: it must capture, draw the packets, and check its point on them;
//! - every way a server closes a connection (idle timeout, --max-conns, Ctrl-C with queued
//!   connections, a crash, --reset-after, the bye word): the packet the server's kernel sent,
//!   FIN or RST, must be the one the event's note names.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Whether a test that needs a capture runs: always where it can capture, and always in CI
/// (where failing to capture is a failure, not a reason to skip).
fn capture_required(test: &str) -> bool {
    if can_capture() || std::env::var_os("CI").is_some() {
        return true;
    }
    eprintln!("{test}: skipped: this process cannot capture packets (not root, no CAP_NET_RAW)");
    false
}

/// The demos, as `tcp-lab demo --list` names them.
fn demo_names() -> Vec<String> {
    let out = Command::new(BIN).args(["demo", "--list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn packets(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "packet").collect()
}

fn has_flag(packet: &Value, flag: &str) -> bool {
    packet["flags"]
        .as_str()
        .is_some_and(|f| f.split(',').any(|x| x == flag))
}

#[test]
fn every_demo_captures_its_packets_and_checks_its_point_on_them() {
    if !capture_required("every_demo_captures_its_packets") {
        return;
    }
    let names = demo_names();
    assert!(names.len() >= 18, "too few demos: {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let out = Command::new(BIN)
            .args(["demo", name, "--wire", "--format", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let events = json_lines(&out.stdout);
        let packets = packets(&events);
        if !out.status.success() {
            failures.push(format!("{name}: exit {}: {stderr}", out.status));
        } else if packets.is_empty() {
            failures.push(format!("{name}: no packet event; stderr: {stderr}"));
        } else {
            // The verdict, the last JSON line, names the packets that prove the point.
            let verdict = events.iter().find(|e| e["kind"] == "verdict");
            let detail = verdict.and_then(|v| v["detail"].as_str()).unwrap_or("");
            if verdict.is_none_or(|v| v["shown"] != true) || !detail.contains("; on the wire: ") {
                failures.push(format!("{name}: its verdict names no packet: {verdict:?}"));
            }
        }
        for p in &packets {
            let complete = ["ts", "flags", "seq", "len", "from", "to"]
                .iter()
                .all(|field| !p[field].is_null());
            if !complete || p["role"] != "wire" {
                failures.push(format!("{name}: a packet event lacks a field: {p}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_ladder_draws_the_captured_packets_instead_of_inferred_arrows() {
    if !capture_required("the_ladder_draws_the_captured_packets") {
        return;
    }
    let out = Command::new(BIN)
        .args(["demo", "orderly-close", "--wire", "--color", "never"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let header = text.lines().nth(2).unwrap_or("");
    assert!(header.contains("packets on lo"), "{text}");
    // Captured flags are named as on the wire (SYN,ACK); the inferred arrow says SYN-ACK.
    assert!(text.contains("◀──────── SYN,ACK ──│"), "{text}");
    assert!(text.contains("seq=0 ack=1"), "{text}");
    assert!(
        !text.contains("SYN-ACK ──"),
        "an inferred arrow was drawn: {text}"
    );
    assert!(text.contains("── FIN,ACK ────────▶│"), "{text}");
    assert!(
        text.contains("on the wire: the client's FIN,ACK"),
        "the check names no packet: {text}"
    );
}

/// The demo's JSON with `--pcap`: the file holds the same packets, and tcpdump reads it.
#[test]
fn pcap_holds_the_same_packets_and_tcpdump_reads_it() {
    if !capture_required("pcap_holds_the_same_packets") {
        return;
    }
    let path = std::env::temp_dir().join(format!("tcp-lab-wire-{}.pcap", std::process::id()));
    let out = Command::new(BIN)
        .args(["demo", "write-after-fin", "--format", "json", "--pcap"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    let packets = packets(&events);
    let file = std::fs::read(&path).expect("the pcap file");

    // The classic header, then one record per packet event.
    let u32_at = |at: usize| u32::from_ne_bytes(file[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "magic");
    assert_eq!(u32_at(20), 1, "link type Ethernet");
    let mut at = 24;
    let mut records = 0;
    while at + 16 <= file.len() {
        at += 16 + u32_at(at + 8) as usize;
        records += 1;
    }
    assert_eq!(at, file.len(), "the last record is cut short");
    assert_eq!(records, packets.len(), "records vs packet events");

    let tcpdump = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let Ok(tcpdump) = tcpdump else {
        eprintln!("tcpdump is not installed: the file was checked by its format only");
        return;
    };
    let listing = String::from_utf8_lossy(&tcpdump.stdout);
    assert!(
        tcpdump.status.success(),
        "{}",
        String::from_utf8_lossy(&tcpdump.stderr)
    );
    assert_eq!(listing.lines().count(), packets.len(), "{listing}");
    assert!(listing.contains("Flags [S]"), "{listing}");
    assert!(listing.contains("Flags [F.]"), "{listing}");
    assert!(listing.contains("Flags [R]"), "{listing}");
}

/// Run `args` without CAP_NET_RAW: through setpriv (or capsh) when we have it, as is
/// otherwise. None when neither tool is installed and this process can capture.
fn without_net_raw(args: &[&str]) -> Option<std::process::Output> {
    if !can_capture() {
        return Some(Command::new(BIN).args(args).output().unwrap());
    }
    let setpriv = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-net_raw", BIN])
        .args(args)
        .output();
    if let Ok(out) = setpriv {
        return Some(out);
    }
    let line = format!("{BIN} {}", args.join(" "));
    Command::new("capsh")
        .args(["--drop=cap_net_raw", "--", "-c", &line])
        .output()
        .ok()
}

#[test]
fn without_cap_net_raw_one_line_says_how_and_the_demo_runs_with_inferred_arrows() {
    let Some(out) = without_net_raw(&["demo", "abort-rst", "--wire", "--color", "never"]) else {
        eprintln!("skipped: neither setpriv nor capsh is installed to drop CAP_NET_RAW");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
    assert!(
        stderr.contains("sudo setcap cap_net_raw+ep \"$(command -v tcp-lab)\""),
        "{stderr}"
    );
    assert!(stdout.contains("(arrows inferred)"), "{stdout}");
    assert!(
        stdout.contains("SYN-ACK"),
        "the inferred handshake: {stdout}"
    );
    assert!(stdout.contains("✓ shown:"), "{stdout}");

    // A demo that fails still fails the same way: the exit status is the demo's own.
    let Some(out) = without_net_raw(&["demo", "no-such-demo", "--wire"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(2));
}

/// The first packet event (among all seen so far, then new ones) that satisfies `wanted`.
fn wait_packet(proc: &mut Proc, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(p) = proc
            .seen
            .iter()
            .find(|e| e["kind"] == "packet" && wanted(e))
        {
            return p.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no packet {what} within {WAIT:?}; events:\n{}",
            proc.history()
        );
        proc.next_event(left.min(Duration::from_millis(100)));
    }
}

#[test]
fn serve_and_client_print_packet_events_on_their_own_clocks() {
    if !capture_required("serve_and_client_print_packet_events") {
        return;
    }
    let (mut server, port) = server("poll", &["--wire", "--exit-after", "1"]);
    let mut client = client(port, &["--send", "hello", "--wire"]);
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert!(server.wait_exit().success(), "{}", server.stderr_text());

    for (who, proc) in [("server", &server), ("client", &client)] {
        let flags: Vec<&str> = packets(&proc.seen)
            .iter()
            .map(|p| p["flags"].as_str().unwrap_or(""))
            .collect();
        assert!(
            flags.starts_with(&["SYN", "SYN,ACK", "ACK", "PSH,ACK"]),
            "{who}: {flags:?}"
        );
    }
    let fins = packets(&server.seen)
        .iter()
        .filter(|p| has_flag(p, "FIN"))
        .count();
    assert_eq!(fins, 2, "a FIN each way: {}", server.history());
    // The kernel's times, on the events' clock: the client's FIN crossed before the
    // server's read returned 0, and its SYN before the server's accept returned.
    let ts = |e: &Value| e["ts"].as_f64().unwrap();
    let at = |kind: &str| ts(server.seen.iter().find(|e| e["kind"] == kind).unwrap());
    let first = |flag: &str| {
        let p = packets(&server.seen)
            .into_iter()
            .find(|p| has_flag(p, flag))
            .unwrap();
        ts(p)
    };
    assert!(first("SYN") <= at("accept"), "{}", server.history());
    assert!(first("FIN") <= at("eof"), "{}", server.history());
}

/// The client's own capture runs until its `run` returns, after its close: the FIN (or, with
/// `--abort`, the RST) its close event announces must be in it, at or before that event.
/// (A copy of the socket kept for the Ctrl-C handler once delayed the FIN to the process's exit.)
#[test]
fn the_clients_close_sends_its_packet_when_its_event_says() {
    if !capture_required("the_clients_close_sends_its_packet") {
        return;
    }
    let (_server, port) = server("poll", &[]);
    for (extra, kind, flag) in [(None, "close", "FIN"), (Some("--abort"), "abort", "RST")] {
        let mut args = vec!["--send", "hi", "--wire"];
        args.extend(extra);
        let mut client = client(port, &args);
        assert!(client.wait_exit().success() || extra.is_some());
        let event = client.expect(kind);
        let local = event["local"].clone();
        let sent = packets(&client.seen)
            .into_iter()
            .find(|p| p["from"] == local && has_flag(p, flag))
            .cloned();
        let Some(sent) = sent else {
            panic!(
                "the client's `{kind}` says it sent {flag}, but its capture has none; events:\n{}",
                client.history()
            );
        };
        assert!(
            sent["ts"].as_f64() <= event["ts"].as_f64(),
            "the {flag} left at {} s, after the `{kind}` event at {} s",
            sent["ts"],
            event["ts"]
        );
    }
}

// ------------------------------------------------------------ the server's close paths

/// What a note says the kernel sent: FIN or RST (None if it names neither).
fn claimed(note: &str) -> Option<&'static str> {
    kernel_sends(note)
}

/// The kinds of event that end a connection on the server's side.
const CLOSING: [&str; 5] = ["close", "abort", "timeout", "limit", "exit"];

/// The event that closed the connection from `client` (its address), whose note names a
/// packet: found by its `peer`, or by the connection number its `accept` gave it (a thread's
/// or child's `exit` carries no address).
fn closing_event(server: &mut Proc, client: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let conn = server
            .seen
            .iter()
            .find(|e| e["kind"] == "accept" && e["peer"] == client)
            .map(|e| e["conn"].clone());
        let found = server.seen.iter().find(|e| {
            let ours = e["peer"] == client || conn.as_ref().is_some_and(|c| e["conn"] == *c);
            ours && CLOSING.iter().any(|k| e["kind"] == *k)
                && e["note"].as_str().and_then(claimed).is_some()
        });
        if let Some(e) = found {
            return e.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no closing event for {client}; events:\n{}",
            server.history()
        );
        server.next_event(left.min(Duration::from_millis(100)));
    }
}

/// Assert that what the event closing `client`'s connection says went out (FIN or RST) is
/// what the server's side sent it first.
fn assert_note_matches_wire(server: &mut Proc, client: &TcpStream, path: &str) {
    let client = client.local_addr().unwrap().to_string();
    let server_addr = client_peer(server);
    let event = closing_event(server, &client);
    let note = event["note"].as_str().unwrap_or("");
    let said = claimed(note).unwrap();
    let sent = wait_packet(server, "FIN or RST from the server", |p| {
        p["to"] == client.as_str()
            && p["from"] == server_addr.as_str()
            && (has_flag(p, "FIN") || has_flag(p, "RST"))
    });
    let wire = if has_flag(&sent, "RST") { "RST" } else { "FIN" };
    assert_eq!(
        said,
        wire,
        "{path}: the `{}` event says {said} (note: {note:?}), but the server's kernel sent {} \
         at {} s; events:\n{}",
        event["kind"],
        sent["flags"],
        sent["ts"],
        server.history()
    );
}

/// The server's address, from its `listen` event.
fn client_peer(server: &Proc) -> String {
    let listen = server.seen.iter().find(|e| e["kind"] == "listen").unwrap();
    listen["local"].as_str().unwrap().to_string()
}

fn wire_server(mode: &str, extra: &[&str]) -> (Proc, u16) {
    let mut args = vec!["--wire"];
    args.extend_from_slice(extra);
    server(mode, &args)
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    idle_timeout_sends_what_its_note_says,
    reset_after_sends_what_its_note_says,
    bye_word_sends_what_its_note_says,
    crash_sends_what_its_note_says,
);

fn idle_timeout_sends_what_its_note_says(mode: &str) {
    if !capture_required("idle_timeout") {
        return;
    }
    let (mut server, port) = wire_server(mode, &["--idle-timeout", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hi").unwrap();
    assert_eq!(read_exactly(&mut peer, 2), b"hi");
    server.expect_conn("timeout", 1);
    assert_note_matches_wire(&mut server, &peer, "--idle-timeout");
}

fn reset_after_sends_what_its_note_says(mode: &str) {
    if !capture_required("reset_after") {
        return;
    }
    let (mut server, port) = wire_server(mode, &["--reset-after", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hi").unwrap();
    assert_note_matches_wire(&mut server, &peer, "--reset-after");
}

fn bye_word_sends_what_its_note_says(mode: &str) {
    if !capture_required("bye_word") {
        return;
    }
    let (mut server, port) = wire_server(mode, &[]);
    let mut peer = raw_peer(port);
    peer.write_all(b"Bye\n").unwrap();
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert_note_matches_wire(&mut server, &peer, "the bye word");
}

/// The handler dies after one message, all of whose bytes it read: nothing is left unread.
fn crash_sends_what_its_note_says(mode: &str) {
    if !capture_required("crash") {
        return;
    }
    let (mut server, port) = wire_server(mode, &["--crash-after", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert_note_matches_wire(&mut server, &peer, "--crash-after");
}

/// The handler dies with input it never read: a second message arrives while the first is
/// being answered (`--delay`), and the crash comes after the first.
#[test]
fn crash_with_unread_input_sends_what_its_note_says() {
    if !capture_required("crash_with_unread_input") {
        return;
    }
    let (mut server, peer) = crash_over_unread_input("blocking");
    assert_note_matches_wire(&mut server, &peer, "--crash-after with unread input");
}

/// A server in `mode` whose handler crashes after its first message (`--crash-after 1`),
/// with a second message (6 bytes) already in its receive buffer when it does: the first is
/// answered only after `--delay`, and the second is sent, and seen on the wire, meanwhile.
fn crash_over_unread_input(mode: &str) -> (Proc, TcpStream) {
    let (mut server, port) = wire_server(mode, &["--crash-after", "1", "--delay", "500"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"first").unwrap();
    server.expect_conn("recv", 1);
    peer.write_all(b"second").unwrap();
    wait_packet(&mut server, "carrying the second message", |p| {
        p["len"] == 6
    });
    (server, peer)
}

#[test]
fn max_conns_sends_what_its_note_says() {
    if !capture_required("max_conns") {
        return;
    }
    let (mut server, port) = wire_server("poll", &["--max-conns", "1"]);
    let mut first = raw_peer(port);
    first.write_all(b"hi").unwrap();
    assert_eq!(read_exactly(&mut first, 2), b"hi");
    let mut second = raw_peer(port);
    let mut told = Vec::new();
    let _ = second.read_to_end(&mut told);
    assert!(
        String::from_utf8_lossy(&told).contains("server full"),
        "{told:?}"
    );
    server.expect_conn("limit", 2);
    assert_note_matches_wire(&mut server, &second, "--max-conns");
}

/// Ctrl-C while connections wait in the accept queue: one that said nothing, one whose bytes
/// sit unread in its socket. The blocking server is busy with a first client meanwhile.
#[test]
fn stop_with_queued_connections_sends_what_the_notes_say() {
    if !capture_required("stop_with_queued_connections") {
        return;
    }
    let (mut server, port) = wire_server("blocking", &[]);
    let mut first = raw_peer(port);
    first.write_all(b"hi").unwrap();
    assert_eq!(read_exactly(&mut first, 2), b"hi");
    let silent = raw_peer(port);
    let mut talker = raw_peer(port);
    talker.write_all(b"queued").unwrap();
    let talker_addr = talker.local_addr().unwrap().to_string();
    wait_packet(&mut server, "carrying the queued client's bytes", |p| {
        p["from"] == talker_addr.as_str() && p["len"] == 6
    });
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success(), "{}", server.stderr_text());
    assert_note_matches_wire(&mut server, &first, "Ctrl-C, the connection being served");
    assert_note_matches_wire(&mut server, &silent, "Ctrl-C, a silent queued connection");
    assert_note_matches_wire(
        &mut server,
        &talker,
        "Ctrl-C, a queued connection with unread bytes",
    );
}

// ------------------------------------------------------------ the chat's close paths

in_modes!(
    [threaded, nonblocking, select, poll]
    chat_closes_send_what_their_notes_say,
);

/// The chat server closes a member after `/quit` (a line after it, read and thrown away),
/// after an over-long line, and after `--idle-timeout`: for each, the packet its kernel sent
/// first, FIN or RST, is the one the closing event's note names.
fn chat_closes_send_what_their_notes_say(mode: &str) {
    if !capture_required("chat_closes") {
        return;
    }
    let args = ["--app", "chat", "--max-line", "100", "--idle-timeout", "1"];
    let (mut server, port) = wire_server(mode, &args);
    let mut quitter = raw_peer(port);
    quitter.write_all(b"/quit\nafter the quit\n").unwrap();
    let _ = read_to_end_or_error(&mut quitter);
    assert_note_matches_wire(&mut server, &quitter, "chat /quit");
    let mut long = raw_peer(port);
    long.write_all(&[b'y'; 3000]).unwrap();
    let _ = read_to_end_or_error(&mut long);
    assert_note_matches_wire(&mut server, &long, "chat over-long line");
    let mut sleeper = raw_peer(port);
    let _ = read_to_end_or_error(&mut sleeper); // the welcome, then the timeout's close
    assert_note_matches_wire(&mut server, &sleeper, "chat --idle-timeout");
}

/// Blocking talk: the operator leaves (Ctrl-D) while the client's second line sits unread.
/// The note says RST, and an RST is what the server's kernel sent.
#[test]
fn talk_operator_leaving_over_unread_words_sends_what_its_note_says() {
    if !capture_required("talk_operator_unread") {
        return;
    }
    let (mut server, port) = wire_server("blocking", &["--app", "talk"]);
    let mut client = raw_peer(port);
    client.write_all(b"hello\n").unwrap();
    server.expect_conn("recv", 1);
    client.write_all(b"still there?\n").unwrap();
    wait_acked(&client);
    server.close_stdin();
    let _ = read_to_end_or_error(&mut client);
    assert_note_matches_wire(
        &mut server,
        &client,
        "talk: the operator leaves over unread words",
    );
}

// ------------------------------------------------------------ the chat demos' own checks

/// The verdict of `demo --wire`, which names the packets that prove its point.
fn wire_verdict(name: &str) -> String {
    let out = Command::new(BIN)
        .args(["demo", name, "--wire", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    let events = json_lines(&out.stdout);
    let verdict = events.iter().find(|e| e["kind"] == "verdict").unwrap();
    verdict["detail"].as_str().unwrap().to_string()
}

/// chat-rooms checks its own point on the wire, not only a handshake: the relayed line as
/// a segment to user2 only, user3's line to nobody, user2's RST, the room told.
#[test]
fn chat_rooms_checks_the_relays_and_the_rst_on_the_wire() {
    if !capture_required("chat_rooms_wire") {
        return;
    }
    let detail = wire_verdict("chat-rooms");
    for shown in [
        "21 bytes to user2 only",
        "user3's line reached nobody",
        "user2's RST",
        "39 bytes to alice alone",
    ] {
        assert!(detail.contains(shown), "{shown:?} not in: {detail}");
    }
}

/// half-duplex: the second line is ACKed by the kernel at once, but the first data back
/// is the operator's reply.
#[test]
fn half_duplex_checks_that_nothing_answers_the_second_line_before_the_operator() {
    if !capture_required("half_duplex_wire") {
        return;
    }
    let detail = wire_verdict("half-duplex");
    assert!(
        detail.contains("the client's second line crossed at"),
        "{detail}"
    );
    assert!(
        detail.contains("the first data back was the operator's reply, 13 bytes"),
        "{detail}"
    );
}

/// Process mode: the child dies over input it never read. It looked as it died and told the
/// parent, so the `exit` event's note says RST — and an RST is what its kernel sent.
#[test]
fn a_crashed_child_over_unread_input_sends_what_its_note_says() {
    if !capture_required("process_crash_with_unread_input") {
        return;
    }
    let (mut server, mut peer) = crash_over_unread_input("process");
    let _ = read_to_end_or_error(&mut peer);
    let exit = server.expect_where("exit", |e| e["conn"] == 1);
    assert_eq!(exit["unread"], 6, "{exit}");
    assert_note_matches_wire(
        &mut server,
        &peer,
        "process --crash-after with unread input",
    );
}

/// Process mode with `--parent-keeps-fd`: the child dies, but the parent still holds a copy
/// of the socket, so the child's death sends nothing. The `exit` note says so, the peer reads
/// no EOF, and the first FIN on the wire comes only when the parent closes its copy (at stop).
#[test]
fn a_crashed_child_whose_parent_keeps_the_socket_sends_nothing() {
    if !capture_required("process_crash_parent_keeps_fd") {
        return;
    }
    let (mut server, port) = wire_server("process", &["--parent-keeps-fd", "--crash-after", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hello").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"hello");
    let exit = server.expect_where("exit", |e| e["conn"] == 1);
    let note = exit["note"].as_str().unwrap_or("");
    assert_eq!(
        kernel_sends(note),
        None,
        "the note names a packet: {note:?}"
    );
    assert!(note.contains("nothing is sent"), "{note:?}");
    // Nothing came: a read waits (bounded) instead of returning the EOF a FIN would bring.
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = peer
        .read(&mut byte)
        .expect_err("no EOF while the parent holds a copy");
    assert!(
        matches!(
            waited.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{waited}"
    );
    server.signal(libc::SIGINT);
    let stop = server.expect("stop");
    let server_addr = client_peer(&server);
    let first = wait_packet(&mut server, "FIN or RST from the server", |p| {
        p["from"] == server_addr.as_str() && (has_flag(p, "FIN") || has_flag(p, "RST"))
    });
    assert!(
        has_flag(&first, "FIN") && first["ts"].as_f64() >= stop["ts"].as_f64(),
        "the server's first FIN or RST was {} at {} s (the stop at {} s); events:\n{}",
        first["flags"],
        first["ts"],
        stop["ts"],
        server.history()
    );
}

/// select-limit checks its own point on the wire: past the wall, the refusal is the only
/// data and a FIN (not an RST) follows it.
#[test]
fn select_limit_checks_the_refusal_then_the_fin_on_the_wire() {
    if !capture_required("select_limit_wire") {
        return;
    }
    let detail = wire_verdict("select-limit");
    assert!(
        detail.contains("got the refusal as their only data, then the server's FIN and no RST"),
        "{detail}"
    );
}
