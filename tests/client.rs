//! `tcp-lab client`: what it promises beyond the echo — giving up out loud (`--wait`,
//! `--connect-timeout`), a close printed when Ctrl-C ends it, and `--name` on every event.
//! The real binary, real sockets on 127.0.0.1, JSON events.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A listener that accepts but never answers: the test holds the accepted socket.
fn silent_peer() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn wait_gives_up_on_a_silent_server_with_a_timeout_event() {
    let (listener, port) = silent_peer();
    let mut client = client(port, &["--send", "hi", "--bye", "--wait", "0.5"]);
    let (mut accepted, _) = listener.accept().unwrap();
    client.expect("connect");
    client.expect("send");
    let timeout = client.expect("timeout");
    assert_eq!(
        timeout["detail"], "3 bytes not echoed within 0.5 s",
        "{timeout}"
    );
    assert!(timeout["note"].as_str().unwrap().contains("--wait"));
    assert_eq!(timeout["tcp_state"], "ESTABLISHED");
    // The script goes on: Bye, then a wait for the FIN that never comes, said too.
    let bye = client.expect("send");
    assert_eq!(bye["data"], "Bye\\n");
    let no_fin = client.expect("timeout");
    assert_eq!(no_fin["detail"], "no FIN within 0.5 s");
    client.expect("close");
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    // And the silent peer got it all, then our FIN.
    let mut got = Vec::new();
    accepted.set_read_timeout(Some(WAIT)).unwrap();
    accepted.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hi\nBye\n");
}

#[test]
fn wait_must_be_more_than_zero() {
    let output = Command::new(BIN)
        .args(["client", "--send", "hi", "--wait", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("more than 0"));
}

#[test]
fn ctrl_c_ends_the_client_with_its_close_and_a_fin() {
    let (mut server, port) = server("poll", &[]);
    let mut client = client(port, &["--send", "hi", "--hold", "60"]);
    client.expect("recv");
    server.expect("send");
    client.signal(libc::SIGINT);
    let close = client.expect("close");
    assert_eq!(close["detail"], "Ctrl-C");
    assert!(close["note"].as_str().unwrap().contains("FIN"), "{close}");
    let status = client.wait_exit();
    assert!(status.success(), "{status}: {}", client.stderr_text());
    // The kernel did send our FIN: the server read EOF.
    server.expect_conn("eof", 1);
}

/// The naive client blocks on stdin and never reads what the server sends: Ctrl-C then
/// leaves unread bytes, and the kernel's close is an RST — the event says so, and the
/// server's side really gets ECONNRESET.
#[test]
fn ctrl_c_with_unread_bytes_is_an_rst_and_says_so() {
    let (listener, port) = silent_peer();
    let mut client = client(port, &["--naive"]);
    let (mut accepted, _) = listener.accept().unwrap();
    client.expect("connect");
    accepted.write_all(b"unasked\n").unwrap();
    // The bytes are in the client's receive buffer once our kernel has sent them: wait for
    // that rather than sleep (Send-Q empties when the peer's kernel ACKs them).
    let deadline = Instant::now() + WAIT;
    while unacked(&accepted) > 0 {
        assert!(Instant::now() < deadline, "the bytes never left");
        std::thread::sleep(Duration::from_millis(5));
    }
    client.signal(libc::SIGINT);
    let close = client.expect("close");
    assert!(close["note"].as_str().unwrap().contains("RST"), "{close}");
    assert!(client.wait_exit().success());
    accepted.set_read_timeout(Some(WAIT)).unwrap();
    let err = accepted.read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// Bytes sent but not yet acknowledged by the peer (SIOCOUTQ).
fn unacked(stream: &std::net::TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `n`.
    unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    n
}

#[test]
fn name_labels_every_event_in_json_and_text() {
    let (mut server, port) = server("poll", &[]);
    let mut alice = client(port, &["--send", "hi", "--name", "alice"]);
    assert!(alice.wait_exit().success());
    for event in &alice.seen {
        assert_eq!(event["name"], "alice", "{event}");
    }
    let keys: Vec<&String> = alice.seen[0].as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["ts", "role", "name"], "name follows the role");

    let text = Command::new(BIN)
        .args(["client", "--port", &port.to_string(), "--send", "hi"])
        .args(["--name", "bob", "--color", "never", "--no-explain"])
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    for line in text.lines() {
        assert_eq!(line.get(9..13), Some("bob "), "{line:?}");
    }
    server.expect_conn("eof", 2);

    let bad = Command::new(BIN)
        .args(["client", "--name", "\x1b[31mred"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a name that could drive a terminal"
    );
}

/// A listener with backlog 0 that never accepts: one connection fills its accept queue, and
/// Linux drops every later SYN. The next connect waits in SYN_SENT until it gives up.
#[test]
fn connect_timeout_gives_up_on_a_full_backlog() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();

    let started = Instant::now();
    let port = port.to_string();
    let mut client = Proc::spawn(&[
        "client",
        "--port",
        &port,
        "--send",
        "hi",
        "--connect-timeout",
        "1",
    ]);
    let status = client.wait_exit();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1));
    let timeout = client.expect("timeout");
    assert_eq!(timeout["errno"], "ETIMEDOUT");
    assert!(timeout["note"].as_str().unwrap().contains("SYN"));
    assert!(!client.seen.iter().any(|e| e["kind"] == "connect"));
    let stderr = client.stderr_text();
    assert!(stderr.contains("timed out after 1.0 s"), "{stderr}");
    // It gave up when told to, not at the 10 s default.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn client_help_says_a_full_backlog_makes_connect_wait() {
    let output = Command::new(BIN)
        .args(["client", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in ["--connect-timeout", "backlog", "SYN", "--wait", "--name"] {
        assert!(help.contains(needle), "no {needle:?} in:\n{help}");
    }
}
