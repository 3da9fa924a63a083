//! Server options from the seeds' last rows, one test body run over every mode:
//! `--decode` (seed 003's GBK peer), `--close-listener-after` (seed 003 closes its listening
//! socket while serving on) and `--exit-after` closing its listener first (seed 002's
//! accept-once server). The real binary, real sockets on 127.0.0.1, JSON events.

mod common;

use std::io::{Read, Write};

use common::*;

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    decode_gbk_shows_what_a_gbk_peer_sent_and_echoes_it_untouched,
);

/// "你好" as a Chinese Windows peer sends it (GBK: C4 E3 BA C3), a newline, and 0xFF, which
/// is no GBK at all.
const GBK_HELLO: [u8; 6] = [0xC4, 0xE3, 0xBA, 0xC3, b'\n', 0xFF];

fn decode_gbk_shows_what_a_gbk_peer_sent_and_echoes_it_untouched(mode: &str) {
    let (mut server, port) = server(mode, &["--decode", "gbk"]);
    let mut peer = raw_peer(port);
    peer.write_all(&GBK_HELLO).unwrap();
    assert_eq!(
        read_exactly(&mut peer, GBK_HELLO.len()),
        GBK_HELLO,
        "the echo"
    );
    let recv = server.expect_conn("recv", 1);
    assert_eq!(recv["bytes"], 6);
    assert_eq!(recv["data"], "你好\\n\\xFF", "{recv}");
    let send = server.expect_conn("send", 1);
    assert_eq!(send["data"], "你好\\n\\xFF", "{send}");
}

#[test]
fn the_client_decodes_too() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = client(port, &["--send", "hi", "--decode", "gbk"]);
    let (mut peer, _) = listener.accept().unwrap();
    let mut hi = [0; 3];
    peer.read_exact(&mut hi).unwrap();
    // A GBK server's answer instead of an echo.
    peer.write_all(&[0xC4, 0xE3, 0xBA, 0xC3, b'\n']).unwrap();
    let recv = client.expect("recv");
    assert_eq!(recv["data"], "你好\\n");
    drop(peer);
    assert!(client.wait_exit().success());

    // Without --decode, the same bytes are escaped: they are not UTF-8.
    let mut plain = common::client(port, &["--send", "hi"]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.read_exact(&mut hi).unwrap();
    peer.write_all(&[0xC4, 0xE3, 0xBA, 0xC3, b'\n']).unwrap();
    assert_eq!(plain.expect("recv")["data"], "\\xC4\\xE3\\xBA\\xC3\\n");
}

#[test]
fn an_unknown_encoding_is_a_usage_error() {
    let output = std::process::Command::new(BIN)
        .args(["serve", "--decode", "klingon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gbk"));
}

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    close_listener_after_serves_on_and_refuses_newcomers,
    exit_after_closes_the_listener_as_soon_as_the_last_is_accepted,
);

/// A connect() that must be refused: the port has no listener, the SYN gets an RST.
fn assert_refused(port: u16) {
    match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("connected to port {port}, whose listener was closed"),
    }
}

fn close_listener_after_serves_on_and_refuses_newcomers(mode: &str) {
    let (mut server, port) = server(mode, &["--close-listener-after", "1"]);
    let mut first = raw_peer(port);
    first.write_all(b"one\n").unwrap();
    assert_eq!(read_exactly(&mut first, 4), b"one\n");
    let closed = server.expect_where("close", |e| e["conn"].is_null());
    assert_eq!(closed["detail"], "listening socket, after 1 connection");
    let note = closed["note"].as_str().unwrap();
    assert!(
        note.contains("RST") && note.contains("ECONNREFUSED"),
        "{note}"
    );
    assert_eq!(closed["local"], format!("127.0.0.1:{port}"));
    // What the note says: a newcomer is refused …
    assert_refused(port);
    // … and the connection already accepted goes on being served.
    first.write_all(b"two\n").unwrap();
    assert_eq!(read_exactly(&mut first, 4), b"two\n");
    drop(first);
    server.expect_conn("eof", 1);
    let accepts = server.seen.iter().filter(|e| e["kind"] == "accept").count();
    assert_eq!(accepts, 1, "{}", server.history());
}

/// Seed 002's accept-once server: a late client used to wait in the backlog until the
/// server exited, then read ECONNRESET. Now it is refused at once, as the note says.
fn exit_after_closes_the_listener_as_soon_as_the_last_is_accepted(mode: &str) {
    let (mut server, port) = server(mode, &["--exit-after", "1"]);
    let mut first = raw_peer(port);
    first.write_all(b"one\n").unwrap();
    assert_eq!(read_exactly(&mut first, 4), b"one\n");
    let closed = server.expect_where("close", |e| e["conn"].is_null());
    let note = closed["note"].as_str().unwrap();
    assert!(
        note.contains("--exit-after") && note.contains("ECONNREFUSED"),
        "{note}"
    );
    assert_refused(port);
    drop(first);
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr_text());
    let summary = server.seen.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["stats"]["connections"], 1);
}

// The chat app has loops of its own: the listener closes there too.
in_modes!(
    [threaded, nonblocking, select, poll]
    chat_close_listener_after_refuses_newcomers,
);

fn chat_close_listener_after_refuses_newcomers(mode: &str) {
    let (mut server, port) = server(mode, &["--app", "chat", "--close-listener-after", "1"]);
    let mut first = raw_peer(port);
    let mut welcome = [0u8; 10];
    first.read_exact(&mut welcome).unwrap();
    assert_eq!(&welcome, b"* welcome ");
    let closed = server.expect_where("close", |e| e["conn"].is_null());
    assert_eq!(closed["detail"], "listening socket, after 1 connection");
    assert_refused(port);
}
