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
//!   sends the FIN, and the parent reports the child's exit status.
//!
//! Lesson: `lessons/02-processes.md`; demo: `tcp-lab demo process-per-client`.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
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

/// How long the parent waits for its children to finish after Ctrl-C before killing them.
const CHILD_GRACE: Duration = Duration::from_millis(700);

/// A running child and the connection it serves.
struct Worker {
    conn: u64,
    child: Child,
}

/// The parent: accept, spawn a child for the connection, close our copy, reap children.
pub fn run(listener: &TcpListener, server: &Arc<Server>, parent_keeps_fd: bool) {
    super::wake_accept_every_tick(listener, server);
    let mut workers: Vec<Worker> = Vec::new();
    // Only with --parent-keeps-fd: the copies the parent "forgot" to close.
    let mut kept: Vec<Connection> = Vec::new();
    let mut acceptor = Acceptor::default();

    while server.keep_accepting() {
        reap_exited(&mut workers, server);
        // accept(): sleeps until a connection is queued, or for one TICK (then Ctrl-C?).
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        match spawn_child(&conn, server) {
            Ok(child) => workers.push(Worker {
                conn: conn.id,
                child,
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
    stop_children(&mut workers, server);
    release_kept(kept, server);
}

/// Re-execute tcp-lab as `serve-child`, handing it the accepted socket.
fn spawn_child(conn: &Connection, server: &Server) -> Result<Child> {
    let fd = conn.stream.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find the tcp-lab executable")?;
    let mut command = Command::new(exe);
    command
        .arg("serve-child")
        .args(["--fd", &fd.to_string(), "--conn", &conn.id.to_string()])
        // The child gets the same options the parent was given (they follow `serve`).
        .args(std::env::args_os().skip(2))
        // One clock for the whole event stream, parent and children alike.
        .env(EPOCH_ENV, server.out.epoch_ns().to_string());
    // std opens every descriptor close-on-exec, so no child inherits sockets by accident.
    // For this one socket we want the opposite: clear FD_CLOEXEC in the child, between
    // fork and exec, so the new program finds the socket at the same number.
    let parent = std::process::id();
    // SAFETY: fcntl, prctl and getppid are async-signal-safe, as code between fork and exec
    // must be.
    unsafe {
        command.pre_exec(move || {
            clear_close_on_exec(fd)?;
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
    server.out.flush();
    drop(child.stdin.take()); // the go-ahead: the child reads EOF
    Ok(child)
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

/// waitpid() without blocking: report every child that has exited.
fn reap_exited(workers: &mut Vec<Worker>, server: &Server) {
    let mut i = 0;
    while i < workers.len() {
        match workers[i].child.try_wait() {
            Ok(Some(status)) => {
                let worker = workers.swap_remove(i);
                report_exit(worker.conn, status, server);
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

fn report_exit(conn: u64, status: ExitStatus, server: &Server) {
    let (detail, why) = match (status.code(), status.signal()) {
        (Some(0), _) => ("child exited with status 0".to_string(), note::EXIT_PROCESS),
        (Some(code), _) => (
            format!("child exited with status {code}"),
            note::EXIT_PROCESS_CRASH,
        ),
        (None, Some(signal)) => (
            format!("child killed by signal {signal}"),
            note::EXIT_PROCESS_CRASH,
        ),
        (None, None) => ("child ended".to_string(), note::EXIT_PROCESS),
    };
    server
        .out
        .emit(Event::new(Kind::Exit).conn(conn).detail(detail).note(why));
    server.finished();
}

/// Stopping: ask every child to stop (SIGTERM: it closes its connection with a FIN), give
/// them a moment, then make sure none is left behind.
fn stop_children(workers: &mut Vec<Worker>, server: &Server) {
    if server.stop.requested() {
        for worker in workers.iter() {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe { libc::kill(worker.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + CHILD_GRACE;
    while !workers.is_empty() && (Instant::now() < deadline || !server.stop.requested()) {
        reap_exited(workers, server);
        std::thread::sleep(Duration::from_millis(10));
    }
    for mut worker in workers.drain(..) {
        let _ = worker.child.kill();
        if let Ok(status) = worker.child.wait() {
            report_exit(worker.conn, status, server);
        }
    }
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
    wait_for_the_parents_spawn_event();
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
    let conn = Connection::new(args.conn, stream);
    let ending = echo::serve(conn, &server);
    // Within the parent's CHILD_GRACE, even when stdout is not read.
    server.out.finish(CHILD_GRACE / 2);
    match ending {
        Ending::Finished => Ok(()),
        Ending::Crashed(_still_open) => {
            // Exit without closing anything: the kernel closes our descriptors and sends
            // the FIN, exactly as when a real server process dies.
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
