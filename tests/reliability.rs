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
