//! # The poll server: one thread that sleeps until a socket is ready
//!
//! Lesson 4's loop with one change: instead of asking every socket again and again, the
//! thread registers its sockets with the kernel's readiness API (epoll on Linux, kqueue on
//! macOS, through the `polling` crate) and sleeps in `wait()` until one of them is ready or
//! the nearest deadline (`--delay`, `--idle-timeout`) comes. It then handles only those.
//!
//! What to watch for:
//! - An idle server uses no CPU at all, yet serves every client at once; the summary's
//!   `loop_iterations` counts the wake-ups. Readiness is a promise that the next call will
//!   not block, so `wouldblock` stays near zero with level and oneshot; edge-triggered
//!   reads until EAGAIN, so there it counts the reads that drained a socket.
//! - `--trigger edge|level|oneshot` (default edge) chooses how readiness is asked for. The
//!   loop is the same for all three; they differ in three places only, each marked
//!   `TRIGGER:` below: when interest is registered ([`register_conn`]), when it is changed
//!   again ([`rearm`]), and how far one visit reads ([`serve`]). The summary's `epoll_ctl`
//!   counts what that costs: about one per message for oneshot, a few per connection for
//!   edge and level.
//! - Backpressure: a peer that sends and never reads gets no more reads from us once
//!   MAX_PENDING bytes wait for it; its TCP window closes and its sender stalls.
//! - Out of descriptors (EMFILE): the listener is left out of the poller for EMFILE_BACKOFF.
//!
//! Lessons: `lessons/05-readiness.md`, `lessons/11-event-loop.md`; demo: `tcp-lab demo poll-many`.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};

use super::echo::READ_BUF;
use super::event_loop::{self, End, LoopAccepted, LoopConn, Slots, Step, Timers, ACCEPT_BATCH};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF};
use crate::cli::Trigger;
use crate::event::Kind;
use crate::note;

/// The listener's key in the poller; connections use 1, 2, … (see [`Slots`]).
const LISTENER: usize = 0;

/// Edge-triggered only: at most this many reads for one connection in one visit. Reading
/// until EAGAIN would let one peer that floods us keep the loop to itself; after this many
/// reads of up to 64 KiB (1 MiB) the others get their turn, and the connection is visited
/// again on the next turn of the loop. (tokio budgets 128 operations per task; its textbook
/// echo reads 4 KiB at a time, so 512 KiB.)
const READ_BUDGET: usize = 16;

/// What the loop keeps from one turn to the next.
struct Loop<'a> {
    server: &'a Server,
    poller: Arc<Poller>,
    conns: Slots,
    timers: Timers,
    /// One read buffer for every connection.
    buf: Vec<u8>,
    /// Edge-triggered connections whose read budget ran out with bytes still waiting.
    again: Vec<usize>,
}

/// Why a connection is visited.
enum Visit {
    /// The kernel reported it ready.
    Ready(Event),
    /// Its deadline (`--delay`, `--idle-timeout`) has come.
    Due(Instant),
    /// Its read budget ran out last turn with bytes left (edge-triggered only).
    Again,
}

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Arc::new(Poller::new()?);
    register(
        &poller,
        listener,
        LISTENER,
        (true, false),
        PollMode::Oneshot,
        server,
    )?;
    // Ctrl-C arrives on another thread; notify() makes our wait() return at once.
    let waker = Arc::clone(&poller);
    server.stop.on_request(Box::new(move || {
        let _ = waker.notify();
    }));

    let mut lp = Loop {
        server,
        poller,
        conns: Slots::default(),
        timers: Timers::default(),
        buf: vec![0u8; READ_BUF],
        again: Vec::new(),
    };
    let mut acceptor = Acceptor::default();
    let mut events = Events::new();
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
        events.clear();
        server.out.flush(); // everything this turn printed, before we sleep
        if let Err(e) = lp.poller.wait(&mut events, timeout) {
            failure = Err(e); // epoll itself failed: nothing sensible is left to do
            break;
        }
        Stats::add(&server.stats.loop_iterations, 1);

        // wait() may return no event at all (notify(), a deadline, or spuriously).
        for ready in events.iter() {
            if ready.key != LISTENER {
                lp.visit(ready.key, Visit::Ready(ready));
            } else if lp.accept_some(listener, &mut acceptor) {
                listener_paused_until = Some(Instant::now() + EMFILE_BACKOFF);
            } else if !acceptor.listener_closed() {
                rearm_listener(&lp.poller, listener, server);
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
            rearm_listener(&lp.poller, listener, server);
        }
    }

    // Ctrl-C (or --exit-after): every connection still open gets a FIN.
    for key in lp.conns.keys() {
        lp.close(key, End::Close(note::CLOSE_STOP));
    }
    if !acceptor.listener_closed() {
        count_ctl(server);
        let _ = lp.poller.delete(listener);
    }
    failure
}

impl Loop<'_> {
    /// Serve one connection, then close it or tell the poller what it waits for now.
    fn visit(&mut self, key: usize, why: Visit) {
        let (server, buf) = (self.server, &mut self.buf);
        let Some(lc) = self.conns.get_mut(key) else {
            return; // closed earlier in this turn
        };
        let step = match why {
            Visit::Ready(ready) => {
                // Remember what the kernel said: an edge is reported once, not again.
                lc.readable |= ready.readable;
                lc.writable |= ready.writable;
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
        if let Err(e) = rearm(&self.poller, key, lc, server) {
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

    /// Take it out of the poller *before* the socket is closed, then end it.
    fn close(&mut self, key: usize, end: End) {
        if let Some(lc) = self.conns.remove(key) {
            if lc.interest.is_some() {
                count_ctl(self.server);
                let _ = self.poller.delete(&lc.conn.stream);
            }
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
                    if let Err(e) = register_conn(&self.poller, key, lc, server) {
                        super::echo::report_error(&lc.conn, server, "epoll_ctl(ADD)", &e);
                        let lc = self.conns.remove(key).expect("just inserted");
                        event_loop::finish(lc, End::Dead, server);
                        continue;
                    }
                    self.timers.schedule(key, lc, server); // --idle-timeout counts from now
                                                           // --close-listener-after / --exit-after: out of the poller, then close it.
                    if acceptor.listener_close_due(server) {
                        count_ctl(server);
                        let _ = self.poller.delete(listener);
                        acceptor.close_listener_if_due(listener, server);
                        return false;
                    }
                }
                LoopAccepted::TurnedAway => continue,
                LoopAccepted::Empty => return false,
                // Why not keep the listener in the poller? Its queue still holds
                // connections, so it stays readable: wait() would return at once, accept()
                // fail at once, and the loop spin at 100 % CPU until a descriptor frees up.
                // Like nginx, we take the listener out of the poller for a moment instead;
                // the connections wait in the kernel's queue and are accepted once a
                // descriptor is free again.
                LoopAccepted::BackOff => return true,
            }
        }
        false
    }
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
    //   again: until read() says EAGAIN (or returns 0, the FIN), at most READ_BUDGET reads.
    //   (tokio stops earlier, at a read shorter than its buffer, sparing the call that only
    //   says EAGAIN. It can, because it also hears EPOLLRDHUP, the peer's FIN, which the
    //   `polling` crate does not pass on: a FIN that came in right behind the last bytes
    //   makes that last read short too, and no later edge will ever announce it.)
    // - level and oneshot: one read; if bytes are left, the next wait() reports them again.
    let reads = match trigger {
        Trigger::Edge => READ_BUDGET,
        Trigger::Level | Trigger::Oneshot => 1,
    };
    for _ in 0..reads {
        if !(lc.readable && lc.wants_read()) {
            break;
        }
        let more = lc.read(buf, server)?;
        if !more {
            lc.readable = false;
        }
    }
    if trigger != Trigger::Edge {
        // Nothing to remember: the kernel says it again at every wait that it is still true.
        lc.readable = false;
        lc.writable = false;
    }
    Ok(())
}

/// A new connection goes into the poller.
fn register_conn(
    poller: &Poller,
    key: usize,
    lc: &mut LoopConn,
    server: &Server,
) -> io::Result<()> {
    // TRIGGER: when interest is registered.
    // - edge: once, for reading *and* writing, for the connection's whole life. The kernel
    //   reports each change (bytes arrived, room freed in the send buffer); nothing is asked
    //   again between messages.
    // - level and oneshot: for reading; writing is asked for only while output is queued.
    let (interest, mode) = match server.config.trigger {
        Trigger::Edge => ((true, true), PollMode::Edge),
        Trigger::Level => ((true, false), PollMode::Level),
        Trigger::Oneshot => ((true, false), PollMode::Oneshot),
    };
    register(poller, &lc.conn.stream, key, interest, mode, server)?;
    lc.interest = Some(interest);
    Ok(())
}

/// Tell the poller what this connection waits for now, if the trigger needs telling.
fn rearm(poller: &Poller, key: usize, lc: &mut LoopConn, server: &Server) -> io::Result<()> {
    let want = (lc.wants_read(), lc.wants_write());
    let nothing = (false, false);
    let stream = &lc.conn.stream;
    // TRIGGER: when interest is changed again.
    match server.config.trigger {
        // edge: never. What the kernel reported is remembered in lc.readable/lc.writable.
        Trigger::Edge => return Ok(()),
        // level: the kernel reports a ready socket at *every* wait, wanted or not, so the
        // interest must follow what we want: changed only when that changes (we start or
        // stop waiting to write, pause reading for backpressure or --delay). Wanting
        // nothing, the socket leaves the poller: a hang-up is reported whatever the interest.
        Trigger::Level if lc.interest == Some(want) => return Ok(()),
        Trigger::Level if want == nothing => {
            if lc.interest.take().is_some() {
                count_ctl(server);
                poller.delete(stream)?;
            }
            return Ok(());
        }
        Trigger::Level if lc.interest.is_none() => {
            register(poller, stream, key, want, PollMode::Level, server)?;
        }
        Trigger::Level => {
            count_ctl(server);
            poller.modify_with_mode(stream, event(key, want), PollMode::Level)?;
        }
        // oneshot: after every event, for the event disarmed the socket. Wanting nothing (a
        // delayed echo), it stays disarmed (not even a hang-up wakes us); its timer re-arms it.
        Trigger::Oneshot if want == nothing => return Ok(()),
        Trigger::Oneshot => {
            count_ctl(server);
            poller.modify_with_mode(stream, event(key, want), PollMode::Oneshot)?;
        }
    }
    lc.interest = Some(want);
    Ok(())
}

/// Re-arm the listener's interest. The listener is oneshot whatever `--trigger` says: then
/// leaving it out of the poller during an EMFILE back-off is simply not re-arming it, and
/// this costs one epoll_ctl per batch of accepts, never one per message.
fn rearm_listener(poller: &Poller, listener: &TcpListener, server: &Server) {
    count_ctl(server);
    if let Err(e) = poller.modify_with_mode(listener, Event::readable(LISTENER), PollMode::Oneshot)
    {
        let event = crate::event::Event::new(Kind::Error).detail(format!(
            "cannot watch the listening socket (fd {}): {e}",
            listener.as_raw_fd()
        ));
        server.out.emit(event);
    }
}

/// Interest in reading and/or writing, as `polling` spells it.
fn event(key: usize, (read, write): (bool, bool)) -> Event {
    Event::new(key, read, write)
}

/// The one place a socket is added to the poller, for (read, write) under `mode`.
fn register(
    poller: &Poller,
    socket: &impl AsRawFd,
    key: usize,
    interest: (bool, bool),
    mode: PollMode,
    server: &Server,
) -> io::Result<()> {
    count_ctl(server);
    // SAFETY: `polling` requires the socket to be deleted from the poller before it is
    // closed. Every socket added here is: connections in `close` (or earlier, in `rearm`,
    // when level-triggered interest goes to nothing; nowhere else is a LoopConn dropped),
    // the listener at the end of `run`, before `server::run` drops it.
    unsafe { poller.add_with_mode(socket.as_raw_fd(), event(key, interest), mode) }
}

/// One more epoll_ctl (ADD, MOD or DEL) for the summary: what the trigger costs.
fn count_ctl(server: &Server) {
    Stats::add(&server.stats.epoll_ctl, 1);
}
