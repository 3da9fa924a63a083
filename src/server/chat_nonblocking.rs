//! # The chat in the nonblocking loop: one thread asks every socket, again and again
//!
//! `nonblocking.rs`'s loop with the chat's rooms (chat_loop.rs): each turn it tries
//! accept(), then every member's write and read, each failing at once with EAGAIN when there
//! is nothing to do. One thread owns the rooms, so there is no lock. It works, and it burns
//! a core doing it; compare `chat_poll.rs`, which sleeps until a socket is ready.
//!
//! Lesson: `lessons/12-chat.md` (and `lessons/04-nonblocking.md` for the loop itself).

use std::io;
use std::net::TcpListener;
use std::thread;
use std::time::Instant;

use super::chat_loop::{self, Hub};
use super::echo::READ_BUF;
use super::event_loop::{self, LoopAccepted};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF};

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?; // accept() now returns EAGAIN instead of sleeping
    let mut hub = Hub::new(server);
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut accept_paused_until: Option<Instant> = None;

    while server.keep_accepting() {
        Stats::add(&server.stats.loop_iterations, 1);
        let now = Instant::now();

        // 1. Anyone new? Usually not: EAGAIN, counted as a wasted try.
        if accept_paused_until.is_none_or(|until| now >= until) {
            accept_paused_until = None;
            match event_loop::accept(&mut acceptor, listener, server) {
                LoopAccepted::Conn(lc) => {
                    hub.admit(lc.conn, server);
                    // --close-listener-after / --exit-after: close the listener now.
                    acceptor.close_listener_if_due(listener, server);
                }
                LoopAccepted::BackOff => accept_paused_until = Some(now + EMFILE_BACKOFF),
                LoopAccepted::TurnedAway | LoopAccepted::Empty => {}
            }
        }

        // 2. Every member, ready or not: write what waits for it, read what it sent.
        for key in hub.keys() {
            if hub.get(key).is_some_and(|m| m.wants_write()) {
                hub.on_writable(key, server);
            }
            hub.on_readable(key, &mut buf, server);
        }

        // 3. The end of the turn: idle members, the queues, the members that ended.
        hub.expire(now, server);
        hub.flush(server);
        for (member, end) in hub.take_ended() {
            chat_loop::finish(member, end, server);
        }
        hub.take_touched(); // interest is not kept between turns here: everyone is asked
        server.out.flush();
        thread::yield_now(); // others may run first; the loop takes every cycle left
    }

    hub.stop_all(); // Ctrl-C or --exit-after: every member gets our FIN
    for (member, end) in hub.take_ended() {
        chat_loop::finish(member, end, server);
    }
    Ok(())
}
