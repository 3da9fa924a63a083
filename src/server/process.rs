//! # The process server: a child process per connection
//!
//! The parent only accepts. For each connection it starts a child process — tcp-lab itself,
//! re-executed as `tcp-lab serve-child` — that inherits the accepted socket as a descriptor
//! and runs the same echo steps as the blocking server.
//!
//! Why re-exec and not fork()? C and Python servers fork(): the child is a copy of the parent
//! (copy-on-write) and already holds the socket. In a Rust program other threads may exist
//! (our Ctrl-C handler is one), and fork() copies only the calling thread, so the child could
//! inherit a lock held by a thread that no longer exists. Starting a fresh program with the
//! socket passed along is the safe way; the lesson is the same.
//!
//! What to watch for:
//! - The parent closes its copy of the socket right after the spawn. The connection stays
//!   open while *any* process holds a descriptor for it, so if the parent kept its copy the
//!   client would never see the FIN when the child closes. `--parent-keeps-fd` makes that
//!   mistake on purpose (demo: `tcp-lab demo parent-keeps-fd`).
//! - `--crash-after N` makes the child exit abruptly; the kernel closes its descriptors and
//!   sends the FIN (an RST if the peer's bytes were left unread), and the parent reports the
//!   child's exit status. Only the child can see its unread bytes (FIONREAD), so it looks as
//!   it dies and says how many in its report; the parent's `exit` then names FIN or RST.
//! - A child counts its messages in its own memory, which the parent cannot see. So every
//!   child inherits one more descriptor, the write end of one pipe shared by all, and writes
//!   its counts there as it ends (one short line: one atomic write); the parent reads them
//!   as it reaps its children, and the summary adds them up.
//!
//! Lesson: `lessons/02-processes.md`; demo: `tcp-lab demo process-per-client`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::echo::{self, Ending};
use super::{Acceptor, Config, Connection, Server, Stats, Stop};
use crate::cli::{Mode, ServeChildArgs};
use crate::event::{Event, Kind, Output, Role, EPOCH_ENV};
use crate::note;

/// The child's exit status after `--crash-after`: anything but 0, so the parent can tell.
pub const CRASH_STATUS: i32 = 3;

/// How long the parent waits for its `spawn` event to reach stdout before letting the child
/// start (a stdout nobody reads must not hold up every connection).
const SPAWN_EVENT_WAIT: Duration = Duration::from_millis(200);

/// How long the parent waits for its children to finish after Ctrl-C before killing them.
const CHILD_GRACE: Duration = Duration::from_millis(700);

/// A running child and the connection it serves.
struct Worker {
    conn: u64,
    child: Child,
    /// `--parent-keeps-fd`: the parent kept its copy of this child's socket.
    parent_holds_copy: bool,
}

/// The pipe through which children report their counts: both ends stay with the parent for
/// the whole run (two descriptors, however many children), the write end to be inherited.
pub struct Reports {
    read: File,
    write: OwnedFd,
    /// For each child that crashed (`--crash-after`): the bytes it found unread in its socket
    /// as it died, which decide FIN or RST. Only the child can look (FIONREAD on its socket).
    crashes: RefCell<HashMap<u64, usize>>,
}

/// The parent: accept, spawn a child for the connection, close our copy, reap children.
/// `reports`: the pipe for the children's counts (made before the listen event).
pub fn run(
    listener: &TcpListener,
    server: &Arc<Server>,
    parent_keeps_fd: bool,
    reports: Option<Result<Reports>>,
) {
    super::wake_accept_every_tick(listener, server);
    let mut workers: Vec<Worker> = Vec::new();
    let reports = match reports.transpose() {
        Ok(reports) => reports,
        Err(e) => {
            // Serving goes on; only the summary's message counts will be missing.
            server
                .out
                .emit(Event::new(Kind::Error).detail(format!("{e:#}")));
            None
        }
    };
    let report_fd = reports.as_ref().map(|r| r.write.as_raw_fd());
    // Only with --parent-keeps-fd: the copies the parent "forgot" to close.
    let mut kept: Vec<Connection> = Vec::new();
    let mut acceptor = Acceptor::default();

    while server.keep_accepting() {
        reap_exited(&mut workers, server, reports.as_ref());
        // accept(): sleeps until a connection is queued, or for one TICK (then Ctrl-C?).
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        // --close-listener-after / --exit-after: no more accepts, so close the listener now.
        acceptor.close_listener_if_due(listener, server);
        match spawn_child(&conn, server, report_fd) {
            Ok(child) => workers.push(Worker {
                conn: conn.id,
                child,
                parent_holds_copy: parent_keeps_fd,
            }),
            Err(e) => {
                let event = conn.event(Kind::Error).detail(format!("{e:#}"));
                server.out.emit(event);
                server.finished();
            }
        }
        if parent_keeps_fd {
            kept.push(conn); // the mistake: the connection now outlives the child
        } else {
            drop(conn); // the parent's copy is closed; the child's is the only one left
        }
    }
    stop_children(&mut workers, server, reports.as_ref());
    release_kept(kept, server);
}

/// Re-execute tcp-lab as `serve-child`, handing it the accepted socket and the write end of
/// the report pipe.
fn spawn_child(conn: &Connection, server: &Server, report_fd: Option<RawFd>) -> Result<Child> {
    let fd = conn.stream.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find the tcp-lab executable")?;
    let mut command = Command::new(exe);
    command
        .arg("serve-child")
        .args(["--fd", &fd.to_string(), "--conn", &conn.id.to_string()]);
    if let Some(report_fd) = report_fd {
        command.args(["--report-fd", &report_fd.to_string()]);
    }
    command
        // The child gets the same options the parent was given (they follow `serve`).
        .args(std::env::args_os().skip(2))
        // One clock for the whole event stream, parent and children alike.
        .env(EPOCH_ENV, server.out.epoch_ns().to_string());
    // std opens every descriptor close-on-exec, so no child inherits sockets by accident.
    // For this socket (and the report pipe) we want the opposite: clear FD_CLOEXEC in the
    // child, between fork and exec, so the new program finds them at the same numbers.
    let parent = std::process::id();
    // SAFETY: fcntl, sigprocmask, prctl and getppid are async-signal-safe, as code between
    // fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            clear_close_on_exec(fd)?;
            if let Some(report_fd) = report_fd {
                clear_close_on_exec(report_fd)?;
            }
            super::block_stop_signals()?; // until the child's own handler is installed
            die_with_parent(parent)
        });
    }
    // The child's stdin is a pipe from us: it waits for its end (EOF) before it serves, so
    // our `spawn` event is printed before anything the child prints (both write to one stdout).
    command.stdin(Stdio::piped());
    let mut child = command.spawn().context("cannot start a child process")?;
    server.out.emit(
        conn.event(Kind::Spawn)
            .detail(format!("child pid {}", child.id()))
            .note(note::SPAWN_PROCESS),
    );
    // Written out before the go-ahead (unless stdout is stuck: then events are shed anyway).
    server.out.flush_and_wait(SPAWN_EVENT_WAIT);
    drop(child.stdin.take()); // the go-ahead: the child reads EOF
    Ok(child)
}

/// pipe(), then close-on-exec and non-blocking. Close-on-exec like every descriptor std
/// opens, so nothing inherits it by accident (spawn_child lets its child have the write end);
/// non-blocking, so the parent reads only what is there, and a child never waits on a full
/// pipe (its counts would be lost, not the child; the parent drains the pipe every turn of its
/// loop). Plain pipe() and fcntl(), not Linux's pipe2(), so the code stays portable; no other
/// thread of ours starts processes meanwhile.
pub fn report_pipe() -> Result<Reports> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we pass; fcntl only sets flags on
    // the descriptors it just made.
    let made = unsafe {
        libc::pipe(fds.as_mut_ptr()) == 0
            && fds.iter().all(|&fd| {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
                    && libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) == 0
            })
    };
    if !made {
        return Err(std::io::Error::last_os_error()).context("cannot create the report pipe");
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        Reports {
            read: File::from_raw_fd(fds[0]),
            write: OwnedFd::from_raw_fd(fds[1]),
            crashes: RefCell::default(),
        }
    })
}

/// Add up every report the children have written so far. Each is one line written at once,
/// shorter than PIPE_BUF, so lines from different children never mix. A crashed child's line
/// also says how many bytes it left unread (`conn=N unread=K`), kept for its `exit` event.
fn collect_reports(reports: Option<&Reports>, server: &Server) {
    let Some(reports) = reports else { return };
    let mut text = Vec::new();
    // Non-blocking: read until the pipe is empty (WouldBlock) or an error.
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = (&reports.read).read(&mut buf) {
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    for line in text.lines() {
        let (mut conn, mut unread) = (None, None);
        for (name, value) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            let counter = match name {
                "messages" => &server.stats.messages,
                "bytes_echoed" => &server.stats.bytes_echoed,
                "resets" => &server.stats.resets,
                "conn" => {
                    conn = value.parse::<u64>().ok();
                    continue;
                }
                "unread" => {
                    unread = value.parse::<usize>().ok();
                    continue;
                }
                _ => continue,
            };
            Stats::add(counter, value.parse().unwrap_or(0));
        }
        if let (Some(conn), Some(unread)) = (conn, unread) {
            reports.crashes.borrow_mut().insert(conn, unread);
        }
    }
}

/// The child's side: its counts, in one write, as it ends; after a crash, also its connection
/// and the bytes left unread in its socket (`crash`).
fn send_report(report_fd: Option<RawFd>, server: &Server, crash: Option<(u64, usize)>) {
    let Some(fd) = report_fd else { return };
    // SAFETY: the parent passed this descriptor for this process to own and close.
    let mut pipe = unsafe { File::from_raw_fd(fd) };
    let stats = &server.stats;
    let mut line = format!(
        "messages={} bytes_echoed={} resets={}",
        Stats::get(&stats.messages),
        Stats::get(&stats.bytes_echoed),
        Stats::get(&stats.resets)
    );
    if let Some((conn, unread)) = crash {
        line += &format!(" conn={conn} unread={unread}");
    }
    line.push('\n');
    // One write() of fewer than PIPE_BUF bytes: atomic, never mixed with another child's.
    let _ = pipe.write(line.as_bytes());
}

fn clear_close_on_exec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// If the parent is killed (kill -9, a test that gives up), its children must not live on
/// as orphans serving connections nobody watches: on Linux, ask the kernel to send us
/// SIGTERM when the parent dies, which stops the child the same way Ctrl-C does.
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The parent may have died before the line above: then we were already re-parented.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(std::io::Error::other(
            "the parent server has already exited",
        ));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_parent: u32) -> std::io::Result<()> {
    Ok(())
}

/// waitpid() without blocking: report every child that has exited (its counts first).
fn reap_exited(workers: &mut Vec<Worker>, server: &Server, reports: Option<&Reports>) {
    collect_reports(reports, server);
    let mut i = 0;
    while i < workers.len() {
        match workers[i].child.try_wait() {
            Ok(Some(status)) => {
                let worker = workers.swap_remove(i);
                // Exited: its report is in the pipe now.
                collect_reports(reports, server);
                report_exit(&worker, status, server, reports);
            }
            Ok(None) => i += 1,
            Err(e) => {
                let worker = workers.swap_remove(i);
                let detail = format!("cannot wait for the child: {e}");
                server
                    .out
                    .emit(Event::new(Kind::Error).conn(worker.conn).detail(detail));
                server.finished();
            }
        }
    }
}

/// The child's `exit`. After a crash the child's report says whether it left bytes unread:
/// then the note says exactly FIN or RST; without a report (killed, or no pipe) it cannot.
/// With `--parent-keeps-fd` the child's death sends nothing at all: our copy is still open.
fn report_exit(worker: &Worker, status: ExitStatus, server: &Server, reports: Option<&Reports>) {
    let conn = worker.conn;
    let unread = reports.and_then(|r| r.crashes.borrow_mut().remove(&conn));
    let crash_note = match unread {
        _ if worker.parent_holds_copy => note::EXIT_PROCESS_CRASH_SHARED,
        Some(0) => note::EXIT_PROCESS_CRASH_FIN,
        Some(_) => note::EXIT_PROCESS_CRASH_UNREAD,
        None => note::EXIT_PROCESS_CRASH,
    };
    let (detail, why) = match (status.code(), status.signal()) {
        (Some(0), _) => ("child exited with status 0".to_string(), note::EXIT_PROCESS),
        (Some(code), _) => (format!("child exited with status {code}"), crash_note),
        (None, Some(signal)) => (format!("child killed by signal {signal}"), crash_note),
        (None, None) => ("child ended".to_string(), note::EXIT_PROCESS),
    };
    let event = Event::new(Kind::Exit).conn(conn).detail(detail);
    let event = match unread {
        Some(n) if n > 0 => event.unread(n),
        _ => event,
    };
    server.out.emit(event.note(why));
    server.finished();
}

/// Stopping: ask every child to stop (SIGTERM: it closes its connection with a FIN), give
/// them a moment, then make sure none is left behind.
fn stop_children(workers: &mut Vec<Worker>, server: &Server, reports: Option<&Reports>) {
    if server.stop.requested() {
        for worker in workers.iter() {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe { libc::kill(worker.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + CHILD_GRACE;
    while !workers.is_empty() && (Instant::now() < deadline || !server.stop.requested()) {
        reap_exited(workers, server, reports);
        std::thread::sleep(Duration::from_millis(10));
    }
    for mut worker in workers.drain(..) {
        let _ = worker.child.kill();
        if let Ok(status) = worker.child.wait() {
            report_exit(&worker, status, server, reports);
        }
    }
    // The last reports, before the summary.
    collect_reports(reports, server);
}

/// `--parent-keeps-fd`: only now, as the server stops, does the last copy close.
fn release_kept(kept: Vec<Connection>, server: &Server) {
    for conn in kept {
        echo::close(conn, server, note::CLOSE_PARENT_COPY);
    }
}

/// The child: `tcp-lab serve-child --fd N --conn N …`. It serves the one connection it
/// inherited and exits.
pub fn run_child(args: &ServeChildArgs) -> Result<()> {
    let stream = inherited_socket(args.fd)?;
    let serve = &args.serve;
    let config = Config {
        copy_held_elsewhere: serve.parent_keeps_fd,
        ..Config::from_args(serve)
    };
    let server = Server {
        config,
        out: Output::new(Role::Server, Some(Mode::Process.name()), &serve.output)
            .quiet(serve.quiet)
            .shedding(),
        stop: Stop::default(),
        stats: Stats::default(),
    };
    let server = Arc::new(server);
    // The parent announces the stop; the child just obeys it (SIGTERM from the parent, or
    // SIGINT from the terminal, which signals the whole process group).
    super::install_stop_handler(&server, false)?;
    // After the handler: a stop that comes while we wait is then obeyed, not fatal.
    wait_for_the_parents_spawn_event();
    let conn = Connection::new(args.conn, stream);
    match echo::serve(conn, &server) {
        Ending::Finished => {
            send_report(args.report_fd, &server, None);
            // Within the parent's CHILD_GRACE, even when stdout is not read.
            server.out.finish(CHILD_GRACE / 2);
            Ok(())
        }
        Ending::Crashed(still_open) => {
            server.out.finish(CHILD_GRACE / 2);
            // The last look before dying: bytes still unread make the kernel's close an
            // RST, not a FIN. Only we can see them; the parent learns the count from us.
            // (With --parent-keeps-fd the parent's copy keeps the connection open: our death
            // sends nothing, so there is no FIN or RST to decide.)
            let crash =
                (!server.config.copy_held_elsewhere).then(|| (still_open.id, still_open.unread()));
            send_report(args.report_fd, &server, crash);
            // Exit without closing anything: the kernel closes our descriptors and sends
            // the FIN (the RST), exactly as when a real server process dies.
            std::process::exit(CRASH_STATUS);
        }
    }
}

/// Our stdin is a pipe from the parent, which closes it once it has printed our `spawn`
/// event: read it to its end, so none of our events can be printed before that one. (If the
/// parent dies first, its end closes too: EOF all the same.)
fn wait_for_the_parents_spawn_event() {
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        match std::io::Read::read(&mut stdin, &mut byte) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return, // no stdin to wait on: nothing to order against
        }
    }
}

/// Take ownership of the socket the parent passed at descriptor `fd`.
fn inherited_socket(fd: RawFd) -> Result<TcpStream> {
    // fstat() checks the descriptor is open before we claim it.
    // SAFETY: fstat only writes into the struct we give it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3 || unsafe { libc::fstat(fd, &mut st) } != 0 {
        bail!("serve-child: descriptor {fd} is not open (serve-child is started by `tcp-lab serve --mode process`)");
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("serve-child: descriptor {fd} is not a socket");
    }
    // SAFETY: the descriptor is open, is a socket, and was passed to this process to own.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}
