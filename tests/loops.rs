//! The single-threaded event loops (`nonblocking`, `select`, `poll`): what only they must get right.
//! Nothing may wait in one thread, so descriptors running out, a peer that floods and never
//! reads, idle peers and `--delay` are all handled by the loop itself, without sleeping,
//! spinning or growing memory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

in_modes!(
    [nonblocking, select, poll, poll_level, poll_oneshot]
    a_peer_that_floods_and_never_reads_leaves_memory_bounded,
    an_idle_connection_times_out_with_a_fin,
    delay_is_a_timer_so_delayed_echoes_overlap,
    the_summary_shows_the_cost_of_the_loop,
);

/// A peer sends 200 MiB and never reads its echo. The server queues at most MAX_PENDING for
/// it, then stops reading from it (backpressure): its memory stays small, the flooder's
/// write stalls, and another client is still served.
fn a_peer_that_floods_and_never_reads_leaves_memory_bounded(mode: &str) {
    const FLOOD: u64 = 200 * 1024 * 1024;
    const RSS_LIMIT_KB: u64 = 64 * 1024;
    let (mut server, port) = server(mode, &["--quiet"]);
    let pid = server.child.id();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (written, done) = (Arc::clone(&written), Arc::clone(&done));
        let mut peer = raw_peer(port);
        thread::spawn(move || {
            let chunk = vec![b'x'; 1024 * 1024];
            while written.load(Ordering::Relaxed) < FLOOD {
                // Blocks once the buffers are full; fails once the server is killed.
                if peer.write_all(&chunk).is_err() {
                    break;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
        })
    };

    // Until the flooder has made no progress for a second (the buffers are full and the
    // server stopped reading), the server's memory is sampled and must stay bounded.
    let deadline = Instant::now() + WAIT;
    let mut last = (0, Instant::now());
    let mut peak_kb = 0;
    loop {
        peak_kb = peak_kb.max(status_kb(pid, "VmRSS"));
        assert!(
            peak_kb < RSS_LIMIT_KB,
            "{mode}: VmRSS {peak_kb} kB under a flood"
        );
        let now_written = written.load(Ordering::Relaxed);
        assert!(
            !done.load(Ordering::Relaxed),
            "the flood was never held back ({now_written} bytes)"
        );
        if now_written != last.0 {
            last = (now_written, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(Instant::now() < deadline, "{mode}: the flood never stalled");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(written.load(Ordering::Relaxed) < FLOOD);

    // Someone else is served meanwhile.
    let mut other = raw_peer(port);
    other.write_all(b"me too").unwrap();
    assert_eq!(read_exactly(&mut other, 6), b"me too");
    let rss = status_kb(pid, "VmRSS");
    assert!(rss < RSS_LIMIT_KB, "{mode}: VmRSS {rss} kB under a flood");

    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    flooder.join().unwrap();
}

fn an_idle_connection_times_out_with_a_fin(mode: &str) {
    let (mut server, port) = server(mode, &["--idle-timeout", "1"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"hello").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"hello");
    let spoke = Instant::now();
    // Then silence: after a second the server closes, and we read its FIN.
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the server's FIN");
    let waited = spoke.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    let timeout = server.expect_conn("timeout", 1);
    assert!(timeout["detail"].as_str().unwrap().starts_with("idle 1."));

    // So does one that never said anything.
    let mut silent = raw_peer(port);
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).expect("the server's FIN");
    server.expect_conn("timeout", 2);

    // A connection that keeps talking is not closed.
    let mut talker = raw_peer(port);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        talker.write_all(b"ping").unwrap();
        assert_eq!(read_exactly(&mut talker, 4), b"ping");
        thread::sleep(Duration::from_millis(100)); // the pace of the talk, not a synchronisation
    }
    assert_eq!(
        server.position("timeout", Some(3)),
        None,
        "{}",
        server.history()
    );
}

/// Six peers ask at once and each echo is 600 ms away. A loop that slept would answer them
/// one after the other (3.6 s); with a timer per connection they are all answered after
/// about 600 ms.
fn delay_is_a_timer_so_delayed_echoes_overlap(mode: &str) {
    let delay = Duration::from_millis(600);
    let (_server, port) = server(mode, &["--delay", "600", "--quiet"]);
    let mut peers: Vec<TcpStream> = (0..6).map(|_| raw_peer(port)).collect();
    let started = Instant::now();
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.write_all(format!("peer {i}").as_bytes()).unwrap();
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        assert_eq!(read_exactly(peer, 6), format!("peer {i}").as_bytes());
    }
    let took = started.elapsed();
    assert!(took >= delay, "echoed after {took:?}, before the delay");
    assert!(took < delay * 4, "{mode}: six delayed echoes took {took:?}");
}

/// Idle for a moment, then stopped: the summary reports the loop's turns, its wasted tries
/// and its CPU time. The nonblocking loop turns constantly; the poll loop barely wakes up.
fn the_summary_shows_the_cost_of_the_loop(mode: &str) {
    let (mut server, _port) = server(mode, &[]);
    thread::sleep(Duration::from_secs(1)); // idle: the measured period
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    let summary = server.expect("summary");
    let stat = |name: &str| {
        summary["stats"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {summary}"))
    };
    let (turns, wasted, _cpu_ms) = (stat("loop_iterations"), stat("wouldblock"), stat("cpu_ms"));
    if mode == "nonblocking" {
        // Alone on a core it turns hundreds of thousands of times a second; on a loaded
        // machine it yields its core at every turn, and still turns far more than poll.
        assert!(turns > 50 && wasted >= turns, "{summary}");
    } else {
        assert!(turns < 20 && wasted < 20, "{summary}");
    }
}

in_modes!(
    [poll, poll_level, poll_oneshot]
    poll_a_reset_during_a_delay_does_not_wake_the_loop,
);

/// A peer resets its connection while its echo is delayed. The poll loop has nothing to wait
/// for on that socket meanwhile (oneshot leaves it disarmed, level takes it out of the
/// poller, edge hears the RST once): the hang-up must not wake the loop again and again
/// until the timer fires.
fn poll_a_reset_during_a_delay_does_not_wake_the_loop(mode: &str) {
    let (mut server, port) = server(mode, &["--delay", "1000"]);
    let mut peer = raw_peer(port);
    peer.write_all(b"x").unwrap();
    server.expect_conn("recv", 1);
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer); // RST
                // When the delay is over, the echo finds the connection dead.
    let deadline = Instant::now() + WAIT;
    let end = loop {
        let event = server.next_event(WAIT).expect("an event");
        if event["conn"] == 1
            && ["reset", "broken_pipe", "error"].contains(&event["kind"].as_str().unwrap())
        {
            break event;
        }
        assert!(Instant::now() < deadline, "{}", server.history());
    };
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    let summary = server.expect("summary");
    let turns = summary["stats"]["loop_iterations"].as_u64().unwrap();
    assert!(
        turns < 50,
        "{turns} wake-ups around one delayed echo; {end}"
    );
}

/// The nonblocking loop never prints a line per failed call (there are hundreds of thousands
/// a second), but a `wouldblock` event counts them, about once a second.
#[test]
fn nonblocking_counts_its_wasted_tries_in_aggregated_events() {
    let (mut server, port) = server("nonblocking", &[]);
    let _idle = raw_peer(port);
    server.expect_conn("accept", 1);
    let first = server.expect("wouldblock");
    let second = server.expect("wouldblock");
    for event in [&first, &second] {
        let stats = &event["stats"];
        let (turns, wasted) = (
            stats["turns"].as_u64().unwrap(),
            stats["wasted"].as_u64().unwrap(),
        );
        assert!(turns > 0 && wasted >= turns, "{event}");
    }
    assert_eq!(second["stats"]["open"], 1, "{second}");
    let gap = second["ts"].as_f64().unwrap() - first["ts"].as_f64().unwrap();
    assert!(gap >= 0.9, "wouldblock events {gap:.2} s apart");
}

/// The FD_SETSIZE wall: with the open-files limit raised (the server inherits the test's),
/// the server's descriptors pass 1023. The connection that lands there is accepted, told
/// why, and closed (event `limit`); the connections below it are still echoed.
#[test]
fn select_turns_away_a_descriptor_past_fd_setsize_and_serves_the_rest() {
    raise_open_files_limit(); // before the spawn: the server inherits it
    let (mut server, port) = server("select", &["--quiet"]);
    let mut peers: Vec<TcpStream> = (0..1030).map(|_| raw_peer(port)).collect();
    let limit = server.expect("limit");
    let n = limit["conn"].as_u64().expect("a connection number") as usize;
    assert!(
        limit["note"].as_str().unwrap().contains("FD_SETSIZE"),
        "{limit}"
    );
    let fd: u64 = limit["detail"].as_str().unwrap()[3..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(fd >= 1024, "{limit}");
    let mut last = peers.remove(n - 1);
    peers.truncate(n - 1); // the ones served
    let mut told = Vec::new();
    last.read_to_end(&mut told).unwrap(); // the message, then the FIN
    assert_eq!(
        told,
        format!("server full: select() cannot watch fd {fd}\n").as_bytes()
    );
    let first = peers.first_mut().unwrap();
    first.write_all(b"still here").unwrap();
    assert_eq!(read_exactly(first, 10), b"still here");
    let last_served = peers.last_mut().unwrap();
    last_served.write_all(b"me too").unwrap();
    assert_eq!(read_exactly(last_served, 6), b"me too");
}
