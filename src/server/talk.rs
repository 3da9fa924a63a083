//! # talk: the server's operator and one client, through the server's own terminal
//!
//! Seed 004's first programs. Whoever runs `tcp-lab serve --app talk` types lines on its
//! stdin; they go to the connected client, and the client's lines show up as `recv` events.
//!
//! - `--mode blocking` is **half-duplex**, exactly as the seed: block in `recv()` until the
//!   client says something, show it, prompt `> ` and block reading the operator's reply,
//!   send it, and only then read the client again. Each side must wait for the other: a
//!   second line from the client sits in the kernel's buffer until the operator answered.
//! - `--mode poll` is **full-duplex**: `poll(2)` watches the socket and stdin together and
//!   the thread handles whichever is ready, so either side types at any time. (poll(2)
//!   itself, not epoll: epoll refuses regular files and /dev/null, and stdin may be either.)
//! - `--mode threaded` is full-duplex too, with threads instead: one reads the socket while
//!   this one reads stdin.
//!
//! The operator's end of input (Ctrl-D) closes the connection with a FIN, and the server
//! stops: there is nobody left to talk. A client that leaves is followed by the next one in
//! the backlog, as in the seed.
//!
//! Lesson: `lessons/12-chat.md`; demo: `tcp-lab demo half-duplex`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use anyhow::Result;

use super::{echo, Acceptor, Connection, Server, Stats, TICK};
use crate::chat::LineFramer;
use crate::cli::Mode;
use crate::event::Kind;
use crate::note;
use crate::outcome::{self, ReadOutcome};

/// Talk needs a model that can wait for the operator: one at a time, or both at once.
pub fn fits(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Blocking | Mode::Poll | Mode::Threaded => Ok(()),
        _ => Err(format!(
            "--app talk runs in --mode blocking (half-duplex, as seed 004), poll or threaded \
(full-duplex): the operator and one client need no {} loop",
            mode.name()
        )),
    }
}

pub fn run(listener: &TcpListener, server: &Arc<Server>) -> Result<()> {
    super::wake_accept_every_tick(listener, server);
    let mut operator = Operator::new();
    let mut acceptor = Acceptor::default();
    while server.keep_accepting() && !operator.gone {
        server.out.flush();
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        // --close-listener-after / --exit-after: no more accepts, so close the listener now.
        acceptor.close_listener_if_due(listener, server);
        server.out.flush();
        match server.config.mode {
            Mode::Blocking => half_duplex(conn, &mut operator, server),
            Mode::Threaded => full_duplex_threads(conn, &mut operator, server),
            _ => full_duplex_poll(conn, &mut operator, server),
        }
        server.finished();
    }
    Ok(())
}

/// Half-duplex: the client's line, then the operator's, then the client's, …
fn half_duplex(conn: Connection, operator: &mut Operator, server: &Server) {
    let _ = conn.stream.set_read_timeout(Some(TICK)); // wake to notice Ctrl-C
    let mut buf = vec![0u8; echo::READ_BUF];
    while !server.stop.requested() {
        // 1. Block until the client says something.
        match read_client(&conn, &mut buf, server) {
            Heard::Data => {}
            Heard::Nothing => continue,
            Heard::Eof => return echo::close(conn, server, note::CLOSE_AFTER_EOF),
            Heard::Dead => return,
        }
        // 2. Only now may the operator answer; the client waits meanwhile.
        eprint!("> ");
        let reply = loop {
            match operator.next_line(server) {
                Some(line) if line.is_empty() => eprint!("> "), // as the seed: ask again
                other => break other,
            }
        };
        let Some(reply) = reply else {
            return operator_left(conn, server);
        };
        if !send_line(&conn, &reply, server) {
            return;
        }
        eprintln!("waiting for the client...");
    }
    echo::close(conn, server, note::CLOSE_STOP);
}

/// Full-duplex in one thread: poll(2) on the socket and stdin, whichever is ready.
fn full_duplex_poll(conn: Connection, operator: &mut Operator, server: &Server) {
    let mut buf = vec![0u8; echo::READ_BUF];
    while !server.stop.requested() {
        server.out.flush();
        let (socket_ready, stdin_ready) = poll_both(conn.stream.as_raw_fd(), operator);
        if socket_ready {
            match read_client(&conn, &mut buf, server) {
                Heard::Eof => return echo::close(conn, server, note::CLOSE_AFTER_EOF),
                Heard::Dead => return,
                Heard::Data | Heard::Nothing => {}
            }
        }
        if stdin_ready {
            if !operator.read_available() {
                return operator_left(conn, server);
            }
            while let Some(line) = operator.pop_line() {
                if !send_line(&conn, &line, server) {
                    return;
                }
            }
        }
    }
    echo::close(conn, server, note::CLOSE_STOP);
}

/// Full-duplex with two threads: one blocks reading the socket, this one reads stdin.
fn full_duplex_threads(conn: Connection, operator: &mut Operator, server: &Arc<Server>) {
    let client_gone = Arc::new(AtomicBool::new(false));
    let reader = match conn.stream.try_clone() {
        Ok(copy) => {
            let copy = Connection::new(conn.id, copy);
            let (gone, server) = (Arc::clone(&client_gone), Arc::clone(server));
            thread::spawn(move || {
                let _ = copy.stream.set_read_timeout(Some(TICK));
                let mut buf = vec![0u8; echo::READ_BUF];
                while !server.stop.requested() && !gone.load(Ordering::SeqCst) {
                    // This thread only reads: the socket is closed by the other one.
                    if let Heard::Eof | Heard::Dead = read_client(&copy, &mut buf, &server) {
                        gone.store(true, Ordering::SeqCst);
                    }
                }
            })
        }
        Err(e) => return echo::report_error(&conn, server, "dup()", &e),
    };
    let mut operator_gone = false;
    while !server.stop.requested() && !client_gone.load(Ordering::SeqCst) {
        if !operator.wait_readable() {
            continue; // a TICK passed: check on the client and Ctrl-C again
        }
        if !operator.read_available() {
            operator_gone = true;
            break;
        }
        while let Some(line) = operator.pop_line() {
            send_line(&conn, &line, server);
        }
    }
    // shutdown(Write), not only close(): the reader thread holds a copy of the socket, so
    // our close() alone would send nothing while it lives. The FIN goes out now; the reader
    // sees the flag within a TICK and drops its copy.
    client_gone.store(true, Ordering::SeqCst);
    let _ = conn.stream.shutdown(Shutdown::Write);
    let _ = reader.join();
    let why = match (operator_gone, server.stop.requested()) {
        (true, _) => note::TALK_OPERATOR_EOF,
        (false, true) => note::CLOSE_STOP,
        (false, false) => note::CLOSE_AFTER_EOF,
    };
    echo::close(conn, server, why);
}

/// What one read() of the client's socket gave.
enum Heard {
    Data,
    /// The TICK passed (or EINTR): nothing yet.
    Nothing,
    /// Its FIN: we answer with ours.
    Eof,
    /// Its RST, or an error (reported): only the descriptor is left.
    Dead,
}

/// read() the client and report what happened; its words are the `recv` event.
fn read_client(conn: &Connection, buf: &mut [u8], server: &Server) -> Heard {
    match outcome::classify_read((&conn.stream).read(buf)) {
        ReadOutcome::Data(n) => {
            Stats::add(&server.stats.messages, 1);
            let event = conn.event(Kind::Recv).payload(&buf[..n]);
            server.out.emit(event.note(note::TALK_RECV));
            Heard::Data
        }
        ReadOutcome::Eof => {
            server.out.emit(conn.event(Kind::Eof).note(note::EOF));
            Heard::Eof
        }
        ReadOutcome::Reset => {
            echo::report_reset(conn, server, "read()");
            Heard::Dead
        }
        ReadOutcome::WouldBlock | ReadOutcome::Interrupted => Heard::Nothing,
        ReadOutcome::Failed(e) => {
            echo::report_error(conn, server, "read()", &e);
            Heard::Dead
        }
    }
}

/// Send the operator's line (plus `\n`). False if the connection died.
fn send_line(conn: &Connection, line: &[u8], server: &Server) -> bool {
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    match (&conn.stream).write_all(&bytes) {
        Ok(()) => {
            Stats::add(&server.stats.bytes_echoed, bytes.len() as u64);
            let event = conn.event(Kind::Send).payload(&bytes);
            server.out.emit(event.note(note::SEND));
            true
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            let event = conn.event(Kind::BrokenPipe).errno(Some("EPIPE"));
            server.out.emit(event.note(note::BROKEN_PIPE));
            false
        }
        Err(e) if outcome::is_reset(&e) => {
            echo::report_reset(conn, server, "write()");
            false
        }
        Err(e) => {
            echo::report_error(conn, server, "write()", &e);
            false
        }
    }
}

/// The operator's end of input: our FIN, and the server stops.
fn operator_left(conn: Connection, server: &Server) {
    echo::close(conn, server, note::TALK_OPERATOR_EOF);
    server.stop.request();
}

/// poll(2) on the socket and, unless it ended, stdin: which are ready (within a TICK).
fn poll_both(socket: RawFd, operator: &Operator) -> (bool, bool) {
    if operator.has_line() {
        return (poll_one(socket, 0), true);
    }
    let mut fds = [
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of two pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int) };
    if n <= 0 {
        return (false, false); // the TICK passed, or EINTR
    }
    let ready =
        |fd: &libc::pollfd| fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    (ready(&fds[0]), ready(&fds[1]))
}

/// poll(2) on one descriptor for up to `millis`.
fn poll_one(fd: RawFd, millis: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, millis) > 0 }
}

/// The operator's stdin, read without std's buffer (a buffer would hide lines from poll),
/// split into lines.
struct Operator {
    stdin: ManuallyDrop<File>,
    framer: LineFramer,
    lines: Vec<Vec<u8>>,
    /// End of input (Ctrl-D): the operator is gone.
    gone: bool,
}

/// The operator's longest line.
const OPERATOR_LINE: usize = 64 * 1024;

impl Operator {
    fn new() -> Operator {
        // SAFETY: descriptor 0 stays open for the whole process; ManuallyDrop never closes it.
        let stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDIN_FILENO) });
        Operator {
            stdin,
            framer: LineFramer::new(OPERATOR_LINE),
            lines: Vec::new(),
            gone: false,
        }
    }

    fn has_line(&self) -> bool {
        !self.lines.is_empty()
    }

    fn pop_line(&mut self) -> Option<Vec<u8>> {
        (!self.lines.is_empty()).then(|| self.lines.remove(0))
    }

    /// Up to a TICK: is there input (or its end) to read?
    fn wait_readable(&self) -> bool {
        self.has_line() || poll_one(libc::STDIN_FILENO, TICK.as_millis() as libc::c_int)
    }

    /// One read() of stdin, its lines kept. False at the end of input.
    fn read_available(&mut self) -> bool {
        if self.has_line() {
            return true;
        }
        let mut buf = [0u8; 4096];
        match self.stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.gone = true;
                false
            }
            Ok(n) => {
                if self.framer.push(&buf[..n], &mut self.lines).is_err() {
                    self.gone = true; // a 64 KiB line on a terminal: not a conversation
                    return false;
                }
                true
            }
        }
    }

    /// Block (a TICK at a time, for Ctrl-C) until the operator typed a whole line; None at
    /// the end of input or on a stop.
    fn next_line(&mut self, server: &Server) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = self.pop_line() {
                return Some(line);
            }
            if server.stop.requested() || self.gone {
                return None;
            }
            if self.wait_readable() && !self.read_available() {
                return None;
            }
        }
    }
}
