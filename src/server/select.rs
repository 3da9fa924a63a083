//! # The select server: one thread, one fd_set rebuilt on every turn
//!
//! Seed 001's step between the busy loop (lesson 4) and epoll: before each sleep the thread
//! builds a bitmap (an `fd_set`) with one bit per descriptor it cares about, hands it to
//! `select(2)`, and sleeps until one of them is ready or the nearest deadline comes. The
//! kernel writes back which bits are ready; the thread checks every bit it set, and
//! handles only the ready ones, with event_loop.rs's steps, as the poll server does.
//!
//! What to watch for:
//! - The scan: every call the kernel examines every descriptor up to the highest one, and
//!   so do we afterwards. The summary's `scanned` adds them up: it grows with idle
//!   connections, where poll's cost does not.
//! - The wall: an fd_set has FD_SETSIZE (1024) bits. A connection whose descriptor is 1024
//!   or more cannot be watched at all; it is accepted, told
//!   `server full: select() cannot watch fd N`, and closed (event `limit`).
//!   FD_SET past the bitmap would be undefined behaviour, so we never do it.
//! - stdin, when it is a terminal, is in the set too (as in seed 001): a line typed there
//!   stops the server cleanly.
//! - Write interest only while output is queued; reads stop at MAX_PENDING (backpressure).
//!
//! Lessons: `lessons/05-readiness.md`.

use std::io::{self, IsTerminal};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::echo::READ_BUF;
use super::event_loop::{self, End, LoopAccepted, LoopConn, Slots, Step, Timers, ACCEPT_BATCH};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF, TICK};
use crate::event::Kind;
use crate::note;

/// The size of an fd_set: descriptors 0 … FD_SETSIZE-1 fit, no others.
const FD_SETSIZE: RawFd = libc::FD_SETSIZE as RawFd;

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let lfd = listener.as_raw_fd();
    let watch_stdin = io::stdin().is_terminal();
    let mut conns = Slots::default();
    let mut timers = Timers::default();
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut listener_paused_until: Option<Instant> = None;

    while server.keep_accepting() {
        // 1. Build the sets from scratch: select() overwrote the last ones.
        // SAFETY: fd_set is plain data; FD_ZERO initialises it.
        let mut readable: libc::fd_set = unsafe { std::mem::zeroed() };
        let mut writable: libc::fd_set = unsafe { std::mem::zeroed() };
        unsafe {
            libc::FD_ZERO(&mut readable);
            libc::FD_ZERO(&mut writable);
        }
        let mut highest: RawFd = -1;
        let mut add = |set: &mut libc::fd_set, fd: RawFd| {
            // SAFETY: 0 <= fd < FD_SETSIZE (checked at accept), so the bit is inside the set.
            debug_assert!((0..FD_SETSIZE).contains(&fd));
            unsafe { libc::FD_SET(fd, set) };
            highest = highest.max(fd);
        };
        // A closed listener's number now holds /dev/null, always "readable": leave it out.
        if listener_paused_until.is_none() && !acceptor.listener_closed() && lfd < FD_SETSIZE {
            add(&mut readable, lfd);
        }
        if watch_stdin {
            add(&mut readable, libc::STDIN_FILENO);
        }
        for key in conns.keys() {
            let lc = conns.get_mut(key).expect("a live key");
            let fd = lc.conn.stream.as_raw_fd();
            if lc.wants_read() {
                add(&mut readable, fd);
            }
            if lc.wants_write() {
                add(&mut writable, fd);
            }
        }

        // 2. Sleep until a bit is ready, the nearest deadline, or one TICK (Ctrl-C).
        let now = Instant::now();
        let mut wait = TICK;
        for at in [timers.next(), listener_paused_until].into_iter().flatten() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let mut timeout = libc::timeval {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_usec: wait.subsec_micros() as libc::suseconds_t,
        };
        server.out.flush();
        let nfds = highest + 1;
        // SAFETY: both sets are initialised and every bit set in them is < FD_SETSIZE.
        let ready = unsafe {
            libc::select(
                nfds,
                &mut readable,
                &mut writable,
                std::ptr::null_mut(),
                &mut timeout,
            )
        };
        Stats::add(&server.stats.loop_iterations, 1);
        Stats::add(&server.stats.scanned, nfds as u64); // the kernel looked at each of them
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();
        // SAFETY (every FD_ISSET below): the fd is < FD_SETSIZE, as it was when set.
        let is_set = |set: &libc::fd_set, fd: RawFd| unsafe { libc::FD_ISSET(fd, set) };

        // 3. Check every bit we set: this is the scan on our side.
        if watch_stdin && is_set(&readable, libc::STDIN_FILENO) {
            let mut line = String::new();
            let _ = io::stdin().read_line(&mut line);
            server.stop.request(); // a typed line (or end of input) stops the server
            break;
        }
        if listener_paused_until.is_none() && is_set(&readable, lfd) {
            let (acceptor, conns, timers) = (&mut acceptor, &mut conns, &mut timers);
            if accept_some(listener, acceptor, conns, timers, server) {
                listener_paused_until = Some(now + EMFILE_BACKOFF);
            }
        }
        for key in conns.keys() {
            let Some(lc) = conns.get_mut(key) else {
                continue;
            };
            let fd = lc.conn.stream.as_raw_fd();
            let (r, w) = (is_set(&readable, fd), is_set(&writable, fd));
            if !(r || w) {
                continue;
            }
            let step = on_ready(lc, r, w, &mut buf, server);
            after(step, key, &mut conns, &mut timers, server);
        }
        while let Some(key) = timers.pop_due(now, &mut conns) {
            let step = conns
                .get_mut(key)
                .map_or(Ok(()), |lc| lc.on_time(now, server));
            after(step, key, &mut conns, &mut timers, server);
        }
        if listener_paused_until.is_some_and(|until| now >= until) {
            listener_paused_until = None;
        }
    }

    // Ctrl-C, a typed line, or --exit-after: every connection still open gets a FIN.
    for key in conns.keys() {
        if let Some(lc) = conns.remove(key) {
            event_loop::finish(lc, End::Close(note::CLOSE_STOP), server);
        }
    }
    Ok(())
}

/// A connection is ready: write what is queued, read what arrived.
fn on_ready(lc: &mut LoopConn, r: bool, w: bool, buf: &mut [u8], server: &Server) -> Step {
    if w {
        lc.write(server)?;
    }
    if r && lc.wants_read() {
        lc.read(buf, server)?;
    }
    Ok(())
}

/// After a step: close the connection, or keep its deadline. Its interest is rebuilt on
/// the next turn, from wants_read() and wants_write().
fn after(step: Step, key: usize, conns: &mut Slots, timers: &mut Timers, server: &Server) {
    match step {
        Err(end) => {
            if let Some(lc) = conns.remove(key) {
                event_loop::finish(lc, end, server);
            }
        }
        Ok(()) => {
            if let Some(lc) = conns.get_mut(key) {
                timers.schedule(key, lc, server);
            }
        }
    }
}

/// accept() what is queued (up to ACCEPT_BATCH). A descriptor that does not fit in an
/// fd_set is turned away with the reason. Returns true if the listener must back off.
fn accept_some(
    listener: &TcpListener,
    acceptor: &mut Acceptor,
    conns: &mut Slots,
    timers: &mut Timers,
    server: &Server,
) -> bool {
    for _ in 0..ACCEPT_BATCH {
        match event_loop::accept(acceptor, listener, server) {
            LoopAccepted::Conn(lc) => {
                let fd = lc.conn.stream.as_raw_fd();
                if fd >= FD_SETSIZE {
                    too_high(lc, fd, server);
                    continue;
                }
                let key = conns.insert(lc);
                let lc = conns.get_mut(key).expect("just inserted");
                timers.schedule(key, lc, server); // --idle-timeout counts from now

                // --close-listener-after / --exit-after: close the listener now.
                acceptor.close_listener_if_due(listener, server);
            }
            LoopAccepted::TurnedAway => continue,
            LoopAccepted::Empty => return false,
            LoopAccepted::BackOff => return true,
        }
    }
    false
}

/// The FD_SETSIZE wall: say why, and close (a FIN follows the message). The select chat
/// turns such a member away the same way.
pub(super) fn too_high(lc: LoopConn, fd: RawFd, server: &Server) {
    use std::io::Write;
    let message = format!("server full: select() cannot watch fd {fd}\n");
    let _ = (&lc.conn.stream).write(message.as_bytes()); // one short write: never blocks
    Stats::add(&server.stats.turned_away, 1);
    let event = lc.conn.event_closed(Kind::Limit).detail(format!(
        "fd {fd} >= FD_SETSIZE ({FD_SETSIZE}): select() cannot watch it"
    ));
    // close(): the FIN follows the message (an RST if the peer had spoken first)
    super::echo::close_reporting(lc.conn, server, event, note::SELECT_LIMIT);
    server.finished();
}
