//! # What the two single-threaded event loops share
//!
//! The nonblocking and poll servers serve every connection from one thread, so nothing may
//! wait: not a read, not a write, not `--delay`. What the threaded server keeps on a
//! thread's stack between two calls (echo.rs) lives here in a [`LoopConn`]: the output the
//! kernel did not take yet, when a delayed echo is due, how the connection is going to end.
//!
//! The steps make the same calls and print the same events as echo.rs (whose reporting
//! functions they reuse). The models differ only in *when* they call them: the nonblocking
//! loop tries every step on every turn, the poll loop only when the kernel says a socket is
//! ready or a deadline passed.
//!
//! Lessons: `lessons/04-nonblocking.md`, `lessons/05-readiness.md`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::{echo, Accepted, Acceptor, Connection, Server, Stats};
use crate::event::Kind;
use crate::note;
use crate::outcome::{self, ReadOutcome, WriteOutcome};

/// At most this many accept() calls per turn of a loop: a queue of newcomers is taken in
/// one go (not one per turn), yet a flood of them cannot starve the connections already
/// being served.
pub const ACCEPT_BATCH: usize = 128;

/// Above this much unsent output, a connection is not read until it drains (backpressure):
/// a peer that sends and never reads costs us at most this plus one read.
pub const MAX_PENDING: usize = 256 * 1024;

/// A drained output buffer larger than this is given back, so one burst does not keep its
/// memory for the connection's whole life.
const KEEP_CAPACITY: usize = 64 * 1024;

/// How a connection ends. `Err(End)` from a step means: end it now.
#[derive(Debug)]
pub enum End {
    /// close() with this note: the kernel sends our FIN.
    Close(&'static str),
    /// The bye word: close() without echoing this many bytes (its line and what followed).
    Bye(usize),
    /// `--crash-after`: dropped without a word, as a dying handler would.
    Crash,
    /// `--reset-after`: close() with SO_LINGER 0, an RST.
    Abort,
    /// `--idle-timeout`: silent this long.
    Timeout(Duration),
    /// Already dead (RST, EPIPE, an error) and reported: only the descriptor is left.
    Dead,
}

/// The result of a step: go on, or end the connection.
pub type Step = Result<(), End>;

/// What one read() found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// This many bytes (at least one) came, and were echoed or queued.
    Bytes(usize),
    /// Nothing, and nothing lost: a signal interrupted the call. More may be waiting.
    Interrupted,
    /// Nothing left for now: EAGAIN, or the peer's FIN (reported, and the end decided).
    Drained,
}

/// One connection of an event loop, and everything it needs between two turns.
pub struct LoopConn {
    pub conn: Connection,
    /// Bytes to echo; `pending[sent..]` is what the kernel has not taken yet.
    pending: Vec<u8>,
    sent: usize,
    /// The last `held` bytes of `pending` wait for `--delay`, until `due`.
    held: usize,
    due: Option<Instant>,
    /// Messages read so far (`--crash-after`, `--reset-after`).
    messages: u64,
    /// When bytes last moved either way (`--idle-timeout`).
    last_progress: Instant,
    /// How it ends once its output is out (the peer's FIN, the bye word, a failure option).
    ending: Option<End>,
    /// The deadline this connection has in [`Timers`], if any (poll mode).
    scheduled: Option<Instant>,
    /// Poll mode: what the kernel last reported and no call has contradicted since. An
    /// edge-triggered poller reports a change only once, so the loop must remember it;
    /// a read that drains the socket (or a write that fills it) clears it.
    pub readable: bool,
    pub writable: bool,
    /// Poll mode: the interest the poller holds for this socket, (read, write); None: the
    /// socket is not in the poller.
    pub interest: Option<(bool, bool)>,
    /// Poll mode, edge-triggered: the kernel reported EPOLLRDHUP, the peer's FIN. It may
    /// wait behind bytes not read yet, so a short read no longer means "drained".
    pub peer_closed: bool,
    /// Poll mode: already in the loop's list of connections to visit again next turn.
    pub revisit: bool,
}

impl LoopConn {
    fn new(conn: Connection) -> LoopConn {
        LoopConn {
            conn,
            pending: Vec::new(),
            sent: 0,
            held: 0,
            due: None,
            messages: 0,
            last_progress: Instant::now(),
            ending: None,
            scheduled: None,
            readable: false,
            writable: false,
            interest: None,
            peer_closed: false,
            revisit: false,
        }
    }

    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Read only when a read could be answered: not while a delayed echo waits, not after
    /// the end was decided, not while too much output is queued (backpressure).
    pub fn wants_read(&self) -> bool {
        self.ending.is_none() && self.due.is_none() && self.unsent() < MAX_PENDING
    }

    /// Output is queued that `--delay` no longer holds back.
    pub fn wants_write(&self) -> bool {
        self.unsent() > self.held
    }

    /// When this connection next needs the loop although no socket is ready.
    pub fn deadline(&self, server: &Server) -> Option<Instant> {
        let idle = (self.due.is_none())
            .then_some(server.config.idle_timeout)
            .flatten()
            .map(|limit| self.last_progress + limit);
        match (self.due, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One read(): whatever arrived is a message, echoed (or held for `--delay`).
    pub fn read(&mut self, buf: &mut [u8], server: &Server) -> Result<Received, End> {
        let n = match outcome::classify_read((&self.conn.stream).read(buf)) {
            ReadOutcome::Data(n) => n,
            // The peer's FIN: nothing more will come. Echo what is queued, then close.
            ReadOutcome::Eof => {
                server.out.emit(self.conn.event(Kind::Eof).note(note::EOF));
                self.ending = Some(End::Close(note::CLOSE_AFTER_EOF));
                return self.settle().map(|()| Received::Drained);
            }
            ReadOutcome::Reset => {
                echo::report_reset(&self.conn, server, "read()");
                return Err(End::Dead);
            }
            // Nothing there (EAGAIN): the cost of asking. Counted, never printed per call.
            ReadOutcome::WouldBlock => {
                Stats::add(&server.stats.wouldblock, 1);
                return Ok(Received::Drained);
            }
            // A signal interrupted read(); nothing happened to the socket.
            ReadOutcome::Interrupted => return Ok(Received::Interrupted),
            ReadOutcome::Failed(e) => {
                echo::report_error(&self.conn, server, "read()", &e);
                return Err(End::Dead);
            }
        };
        let message = &buf[..n];
        // The clock only when a deadline needs it: read once per message, it costs.
        if server.config.delay.is_some() || server.config.idle_timeout.is_some() {
            self.last_progress = Instant::now();
        }
        self.messages += 1;
        Stats::add(&server.stats.messages, 1);
        if server.out.wants_data() {
            let event = self.conn.event(Kind::Recv).payload(message);
            server.out.emit(event.note(note::RECV));
        }
        // The bye word is not echoed; whatever came before it in the same read still is,
        // and the connection closes once that is out.
        let bye = echo::bye_at(message, &server.config.bye_word);
        if let Some(before) = bye {
            self.ending = Some(End::Bye(n - before));
        }
        let answer = echo::answer(&message[..bye.unwrap_or(n)], &server.config);
        if answer.is_empty() {
            return self.settle().map(|()| Received::Bytes(n));
        }
        if let Some(delay) = server.config.delay {
            // The handler "works" before answering: a timer, not a sleep, so the loop goes
            // on serving everyone else. This connection is not read meanwhile.
            self.queue(answer);
            self.held = answer.len();
            self.due = Some(self.last_progress + delay);
            return Ok(Received::Bytes(n));
        }
        // Straight from the read buffer when nothing is queued before it: no copy.
        let written = match self.pending.is_empty() {
            true => write_some(&self.conn, answer, server)?,
            false => 0,
        };
        self.queue(&answer[written..]);
        self.answered(server).map(|()| Received::Bytes(n))
    }

    /// The socket is writable (or may be): write what is queued, and end if that was all.
    pub fn write(&mut self, server: &Server) -> Step {
        self.flush(server)?;
        self.settle()
    }

    /// Deadlines: a delayed echo that is due, a connection idle for too long.
    pub fn on_time(&mut self, now: Instant, server: &Server) -> Step {
        if self.due.is_some_and(|due| now >= due) {
            self.due = None;
            self.held = 0;
            self.flush(server)?;
            self.answered(server)?;
        }
        let idle_for = now.saturating_duration_since(self.last_progress);
        let limit = server.config.idle_timeout;
        if self.due.is_none() && limit.is_some_and(|limit| idle_for >= limit) {
            return Err(End::Timeout(idle_for));
        }
        Ok(())
    }

    /// A message was echoed (or queued for it): now `--crash-after` and `--reset-after`.
    fn answered(&mut self, server: &Server) -> Step {
        if server.config.crash_after == Some(self.messages) {
            self.ending = Some(End::Crash);
        } else if server.config.reset_after == Some(self.messages) {
            self.ending = Some(End::Abort);
        }
        self.settle()
    }

    /// Once everything is out, a connection whose end was decided ends.
    fn settle(&mut self) -> Step {
        match self.ending.take() {
            Some(end) if self.pending.is_empty() => Err(end),
            ending => {
                self.ending = ending;
                Ok(())
            }
        }
    }

    /// Append to the output queue, first dropping what was already sent so the buffer
    /// never grows beyond what is really unsent.
    fn queue(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.sent > 0 {
            self.pending.drain(..self.sent);
            self.sent = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Write the queue (all but what `--delay` holds) until it is empty or the kernel's
    /// send buffer is full (EAGAIN: write readiness will tell us when to go on).
    fn flush(&mut self, server: &Server) -> Step {
        let end = self.pending.len() - self.held;
        if self.sent < end {
            self.sent += write_some(&self.conn, &self.pending[self.sent..end], server)?;
        }
        if self.sent == self.pending.len() {
            self.pending.clear(); // keeps its capacity for the next message…
            self.sent = 0;
            if self.pending.capacity() > KEEP_CAPACITY {
                self.pending = Vec::new(); // …unless a burst made it large
            }
        }
        Ok(())
    }
}

/// write() until all of `bytes` is taken or the send buffer is full. Returns how much the
/// kernel took; a dead connection is reported and ends.
fn write_some(conn: &Connection, bytes: &[u8], server: &Server) -> Result<usize, End> {
    let mut written = 0;
    while written < bytes.len() {
        match outcome::classify_write((&conn.stream).write(&bytes[written..])) {
            WriteOutcome::Wrote(n) => {
                if server.out.wants_data() {
                    let chunk = &bytes[written..written + n];
                    server
                        .out
                        .emit(conn.event(Kind::Send).payload(chunk).note(note::SEND));
                }
                Stats::add(&server.stats.bytes_echoed, n as u64);
                written += n;
            }
            // The send buffer is full: the rest stays queued.
            WriteOutcome::WouldBlock => {
                Stats::add(&server.stats.wouldblock, 1);
                break;
            }
            WriteOutcome::Interrupted => continue,
            WriteOutcome::BrokenPipe => {
                let event = conn.event(Kind::BrokenPipe).errno(Some("EPIPE"));
                server.out.emit(event.note(note::BROKEN_PIPE));
                return Err(End::Dead);
            }
            WriteOutcome::Reset => {
                echo::report_reset(conn, server, "write()");
                return Err(End::Dead);
            }
            WriteOutcome::Failed(e) => {
                echo::report_error(conn, server, "write()", &e);
                return Err(End::Dead);
            }
        }
    }
    Ok(written)
}

/// A connection's last step: close it the way `end` says, and report it. (close() also
/// takes the socket out of the poll server's epoll interest list.)
pub fn finish(lc: LoopConn, end: End, server: &Server) {
    let conn = lc.conn;
    match end {
        End::Close(why) => echo::close(conn, server, why),
        End::Bye(discarded) => echo::close_after_bye(conn, server, discarded),
        End::Abort => echo::abort(conn, server),
        End::Crash => {
            // close(), without a word: the kernel sends the FIN (RST over unread bytes)
            let event = conn.event_closed(Kind::Close).detail("handler crashed");
            echo::close_reporting(conn, server, event, note::CLOSE_CRASH);
        }
        End::Timeout(idle_for) => echo::time_out(conn, server, idle_for),
        End::Dead => drop(conn),
    }
    server.finished();
}

/// What one accept() gave the loop.
// A LoopConn is moved from here straight into [`Slots`]; boxing it to keep this enum small
// would cost an allocation per connection and buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum LoopAccepted {
    /// A connection to serve, already non-blocking.
    Conn(LoopConn),
    /// Turned away by `--max-conns`; there may be more to accept.
    TurnedAway,
    /// Nothing queued (EAGAIN), or a signal interrupted the call.
    Empty,
    /// Out of descriptors, or another failure: stop accepting for EMFILE_BACKOFF.
    BackOff,
}

/// accept() for a loop: nothing queued is a wasted try (counted), and a new connection is
/// made non-blocking before the loop sees it.
pub fn accept(acceptor: &mut Acceptor, listener: &TcpListener, server: &Server) -> LoopAccepted {
    let conn = match acceptor.accept(listener, server) {
        Accepted::Conn(conn) => conn,
        Accepted::Nothing => {
            Stats::add(&server.stats.wouldblock, 1);
            return LoopAccepted::Empty;
        }
        Accepted::TurnedAway => return LoopAccepted::TurnedAway,
        // No accept() was even tried: nothing to count as a wasted call.
        Accepted::Closed => return LoopAccepted::Empty,
        Accepted::BackOff => return LoopAccepted::BackOff,
    };
    // The accepted socket does not inherit O_NONBLOCK from the listener (on Linux).
    if let Err(e) = conn.stream.set_nonblocking(true) {
        echo::report_error(&conn, server, "fcntl(O_NONBLOCK)", &e);
        return LoopAccepted::Empty; // dropped: closed
    }
    server.opened(&conn);
    LoopAccepted::Conn(LoopConn::new(conn))
}

/// Connections by poller key (1, 2, …; 0 is the listener), reusing the keys of closed ones.
#[derive(Default)]
pub struct Slots {
    slots: Vec<Option<LoopConn>>,
    free: Vec<usize>,
}

impl Slots {
    pub fn insert(&mut self, lc: LoopConn) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(lc);
                i + 1
            }
            None => {
                self.slots.push(Some(lc));
                self.slots.len()
            }
        }
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut LoopConn> {
        self.slots.get_mut(key.checked_sub(1)?)?.as_mut()
    }

    pub fn remove(&mut self, key: usize) -> Option<LoopConn> {
        let lc = self.slots.get_mut(key.checked_sub(1)?)?.take()?;
        self.free.push(key - 1);
        Some(lc)
    }

    pub fn keys(&self) -> Vec<usize> {
        (1..=self.slots.len())
            .filter(|&k| self.slots[k - 1].is_some())
            .collect()
    }
}

/// Deadlines of the poll loop, nearest first: the wait's timeout is the nearest one. An
/// entry is (deadline, key, connection number); one that no longer matches is skipped.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    /// Make sure the connection's next deadline is in the heap. An idle deadline only moves
    /// later, so the entry already there is kept and checked again when it comes.
    pub fn schedule(&mut self, key: usize, lc: &mut LoopConn, server: &Server) {
        let Some(at) = lc.deadline(server) else {
            return;
        };
        if lc.scheduled.is_none_or(|s| at < s) {
            lc.scheduled = Some(at);
            self.heap.push(Reverse((at, key, lc.conn.id)));
        }
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The key of a connection whose scheduled deadline has passed, if any.
    pub fn pop_due(&mut self, now: Instant, slots: &mut Slots) -> Option<usize> {
        while let Some(&Reverse((at, key, id))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(lc) = slots.get_mut(key) {
                if lc.conn.id == id && lc.scheduled == Some(at) {
                    lc.scheduled = None;
                    return Some(key);
                }
            }
        }
        None
    }
}
