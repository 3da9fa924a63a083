//! Chaos over every mode (issue 12): what a careful tester throws at a server, bounded and on
//! loopback only. One body per scenario, run in each mode by `in_modes!`; every failure
//! message states the figure it measured. docs/reliability.md lists the figures.
//!
//! Counts are the issue's, except where a mode serves connections one by one or starts a
//! process for each: `scaled(mode, n)` divides them for `process` (a re-exec per connection)
//! and, in the scenarios that wait on each connection in turn, for `blocking`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::SockRef;

use common::*;

in_modes!(
    [blocking, threaded, process, nonblocking, select, poll]
    rst_storm_of_2000_abrupt_peers_half_before_accept,
    peers_that_never_read_with_1_mb_queued_each,
    slowloris_peers_are_reaped_by_the_idle_timeout,
    open_files_limit_64_with_200_peers,
    sigterm_with_300_open_connections,
    a_stdout_pipe_nobody_reads,
    five_thousand_sequential_connections,
);

/// The events that end a connection's service, by mode: the thread's or child's `exit`, or
/// the loop's own last word on it.
fn ends(mode: &str, event: &Value) -> bool {
    let kind = event["kind"].as_str().unwrap_or_default();
    match mode {
        "threaded" | "process" => kind == "exit",
        _ => matches!(
            kind,
            "close" | "abort" | "reset" | "timeout" | "limit" | "broken_pipe" | "error"
        ),
    }
}

/// Wait until `n` connections have ended (bounded by WAIT per event).
fn wait_ended(server: &mut Proc, mode: &str, n: usize) {
    let mut ended = HashSet::new();
    for e in &server.seen {
        if ends(mode, e) && e["conn"].is_u64() {
            ended.insert(e["conn"].as_u64().unwrap());
        }
    }
    while ended.len() < n {
        let Some(e) = server.next_event(WAIT) else {
            panic!(
                "only {} of {n} connections ended within {WAIT:?}; last events:\n{}",
                ended.len(),
                tail(server)
            );
        };
        if ends(mode, &e) && e["conn"].is_u64() {
            ended.insert(e["conn"].as_u64().unwrap());
        }
    }
}

fn tail(server: &Proc) -> String {
    let skip = server.seen.len().saturating_sub(15);
    server.seen[skip..]
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(server: &Proc, kind: &str) -> usize {
    server.seen.iter().filter(|e| e["kind"] == kind).count()
}

/// `n` for most modes; fewer where each connection costs a process, or is waited for in turn.
fn scaled(mode: &str, n: usize, process: usize, blocking: usize) -> usize {
    match mode {
        "process" => process,
        "blocking" => blocking,
        _ => n,
    }
}

/// A client is still echoed: the server survived. Returns that connection's number: every
/// connection accepted before it has a smaller one.
fn still_echoes(server: &mut Proc, port: u16) -> u64 {
    let mut peer = raw_peer(port);
    peer.write_all(b"still here").unwrap();
    assert_eq!(read_exactly(&mut peer, 10), b"still here");
    let addr = peer.local_addr().unwrap().to_string();
    let accept = server.expect_where("accept", |e| e["peer"] == addr.as_str());
    accept["conn"].as_u64().unwrap()
}

/// Descriptors of the server (and, in process mode, nothing else: the children are gone).
fn fds(server: &Proc) -> usize {
    open_descriptors(server.child.id())
}

/// The server's descriptors once it is serving: after one connection has come and gone
/// (the listen event comes before the loops open their poller's descriptors).
fn baseline_fds(server: &mut Proc, mode: &str, port: u16) -> usize {
    let first = still_echoes(server, port);
    wait_ended(server, mode, first as usize);
    fds(server)
}

/// SIGINT, then exit 0 with a summary, within a bound. Returns the summary.
fn stop(server: &mut Proc) -> Value {
    let asked = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit_within(Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(status.success(), "exit {status} after SIGINT");
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    server
        .seen
        .iter()
        .rev()
        .find(|e| e["kind"] == "summary")
        .cloned()
        .unwrap_or_else(|| panic!("no summary; last events:\n{}", tail(server)))
}

/// close() with SO_LINGER 0: the peer's abrupt exit, an RST.
fn abort(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// 2,000 peers that connect and reset (SO_LINGER 0): half while the server is stopped, so
/// they are reset in the accept queue, before accept(); half while it runs. The server
/// survives, every connection ends, and no descriptor is left behind.
fn rst_storm_of_2000_abrupt_peers_half_before_accept(mode: &str) {
    raise_open_files_limit();
    let half = scaled(mode, 1000, 150, 1000);
    let (mut server, port) = server(mode, &["--quiet", "--no-explain", "--backlog", "2048"]);
    let baseline = baseline_fds(&mut server, mode, port);
    {
        let _paused = Paused::new(server.child.id());
        for _ in 0..half {
            abort(raw_peer(port));
        }
    }
    for _ in 0..half {
        let peer = raw_peer(port);
        let _ = (&peer).write_all(b"x");
        abort(peer);
    }
    // Some resets reach accept() first (ECONNABORTED: never numbered); every connection
    // that was accepted must end.
    let last = still_echoes(&mut server, port);
    wait_ended(&mut server, mode, last as usize);
    let after = fds(&server);
    let resets = count(&server, "reset");
    assert_eq!(
        after,
        baseline,
        "{after} descriptors open after {} resets, {baseline} before",
        2 * half
    );
    stop(&mut server);
    eprintln!(
        "{mode}: RST storm of {} peers: {} accepted, {resets} reset events, fds {baseline} → {after}",
        2 * half,
        last - 2
    );
}

/// 200 peers each offer 1 MB and never read a byte. The server's memory stays bounded (it
/// stops reading a peer it cannot answer), the others are served (not in blocking mode,
/// which serves one at a time), and SIGTERM still ends it cleanly.
fn peers_that_never_read_with_1_mb_queued_each(mode: &str) {
    raise_open_files_limit();
    let n = scaled(mode, 200, 60, 200);
    let (mut server, port) = server(mode, &["--quiet", "--no-explain", "--backlog", "512"]);
    let rss_before = status_kb(server.child.id(), "VmRSS");
    let mut peers: Vec<(TcpStream, usize)> = (0..n)
        .map(|_| {
            let peer = raw_peer(port);
            peer.set_nonblocking(true).unwrap();
            (peer, 0)
        })
        .collect();
    let chunk = vec![b'z'; 64 * 1024];
    // Offer each peer's 1 MB until the kernel takes no more (every buffer on the way full).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut progress = false;
        for (peer, sent) in peers.iter_mut().filter(|(_, sent)| *sent < 1 << 20) {
            let want = chunk.len().min((1 << 20) - *sent);
            if let Ok(k) = peer.write(&chunk[..want]) {
                *sent += k;
                progress = true;
            }
        }
        if !progress || Instant::now() > deadline {
            break;
        }
        // Let the server move what it can before the next round; progress decides the end.
        thread::sleep(Duration::from_millis(20));
    }
    let queued: usize = peers.iter().map(|(_, sent)| sent).sum();
    if mode != "blocking" {
        still_echoes(&mut server, port);
    }
    let rss = status_kb(server.child.id(), "VmRSS");
    let grew_mb = rss.saturating_sub(rss_before) / 1024;
    assert!(
        grew_mb < 120,
        "RSS grew {grew_mb} MB ({rss_before} → {rss} kB) with {n} peers and {} MB queued",
        queued >> 20
    );
    stop(&mut server);
    eprintln!(
        "{mode}: {n} peers that never read, {} MB queued: RSS +{grew_mb} MB",
        queued >> 20
    );
    drop(peers);
}

/// Peers that send a little and then nothing (slowloris) hold a connection each; with
/// `--idle-timeout 1` every one is reaped, about a second after its last byte, with a FIN
/// (nothing is left unread: the server echoed all it got).
fn slowloris_peers_are_reaped_by_the_idle_timeout(mode: &str) {
    raise_open_files_limit();
    let n = scaled(mode, 50, 20, 3);
    let (mut server, port) = server(mode, &["--idle-timeout", "1", "--no-explain"]);
    let started = Instant::now();
    let start_of_a_request = b"GET / HTTP/1.1\r\nHost: x\r\n";
    let mut peers: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut peer = raw_peer(port);
            peer.write_all(start_of_a_request).unwrap();
            peer
        })
        .collect();
    wait_ended(&mut server, mode, n);
    let took = started.elapsed();
    let timeouts = count(&server, "timeout");
    assert_eq!(timeouts, n, "{timeouts} timeouts for {n} slow peers");
    for peer in &mut peers {
        let (echoed, ended) = read_to_end_or_error(peer);
        assert_eq!(echoed, start_of_a_request, "what a slow peer got back");
        assert!(
            ended.is_ok(),
            "a slow peer's read ended {ended:?}, not with the FIN"
        );
    }
    // Blocking mode reaps them one after another: a second each.
    let bound = Duration::from_secs(if mode == "blocking" { 2 * n as u64 } else { 4 });
    assert!(
        took < bound,
        "{n} slow peers reaped in {took:?}, over {bound:?}"
    );
    stop(&mut server);
    eprintln!("{mode}: {n} slowloris peers reaped in {took:.1?}");
}

/// The server may open 64 descriptors; 200 peers arrive. It reports EMFILE, backs off
/// instead of spinning (under 1 s of CPU in 3 s; nonblocking spins by design), serves
/// again once the peers leave, and its descriptors return to where they were.
fn open_files_limit_64_with_200_peers(mode: &str) {
    raise_open_files_limit();
    let (mut server, port) =
        server_with_fd_limit(mode, 64, &["--quiet", "--no-explain", "--backlog", "512"]);
    let pid = server.child.id();
    let baseline = baseline_fds(&mut server, mode, port);
    let peers: Vec<TcpStream> = (0..200).map(|_| raw_peer(port)).collect();
    if matches!(mode, "threaded" | "nonblocking" | "select" | "poll") {
        server.expect_where("error", |e| e["errno"] == "EMFILE");
    }
    let cpu_before = cpu_seconds(pid);
    let window = Instant::now();
    thread::sleep(Duration::from_secs(3)); // the measurement window itself
    let cpu = cpu_seconds(pid) - cpu_before;
    let elapsed = window.elapsed().as_secs_f64();
    if mode != "nonblocking" {
        assert!(
            cpu < 1.0,
            "{cpu:.2} s of CPU in {elapsed:.1} s at the limit"
        );
    }
    drop(peers);
    let last = still_echoes(&mut server, port);
    wait_ended(&mut server, mode, last as usize);
    let after = fds(&server);
    assert_eq!(
        after, baseline,
        "{after} descriptors after, {baseline} before"
    );
    stop(&mut server);
    eprintln!("{mode}: 64 fds, 200 peers: {cpu:.2} s CPU in {elapsed:.1} s");
}

/// 300 open connections, half of which sent bytes, then SIGTERM. The summary is printed,
/// the exit is 0, and each peer gets what its connection's event says: `close` a FIN (our
/// read: EOF), `abort` an RST (our read: ECONNRESET), the RST its unread bytes demand.
fn sigterm_with_300_open_connections(mode: &str) {
    raise_open_files_limit();
    let n = scaled(mode, 300, 60, 300);
    let (mut server, port) = server(mode, &["--no-explain", "--backlog", "512"]);
    let mut peers: Vec<TcpStream> = (0..n)
        .map(|i| {
            let peer = raw_peer(port);
            if i % 2 == 0 {
                (&peer).write_all(b"hello").unwrap();
            }
            peer
        })
        .collect();
    // Every one accepted (blocking: the first; the rest wait in the queue).
    let accepted = if mode == "blocking" { 1 } else { n };
    while count(&server, "accept") < accepted {
        assert!(server.next_event(WAIT).is_some(), "{}", tail(&server));
    }
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit_within(Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(status.success(), "exit {status}");
    assert!(took < Duration::from_secs(3), "{took:?} to stop");
    assert!(
        count(&server, "summary") == 1,
        "no summary:\n{}",
        tail(&server)
    );

    // Each connection's last event, by the peer's address.
    let said: HashMap<String, String> = server
        .seen
        .iter()
        .filter(|e| e["kind"] == "close" || e["kind"] == "abort")
        .map(|e| {
            let peer = e["peer"].as_str().unwrap_or_default().to_string();
            (peer, e["kind"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let (mut fins, mut rsts) = (0, 0);
    for peer in &mut peers {
        let addr = peer.local_addr().unwrap().to_string();
        let (_, ended) = read_to_end_or_error(peer);
        let kind = said.get(&addr).map(String::as_str).unwrap_or("none");
        match (kind, &ended) {
            ("close", Ok(())) => fins += 1,
            ("abort", Err(e)) if e.kind() == ErrorKind::ConnectionReset => rsts += 1,
            _ => panic!("{addr}: the server said {kind}, the peer's read ended {ended:?}"),
        }
    }
    eprintln!("{mode}: SIGTERM with {n} open: {fins} FIN, {rsts} RST, stopped in {took:.1?}");
}

/// stdout is a pipe nobody reads after the first line: 100 clients are still echoed, SIGINT
/// still stops the server (exit 0), and stderr says how many events were dropped.
fn a_stdout_pipe_nobody_reads(mode: &str) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(BIN)
        .args(["serve", "--mode", mode, "--port", "0", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcp-lab");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut listen = String::new();
    stdout.read_line(&mut listen).unwrap();
    let port = port_of(&serde_json::from_str::<Value>(&listen).unwrap()["local"]);
    let mut stderr = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    for client in 0..100 {
        let mut peer = raw_peer(port);
        for i in 0..30 {
            let message = format!("client {client}, message {i}, nobody reads the log");
            peer.write_all(message.as_bytes()).unwrap();
            assert_eq!(read_exactly(&mut peer, message.len()), message.as_bytes());
        }
    }
    let echoing = started.elapsed();
    let asked = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("still running {:?} after SIGINT", asked.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    };
    let took = asked.elapsed();
    assert!(status.success(), "exit {status} after {took:?}");
    let stderr = stderr.join().unwrap();
    let dropped: u64 = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("tcp-lab: ")?
                .split(" ")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(dropped > 0, "no dropped events reported; stderr: {stderr}");
    assert!(
        took < Duration::from_secs(3),
        "{took:?} to stop after SIGINT"
    );
    eprintln!(
        "{mode}: stdout unread: 3,000 echoes in {echoing:.1?}, stopped in {took:.1?}, {dropped} events dropped"
    );
    drop(stdout);
}

/// 5,000 connections one after another (connect, echo, close): the server's descriptors
/// come back to their count, and its memory to about its size, after the first 500.
fn five_thousand_sequential_connections(mode: &str) {
    let n = scaled(mode, 5000, 1000, 5000);
    let warm = n / 10;
    let (mut server, port) = server(mode, &["--quiet", "--no-explain"]);
    let pid = server.child.id();
    let one = |i: usize| {
        let mut peer = raw_peer(port);
        let message = format!("connection {i}");
        peer.write_all(message.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut peer, message.len()), message.as_bytes());
    };
    (0..warm).for_each(one);
    wait_ended(&mut server, mode, warm);
    let (fds_before, rss_before) = (fds(&server), status_kb(pid, "VmRSS"));
    let started = Instant::now();
    (warm..n).for_each(one);
    wait_ended(&mut server, mode, n);
    let took = started.elapsed();
    let (fds_after, rss_after) = (fds(&server), status_kb(pid, "VmRSS"));
    assert_eq!(
        fds_after, fds_before,
        "descriptors: {fds_before} → {fds_after} over {n} connections"
    );
    let grew = rss_after.saturating_sub(rss_before);
    assert!(
        grew < 4096,
        "RSS {rss_before} → {rss_after} kB over {} connections",
        n - warm
    );
    let summary = stop(&mut server);
    assert_eq!(summary["stats"]["connections"], n, "{summary}");
    assert_eq!(summary["stats"]["finished"], n, "{summary}");
    eprintln!(
        "{mode}: {n} sequential connections, {:.0}/s: fds {fds_before} → {fds_after}, RSS {rss_before} → {rss_after} kB",
        (n - warm) as f64 / took.as_secs_f64()
    );
}
