//! One test body, run over every concurrency model: what a learner is promised holds in all
//! of them — exact echoes, clean stops, the kernel's FIN and RST where the table says, and
//! a server that survives its peers. Only `blocking` makes a second client wait.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// The models that serve several connections at once.
in_modes!(
    [threaded, process, nonblocking, select, poll, poll_level, poll_oneshot]
    max_conns_turns_newcomers_away_politely,
    delay_holds_up_only_its_own_connection
);

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll, poll_level, poll_oneshot]
    twenty_concurrent_clients_each_get_five_exact_echoes,
    a_16_mib_payload_is_echoed_byte_exact,
    a_megabyte_sent_in_one_burst_is_echoed_whole,
    bytes_and_fin_that_arrive_together_are_echoed_then_closed,
    only_blocking_makes_a_second_client_wait,
    ctrl_c_with_clients_connected_ends_within_a_second_and_clients_see_eof,
    crash_after_makes_the_kernel_send_a_fin,
    reset_after_sends_an_rst,
    the_seed_flow_ten_messages_then_bye,
    a_message_merged_with_the_bye_word_is_still_echoed,
    reply_answers_every_message_with_the_fixed_text,
    time_wait_blocks_a_rebind_only_without_reuseaddr,
    a_thousand_resetting_peers_leave_no_descriptor_behind,
    out_of_descriptors_is_reported_once_survived_and_served_again,
);

fn twenty_concurrent_clients_each_get_five_exact_echoes(mode: &str) {
    let (_server, port) = server(mode, &["--quiet"]);
    // Connect all twenty first, so they really are connected at the same time.
    let peers: Vec<TcpStream> = (0..20).map(|_| raw_peer(port)).collect();
    let workers: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, mut peer)| {
            thread::spawn(move || {
                for j in 1..=5 {
                    let message = format!("client {i} message {j}");
                    peer.write_all(message.as_bytes()).unwrap();
                    let echo = read_exactly(&mut peer, message.len());
                    assert_eq!(echo, message.as_bytes());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client thread failed");
    }
}

fn a_16_mib_payload_is_echoed_byte_exact(mode: &str) {
    let (_server, port) = server(mode, &["--quiet"]);
    let payload: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut peer = raw_peer(port);
    let mut writer = peer.try_clone().unwrap();
    let to_send = payload.clone();
    // Write and read at the same time: the echo comes back while we are still sending.
    let sender = thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(payload.len());
    peer.read_to_end(&mut echoed)
        .expect("the echo, then the server's FIN");
    sender.join().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echo differs from what was sent");
}

/// A peer writes 1 MiB in one write_all() and then neither writes again nor closes: after
/// the burst no FIN or later byte will wake the server. An edge-triggered server that read
/// only part of what was there (its read budget, or a pause for backpressure while the echo
/// piled up) and then waited for a new edge would hang; it must come back by itself.
fn a_megabyte_sent_in_one_burst_is_echoed_whole(mode: &str) {
    let (_server, port) = server(mode, &["--quiet"]);
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut peer = raw_peer(port);
    let mut writer = peer.try_clone().unwrap();
    let to_send = payload.clone();
    // The write may block until the server reads; it is on its own thread so that we can
    // read the echo meanwhile (else both sides' buffers fill and both wait).
    let sender = thread::spawn(move || writer.write_all(&to_send).unwrap());
    let echoed = read_exactly(&mut peer, payload.len());
    sender.join().unwrap();
    assert!(echoed == payload, "the echo differs from what was sent");
}

/// The peer's bytes and its FIN are already queued together when the server first looks at
/// the socket (it was stopped meanwhile). The read that returns the bytes is shorter than
/// the buffer, and the FIN behind them brings no later wake-up: an edge-triggered server
/// that took the short read for "drained" would never read the EOF, and never close.
fn bytes_and_fin_that_arrive_together_are_echoed_then_closed(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    let mut peer = {
        let _paused = Paused::new(server.child.id());
        let mut peer = raw_peer(port);
        peer.write_all(b"last words").unwrap();
        peer.shutdown(Shutdown::Write).unwrap(); // our FIN, right behind the bytes
        peer
    };
    let mut echoed = Vec::new();
    peer.read_to_end(&mut echoed)
        .expect("the echo, then the server's FIN");
    assert_eq!(echoed, b"last words");
    server.expect_conn("eof", 1);
}

fn only_blocking_makes_a_second_client_wait(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    let mut first = client(port, &[]);
    first.write_stdin(b"first\n");
    first.expect("recv");

    let mut second = client(port, &["--send", "second"]);
    second.expect("send");
    if mode == "blocking" {
        // Served only after the first client leaves.
        first.close_stdin();
        assert!(first.wait_exit().success());
        second.expect("recv");
        server.expect_conn("recv", 2);
        let first_closed = server.position("close", Some(1)).unwrap();
        let second_accepted = server.position("accept", Some(2)).unwrap();
        assert!(first_closed < second_accepted, "{}", server.history());
    } else {
        // Served while the first client is still connected.
        second.expect("recv");
        server.expect_conn("send", 2);
        assert_eq!(
            server.position("close", Some(1)),
            None,
            "{}",
            server.history()
        );
        first.close_stdin();
        assert!(first.wait_exit().success());
    }
    assert!(second.wait_exit().success());
}

fn ctrl_c_with_clients_connected_ends_within_a_second_and_clients_see_eof(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    // Idle interactive clients (stdin left open). The blocking server accepts only the
    // first; the others wait in the kernel's queue, connected all the same.
    let mut clients: Vec<Proc> = (0..3).map(|_| client(port, &[])).collect();
    for c in &mut clients {
        c.expect("connect");
    }
    server.expect_conn("accept", 1);
    if mode != "blocking" {
        server.expect_conn("accept", 3);
    }

    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_secs(1),
        "{mode} took {took:?} to stop"
    );
    assert_eq!(server.kinds(None).last().unwrap(), "summary");
    for c in &mut clients {
        c.expect("eof");
        assert!(c.wait_exit().success(), "{}", c.stderr_text());
    }
}

fn crash_after_makes_the_kernel_send_a_fin(mode: &str) {
    let (mut server, port) = server(mode, &["--crash-after", "1"]);
    // The naive client, so the test decides when the second write happens: only after the
    // handler died. (Had it arrived before, the crash would close a socket with unread data,
    // and the kernel would send an RST instead of the FIN.)
    let mut victim = client(port, &["--naive"]);
    victim.write_stdin(b"one\n");
    victim.expect("recv");
    let crash = match mode {
        "threaded" => server.expect_where("exit", |e| e["detail"] == "thread conn-1 panicked"),
        "process" => server.expect_where("exit", |e| e["detail"] == "child exited with status 3"),
        _ => server.expect_where("close", |e| e["detail"] == "handler crashed"),
    };
    assert_eq!(crash["conn"], 1);
    // The write into the FIN'd socket succeeds; the read after it returns 0.
    victim.write_stdin(b"two\n");
    victim.expect("eof");
    victim.close_stdin();
    assert!(victim.wait_exit().success(), "{}", victim.stderr_text());
    assert_eq!(
        victim.kinds(None),
        ["connect", "send", "recv", "send", "eof", "close"]
    );
    // The server goes on serving.
    let mut next = client(port, &["--send", "still there?"]);
    assert!(next.wait_exit().success());
    assert_eq!(next.expect("recv")["data"], "still there?\\n");
}

fn reset_after_sends_an_rst(mode: &str) {
    let (mut server, port) = server(mode, &["--reset-after", "1"]);
    let mut victim = client(port, &["--count", "3"]);
    assert_eq!(victim.wait_exit().code(), Some(1));
    assert_eq!(victim.expect("reset")["errno"], "ECONNRESET");
    server.expect_conn("abort", 1);
}

fn the_seed_flow_ten_messages_then_bye(mode: &str) {
    let (mut server, port) = server(mode, &[]);
    let mut peer = raw_peer(port);
    // The seeds' client: no newline, each message echoed before the next.
    for i in 1..=10 {
        let message = format!("message {i}");
        peer.write_all(message.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut peer, message.len()), message.as_bytes());
    }
    peer.write_all(b"Bye").unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the server's FIN");
    assert!(rest.is_empty(), "Bye must not be echoed: {rest:?}");
    let close = server.expect_conn("close", 1);
    assert!(close["note"].as_str().unwrap().contains("bye word"));
}

/// TCP may deliver a message and the bye word in one read (one write here makes sure of it).
/// The message is still echoed, byte for byte; only the bye word is not, and then the FIN.
fn a_message_merged_with_the_bye_word_is_still_echoed(mode: &str) {
    let (mut server, port) = server(mode, &["--delay", "50"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"two\nBye\n").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut echoed = Vec::new();
    peer.read_to_end(&mut echoed)
        .expect("the echo, then the server's FIN");
    assert_eq!(echoed, b"two\n");
    let close = server.expect_conn("close", 1);
    assert!(close["note"].as_str().unwrap().contains("bye word"));
}

/// Seed 003's server: every message, whatever it held, gets the same fixed answer; the bye
/// word still gets none, only the FIN.
fn reply_answers_every_message_with_the_fixed_text(mode: &str) {
    let reply = "ok, 问题正在处理中...";
    let (mut server, port) = server(mode, &["--reply", reply]);
    let expected = format!("{reply}\n");
    let mut peer = raw_peer(port);
    for question in ["问题一", "a much longer second question"] {
        peer.write_all(question.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut peer, expected.len()), expected.as_bytes());
        let sent = server.expect_conn("send", 1);
        // The event escapes the newline, as it does every control byte.
        let shown = format!("{reply}\\n");
        assert_eq!(sent["data"], shown.as_str(), "{}", server.history());
    }
    peer.write_all(b"Bye").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the server's FIN");
    assert!(rest.is_empty(), "Bye must get no reply: {rest:?}");
    server.expect_conn("close", 1);
}

/// Seed 001's SO_REUSEADDR: the server closes first (the bye word), so its side of the
/// connection stays in TIME_WAIT after it exits. A restart on that port without
/// SO_REUSEADDR fails EADDRINUSE; with it (the default) it listens.
fn time_wait_blocks_a_rebind_only_without_reuseaddr(mode: &str) {
    let (mut first, port) = server(mode, &["--exit-after", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"Bye").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the server's FIN");
    drop(peer); // our FIN: the server's side moves on to TIME_WAIT
    assert!(first.wait_exit().success());

    let port = port.to_string();
    let serve = [&["serve"], &mode_args(mode)[..], &["--port", port.as_str()]].concat();
    let mut refused = Proc::spawn(&[&serve[..], &["--no-reuseaddr"]].concat());
    assert_eq!(refused.wait_exit().code(), Some(1));
    let why = refused.stderr_text();
    assert!(
        why.contains("already in use") && why.contains("TIME_WAIT"),
        "{why}"
    );

    let mut again = Proc::spawn(&serve);
    again.expect("listen");
}

fn a_thousand_resetting_peers_leave_no_descriptor_behind(mode: &str) {
    raise_open_files_limit();
    let (mut server, port) = server(mode, &["--quiet"]);
    let pid = server.child.id();
    // The baseline once the server has served one connection and let it go (the poll
    // server opens its epoll descriptors after the listen event). Its last event comes
    // after the close it reports.
    let mut first = raw_peer(port);
    first.write_all(b"first").unwrap();
    assert_eq!(read_exactly(&mut first, 5), b"first");
    drop(first);
    let last_event = match mode {
        "threaded" | "process" => "exit",
        _ => "close",
    };
    server.expect_conn(last_event, 1);
    let baseline = open_descriptors(pid);
    // In batches, so the blocking server's accept queue never overflows.
    for _ in 0..20 {
        let batch: Vec<TcpStream> = (0..50).map(|_| raw_peer(port)).collect();
        for mut peer in batch {
            peer.write_all(b"x").unwrap();
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer); // RST
        }
    }
    // Still serving.
    let mut probe = raw_peer(port);
    probe.write_all(b"alive?").unwrap();
    assert_eq!(read_exactly(&mut probe, 6), b"alive?");
    drop(probe);
    // Every reset connection's descriptor is closed again (the count is a condition, not
    // an event: check it until it holds, within the bound).
    let deadline = Instant::now() + WAIT;
    loop {
        let now = open_descriptors(pid);
        if now == baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: {now} descriptors open, {baseline} before"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn max_conns_turns_newcomers_away_politely(mode: &str) {
    let (mut server, port) = server(mode, &["--max-conns", "1"]);
    let mut first = client(port, &[]);
    first.write_stdin(b"in\n");
    first.expect("recv");

    let mut second = raw_peer(port);
    let mut answer = String::new();
    second
        .read_to_string(&mut answer)
        .expect("a FIN after the message");
    assert_eq!(answer, "server full\n");
    let limit = server.expect("limit");
    assert_eq!(limit["conn"], 2);
    // The event is the close(): like a `close` event, it shows no state of a closed socket.
    assert!(limit["tcp_state"].is_null(), "{limit}");

    // The first client is still served.
    first.write_stdin(b"still in\n");
    assert_eq!(first.expect("recv")["data"], "still in\\n");
}

fn delay_holds_up_only_its_own_connection(mode: &str) {
    let (mut server, port) = server(mode, &["--delay", "60000"]);
    // The first client's echo is a minute away; it waits, connected.
    let _slow = client(port, &["--send", "slow"]);
    server.expect_conn("recv", 1);
    // Meanwhile a second connection is accepted and read at once.
    let mut fast = raw_peer(port);
    fast.write_all(b"fast").unwrap();
    let recv = server.expect_conn("recv", 2);
    assert_eq!(recv["data"], "fast");
    assert_eq!(server.position("send", Some(1)), None);
}

/// With the open-files limit at 64 and 100 peers connected. The models that hold a descriptor
/// per open connection (threaded, nonblocking, poll) run out: accept() fails EMFILE, which
/// is reported once, and the server backs off instead of spinning (little CPU; nonblocking
/// spins by design, so its CPU is not checked). The blocking server holds one connection at
/// a time and the process parent closes its copy of each socket, so those two never run
/// out. Every model serves again once the peers leave.
fn out_of_descriptors_is_reported_once_survived_and_served_again(mode: &str) {
    let (mut server, port) = server_with_fd_limit(mode, 64, &["--quiet"]);
    let peers: Vec<TcpStream> = (0..100).map(|_| raw_peer(port)).collect();
    let runs_out = matches!(model(mode), "threaded" | "nonblocking" | "select" | "poll");
    if runs_out {
        assert_eq!(server.expect("error")["errno"], "EMFILE");
    } else if mode == "process" {
        server.expect_conn("spawn", 100); // every peer has its child
    } else {
        server.expect_conn("accept", 1); // the first is served; 99 wait in the queue
    }

    // The measurement window, not a synchronisation: out of descriptors (or not) all along.
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    let window = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let used = (cpu_seconds(pid) - before) / window.elapsed().as_secs_f64();
    if mode != "nonblocking" {
        assert!(used < 0.3, "{mode} used {:.0} % of a core", used * 100.0);
    }
    // What the server printed meanwhile has arrived: one report while it lasted, or none.
    while server.next_event(Duration::ZERO).is_some() {}
    let emfiles = server
        .seen
        .iter()
        .filter(|e| e["kind"] == "error" && e["errno"] == "EMFILE")
        .count();
    assert_eq!(emfiles, usize::from(runs_out), "{}", server.history());

    // The peers leave. (The connections still queued are accepted as the others close, so
    // a server may run short once more on the way: a new episode, reported again.)
    drop(peers);
    let mut probe = client(port, &["--send", "served again"]);
    assert!(probe.wait_exit().success(), "{}", probe.stderr_text());
    assert_eq!(probe.expect("recv")["data"], "served again\\n");
}

/// A process-model server killed outright (SIGKILL: no chance to clean up) must not leave
/// orphaned children serving connections nobody watches: the kernel tells each child its
/// parent died (PR_SET_PDEATHSIG), and the child stops like on Ctrl-C, closing with a FIN.
#[test]
fn process_children_end_when_the_parent_is_killed() {
    let (mut server, port) = server("process", &[]);
    let mut peer = raw_peer(port);
    let spawn = server.expect_conn("spawn", 1);
    let child_pid: u32 = spawn["detail"]
        .as_str()
        .and_then(|d| d.strip_prefix("child pid "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("spawn names the child's pid: {spawn}"));
    server.signal(libc::SIGKILL);
    // The child closes the connection: the peer reads EOF (bounded by the read timeout).
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut byte = [0u8; 1];
    let n = peer.read(&mut byte).expect("EOF, not a timeout");
    assert_eq!(n, 0, "the orphaned child should have closed the connection");
    drop(peer);
    let deadline = Instant::now() + WAIT;
    while is_running(child_pid) {
        assert!(
            Instant::now() < deadline,
            "child {child_pid} outlived its parent"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Alive and not a zombie waiting to be reaped.
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}
