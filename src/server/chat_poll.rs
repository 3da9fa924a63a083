//! # The chat in one poll loop: one thread owns every room, so nothing is locked
//!
//! The poll server (`poll.rs`) with chat.rs's rooms instead of an echo: one thread sleeps in
//! `wait()` (epoll/kqueue) until a socket is ready, and is the only code that ever touches
//! the rooms, so there is no lock and no data race to think about. A line from one member
//! becomes text in the queues of the others ([`Hub`]); the queues are written at the end of
//! the turn, and what the kernel cannot take yet waits for write readiness.
//!
//! What to watch for:
//! - `join`, `relay` (`to` = how many got the line), `nick`, `leave` with its reason.
//! - A member that never reads: its queue reaches 64 KiB, it is dropped (event `limit`, then
//!   `abort`: an RST), and the room goes on. Nobody else waited for it, not even for a moment.
//! - Interest is oneshot: every member that had an event, or still has text queued, is
//!   re-armed with `modify()` at the end of the turn.
//!
//! Lesson: `lessons/12-chat.md`.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Instant;

use polling::{Event, Events, Poller};

use super::chat_loop::{self, Hub};
use super::echo::READ_BUF;
use super::event_loop::{self, LoopAccepted};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF, TICK};
use crate::event::Kind;

/// The listener's key; members use their connection numbers, 1, 2, …
const LISTENER: usize = 0;

/// At most this many accept() calls per wake-up, so a flood does not starve the room.
const ACCEPT_BATCH: usize = 128;

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Arc::new(Poller::new()?);
    register(&poller, listener, Event::readable(LISTENER))?;
    let waker = Arc::clone(&poller); // Ctrl-C arrives on another thread: wake our wait()
    server.stop.on_request(Box::new(move || {
        let _ = waker.notify();
    }));

    let mut hub = Hub::new(server);
    let mut acceptor = Acceptor::default();
    let mut events = Events::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut listener_paused_until: Option<Instant> = None;
    // --idle-timeout is checked every TICK; without it, sleep until a socket is ready.
    let tick = server.config.idle_timeout.map(|_| TICK);

    while server.keep_accepting() {
        let timeout = match (tick, listener_paused_until) {
            (_, Some(until)) => Some(until.saturating_duration_since(Instant::now()).min(TICK)),
            (tick, None) => tick,
        };
        events.clear();
        server.out.flush();
        poller.wait(&mut events, timeout)?;
        Stats::add(&server.stats.loop_iterations, 1);

        for ready in events.iter() {
            if ready.key == LISTENER {
                if accept_some(listener, &poller, &mut acceptor, &mut hub, server) {
                    listener_paused_until = Some(Instant::now() + EMFILE_BACKOFF);
                } else if !acceptor.listener_closed() {
                    rearm(&poller, listener, Event::readable(LISTENER), server);
                }
                continue;
            }
            if ready.writable {
                hub.on_writable(ready.key, server);
            }
            if ready.readable {
                hub.on_readable(ready.key, &mut buf, server);
            }
            hub.touch(ready.key); // oneshot: it must be re-armed
        }

        let now = Instant::now();
        hub.expire(now, server);
        hub.flush(server); // write every queue that got text this turn
        close_ended(&mut hub, &poller, server);
        rearm_members(&mut hub, &poller, server);
        if listener_paused_until.is_some_and(|until| now >= until) {
            listener_paused_until = None;
            rearm(&poller, listener, Event::readable(LISTENER), server);
        }
    }

    hub.stop_all(); // Ctrl-C or --exit-after: every member gets our FIN
    close_ended(&mut hub, &poller, server);
    let _ = poller.delete(listener);
    Ok(())
}

/// Members that ended this turn: out of the poller first, then closed.
fn close_ended(hub: &mut Hub, poller: &Poller, server: &Server) {
    for (member, end) in hub.take_ended() {
        let _ = poller.delete(&member.conn.stream);
        chat_loop::finish(member, end, server);
    }
}

/// Re-arm every member that had an event or still has text queued: read interest unless
/// its end is decided, write interest while text waits for it.
fn rearm_members(hub: &mut Hub, poller: &Poller, server: &Server) {
    for key in hub.take_touched() {
        let Some(member) = hub.get(key) else {
            continue; // ended meanwhile
        };
        let interest = Event::new(key, member.wants_read(), member.wants_write());
        rearm(poller, &member.conn.stream, interest, server);
    }
}

/// accept() what is queued and admit each connection to the lobby. Returns true if the
/// listener must back off (out of descriptors; see poll.rs).
fn accept_some(
    listener: &TcpListener,
    poller: &Poller,
    acceptor: &mut Acceptor,
    hub: &mut Hub,
    server: &Server,
) -> bool {
    for _ in 0..ACCEPT_BATCH {
        match event_loop::accept(acceptor, listener, server) {
            LoopAccepted::Conn(lc) => {
                let conn = lc.conn;
                let key = conn.id as usize;
                if let Err(e) = register(poller, &conn.stream, Event::readable(key)) {
                    super::echo::report_error(&conn, server, "epoll_ctl(ADD)", &e);
                    drop(conn);
                    server.finished();
                    continue;
                }
                hub.admit(conn, server); // welcome text queued, written at the end of the turn

                // --close-listener-after / --exit-after: out of the poller, then close it.
                if acceptor.listener_close_due(server) {
                    let _ = poller.delete(listener);
                    acceptor.close_listener_if_due(listener, server);
                    return false;
                }
            }
            LoopAccepted::TurnedAway => continue,
            LoopAccepted::Empty => return false,
            LoopAccepted::BackOff => return true,
        }
    }
    false
}

fn rearm(poller: &Poller, socket: &(impl AsFd + AsRawFd), interest: Event, server: &Server) {
    if let Err(e) = poller.modify(socket, interest) {
        let event = crate::event::Event::new(Kind::Error)
            .detail(format!("epoll_ctl(MOD) on fd {}: {e}", socket.as_raw_fd()));
        server.out.emit(event);
    }
}

/// The one place a socket is added to the poller.
fn register(poller: &Poller, socket: &impl AsRawFd, interest: Event) -> io::Result<()> {
    // SAFETY: `polling` requires the socket to be deleted from the poller before it is
    // closed: members in close_ended (the only place a Member is dropped in this mode), the
    // listener at the end of `run`, before `server::run` drops it.
    unsafe { poller.add(socket.as_raw_fd(), interest) }
}
