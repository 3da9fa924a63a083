//! The scenarios: each one a short function that makes one thing happen and checks it did.
//!
//! A scenario starts real `tcp-lab serve` and `tcp-lab client` processes through the [`Lab`],
//! or drives a raw socket itself where it needs a server that misbehaves precisely (never
//! accepts, never reads). It waits for the events that prove its point, and returns the
//! sentence the demo ends with; an error says what happened instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

use super::{conn, is, port_of, ts, Lab, PortInUse, ProcId, CLIENT, SERVER};
use crate::event::{Event, Kind, Role};
use crate::server::Connection;
use crate::{note, tcp_state};

/// One demo: its name, what it shows (one line), and the function that runs it.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Lab) -> Result<String>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "blocking-backlog",
        about: "client 2 connects (queued by the kernel) but waits its turn",
        run: blocking_backlog,
    },
    Scenario {
        name: "backlog-full",
        about: "a full accept queue: the SYN is dropped, connect() waits",
        run: backlog_full,
    },
    Scenario {
        name: "process-per-client",
        about: "a child process per connection: no one waits",
        run: process_per_client,
    },
    Scenario {
        name: "parent-keeps-fd",
        about: "the parent keeps its copy: no FIN until it lets go",
        run: parent_keeps_fd,
    },
    Scenario {
        name: "thread-per-client",
        about: "a thread per connection: no one waits",
        run: thread_per_client,
    },
    Scenario {
        name: "thread-closes-shared",
        about: "a thread closes the socket it shares: gone for every thread",
        run: thread_closes_shared,
    },
    Scenario {
        name: "nonblocking-spin",
        about: "one thread tries every socket: WouldBlock, a core burned",
        run: nonblocking_spin,
    },
    Scenario {
        name: "poll-many",
        about: "1,000 clients, one thread sleeping in epoll until ready",
        run: poll_many,
    },
    Scenario {
        name: "orderly-close",
        about: "FIN both ways: EOF, CLOSE_WAIT, TIME_WAIT on the closer",
        run: orderly_close,
    },
    Scenario {
        name: "close-listener",
        about: "the listener closed while serving: old clients go on, new refused",
        run: close_listener,
    },
    Scenario {
        name: "time-wait-bind",
        about: "restart after the server closed first: EADDRINUSE unless SO_REUSEADDR",
        run: time_wait_bind,
    },
    Scenario {
        name: "idle-timeout",
        about: "the server closes a silent connection with a FIN",
        run: idle_timeout,
    },
    Scenario {
        name: "crash-fin",
        about: "a handler dies without closing: the kernel sends the FIN",
        run: crash_fin,
    },
    Scenario {
        name: "write-after-fin",
        about: "the seeds' failure: write after FIN, RST, EOF, then EPIPE",
        run: write_after_fin,
    },
    Scenario {
        name: "unread-data-rst",
        about: "close() with unread data sends an RST: ECONNRESET",
        run: unread_data_rst,
    },
    Scenario {
        name: "abort-rst",
        about: "close() with SO_LINGER 0 sends an RST: ECONNRESET",
        run: abort_rst,
    },
    Scenario {
        name: "refused",
        about: "nobody listens: the SYN is answered by an RST, ECONNREFUSED",
        run: refused,
    },
    Scenario {
        name: "half-close",
        about: "shutdown(Write): our FIN goes out, we keep reading",
        run: half_close,
    },
    Scenario {
        name: "multiplexed-client",
        about: "the same crash, seen at once by a client polling both",
        run: multiplexed_client,
    },
    Scenario {
        name: "byte-stream",
        about: "three writes in one read, one write in many: no boundaries",
        run: byte_stream,
    },
    Scenario {
        name: "chat-rooms",
        about: "three users, two rooms, a rename, one leaves by RST: who hears what",
        run: chat_rooms,
    },
    Scenario {
        name: "half-duplex",
        about: "talk in blocking mode: the client's second line waits for the operator",
        run: half_duplex,
    },
    Scenario {
        name: "select-limit",
        about: "1,100 clients on select(): past fd 1023 each is turned away, with the reason",
        run: select_limit,
    },
];

fn on(e: &Value, role: &str, kind: &str, id: u64) -> bool {
    is(e, role, kind) && conn(e) == Some(id)
}

fn from(e: &Value, local: &Value) -> bool {
    e["local"] == *local
}

// ---------------------------------------------------------------- concurrency models

/// Two clients: the first sends, is echoed, and stays connected 1.5 s; the second
/// connects meanwhile. Returns (client 2's connect, its echo, the server's EOF of client 1).
fn two_clients(lab: &mut Lab, mode: &str) -> Result<(Value, Value, Value)> {
    let (_server, port) = lab.serve(&["--mode", mode, "--exit-after", "2"])?;
    lab.client(port, &["--send", "one", "--hold", "1.5"])?;
    let first = lab.wait("client 1 to connect", |e| is(e, CLIENT, "connect"))?;
    lab.wait("the server to echo client 1", |e| on(e, SERVER, "send", 1))?;
    lab.client(port, &["--send", "two"])?;
    let connect = lab.wait("client 2 to connect", |e| {
        is(e, CLIENT, "connect") && !from(e, &first["local"])
    })?;
    let echo = lab.wait("client 2's echo", |e| {
        is(e, CLIENT, "recv") && from(e, &connect["local"])
    })?;
    let left = lab.wait("client 1 to leave (the server reads EOF)", |e| {
        on(e, SERVER, "eof", 1)
    })?;
    Ok((connect, echo, left))
}

fn blocking_backlog(lab: &mut Lab) -> Result<String> {
    let (connect, echo, left) = two_clients(lab, "blocking")?;
    ensure!(
        connect["tcp_state"] == "ESTABLISHED" && ts(&connect) < ts(&left),
        "client 2's connect() should have completed while client 1 was served; it returned at {:.3} s",
        ts(&connect)
    );
    ensure!(
        ts(&echo) > ts(&left),
        "client 2 was echoed at {:.3} s, before client 1 left at {:.3} s: that is not one at a time",
        ts(&echo),
        ts(&left)
    );
    Ok(format!(
        "client 2's connect() returned at {:.3} s (the kernel queued it), but it was served only at {:.3} s, after client 1 left",
        ts(&connect),
        ts(&echo)
    ))
}

fn concurrent(lab: &mut Lab, mode: &str, what: &str) -> Result<String> {
    let (_connect, echo, left) = two_clients(lab, mode)?;
    ensure!(
        ts(&echo) < ts(&left),
        "client 2 was echoed only at {:.3} s, after client 1 left at {:.3} s",
        ts(&echo),
        ts(&left)
    );
    Ok(format!(
        "client 2 was echoed at {:.3} s while client 1 was still connected (it left at {:.3} s): {what}",
        ts(&echo),
        ts(&left)
    ))
}

fn thread_per_client(lab: &mut Lab) -> Result<String> {
    concurrent(lab, "threaded", "each connection has its own thread")
}

fn process_per_client(lab: &mut Lab) -> Result<String> {
    concurrent(lab, "process", "each connection has its own process")
}

fn parent_keeps_fd(lab: &mut Lab) -> Result<String> {
    let (server, port) = lab.serve(&["--mode", "process", "--parent-keeps-fd"])?;
    lab.client(port, &["--send", "hi", "--bye"])?;
    let exit = lab.wait("the child process to exit", |e| on(e, SERVER, "exit", 1))?;
    // The child has closed its copy and is gone. Does the client see a FIN? Give it a second.
    lab.pause(Duration::from_secs(1));
    if lab.seen(|e| is(e, CLIENT, "eof")) {
        bail!("the client read EOF while the parent still held the socket");
    }
    // Ctrl-C: the parent stops, and only now closes the copy it kept.
    let interrupted = lab.now();
    lab.interrupt(server);
    lab.wait("the parent to close its copy", |e| {
        on(e, SERVER, "close", 1) && e["note"] == note::CLOSE_PARENT_COPY
    })?;
    let eof = lab.wait("the client's EOF", |e| is(e, CLIENT, "eof"))?;
    ensure!(
        ts(&eof) >= interrupted,
        "the client read EOF at {:.3} s, before the parent let go",
        ts(&eof)
    );
    Ok(format!(
        "the child exited at {:.3} s, but the client saw the FIN only at {:.3} s, when the parent closed its copy",
        ts(&exit),
        ts(&eof)
    ))
}

/// Seed 000: "threads must not close, fork must". The process model's parent closes its
/// copy; a thread that does the same closes the one descriptor every thread shares. The demo
/// is the server here, with real threads: the main thread accepts, hands the socket to a
/// handler thread, then closes it as a process-model parent would.
fn thread_closes_shared(lab: &mut Lab) -> Result<String> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::sync::mpsc;

    let listener = raw_listener(lab, 128)?;
    let port = listener.local_addr()?.port();
    // Interactive (stdin kept open by the demo): it watches the socket, so a FIN shows at once.
    let client = lab.client(port, &[])?;
    let conn = raw_accept(lab, &listener)?;
    lab.wait("the client's connect", |e| is(e, CLIENT, "connect"))?;
    let fd = conn.stream.as_raw_fd();

    // The handler thread gets the descriptor's number, as a thread in C or Python would.
    let (go, wait_for_go) = mpsc::channel::<()>();
    let handler = std::thread::spawn(move || {
        let _ = wait_for_go.recv();
        // MSG_DONTWAIT: whatever the number now names, this call cannot block.
        let mut buf = [0u8; 64];
        // SAFETY: recv() only writes into `buf`; a closed descriptor is an error, not UB.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        (n, std::io::Error::last_os_error())
    });
    let spawn = conn
        .event(Kind::Spawn)
        .detail("thread handler")
        .note(note::SPAWN_THREAD);
    lab.emit(Role::Server, spawn);

    // The mistake: the main thread closes "its copy", but there is only one.
    let close = conn.event_closed(Kind::Close).detail("in the main thread");
    let Connection {
        stream,
        local,
        peer,
        ..
    } = conn;
    // SAFETY: we own the descriptor; close() it, as the process model's parent does.
    unsafe { libc::close(stream.into_raw_fd()) };
    lab.emit(Role::Server, close.note(note::CLOSE_SHARED_THREAD));
    let _ = go.send(());
    let (n, error) = handler
        .join()
        .map_err(|_| anyhow::anyhow!("the handler thread panicked"))?;
    ensure!(
        n < 0 && error.raw_os_error() == Some(libc::EBADF),
        "the handler's recv() returned {n} ({error}), not EBADF"
    );
    let failed = Event::new(Kind::Error)
        .conn(1)
        .addrs(local, peer)
        .errno(Some("EBADF"))
        .detail("recv() in the handler thread")
        .note(note::EBADF_SHARED_THREAD);
    lab.emit(Role::Server, failed);

    let eof = lab.wait("the client to read the FIN", |e| is(e, CLIENT, "eof"))?;
    lab.expect_exit_code(client, 0)?;
    Ok(format!(
        "the main thread's close() sent the FIN (the client read EOF at {:.3} s) and took the handler's socket with it: its recv() failed EBADF",
        ts(&eof)
    ))
}

// ---------------------------------------------------------------- the listening socket

/// Seed 003 closes its listening socket while its clients are still served.
fn close_listener(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&["--mode", "threaded", "--close-listener-after", "1"])?;
    let first = lab.client(
        port,
        &["--send", "one", "--send", "two", "--interval", "500"],
    )?;
    let closed = lab.wait("the server to close its listening socket", |e| {
        is(e, SERVER, "close") && conn(e).is_none()
    })?;
    lab.wait("the first echo", |e| is(e, CLIENT, "recv"))?;
    let second = lab.client(port, &["--send", "hi"])?;
    let refused = lab.wait("the second client to be refused", |e| {
        is(e, CLIENT, "refused")
    })?;
    lab.expect_exit_code(second, 1)?;
    let echo = lab.wait("the first client's second echo", |e| {
        is(e, CLIENT, "recv") && e["data"] == "two\\n"
    })?;
    lab.expect_exit_code(first, 0)?;
    ensure!(
        ts(&refused) > ts(&closed) && ts(&echo) > ts(&refused),
        "listener closed at {:.3} s, refusal at {:.3} s, echo at {:.3} s: not in that order",
        ts(&closed),
        ts(&refused),
        ts(&echo)
    );
    Ok(format!(
        "the listening socket closed at {:.3} s: a new client was refused (SYN answered by RST) at {:.3} s, and the client already accepted was still echoed at {:.3} s",
        ts(&closed),
        ts(&refused),
        ts(&echo)
    ))
}

// ---------------------------------------------------------------- event loops

fn nonblocking_spin(lab: &mut Lab) -> Result<String> {
    let (server, port) = lab.serve(&["--mode", "nonblocking"])?;
    lab.client(port, &["--send", "hi", "--hold", "1"])?;
    lab.wait("the server's echo", |e| on(e, SERVER, "send", 1))?;
    let start = lab.now();
    lab.wait("the client to leave", |e| on(e, SERVER, "eof", 1))?;
    lab.interrupt(server);
    let summary = lab.wait("the server's summary", |e| is(e, SERVER, "summary"))?;
    let stat = |name: &str| summary["stats"][name].as_u64();
    let (Some(loops), Some(wouldblock), Some(cpu_ms)) =
        (stat("loop_iterations"), stat("wouldblock"), stat("cpu_ms"))
    else {
        bail!("the summary has no loop_iterations, wouldblock or cpu_ms: {summary}");
    };
    let wall_ms = ((ts(&summary) - start) * 1000.0).max(1.0);
    // One connection and one message were all the work there was: nearly every try was
    // wasted. (On a busy machine the loop yields the CPU to others, so it turns less often;
    // the proportion stays.)
    let useful = summary["stats"]["connections"].as_u64().unwrap_or(0)
        + summary["stats"]["messages"].as_u64().unwrap_or(0);
    ensure!(
        wouldblock >= 100 && wouldblock >= 10 * useful,
        "the loop got WouldBlock only {wouldblock} times in {wall_ms:.0} ms, for {useful} accepts and reads that found something"
    );
    Ok(format!(
        "while one client sat idle for a second, the loop went round {loops} times and got WouldBlock {wouldblock} times, for {useful} calls that found something; it used {cpu_ms} ms of CPU in {wall_ms:.0} ms ({:.0}% of a core)",
        cpu_ms as f64 * 100.0 / wall_ms
    ))
}

/// How many clients poll-many opens at once.
pub(super) const MANY: usize = 1000;

fn poll_many(lab: &mut Lab) -> Result<String> {
    let (server, mut clients) = serve_many(lab, "poll", MANY)?;
    for (i, stream) in clients.iter_mut().enumerate() {
        let message = format!("hello from {}\n", i + 1);
        stream.write_all(message.as_bytes())?;
        let event = client_event(stream, Kind::Send).payload(message.as_bytes());
        lab.emit(Role::Client, event.note(note::SEND));
    }
    for stream in clients.iter_mut() {
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).context("an echo did not come back")?;
        let event = client_event(stream, Kind::Recv).payload(&buf[..n]);
        lab.emit(Role::Client, event.note(note::RECV));
    }
    let threads = threads_of(lab.pid(server));
    for stream in clients.drain(..) {
        let event = client_event(&stream, Kind::Close).state(None);
        drop(stream);
        lab.emit(Role::Client, event.note(note::CLOSE_FIRST));
    }
    lab.wait_many("the server to close every connection", MANY, |e| {
        is(e, SERVER, "close")
    })?;
    lab.interrupt(server);
    let summary = lab.wait("the server's summary", |e| is(e, SERVER, "summary"))?;
    ensure!(
        summary["stats"]["connections"] == MANY,
        "the server accepted {} connections, not {MANY}",
        summary["stats"]["connections"]
    );
    let threads = threads.map_or(String::new(), |n| {
        format!(" (its process has {n} threads: the loop, the Ctrl-C handler's, and the one that writes the events to stdout)")
    });
    Ok(format!(
        "{MANY} clients were connected at once and each got its echo from one event-loop thread{threads}"
    ))
}

/// A quiet server in `mode` with `n` clients connected and accepted: the demo's sockets and
/// the server's (which inherits the limit) both need `n` descriptors and some.
fn serve_many(lab: &mut Lab, mode: &str, n: usize) -> Result<(ProcId, Vec<TcpStream>)> {
    raise_fd_limit((n * 2 + 100) as libc::rlim_t)?;
    let (server, port) = lab.serve(&["--mode", mode, "--quiet", "--backlog", "2048"])?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .context("a client could not connect")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        lab.emit(
            Role::Client,
            client_event(&stream, Kind::Connect).note(note::CONNECT),
        );
        clients.push(stream);
    }
    lab.wait_many("the server to accept every client", n, |e| {
        is(e, SERVER, "accept")
    })?;
    Ok((server, clients))
}

/// An event about a socket the demo holds as a client.
fn client_event(stream: &TcpStream, kind: Kind) -> Event {
    Event::new(kind)
        .addrs(stream.local_addr().ok(), stream.peer_addr().ok())
        .state(tcp_state::of(stream))
}

/// Threads of a process, from /proc (Linux); None elsewhere.
fn threads_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Raise this process's soft limit on open descriptors to `want` (within the hard limit).
/// The server is started after, and inherits it.
fn raise_fd_limit(want: libc::rlim_t) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= want {
        return Ok(());
    }
    ensure!(
        limit.rlim_max >= want,
        "this demo needs {want} descriptors but the hard limit is {} (ulimit -Hn)",
        limit.rlim_max
    );
    limit.rlim_cur = want;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}

// ---------------------------------------------------------------- how connections end

fn orderly_close(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&["--mode", "blocking", "--exit-after", "1"])?;
    lab.client(port, &["--send", "hello"])?;
    let close = lab.wait("the client to close", |e| is(e, CLIENT, "close"))?;
    let eof = lab.wait("the server to read EOF", |e| on(e, SERVER, "eof", 1))?;
    ensure!(
        eof["tcp_state"] == "CLOSE_WAIT",
        "after the client's FIN the server's socket was {}, not CLOSE_WAIT",
        eof["tcp_state"]
    );
    lab.wait("the server to close", |e| on(e, SERVER, "close", 1))?;
    // The client's socket is gone from its process; the kernel still has it.
    let local: SocketAddr = addr(&close["local"])?;
    let peer: SocketAddr = addr(&close["peer"])?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut state = tcp_state::in_table(local, peer);
    while state != Some("TIME_WAIT") && Instant::now() < deadline {
        lab.pause(Duration::from_millis(20));
        state = tcp_state::in_table(local, peer);
    }
    let table = Event::new(Kind::Summary)
        .addrs(Some(local), Some(peer))
        .state(state)
        .note(note::TIME_WAIT_TABLE);
    lab.emit(Role::Client, table);
    ensure!(
        state == Some("TIME_WAIT"),
        "after both FINs the client's connection was {} in the kernel's table, not TIME_WAIT",
        state.unwrap_or("gone")
    );
    Ok(format!(
        "the client closed first: the server read EOF (CLOSE_WAIT) and closed too, and the kernel keeps the client's side {local} → {peer} in TIME_WAIT"
    ))
}

/// Seed 001's SO_REUSEADDR: the server closes first (the bye word), so its side ends in
/// TIME_WAIT; a restart on that port fails without SO_REUSEADDR and works with it.
fn time_wait_bind(lab: &mut Lab) -> Result<String> {
    let (first, port) = lab.serve(&["--mode", "blocking", "--exit-after", "1"])?;
    lab.client(port, &["--send", "hello", "--bye"])?;
    let close = lab.wait("the server to close", |e| on(e, SERVER, "close", 1))?;
    lab.wait_exit(first)?;
    let (local, peer) = (addr(&close["local"])?, addr(&close["peer"])?);
    let state = wait_for_state(lab, local, peer, "TIME_WAIT");
    let table = Event::new(Kind::Summary)
        .addrs(Some(local), Some(peer))
        .state(state)
        .note(note::TIME_WAIT_TABLE);
    lab.emit(Role::Server, table);
    ensure!(
        state == Some("TIME_WAIT"),
        "the server's side {local} → {peer} was {}, not TIME_WAIT",
        state.unwrap_or("gone")
    );
    // The restart, on the very port: `serve` binds with the demo's port, so point it there.
    lab.port = port;
    let refused = lab.spawn(&["serve", "--port", &port.to_string(), "--no-reuseaddr"])?;
    lab.expect_exit_code(refused, 1)?;
    let failed = Event::new(Kind::Error)
        .addrs(Some(local), None)
        .errno(Some("EADDRINUSE"))
        .detail("bind() failed (--no-reuseaddr)".to_string())
        .note(note::BIND_TIME_WAIT);
    lab.emit(Role::Server, failed);
    let (second, _) = lab.serve(&["--mode", "blocking"])?;
    lab.interrupt(second);
    lab.wait_exit(second)?;
    Ok(format!(
        "the server closed first, so {local} → {peer} stayed in TIME_WAIT: a restart without SO_REUSEADDR failed EADDRINUSE, the one with it listened on port {port}"
    ))
}

/// Poll the kernel's table (a condition, not an event) until the connection is in `want`.
fn wait_for_state(
    lab: &mut Lab,
    local: SocketAddr,
    peer: SocketAddr,
    want: &str,
) -> Option<&'static str> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut state = tcp_state::in_table(local, peer);
    while state != Some(want) && Instant::now() < deadline {
        lab.pause(Duration::from_millis(20));
        state = tcp_state::in_table(local, peer);
    }
    state
}

fn addr(value: &Value) -> Result<SocketAddr> {
    value
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("not an address: {value}"))
}

fn idle_timeout(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&[
        "--mode",
        "blocking",
        "--idle-timeout",
        "1",
        "--exit-after",
        "1",
    ])?;
    lab.client(port, &["--send", "hi", "--hold", "5"])?;
    let sent = lab.wait("the client's message", |e| is(e, CLIENT, "send"))?;
    let timeout = lab.wait("the server's idle timeout", |e| on(e, SERVER, "timeout", 1))?;
    let eof = lab.wait("the client to read the FIN", |e| is(e, CLIENT, "eof"))?;
    Ok(format!(
        "after {:.1} s of silence the server closed the connection, and the client, still reading, saw the FIN at once ({:.0} ms later)",
        ts(&timeout) - ts(&sent),
        (ts(&eof) - ts(&timeout)).max(0.0) * 1000.0
    ))
}

fn crash_fin(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&[
        "--mode",
        "process",
        "--crash-after",
        "1",
        "--exit-after",
        "1",
    ])?;
    let client = lab.client(port, &["--send", "hello", "--hold", "3"])?;
    let eof = lab.wait("the client to read the FIN", |e| is(e, CLIENT, "eof"))?;
    let exit = lab.wait("the child's exit", |e| on(e, SERVER, "exit", 1))?;
    ensure!(
        exit["detail"] != "child exited with status 0",
        "the child exited normally: {exit}"
    );
    lab.expect_exit_code(client, 0)?;
    Ok(format!(
        "the child died without closing anything ({}); the kernel sent the FIN, and the client's read returned 0 at {:.3} s",
        exit["detail"].as_str().unwrap_or("?"),
        ts(&eof)
    ))
}

/// The blocking server crashes after one message: its FIN reaches the client at once.
fn crashing_server(lab: &mut Lab) -> Result<u16> {
    let (_server, port) = lab.serve(&[
        "--mode",
        "blocking",
        "--crash-after",
        "1",
        "--exit-after",
        "1",
    ])?;
    Ok(port)
}

fn write_after_fin(lab: &mut Lab) -> Result<String> {
    let port = crashing_server(lab)?;
    let client = lab.client(port, &["--naive"])?;
    lab.type_line(client, "first\n")?;
    lab.wait("the echo of `first`", |e| is(e, CLIENT, "recv"))?;
    lab.wait("the server's crash", |e| on(e, SERVER, "close", 1))?;
    // The FIN has arrived; the naive client is blocked reading stdin and cannot know.
    lab.pause(Duration::from_millis(300));
    lab.type_line(client, "second\n")?;
    let sent = lab.wait("the write after the FIN to succeed", |e| {
        is(e, CLIENT, "send") && e["data"] == "second\\n"
    })?;
    let eof = lab.wait("the read to return 0", |e| is(e, CLIENT, "eof"))?;
    // The client's own note speaks of stdin; here it is the demo that types into it.
    lab.renote(|e| is(e, CLIENT, "eof"), note::EOF_NAIVE_DEMO);
    lab.type_line(client, "third\n")?;
    let epipe = lab.wait("the next write to fail EPIPE", |e| {
        is(e, CLIENT, "broken_pipe")
    })?;
    lab.expect_exit_code(client, 1)?;
    Ok(format!(
        "the write after the FIN succeeded ({:.3} s) and was answered by an RST, the read returned 0 ({:.3} s), and the next write failed EPIPE ({:.3} s)",
        ts(&sent),
        ts(&eof),
        ts(&epipe)
    ))
}

fn multiplexed_client(lab: &mut Lab) -> Result<String> {
    let port = crashing_server(lab)?;
    let client = lab.client(port, &[])?;
    lab.type_line(client, "hello\n")?;
    lab.wait("the echo", |e| is(e, CLIENT, "recv"))?;
    let crash = lab.wait("the server's crash", |e| on(e, SERVER, "close", 1))?;
    let eof = lab.wait("the client to notice the FIN by itself", |e| {
        is(e, CLIENT, "eof")
    })?;
    lab.expect_exit_code(client, 0)?;
    Ok(format!(
        "with its stdin still open, the client saw the FIN {:.0} ms after the crash and left",
        (ts(&eof) - ts(&crash)).max(0.0) * 1000.0
    ))
}

fn abort_rst(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&[
        "--mode",
        "blocking",
        "--reset-after",
        "1",
        "--exit-after",
        "1",
    ])?;
    let client = lab.client(port, &["--send", "hello", "--hold", "3"])?;
    lab.wait("the server's abort", |e| on(e, SERVER, "abort", 1))?;
    let reset = lab.wait("the client's read to fail ECONNRESET", |e| {
        is(e, CLIENT, "reset") && e["errno"] == "ECONNRESET"
    })?;
    lab.expect_exit_code(client, 1)?;
    Ok(format!(
        "the server closed with SO_LINGER 0: an RST, no FIN, and the client's read failed ECONNRESET at {:.3} s",
        ts(&reset)
    ))
}

/// A listening socket the demo holds itself (on `--port`), announced with a `listen` event.
fn raw_listener(lab: &mut Lab, backlog: i32) -> Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], lab.port));
    bind(&socket, addr)?;
    socket.listen(backlog)?;
    let listener: TcpListener = socket.into();
    let event = Event::new(Kind::Listen)
        .addrs(listener.local_addr().ok(), None)
        .state(tcp_state::of(&listener))
        .detail(format!("backlog {backlog}"))
        .note(note::LISTEN);
    lab.emit(Role::Server, event);
    Ok(listener)
}

/// bind() for the demo's own sockets: a port in use is said as such ([`PortInUse`]).
fn bind(socket: &Socket, addr: SocketAddr) -> Result<()> {
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PortInUse(addr.port()).into()),
        result => result.with_context(|| format!("cannot bind {addr}")),
    }
}

/// accept() on the demo's own listener, bounded in time: connection #1, announced.
fn raw_accept(lab: &mut Lab, listener: &TcpListener) -> Result<Connection> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let conn = Connection::new(1, stream);
                lab.emit(Role::Server, conn.event(Kind::Accept).note(note::ACCEPT));
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("no client connected within 5 s; instead: {}", lab.story());
                }
                lab.pause(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accept() failed"),
        }
    }
}

fn unread_data_rst(lab: &mut Lab) -> Result<String> {
    let listener = raw_listener(lab, 128)?;
    let port = listener.local_addr()?.port();
    let client = lab.client(port, &["--send", "hello"])?;
    let conn = raw_accept(lab, &listener)?;
    lab.wait("the client's message", |e| is(e, CLIENT, "send"))?;
    // Wait until the bytes sit in our receive buffer, then close without reading them.
    let unread = conn
        .stream
        .peek(&mut [0u8; 64])
        .context("the client's bytes never arrived")?;
    let close = conn
        .event_closed(Kind::Close)
        .detail(format!("{unread} bytes unread"));
    drop(conn);
    lab.emit(Role::Server, close.note(note::CLOSE_UNREAD));
    let reset = lab.wait("the client's read to fail ECONNRESET", |e| {
        is(e, CLIENT, "reset")
    })?;
    lab.expect_exit_code(client, 1)?;
    Ok(format!(
        "the server closed with {unread} bytes unread: the kernel sent an RST, not a FIN, and the client's read failed ECONNRESET at {:.3} s",
        ts(&reset)
    ))
}

fn refused(lab: &mut Lab) -> Result<String> {
    // Hold the port (bound, not listening) so nobody else takes it while the client tries.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], lab.port));
    bind(&socket, addr)?;
    let port = socket
        .local_addr()?
        .as_socket()
        .context("not an IP socket")?
        .port();
    let client = lab.client(port, &["--send", "hello"])?;
    let refused = lab.wait("connect() to fail ECONNREFUSED", |e| {
        is(e, CLIENT, "refused") && e["errno"] == "ECONNREFUSED"
    })?;
    lab.expect_exit_code(client, 1)?;
    Ok(format!(
        "nothing listens on port {port}: the SYN was answered by an RST and connect() failed ECONNREFUSED at {:.3} s",
        ts(&refused)
    ))
}

fn half_close(lab: &mut Lab) -> Result<String> {
    let (_server, port) =
        lab.serve(&["--mode", "blocking", "--delay", "200", "--exit-after", "1"])?;
    lab.client(port, &["--send", "one", "--send", "two", "--half-close"])?;
    let shutdown = lab.wait("the client's shutdown(Write)", |e| {
        is(e, CLIENT, "shutdown")
    })?;
    let echo = lab.wait("an echo after the shutdown", |e| is(e, CLIENT, "recv"))?;
    lab.wait("the server to read EOF", |e| on(e, SERVER, "eof", 1))?;
    let eof = lab.wait("the client to read the server's FIN", |e| {
        is(e, CLIENT, "eof")
    })?;
    ensure!(
        ts(&echo) > ts(&shutdown),
        "the echo came at {:.3} s, before the shutdown at {:.3} s",
        ts(&echo),
        ts(&shutdown)
    );
    Ok(format!(
        "the client sent its FIN at {:.3} s ({}), still read the echo at {:.3} s, and the server's FIN at {:.3} s",
        ts(&shutdown),
        shutdown["tcp_state"].as_str().unwrap_or("?"),
        ts(&echo),
        ts(&eof)
    ))
}

// ---------------------------------------------------------------- what a stream is

/// The size of byte-stream's one large write.
pub(super) const LARGE: usize = 200_000;

fn byte_stream(lab: &mut Lab) -> Result<String> {
    let listener = raw_listener(lab, 128)?;
    let port = listener.local_addr()?.port();
    let three = ["--send", "one", "--send", "two", "--send", "three"];
    lab.client(port, &[&three[..], &["--half-close"]].concat())?;
    // The client writes three times before we accept or read at all: its shutdown proves
    // all three are in our receive buffer (the kernel queued them on the unaccepted socket).
    lab.wait("the client's shutdown(Write)", |e| {
        is(e, CLIENT, "shutdown")
    })?;
    let mut conn = raw_accept(lab, &listener)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = conn.stream.read(&mut buf).context("read() failed")?;
    let recv = conn.event(Kind::Recv).payload(&buf[..n]);
    lab.emit(Role::Server, recv.note(note::RECV));
    ensure!(
        &buf[..n] == b"one\ntwo\nthree\n",
        "one read returned {n} bytes, not the three messages' 14"
    );

    let large: Vec<u8> = b"0123456789".iter().copied().cycle().take(LARGE).collect();
    conn.stream
        .write_all(&large)
        .context("the large write failed")?;
    let send = conn.event(Kind::Send).payload(&large);
    lab.emit(Role::Server, send.note(note::SEND));
    let n = conn.stream.read(&mut buf).context("read() failed")?;
    ensure!(n == 0, "expected the client's FIN, got {n} more bytes");
    lab.emit(Role::Server, conn.event(Kind::Eof).note(note::EOF));
    let close = conn.event_closed(Kind::Close);
    drop(conn);
    lab.emit(Role::Server, close.note(note::CLOSE_AFTER_EOF));

    lab.wait("the client to read the server's FIN", |e| {
        is(e, CLIENT, "eof")
    })?;
    let mut reads = Vec::new();
    while let Some(e) = lab.take_now(|e| is(e, CLIENT, "recv")) {
        reads.push(e["bytes"].as_u64().unwrap_or(0));
    }
    let total: u64 = reads.iter().sum();
    ensure!(
        total == LARGE as u64 && reads.len() > 1,
        "the client read {total} bytes in {} reads",
        reads.len()
    );
    Ok(format!(
        "three writes (4 + 4 + 6 bytes) came out of one read of 14 bytes; one write of {LARGE} bytes came out of {} reads",
        reads.len()
    ))
}

// ---------------------------------------------------------------- the listen queue

/// How many connects backlog-full tries against a backlog of 1.
const KNOCKS: usize = 4;

fn backlog_full(lab: &mut Lab) -> Result<String> {
    // A server that listens with a backlog of 1 and never calls accept().
    let listener = raw_listener(lab, 1)?;
    let addr = listener.local_addr()?;
    let mut queued = 0;
    let mut waiting = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..KNOCKS {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e).context("connect() failed"),
        }
        // On loopback a handshake the kernel completes takes microseconds.
        let started = Instant::now();
        while tcp_state::of(&socket) == Some("SYN_SENT")
            && started.elapsed() < Duration::from_millis(50)
        {
            lab.pause(Duration::from_millis(2));
        }
        if tcp_state::of(&socket) == Some("SYN_SENT") {
            waiting.push(sockets.len());
        } else {
            queued += 1;
            let event = connect_event(&socket, addr).note(note::CONNECT_QUEUED);
            lab.emit(Role::Client, event);
        }
        sockets.push((socket, started));
    }
    // A dropped SYN is sent again after 1 s: look again before that.
    lab.pause(Duration::from_millis(500));
    let mut pending = 0;
    let mut longest: f64 = 0.0;
    for i in waiting {
        let (socket, started) = &sockets[i];
        let event = connect_event(socket, addr);
        if event.tcp_state == Some("SYN_SENT") {
            pending += 1;
            let waited = started.elapsed().as_secs_f64();
            longest = longest.max(waited);
            let event = event
                .errno(Some("EINPROGRESS"))
                .detail(format!("waited {waited:.1} s"))
                .note(note::CONNECT_PENDING);
            lab.emit(Role::Client, event);
        } else {
            lab.emit(Role::Client, event.note(note::CONNECT_QUEUED));
        }
    }
    // With --wire: the dropped SYNs are sent again after 1 s; keep the sockets until then.
    lab.wait_wire(
        "a dropped SYN sent again",
        super::wire_check::syn_sent_again,
    )?;
    ensure!(
        queued >= 1 && pending >= 1,
        "with a backlog of 1, {queued} connects completed and {pending} waited; expected both kinds"
    );
    Ok(format!(
        "with a backlog of 1 and no accept(), the kernel completed and queued {queued} connections; the other {pending} connect() calls were still waiting (SYN_SENT) after {longest:.1} s: their SYNs were dropped"
    ))
}

/// A `connect` event for a socket the demo connected itself, in its state right now.
fn connect_event(socket: &Socket, to: SocketAddr) -> Event {
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    Event::new(Kind::Connect)
        .addrs(local, Some(to))
        .state(tcp_state::of(socket))
}

// ---------------------------------------------------------------- chat and talk (seed 004)

/// A chat user the demo drives itself: a socket, and every line it has heard.
struct ChatUser {
    name: &'static str,
    stream: TcpStream,
    heard: Vec<String>,
    unread: Vec<u8>,
}

impl ChatUser {
    /// Connect and wait for the chat's welcome.
    fn connect(lab: &mut Lab, port: u16, name: &'static str) -> Result<ChatUser> {
        let mut user = ChatUser::open(lab, port, name)?;
        user.hear(lab, "* welcome ")?;
        Ok(user)
    }

    fn open(lab: &mut Lab, port: u16, name: &'static str) -> Result<ChatUser> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connect() failed")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        lab.emit(
            Role::Client,
            client_event(&stream, Kind::Connect).note(note::CONNECT),
        );
        Ok(ChatUser {
            name,
            stream,
            heard: Vec::new(),
            unread: Vec::new(),
        })
    }

    fn say(&mut self, lab: &mut Lab, line: &str) -> Result<()> {
        let bytes = format!("{line}\n");
        self.stream.write_all(bytes.as_bytes())?;
        let event = client_event(&self.stream, Kind::Send).payload(bytes.as_bytes());
        lab.emit(Role::Client, event.note(note::SEND));
        Ok(())
    }

    /// Read until a line starting with `wanted` arrives; every line read is remembered.
    fn hear(&mut self, lab: &mut Lab, wanted: &str) -> Result<String> {
        loop {
            if let Some(end) = self.unread.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.unread.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                self.heard.push(line.clone());
                if line.starts_with(wanted) {
                    return Ok(line);
                }
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).with_context(|| {
                format!(
                    "{} waited for {wanted:?}; heard {:?}",
                    self.name, self.heard
                )
            })?;
            ensure!(
                n > 0,
                "{} was closed while waiting for {wanted:?}",
                self.name
            );
            let event = client_event(&self.stream, Kind::Recv).payload(&buf[..n]);
            lab.emit(Role::Client, event.note(note::RECV));
            self.unread.extend_from_slice(&buf[..n]);
        }
    }

    fn heard_line(&self, line: &str) -> bool {
        self.heard.iter().any(|l| l == line)
    }
}

/// Seed 004's last program: user1 renames itself alice, user3 goes to #rust, alice talks to
/// the lobby, user2 leaves by RST. Checked: each line reached exactly the members of its room.
fn chat_rooms(lab: &mut Lab) -> Result<String> {
    let (_server, port) = lab.serve(&["--app", "chat", "--mode", "poll"])?;
    let mut alice = ChatUser::connect(lab, port, "user1")?;
    let mut bob = ChatUser::connect(lab, port, "user2")?;
    let mut carol = ChatUser::connect(lab, port, "user3")?;
    alice.hear(lab, "* user3 joined #lobby")?;
    bob.hear(lab, "* user3 joined #lobby")?;

    alice.say(lab, "/nick alice")?;
    alice.hear(lab, "* you are now alice")?;
    carol.say(lab, "/join #rust")?;
    carol.hear(lab, "* you are in #rust")?;
    alice.say(lab, "hello, lobby")?;
    bob.hear(lab, "<alice> hello, lobby")?;
    carol.say(lab, "anyone in rust?")?;
    lab.wait("the server to relay carol's line to nobody", |e| {
        is(e, SERVER, "relay") && e["room"] == "rust"
    })?;
    // user2 leaves with an RST (SO_LINGER 0), as a crashing or killed client would.
    socket2::SockRef::from(&bob.stream).set_linger(Some(Duration::ZERO))?;
    let abort = client_event(&bob.stream, Kind::Abort).note(note::ABORT);
    let user2_heard = bob.heard.clone();
    drop(bob);
    lab.emit(Role::Client, abort);
    alice.hear(lab, "* user2 left #lobby (connection reset)")?;
    carol.say(lab, "/who")?;
    carol.hear(lab, "* in #rust:")?;

    ensure!(
        user2_heard.iter().any(|l| l == "<alice> hello, lobby"),
        "user2 (in the lobby) did not get alice's line"
    );
    ensure!(
        !carol
            .heard
            .iter()
            .any(|l| l.contains("hello, lobby") || l.contains("user2 left")),
        "carol (in #rust) heard the lobby: {:?}",
        carol.heard
    );
    ensure!(
        !alice.heard.iter().any(|l| l.contains("anyone in rust")),
        "alice (in the lobby) heard #rust"
    );
    ensure!(
        alice.heard_line("* user1 is now alice") || alice.heard_line("* you are now alice"),
        "no rename"
    );
    Ok(
        "alice's line reached user2 only (the lobby), user3's reached nobody (alone in #rust), \
and the lobby — only the lobby — was told that user2 left by RST (connection reset)"
            .to_string(),
    )
}

/// Seed 004's first program: the client's second line is sent at once, but the blocking
/// server reads it only after its operator has answered the first.
fn half_duplex(lab: &mut Lab) -> Result<String> {
    let (server, port) = lab.serve(&["--app", "talk", "--mode", "blocking"])?;
    let mut client = ChatUser::open(lab, port, "client")?;
    client.say(lab, "hello server")?;
    lab.wait("the server to read the client's line", |e| {
        is(e, SERVER, "recv")
    })?;
    client.say(lab, "are you there?")?;
    let second_sent = lab.now();
    // The operator takes its time to type; the server waits for it, not for the socket.
    lab.pause(Duration::from_millis(600));
    lab.type_line(server, "hello client\n")?;
    let reply = lab.wait("the operator's reply", |e| is(e, SERVER, "send"))?;
    let second = lab.wait("the server to read the second line", |e| {
        is(e, SERVER, "recv")
    })?;
    client.hear(lab, "hello client")?;
    ensure!(
        ts(&second) > ts(&reply),
        "the second line was read at {:.3} s, before the reply at {:.3} s",
        ts(&second),
        ts(&reply)
    );
    lab.type_line(server, "yes\n")?;
    client.hear(lab, "yes")?;
    Ok(format!(
        "the client sent its second line at {second_sent:.3} s, but the server read it only at {:.3} s, \
after its operator's reply ({:.3} s): half-duplex, each side waits for the other",
        ts(&second),
        ts(&reply)
    ))
}

// ---------------------------------------------------------------- select's wall

/// How many clients select-limit opens: more than an fd_set's 1024 bits.
const PAST_THE_WALL: usize = 1100;

/// Seed 001's "at most 1024": the select server's descriptors climb past FD_SETSIZE; each
/// connection that lands there is accepted, told why, and closed; the others are served.
fn select_limit(lab: &mut Lab) -> Result<String> {
    let (server, mut clients) = serve_many(lab, "select", PAST_THE_WALL)?;
    // The clients were accepted in the order they connected, and the last one is surely past
    // the wall: once its `limit` has come, every other `limit` has come before it.
    let last = clients.last().context("no client")?.local_addr()?.port();
    let last_limit = lab.wait("the last client to be turned away", |e| {
        is(e, SERVER, "limit") && port_of(&e["peer"]) == Some(last)
    })?;
    let mut limits = vec![last_limit];
    while let Some(limit) = lab.take_now(|e| is(e, SERVER, "limit")) {
        limits.push(limit);
    }
    let mut turned_away = Vec::new(); // (the client's port, the server's fd)
    for limit in &limits {
        let fd = limit["detail"]
            .as_str()
            .and_then(|d| {
                d.strip_prefix("fd ")?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .context("no descriptor in the limit event")?;
        let peer = port_of(&limit["peer"]).context("no peer in the limit event")?;
        turned_away.push((peer, fd));
    }
    ensure!(
        !turned_away.is_empty(),
        "no connection was turned away: the server's descriptors never reached 1024"
    );
    ensure!(
        turned_away.iter().all(|&(_, fd)| fd >= 1024),
        "a connection below fd 1024 was turned away: {turned_away:?}"
    );

    let mut served = 0;
    for stream in &mut clients {
        let local = stream.local_addr()?.port();
        if let Some(&(_, fd)) = turned_away.iter().find(|(p, _)| *p == local) {
            // The reason, then the server's FIN (it closed right after saying it).
            let mut told = Vec::new();
            stream
                .read_to_end(&mut told)
                .context("the reason did not come")?;
            let event = client_event(stream, Kind::Recv).payload(&told);
            lab.emit(Role::Client, event.note(note::RECV));
            lab.emit(
                Role::Client,
                client_event(stream, Kind::Eof).note(note::EOF),
            );
            let expected = format!("server full: select() cannot watch fd {fd}\n");
            ensure!(
                told == expected.as_bytes(),
                "a client past the wall was told {:?}, not {expected:?}",
                String::from_utf8_lossy(&told)
            );
        } else {
            let message = format!("hello from {local}\n");
            stream.write_all(message.as_bytes())?;
            let event = client_event(stream, Kind::Send).payload(message.as_bytes());
            lab.emit(Role::Client, event.note(note::SEND));
            let mut echo = vec![0u8; message.len()];
            stream
                .read_exact(&mut echo)
                .context("a client below the wall got no echo")?;
            let event = client_event(stream, Kind::Recv).payload(&echo);
            lab.emit(Role::Client, event.note(note::RECV));
            served += 1;
        }
    }
    for stream in clients.drain(..) {
        let event = client_event(&stream, Kind::Close).state(None);
        drop(stream);
        lab.emit(Role::Client, event.note(note::CLOSE_FIRST));
    }
    lab.wait_many("the server to close every served connection", served, |e| {
        is(e, SERVER, "close")
    })?;
    lab.interrupt(server);
    let summary = lab.wait("the server's summary", |e| is(e, SERVER, "summary"))?;
    ensure!(
        summary["stats"]["turned_away"] == turned_away.len(),
        "the summary counts {} turned away, not {}",
        summary["stats"]["turned_away"],
        turned_away.len()
    );
    let lowest = turned_away.iter().map(|t| t.1).min().unwrap_or(0);
    let highest = turned_away.iter().map(|t| t.1).max().unwrap_or(0);
    // Each one closed at once frees its descriptor, so the next one usually gets it again.
    let fds = if lowest == highest {
        format!("each got fd {lowest} (the lowest free one, once 0–1023 were taken)")
    } else {
        format!("got fd {lowest}–{highest}")
    };
    Ok(format!(
        "{served} clients were served by one select() loop; the other {} {fds}, past an \
         fd_set's FD_SETSIZE = 1024 bits, and were accepted, told why, and closed with a FIN",
        turned_away.len()
    ))
}
