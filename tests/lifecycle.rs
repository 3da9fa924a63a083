//! A connection's life, end to end: the real server and client on 127.0.0.1, port 0, JSON
//! events. Each test asserts what a learner is promised: the events in order, the bytes, the
//! exit code, the kernel's TCP state.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn data_of(events: &[serde_json::Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn count_and_bye_get_their_echoes_then_the_servers_fin() {
    let (mut server, port) = server("blocking", &[]);
    let mut client = client(port, &["--count", "3", "--bye"]);
    assert!(client.wait_exit().success(), "{}", client.stderr_text());

    assert_eq!(
        client.kinds(None),
        ["connect", "send", "recv", "send", "recv", "send", "recv", "send", "eof", "close"]
    );
    assert_eq!(
        data_of(&client.seen, "recv"),
        ["message 1\\n", "message 2\\n", "message 3\\n"]
    );
    assert_eq!(client.seen[0]["tcp_state"], "ESTABLISHED");
    let eof = &client.seen[8];
    assert_eq!(
        eof["tcp_state"], "CLOSE_WAIT",
        "after the server's FIN: {eof}"
    );

    let close = server.expect_conn("close", 1);
    assert!(close["note"].as_str().unwrap().contains("FIN"));
    assert_eq!(server.seen[0]["kind"], "listen");
    assert_eq!(server.seen[0]["tcp_state"], "LISTEN");
    assert_eq!(
        server.kinds(Some(1)),
        ["accept", "recv", "send", "recv", "send", "recv", "send", "recv", "close"]
    );
    assert_eq!(server.seen[1]["tcp_state"], "ESTABLISHED");
}

#[test]
fn blocking_server_serves_a_second_client_only_after_the_first_leaves() {
    let (mut server, port) = server("blocking", &[]);
    let mut first = client(port, &[]);
    first.write_stdin(b"first\n");
    first.expect("recv");

    // The second client connects (the kernel queues it) and sends...
    let mut second = client(port, &["--send", "second"]);
    assert_eq!(second.expect("connect")["tcp_state"], "ESTABLISHED");
    second.expect("send");
    // ...but is accepted only once the first client has gone.
    first.close_stdin();
    assert!(first.wait_exit().success());
    assert_eq!(second.expect("recv")["data"], "second\\n");
    server.expect_conn("recv", 2);
    let first_closed = server.position("close", Some(1)).unwrap();
    let second_accepted = server.position("accept", Some(2)).unwrap();
    assert!(
        first_closed < second_accepted,
        "accept #2 before close #1:\n{}",
        server.history()
    );
}

#[test]
fn half_close_still_receives_after_its_shutdown() {
    let (_server, port) = server("blocking", &["--delay", "100"]);
    let mut client = client(port, &["--send", "one", "--send", "two", "--half-close"]);
    assert!(client.wait_exit().success(), "{}", client.stderr_text());

    let kinds = client.kinds(None);
    let shutdown = kinds.iter().position(|k| k == "shutdown").unwrap();
    let first_recv = kinds.iter().position(|k| k == "recv").unwrap();
    assert!(shutdown < first_recv, "{kinds:?}");
    let state = &client.seen[shutdown]["tcp_state"];
    assert!(state == "FIN_WAIT1" || state == "FIN_WAIT2", "{state}");
    let echoed: String = data_of(&client.seen, "recv").concat();
    assert_eq!(echoed, "one\\ntwo\\n");
    assert_eq!(kinds[kinds.len() - 2..], ["eof", "close"]);
    // The FINs crossed in that order: ours first, so the TIME_WAIT is ours, and close()
    // sends nothing new. The notes must say so, not the usual "we close second".
    let note_of = |i: usize| client.seen[i]["note"].as_str().unwrap().to_string();
    let (eof, close) = (note_of(kinds.len() - 2), note_of(kinds.len() - 1));
    assert!(
        eof.contains("after ours") && eof.contains("TIME_WAIT on our side"),
        "{eof}"
    );
    assert!(close.contains("went out already"), "{close}");
}

// Where every model must behave the same, one body runs over all six.
in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    client_abort_makes_the_server_report_a_reset,
    sigterm_stops_the_server_too,
    idle_timeout_closes_a_silent_connection,
);

fn client_abort_makes_the_server_report_a_reset(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    let mut client = client(port, &["--send", "x", "--abort"]);
    assert!(client.wait_exit().success());
    assert_eq!(client.kinds(None).last().unwrap(), "abort");

    let reset = server.expect_conn("reset", 1);
    assert_eq!(reset["errno"], "ECONNRESET");
}

#[test]
fn reset_after_makes_the_client_report_econnreset_and_fail() {
    let (mut server, port) = server("blocking", &["--reset-after", "1"]);
    let mut client = client(port, &["--count", "3"]);
    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1));
    let reset = client.expect_where("reset", |_| true);
    assert_eq!(reset["errno"], "ECONNRESET");
    assert!(client.stderr_text().contains("reset the connection"));
    server.expect_conn("abort", 1);
}

#[test]
fn naive_client_sees_a_crashed_servers_fin_only_after_its_next_write() {
    let (mut server, port) = server("blocking", &["--crash-after", "1"]);
    let mut naive = client(port, &["--naive"]);
    naive.write_stdin(b"first\n");
    naive.expect("recv");
    let crashed = server.expect_conn("close", 1);
    assert_eq!(crashed["detail"], "handler crashed");

    // The FIN is waiting in the naive client's socket, but it is blocked on stdin.
    naive.write_stdin(b"second\n");
    let send = naive.expect_where("send", |e| e["data"] == "second\\n");
    // The write succeeded; right after it the socket is CLOSE_WAIT (the FIN had arrived)
    // or already CLOSE (the server's RST answered the write at once).
    let state = &send["tcp_state"];
    assert!(state == "CLOSE_WAIT" || state == "CLOSE", "{state}");
    naive.expect("eof");
    // The write above was answered by an RST: the next one fails EPIPE.
    naive.write_stdin(b"third\n");
    assert_eq!(naive.expect("broken_pipe")["errno"], "EPIPE");
    assert_eq!(naive.wait_exit().code(), Some(1));
}

#[test]
fn interactive_client_exits_on_the_servers_fin_while_stdin_is_open() {
    let (_server, port) = server("blocking", &["--crash-after", "1"]);
    let mut client = client(port, &[]);
    client.write_stdin(b"hello\n");
    assert_eq!(client.expect("recv")["data"], "hello\\n");
    client.expect("eof");
    // stdin is still open: the client left because the poller woke it on the FIN.
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert_eq!(client.kinds(None).last().unwrap(), "close");
}

#[test]
fn interactive_client_reads_a_file_or_dev_null_as_stdin() {
    let (_server, port) = server("blocking", &[]);
    let dir = std::env::temp_dir().join(format!("tcp-lab-stdin-{}", std::process::id()));
    std::fs::write(&dir, "from a file\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["client", "--port", &port.to_string(), "--format", "json"]);
    let file = std::fs::File::open(&dir).unwrap();
    let mut client = Proc::spawn_with_stdin(cmd, file, "client < file");
    assert_eq!(client.expect("recv")["data"], "from a file\\n");
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    std::fs::remove_file(&dir).ok();

    let mut cmd = Command::new(BIN);
    cmd.args(["client", "--port", &port.to_string(), "--format", "json"]);
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut client = Proc::spawn_with_stdin(cmd, null, "client < /dev/null");
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert_eq!(client.kinds(None), ["connect", "close"]);
}

#[test]
fn control_bytes_and_gbk_are_echoed_exactly_and_printed_escaped() {
    // ESC sequence, NUL, and 你好 in GBK (not UTF-8), with no newline, as the seeds send.
    let payload: &[u8] = b"\x1b[31mred\x00\xc4\xe3\xba\xc3";
    let (mut server, port) = server("blocking", &[]);
    let mut peer = raw_peer(port);
    peer.write_all(payload).unwrap();
    assert_eq!(read_exactly(&mut peer, payload.len()), payload);
    let recv = server.expect_conn("recv", 1);
    assert_eq!(recv["data"], "\\x1B[31mred\\x00\\xC4\\xE3\\xBA\\xC3");
    assert_eq!(recv["bytes"], payload.len());

    // The text output, even with colour forced on, carries no byte of the payload raw.
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--port", "0", "--color", "always"]);
    let mut text_server = Proc::spawn_command(cmd, "serve --format text");
    let listen = text_server.next_line(WAIT).expect("listen line");
    let port: u16 = listen
        .split_whitespace()
        .find_map(|w| w.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.split('\x1b').next())
        .and_then(|p| p.parse().ok())
        .expect("port in the listen line");
    let mut peer = raw_peer(port);
    peer.write_all(payload).unwrap();
    read_exactly(&mut peer, payload.len());
    let deadline = Instant::now() + WAIT;
    let recv_line = loop {
        let line = text_server
            .next_line(deadline.saturating_duration_since(Instant::now()))
            .expect("a recv line");
        if line.contains("recv") {
            break line;
        }
    };
    assert!(
        recv_line.contains(r"\x1B[31mred\x00\xC4\xE3\xBA\xC3"),
        "{recv_line:?}"
    );
    assert!(
        !recv_line.contains("\x1b[31mred"),
        "raw ESC from the peer: {recv_line:?}"
    );
    assert!(!recv_line.contains('\0'));
}

#[test]
fn address_in_use_exits_1_and_suggests_port_0() {
    let (_server, port) = server("blocking", &[]);
    let port = port.to_string();
    let mut second = Proc::spawn(&["serve", "--port", &port]);
    assert_eq!(second.wait_exit().code(), Some(1));
    let stderr = second.stderr_text();
    assert!(stderr.starts_with("tcp-lab: error: "), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains("--port 0"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn connection_refused_is_an_event_and_exit_1() {
    let (_reserved, port) = unused_port();
    let mut client = client(port, &["--send", "x"]);
    assert_eq!(client.wait_exit().code(), Some(1));
    let refused = client.expect("refused");
    assert_eq!(refused["errno"], "ECONNREFUSED");
    let stderr = client.stderr_text();
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["serve", "--mode", "nonsense"][..],
        &["serve", "--backlog", "0"],
        &["client", "--hold", "-1"],
        &["client", "--naive", "--send", "x"],
    ] {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn sigint_stops_the_server_within_a_second_with_a_summary() {
    let (mut server, port) = server("blocking", &[]);
    let mut client = client(port, &["--send", "hi", "--hold", "30"]);
    client.expect("recv");
    server.expect_conn("send", 1);

    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let kinds = server.kinds(None);
    assert_eq!(kinds[kinds.len() - 3..], ["stop", "close", "summary"]);
    let summary = server.seen.last().unwrap();
    assert_eq!(summary["stats"]["connections"], 1);
    assert_eq!(summary["stats"]["messages"], 1);
    // The client is told with a FIN.
    client.expect("eof");
    assert!(client.wait_exit().success());
}

fn sigterm_stops_the_server_too(mode: &str) {
    let (mut server, _port) = server(mode, &[]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    assert_eq!(server.kinds(None).last().unwrap(), "summary");
}

fn idle_timeout_closes_a_silent_connection(mode: &str) {
    let (mut server, port) = server(mode, &["--idle-timeout", "1"]);
    let mut client = client(port, &["--send", "x", "--hold", "30"]);
    let timeout = server.expect_conn("timeout", 1);
    assert!(timeout["note"].as_str().unwrap().contains("FIN"));
    client.expect("eof");
    assert!(client.wait_exit().success());
}

#[test]
fn exit_after_stops_once_enough_connections_finished() {
    let (mut server, port) = server("blocking", &["--exit-after", "1", "--quiet"]);
    let mut client = client(port, &["--count", "2"]);
    assert!(client.wait_exit().success());
    assert!(server.wait_exit().success());
    // --quiet: lifecycle events only; the listener is closed once the one connection is in.
    assert_eq!(
        server.kinds(None),
        ["listen", "accept", "close", "eof", "close", "summary"]
    );
    assert_eq!(server.seen.last().unwrap()["stats"]["messages"], 2);
}

#[test]
fn no_explain_drops_the_notes() {
    let (_server, port) = server("blocking", &[]);
    let mut client = client(port, &["--send", "x", "--no-explain"]);
    assert!(client.wait_exit().success());
    assert!(client.seen.iter().all(|e| e.get("note").is_none()));
}
