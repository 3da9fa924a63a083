//! # The poll server: one thread that sleeps until a socket is ready
//!
//! Lesson 4's loop with one change: instead of asking every socket again and again, the
//! thread registers its sockets with the kernel's readiness API (epoll on Linux, kqueue on
//! macOS, through the `polling` crate) and sleeps in `wait()` until one of them is ready or
//! the nearest deadline (`--delay`, `--idle-timeout`) comes. It then handles only those.
//!
//! What to watch for:
//! - An idle server uses no CPU at all, yet serves every client at once; the summary's
//!   `loop_iterations` counts the wake-ups and `wouldblock` stays near zero, because
//!   readiness is a promise that the next call will not block.
//! - Interest is *oneshot*: after each event the socket is re-armed with `modify()`, asking
//!   for read readiness, plus write readiness only while output is queued.
//! - Backpressure: a peer that sends and never reads gets no more reads from us once
//!   MAX_PENDING bytes wait for it; its TCP window closes and its sender stalls.
//! - Out of descriptors (EMFILE): the listener is left out of the poller for EMFILE_BACKOFF.
//!
//! Lessons: `lessons/05-readiness.md`, `lessons/11-event-loop.md`; demo: `tcp-lab demo poll-many`.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use polling::{Event, Events, Poller};

use super::echo::READ_BUF;
use super::event_loop::{self, End, LoopAccepted, LoopConn, Slots, Step, Timers, ACCEPT_BATCH};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF};
use crate::event::Kind;
use crate::note;

/// The listener's key in the poller; connections use 1, 2, … (see [`Slots`]).
const LISTENER: usize = 0;

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Arc::new(Poller::new()?);
    register(&poller, listener, Event::readable(LISTENER))?;
    // Ctrl-C arrives on another thread; notify() makes our wait() return at once.
    let waker = Arc::clone(&poller);
    server.stop.on_request(Box::new(move || {
        let _ = waker.notify();
    }));

    let mut conns = Slots::default();
    let mut timers = Timers::default();
    let mut acceptor = Acceptor::default();
    let mut events = Events::new();
    let mut buf = vec![0u8; READ_BUF]; // one read buffer for every connection
    let mut listener_paused_until: Option<Instant> = None;
    let mut failure = Ok(());

    while server.keep_accepting() {
        // Sleep until a socket is ready or the nearest deadline; None: until a socket is ready.
        let deadline = match (timers.next(), listener_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        events.clear();
        server.out.flush(); // everything this turn printed, before we sleep
        if let Err(e) = poller.wait(&mut events, timeout) {
            failure = Err(e); // epoll itself failed: nothing sensible is left to do
            break;
        }
        Stats::add(&server.stats.loop_iterations, 1);
        let now = Instant::now();

        // wait() may return no event at all (notify(), a deadline, or spuriously).
        for ready in events.iter() {
            if ready.key == LISTENER {
                let (acceptor, conns, timers) = (&mut acceptor, &mut conns, &mut timers);
                if accept_some(listener, &poller, acceptor, conns, timers, server) {
                    listener_paused_until = Some(now + EMFILE_BACKOFF);
                } else if !acceptor.listener_closed() {
                    rearm_listener(&poller, listener, server);
                }
                continue;
            }
            let Some(lc) = conns.get_mut(ready.key) else {
                continue;
            };
            let step = on_ready(lc, ready, &mut buf, server);
            after(step, ready.key, &poller, &mut conns, &mut timers, server);
        }

        while let Some(key) = timers.pop_due(now, &mut conns) {
            let step = conns
                .get_mut(key)
                .map_or(Ok(()), |lc| lc.on_time(now, server));
            after(step, key, &poller, &mut conns, &mut timers, server);
        }

        // The back-off is over: ask for the listener's readiness again.
        if listener_paused_until.is_some_and(|until| now >= until) {
            listener_paused_until = None;
            rearm_listener(&poller, listener, server);
        }
    }

    // Ctrl-C (or --exit-after): every connection still open gets a FIN.
    for key in conns.keys() {
        close(
            key,
            End::Close(note::CLOSE_STOP),
            &poller,
            &mut conns,
            server,
        );
    }
    let _ = poller.delete(listener);
    failure
}

/// A connection is ready: write what is queued, read what arrived.
fn on_ready(lc: &mut LoopConn, ready: Event, buf: &mut [u8], server: &Server) -> Step {
    if ready.writable {
        lc.write(server)?;
    }
    if ready.readable && lc.wants_read() {
        lc.read(buf, server)?;
    }
    Ok(())
}

/// After a step: close the connection, or re-arm its oneshot interest and its deadline.
fn after(
    step: Step,
    key: usize,
    poller: &Poller,
    conns: &mut Slots,
    timers: &mut Timers,
    server: &Server,
) {
    let Some(lc) = conns.get_mut(key) else {
        return;
    };
    if let Err(end) = step {
        return close(key, end, poller, conns, server);
    }
    // Nothing to wait for on the socket (a delayed echo is pending): leave it disarmed, so
    // not even a hang-up wakes us for nothing; its timer re-arms it.
    let (read, write) = (lc.wants_read(), lc.wants_write());
    if read || write {
        if let Err(e) = poller.modify(&lc.conn.stream, Event::new(key, read, write)) {
            super::echo::report_error(&lc.conn, server, "epoll_ctl(MOD)", &e);
            return close(key, End::Dead, poller, conns, server);
        }
    }
    timers.schedule(key, lc, server);
}

/// Take it out of the poller *before* the socket is closed, then end it.
fn close(key: usize, end: End, poller: &Poller, conns: &mut Slots, server: &Server) {
    if let Some(lc) = conns.remove(key) {
        let _ = poller.delete(&lc.conn.stream);
        event_loop::finish(lc, end, server);
    }
}

/// accept() what is queued (up to ACCEPT_BATCH) and register each connection for reading.
/// Returns true if the listener must back off (out of descriptors).
fn accept_some(
    listener: &TcpListener,
    poller: &Poller,
    acceptor: &mut Acceptor,
    conns: &mut Slots,
    timers: &mut Timers,
    server: &Server,
) -> bool {
    for _ in 0..ACCEPT_BATCH {
        match event_loop::accept(acceptor, listener, server) {
            LoopAccepted::Conn(lc) => {
                let key = conns.insert(lc);
                let lc = conns.get_mut(key).expect("just inserted");
                if let Err(e) = register(poller, &lc.conn.stream, Event::readable(key)) {
                    super::echo::report_error(&lc.conn, server, "epoll_ctl(ADD)", &e);
                    let lc = conns.remove(key).expect("just inserted");
                    event_loop::finish(lc, End::Dead, server);
                    continue;
                }
                timers.schedule(key, lc, server); // --idle-timeout counts from now
                                                  // --close-listener-after / --exit-after: out of the poller, then close it.
                if acceptor.listener_close_due(server) {
                    let _ = poller.delete(listener);
                    acceptor.close_listener_if_due(listener, server);
                    return false;
                }
            }
            LoopAccepted::TurnedAway => continue,
            LoopAccepted::Empty => return false,
            // Why not keep the listener in the poller? Its queue still holds connections,
            // so it stays readable: wait() would return at once, accept() fail at once, and
            // the loop spin at 100 % CPU until a descriptor frees up. Like nginx, we take
            // the listener out of the poller for a moment instead; the connections wait
            // in the kernel's queue and are accepted once a descriptor is free again.
            LoopAccepted::BackOff => return true,
        }
    }
    false
}

/// Re-arm the listener's oneshot interest.
fn rearm_listener(poller: &Poller, listener: &TcpListener, server: &Server) {
    if let Err(e) = poller.modify(listener, Event::readable(LISTENER)) {
        let event = crate::event::Event::new(Kind::Error).detail(format!(
            "cannot watch the listening socket (fd {}): {e}",
            listener.as_raw_fd()
        ));
        server.out.emit(event);
    }
}

/// The one place a socket is added to the poller.
fn register(poller: &Poller, socket: &impl AsRawFd, interest: Event) -> io::Result<()> {
    // SAFETY: `polling` requires the socket to be deleted from the poller before it is
    // closed. Every socket added here is: connections in `close` (and nowhere else is a
    // LoopConn dropped), the listener at the end of `run`, before `server::run` drops it.
    unsafe { poller.add(socket.as_raw_fd(), interest) }
}
