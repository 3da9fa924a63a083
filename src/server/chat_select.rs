//! # The chat in select(2): one thread, one fd_set rebuilt on every turn
//!
//! `select.rs`'s loop with the chat's rooms (chat_loop.rs): before each sleep the thread
//! sets one bit per member it wants to read from (every member) or write to (those with
//! text waiting), sleeps in `select()`, then handles the members whose bits came back set.
//! One thread owns the rooms: no lock. The FD_SETSIZE wall is the same as for the echo: a
//! member whose descriptor is 1024 or more cannot be watched, and is turned away.
//!
//! Lesson: `lessons/12-chat.md` (and `lessons/05-readiness.md` for select itself).

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::chat_loop::{self, Hub};
use super::echo::READ_BUF;
use super::event_loop::{self, LoopAccepted};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF, TICK};
use crate::event::Kind;
use crate::note;

/// At most this many accept() calls per wake-up, so a flood does not starve the room.
const ACCEPT_BATCH: usize = 128;

/// The size of an fd_set: descriptors 0 … FD_SETSIZE-1 fit, no others.
const FD_SETSIZE: RawFd = libc::FD_SETSIZE as RawFd;

/// One fd_set, and the highest descriptor set in it.
struct FdSet {
    set: libc::fd_set,
}

impl FdSet {
    fn new() -> FdSet {
        // SAFETY: fd_set is plain data; FD_ZERO initialises it.
        let mut set: libc::fd_set = unsafe { std::mem::zeroed() };
        unsafe { libc::FD_ZERO(&mut set) };
        FdSet { set }
    }

    fn add(&mut self, fd: RawFd) {
        assert!((0..FD_SETSIZE).contains(&fd), "checked at accept");
        // SAFETY: 0 <= fd < FD_SETSIZE, so the bit is inside the set.
        unsafe { libc::FD_SET(fd, &mut self.set) };
    }

    fn has(&self, fd: RawFd) -> bool {
        // SAFETY: as in add(); a descriptor never set is simply not there.
        (0..FD_SETSIZE).contains(&fd) && unsafe { libc::FD_ISSET(fd, &self.set) }
    }
}

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let lfd = listener.as_raw_fd();
    let mut hub = Hub::new(server);
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut listener_paused_until: Option<Instant> = None;

    while server.keep_accepting() {
        // 1. Build the sets from scratch: select() overwrote the last ones.
        let (mut readable, mut writable) = (FdSet::new(), FdSet::new());
        let mut highest = -1;
        // A closed listener's number now holds /dev/null, always "readable": leave it out.
        if listener_paused_until.is_none() && !acceptor.listener_closed() && lfd < FD_SETSIZE {
            readable.add(lfd);
            highest = lfd;
        }
        for key in hub.keys() {
            let member = hub.get(key).expect("a live key");
            let fd = member.conn.stream.as_raw_fd();
            if member.wants_read() {
                readable.add(fd);
            }
            if member.wants_write() {
                writable.add(fd);
            }
            highest = highest.max(fd);
        }

        // 2. Sleep until a bit is ready, or one TICK (Ctrl-C, --idle-timeout).
        let mut timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: TICK.as_micros() as libc::suseconds_t,
        };
        server.out.flush();
        let nfds = highest + 1;
        // SAFETY: both sets are initialised and every bit set in them is < FD_SETSIZE.
        let ready = unsafe {
            libc::select(
                nfds,
                &mut readable.set,
                &mut writable.set,
                std::ptr::null_mut(),
                &mut timeout,
            )
        };
        Stats::add(&server.stats.loop_iterations, 1);
        Stats::add(&server.stats.scanned, nfds as u64);
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();

        // 3. Check every bit we set: the scan on our side.
        let listener_ready =
            listener_paused_until.is_none() && !acceptor.listener_closed() && readable.has(lfd);
        if listener_ready && accept_some(listener, &mut acceptor, &mut hub, server) {
            listener_paused_until = Some(now + EMFILE_BACKOFF);
        }
        for key in hub.keys() {
            let Some(fd) = hub.get(key).map(|m| m.conn.stream.as_raw_fd()) else {
                continue; // ended this turn
            };
            if writable.has(fd) {
                hub.on_writable(key, server);
            }
            if readable.has(fd) {
                hub.on_readable(key, &mut buf, server);
            }
        }
        hub.expire(now, server);
        hub.flush(server);
        for (member, end) in hub.take_ended() {
            chat_loop::finish(member, end, server);
        }
        hub.take_touched(); // the sets are rebuilt from every member next turn
        if listener_paused_until.is_some_and(|until| now >= until) {
            listener_paused_until = None;
        }
    }

    hub.stop_all(); // Ctrl-C or --exit-after: every member gets our FIN
    for (member, end) in hub.take_ended() {
        chat_loop::finish(member, end, server);
    }
    Ok(())
}

/// accept() what is queued; a descriptor that does not fit in an fd_set is turned away.
/// Returns true if the listener must back off (out of descriptors).
fn accept_some(
    listener: &TcpListener,
    acceptor: &mut Acceptor,
    hub: &mut Hub,
    server: &Server,
) -> bool {
    for _ in 0..ACCEPT_BATCH {
        match event_loop::accept(acceptor, listener, server) {
            LoopAccepted::Conn(lc) => {
                let fd = lc.conn.stream.as_raw_fd();
                if fd >= FD_SETSIZE {
                    let message = format!("server full: select() cannot watch fd {fd}\n");
                    let _ = (&lc.conn.stream).write(message.as_bytes()); // never blocks
                    Stats::add(&server.stats.turned_away, 1);
                    let event = lc.conn.event(Kind::Limit).detail(format!(
                        "fd {fd} >= FD_SETSIZE ({FD_SETSIZE}): select() cannot watch it"
                    ));
                    server.out.emit(event.note(note::SELECT_LIMIT));
                    drop(lc); // close(): the FIN
                    server.finished();
                    continue;
                }
                hub.admit(lc.conn, server);
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
