//! # The poll server: one thread that sleeps in epoll until a socket is ready
//!
//! Lesson 4's loop with one change: instead of asking every socket again and again, the
//! thread hands its sockets to the kernel once (`epoll_ctl(ADD)`, the *interest list*) and
//! sleeps in `epoll_wait()` until one of them is ready or the nearest deadline (`--delay`,
//! `--idle-timeout`) comes. It then handles only those. The three epoll calls are made here
//! directly (through rustix, a safe function per system call), so `strace -f` shows exactly
//! the calls below (the wait as `epoll_pwait`, its variant with a signal mask), and the
//! summary's `epoll_ctl` count is the same as strace's.
//!
//! What to watch for:
//! - An idle server uses no CPU at all, yet serves every client at once; the summary's
//!   `loop_iterations` counts the wake-ups. Readiness is a promise that the next call will
//!   not block, so `wouldblock` stays near zero.
//! - `--trigger edge|level|oneshot` (default edge) chooses how readiness is asked for. The
//!   loop is the same for all three; they differ in three places only, each marked
//!   `TRIGGER:` below: when interest is registered ([`register_conn`]), when it is changed
//!   again ([`rearm`]), and how far one visit reads ([`serve`]). The summary's `epoll_ctl`
//!   counts what that costs: about one per message for oneshot, one or two per connection
//!   for edge and level.
//! - Backpressure: a peer that sends and never reads gets no more reads from us once
//!   MAX_PENDING bytes wait for it; its TCP window closes and its sender stalls.
//! - Out of descriptors (EMFILE): the listener is left disarmed for EMFILE_BACKOFF.
//!
//! epoll is Linux's; the chat's poll loop and the client use the `polling` crate instead,
//! which is epoll on Linux and kqueue on macOS behind one API.
//!
//! Lessons: `lessons/05-readiness.md`, `lessons/11-event-loop.md`; demo: `tcp-lab demo poll-many`.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};
use rustix::io::Errno;

use super::echo::READ_BUF;
use super::event_loop::ACCEPT_BATCH;
use super::event_loop::{self, End, LoopAccepted, LoopConn, Received, Slots, Step, Timers};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF};
use crate::cli::Trigger;
use crate::event::Kind;
use crate::note;

/// The listener's key in the interest list; connections use 1, 2, … (see [`Slots`]).
const LISTENER: u64 = 0;
/// The key of the eventfd that Ctrl-C writes to, to wake `epoll_wait()`.
const WAKER: u64 = u64::MAX;
/// At most this many ready sockets are taken from one `epoll_wait()`; the rest wait for
/// the next turn (the kernel keeps them on its ready list).
const EVENTS_PER_WAIT: usize = 1024;

/// Edge-triggered only: at most this many reads for one connection in one visit. Reading
/// until the socket is drained would let one peer that floods us keep the loop to itself;
/// after this many reads of up to 64 KiB (1 MiB) the others get their turn, and the
/// connection is visited again on the next turn of the loop. (tokio budgets 128 operations
/// per task: with the 1 KiB buffer of the echo in its README, 128 KiB.)
const READ_BUDGET: usize = 16;

/// What the loop keeps from one turn to the next.
struct Loop<'a> {
    server: &'a Server,
    /// The epoll instance: the kernel's interest list and ready list.
    epoll: OwnedFd,
    conns: Slots,
    timers: Timers,
    /// One read buffer for every connection.
    buf: Vec<u8>,
    /// Edge-triggered connections whose read budget ran out with bytes still waiting.
    again: Vec<usize>,
}

/// Why a connection is visited.
enum Visit {
    /// The kernel reported it ready, with these flags.
    Ready(EventFlags),
    /// Its deadline (`--delay`, `--idle-timeout`) has come.
    Due(Instant),
    /// Its read budget ran out last turn with bytes left (edge-triggered only).
    Again,
}

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // epoll_create1(EPOLL_CLOEXEC): an empty interest list, kept by the kernel.
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    // The listener is oneshot whatever --trigger says: see rearm_listener.
    add(&epoll, listener, LISTENER, listener_interest(), server)?;
    // Ctrl-C arrives on another thread. It writes to an eventfd in our interest list, and
    // that makes epoll_wait() return at once.
    let waker = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    add(&epoll, &*waker, WAKER, EventFlags::IN, server)?;
    let ring = Arc::clone(&waker);
    server.stop.on_request(Box::new(move || {
        let _ = rustix::io::write(&*ring, &1u64.to_ne_bytes());
    }));

    let mut lp = Loop {
        server,
        epoll,
        conns: Slots::default(),
        timers: Timers::default(),
        buf: vec![0u8; READ_BUF],
        again: Vec::new(),
    };
    let mut acceptor = Acceptor::default();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_PER_WAIT);
    let mut listener_paused_until: Option<Instant> = None;
    let mut failure = Ok(());

    while server.keep_accepting() {
        // Sleep until a socket is ready or the nearest deadline; None: until a socket is
        // ready. Work left over from the last turn: do not sleep at all.
        let deadline = match (lp.timers.next(), listener_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match lp.again.is_empty() {
            true => deadline.map(|at| at.saturating_duration_since(Instant::now())),
            false => Some(Duration::ZERO),
        };
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        events.clear();
        server.out.flush(); // everything this turn printed, before we sleep
        match epoll::wait(&lp.epoll, spare_capacity(&mut events), timeout.as_ref()) {
            Ok(_) => {}
            // A signal interrupted the wait; nothing happened to any socket.
            Err(Errno::INTR) => continue,
            Err(e) => {
                failure = Err(e.into()); // epoll itself failed: nothing sensible is left
                break;
            }
        }
        Stats::add(&server.stats.loop_iterations, 1);

        // epoll_wait() may return no event at all (a deadline came).
        for ready in events.iter().copied() {
            let (key, flags) = (ready.data.u64(), ready.flags);
            if key == WAKER {
                continue; // Ctrl-C: the loop's condition sees it
            } else if key != LISTENER {
                lp.visit(key as usize, Visit::Ready(flags));
            } else if lp.accept_some(listener, &mut acceptor) {
                listener_paused_until = Some(Instant::now() + EMFILE_BACKOFF);
            } else if !acceptor.listener_closed() {
                rearm_listener(&lp.epoll, listener, server);
            }
        }

        // Bytes left from the last turn (edge-triggered): no new edge will come for bytes
        // that are already there, so the loop must come back to them by itself.
        let left_over = lp.again.len();
        for i in 0..left_over {
            lp.visit(lp.again[i], Visit::Again);
        }
        lp.again.drain(..left_over);

        // The clock is read only when a deadline is waiting.
        if lp.timers.next().is_none() && listener_paused_until.is_none() {
            continue;
        }
        let now = Instant::now();
        while let Some(key) = lp.timers.pop_due(now, &mut lp.conns) {
            lp.visit(key, Visit::Due(now));
        }
        // The back-off is over: ask for the listener's readiness again.
        if listener_paused_until.is_some_and(|until| now >= until) {
            listener_paused_until = None;
            rearm_listener(&lp.epoll, listener, server);
        }
    }

    // Ctrl-C (or --exit-after): every connection still open gets a FIN.
    for key in lp.conns.keys() {
        lp.close(key, End::Close(note::CLOSE_STOP));
    }
    failure
}

impl Loop<'_> {
    /// Serve one connection, then close it or tell the kernel what it waits for now.
    fn visit(&mut self, key: usize, why: Visit) {
        let (server, buf) = (self.server, &mut self.buf);
        let Some(lc) = self.conns.get_mut(key) else {
            return; // closed earlier in this turn
        };
        let step = match why {
            Visit::Ready(flags) => {
                remember(lc, flags);
                serve(lc, buf, server)
            }
            Visit::Due(now) => lc
                .on_time(now, server)
                .and_then(|()| serve(lc, buf, server)),
            Visit::Again => {
                lc.revisit = false;
                serve(lc, buf, server)
            }
        };
        if let Err(end) = step {
            return self.close(key, end);
        }
        if let Err(e) = rearm(&self.epoll, key, lc, server) {
            super::echo::report_error(&lc.conn, server, "epoll_ctl", &e);
            return self.close(key, End::Dead);
        }
        // Edge-triggered, the read budget ran out with bytes still waiting (level and
        // oneshot never remember `readable`: the kernel reports it again).
        if lc.readable && lc.wants_read() && !lc.revisit {
            lc.revisit = true;
            self.again.push(key);
        }
        self.timers.schedule(key, lc, server);
    }

    /// End a connection. No epoll_ctl(DEL) is needed: close() takes the socket out of the
    /// interest list (a socket leaves epoll when its last descriptor is closed).
    fn close(&mut self, key: usize, end: End) {
        if let Some(lc) = self.conns.remove(key) {
            event_loop::finish(lc, end, self.server);
        }
    }

    /// accept() what is queued (up to ACCEPT_BATCH) and register each connection.
    /// Returns true if the listener must back off (out of descriptors).
    fn accept_some(&mut self, listener: &TcpListener, acceptor: &mut Acceptor) -> bool {
        let server = self.server;
        for _ in 0..ACCEPT_BATCH {
            match event_loop::accept(acceptor, listener, server) {
                LoopAccepted::Conn(lc) => {
                    let key = self.conns.insert(lc);
                    let lc = self.conns.get_mut(key).expect("just inserted");
                    if let Err(e) = register_conn(&self.epoll, key, lc, server) {
                        super::echo::report_error(&lc.conn, server, "epoll_ctl(ADD)", &e);
                        self.close(key, End::Dead);
                        continue;
                    }
                    self.timers.schedule(key, lc, server); // --idle-timeout counts from now
                    if acceptor.listener_close_due(server) {
                        // --close-listener-after / --exit-after: closing it unregisters it.
                        acceptor.close_listener_if_due(listener, server);
                        return false;
                    }
                }
                LoopAccepted::TurnedAway => continue,
                LoopAccepted::Empty => return false,
                // Why not keep the listener armed? Its queue still holds connections, so it
                // stays readable: epoll_wait() would return at once, accept() fail at once,
                // and the loop spin at 100 % CPU until a descriptor frees up. Like nginx, we
                // leave the listener disarmed for a moment instead; the connections wait in
                // the kernel's queue and are accepted once a descriptor is free again.
                LoopAccepted::BackOff => return true,
            }
        }
        false
    }
}

/// Take note of what the kernel reported. An error or a hang-up (EPOLLERR, EPOLLHUP) is
/// both: the next read or write says what happened (ECONNRESET, …).
fn remember(lc: &mut LoopConn, flags: EventFlags) {
    let trouble = flags.intersects(EventFlags::ERR | EventFlags::HUP);
    lc.readable |= trouble || flags.intersects(EventFlags::IN | EventFlags::RDHUP);
    lc.writable |= trouble || flags.contains(EventFlags::OUT);
    lc.peer_closed |= flags.contains(EventFlags::RDHUP);
}

/// Visit a connection: write what is queued if the socket is writable, then read if it is
/// readable and we want to read.
fn serve(lc: &mut LoopConn, buf: &mut [u8], server: &Server) -> Step {
    let trigger = server.config.trigger;
    if lc.writable && lc.wants_write() {
        lc.write(server)?;
        // Output still queued: the kernel's send buffer is full (write returned EAGAIN).
        if lc.wants_write() {
            lc.writable = false;
        }
    }
    // TRIGGER: how far one visit reads.
    // - edge: until the socket is drained, for the kernel will not report these bytes
    //   again (at most READ_BUDGET reads). A read shorter than the buffer took everything
    //   there was, so no read is wasted on an EAGAIN. Unless the kernel also said
    //   EPOLLRDHUP: then the peer's FIN waits behind the bytes, announced once and already,
    //   so we read on, and the next read returns 0.
    // - level and oneshot: one read; if bytes are left, the next wait reports them again.
    let reads = match trigger {
        Trigger::Edge => READ_BUDGET,
        Trigger::Level | Trigger::Oneshot => 1,
    };
    for _ in 0..reads {
        if !(lc.readable && lc.wants_read()) {
            break;
        }
        match lc.read(buf, server)? {
            Received::Bytes(n) if n < buf.len() && !lc.peer_closed => lc.readable = false,
            Received::Bytes(_) | Received::Interrupted => {}
            Received::Drained => lc.readable = false,
        }
    }
    if trigger != Trigger::Edge {
        // Nothing to remember: the kernel says it again at every wait that it is still true.
        lc.readable = false;
        lc.writable = false;
    }
    Ok(())
}

/// A new connection goes into the interest list (epoll_ctl(ADD)).
fn register_conn(
    epoll: &OwnedFd,
    key: usize,
    lc: &mut LoopConn,
    server: &Server,
) -> io::Result<()> {
    let trigger = server.config.trigger;
    // TRIGGER: when interest is registered.
    // - edge: once, for reading *and* writing, for the connection's whole life. The kernel
    //   reports each change (bytes arrived, room freed in the send buffer, the peer's FIN);
    //   nothing is asked again between messages.
    // - level and oneshot: for reading; writing is asked for only while output is queued.
    let want = match trigger {
        Trigger::Edge => (true, true),
        Trigger::Level | Trigger::Oneshot => (true, false),
    };
    add(
        epoll,
        &lc.conn.stream,
        key as u64,
        flags(trigger, want),
        server,
    )?;
    lc.interest = Some(want);
    Ok(())
}

/// Tell the kernel what this connection waits for now, if the trigger needs telling.
fn rearm(epoll: &OwnedFd, key: usize, lc: &mut LoopConn, server: &Server) -> io::Result<()> {
    let want = (lc.wants_read(), lc.wants_write());
    let nothing = (false, false);
    let (trigger, stream) = (server.config.trigger, &lc.conn.stream);
    // TRIGGER: when interest is changed again.
    match trigger {
        // edge: never. What the kernel reported is remembered in lc.readable/lc.writable.
        Trigger::Edge => return Ok(()),
        // level: the kernel reports a ready socket at *every* wait, wanted or not, so the
        // interest must follow what we want: changed only when that changes (we start or
        // stop waiting to write, pause reading for backpressure or --delay). Wanting
        // nothing, the socket leaves the interest list: a hang-up is reported whatever the
        // interest.
        Trigger::Level if lc.interest == Some(want) => return Ok(()),
        Trigger::Level if want == nothing => {
            if lc.interest.take().is_some() {
                count_ctl(server);
                epoll::delete(epoll, stream)?; // epoll_ctl(DEL)
            }
            return Ok(());
        }
        Trigger::Level if lc.interest.is_none() => {
            add(epoll, stream, key as u64, flags(trigger, want), server)?;
        }
        // oneshot: after every event, for the event disarmed the socket. Wanting nothing (a
        // delayed echo), it stays disarmed (not even a hang-up wakes us); its timer re-arms it.
        Trigger::Oneshot if want == nothing => return Ok(()),
        Trigger::Level | Trigger::Oneshot => {
            count_ctl(server);
            let data = EventData::new_u64(key as u64);
            epoll::modify(epoll, stream, data, flags(trigger, want))?; // epoll_ctl(MOD)
        }
    }
    lc.interest = Some(want);
    Ok(())
}

/// Interest in reading and/or writing under `trigger`, as epoll spells it.
fn flags(trigger: Trigger, (read, write): (bool, bool)) -> EventFlags {
    let mut flags = EventFlags::empty();
    if read {
        flags |= EventFlags::IN;
    }
    if write {
        flags |= EventFlags::OUT;
    }
    match trigger {
        // EPOLLRDHUP: the peer's FIN, reported with the bytes before it (see `serve`).
        Trigger::Edge => flags | EventFlags::ET | EventFlags::RDHUP,
        Trigger::Level => flags, // epoll's default
        Trigger::Oneshot => flags | EventFlags::ONESHOT,
    }
}

/// The listener is oneshot whatever `--trigger` says: then leaving it out during an EMFILE
/// back-off is simply not re-arming it, and this costs one epoll_ctl per batch of accepts,
/// never one per message.
fn listener_interest() -> EventFlags {
    EventFlags::IN | EventFlags::ONESHOT
}

/// Re-arm the listener's interest, after a batch of accepts or a back-off.
fn rearm_listener(epoll: &OwnedFd, listener: &TcpListener, server: &Server) {
    count_ctl(server);
    let data = EventData::new_u64(LISTENER);
    if let Err(e) = epoll::modify(epoll, listener, data, listener_interest()) {
        let event = crate::event::Event::new(Kind::Error).detail(format!(
            "cannot watch the listening socket (fd {}): {e}",
            listener.as_raw_fd()
        ));
        server.out.emit(event);
    }
}

/// epoll_ctl(ADD): a socket (or the waker) goes into the interest list, under `key`.
fn add(
    epoll: &OwnedFd,
    socket: impl AsFd,
    key: u64,
    interest: EventFlags,
    server: &Server,
) -> io::Result<()> {
    count_ctl(server);
    epoll::add(epoll, socket, EventData::new_u64(key), interest)?;
    Ok(())
}

/// One more epoll_ctl (ADD, MOD or DEL) for the summary: what the trigger costs.
fn count_ctl(server: &Server) {
    Stats::add(&server.stats.epoll_ctl, 1);
}
