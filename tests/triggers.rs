//! The poll server's `--trigger edge|level|oneshot`: what each costs in epoll_ctl calls, as
//! the summary counts them. (That every trigger serves correctly is checked by the
//! one-body-per-mode tests in modes.rs and loops.rs, which run `poll_level` and
//! `poll_oneshot` beside `poll`, whose default trigger is edge.)

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

/// Messages exchanged one at a time over each connection.
const MESSAGES: u64 = 200;
const CONNECTIONS: u64 = 3;

/// Serve CONNECTIONS peers, each sending MESSAGES messages one after the other (waiting for
/// each echo), then stop the server and return its summary's stats.
fn ping_pong_summary(mode: &str) -> serde_json::Value {
    let (mut server, port) = server(mode, &["--quiet"]);
    for conn in 1..=CONNECTIONS {
        let mut peer = raw_peer(port);
        for i in 0..MESSAGES {
            let message = format!("message {i:>4}");
            peer.write_all(message.as_bytes()).unwrap();
            assert_eq!(read_exactly(&mut peer, message.len()), message.as_bytes());
        }
        drop(peer); // our FIN; the server closes its side
        server.expect_conn("close", conn);
    }
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    let summary = server.expect("summary");
    let stats = summary["stats"].clone();
    assert_eq!(stats["messages"], MESSAGES * CONNECTIONS, "{summary}");
    stats
}

fn epoll_ctl(stats: &serde_json::Value) -> u64 {
    stats["epoll_ctl"]
        .as_u64()
        .unwrap_or_else(|| panic!("epoll_ctl in {stats}"))
}

/// Oneshot: every event disarms the socket, so each message costs an epoll_ctl(MOD).
#[test]
fn oneshot_rearms_after_every_message() {
    let stats = ping_pong_summary("poll_oneshot");
    let calls = epoll_ctl(&stats);
    assert!(calls >= MESSAGES * CONNECTIONS, "{stats}");
}

/// What the loop registers besides its connections: the listener and the Ctrl-C eventfd
/// (one ADD each), and the listener's re-arm after each batch of accepts (here one batch,
/// of one connection, per connection).
fn loop_own_calls() -> u64 {
    2 + CONNECTIONS
}

/// Edge: registered once (ADD) per connection, never changed, and no DEL: close() takes a
/// socket out of the interest list. Nothing per message.
#[test]
fn edge_registers_once_per_connection() {
    let stats = ping_pong_summary("poll");
    let calls = epoll_ctl(&stats);
    assert!(calls <= CONNECTIONS + loop_own_calls(), "{stats}");
}

/// Edge: a read shorter than the buffer took everything there was (EPOLLRDHUP says when a
/// FIN waits behind it), so no read is wasted on EAGAIN. The only wasted calls are the
/// accept() that ends each batch of accepts.
#[test]
fn edge_wastes_no_read_on_eagain() {
    let stats = ping_pong_summary("poll");
    let wasted = stats["wouldblock"].as_u64().expect("wouldblock");
    assert!(wasted <= CONNECTIONS, "{stats}");
}

/// Level: like edge for a plain echo (the interest changes only when output has to wait
/// or reading pauses, which one message at a time never makes it do).
#[test]
fn level_changes_interest_only_when_it_must() {
    let stats = ping_pong_summary("poll_level");
    let calls = epoll_ctl(&stats);
    assert!(calls <= CONNECTIONS + loop_own_calls(), "{stats}");
}

/// The other modes register nothing with a poller: `--trigger` there is a usage error (2).
#[test]
fn trigger_without_poll_mode_is_a_usage_error() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--mode",
            "select",
            "--trigger",
            "level",
            "--port",
            "0",
        ])
        .output()
        .expect("run tcp-lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--trigger is for --mode poll"), "{stderr}");
}

/// The chat's and the talk's poll loops have their own interest handling: `--trigger` belongs
/// to the echo's loop, and with another app it is refused like the echo's other options.
#[test]
fn trigger_with_the_chat_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["serve", "--app", "chat", "--trigger", "edge", "--port", "0"])
        .output()
        .expect("run tcp-lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--trigger"), "{stderr}");
}
