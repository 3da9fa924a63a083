//! What every chat server shares: which modes can run the chat, the events for what the
//! rooms did, and the bounded queue of text waiting for one member.
//!
//! The rooms and the protocol themselves are in `src/chat/`, which knows nothing of sockets.
//! The models are beside this file: `chat_threaded.rs` (a thread per member, the rooms
//! behind a lock) and the event loops `chat_poll.rs`, `chat_select.rs`,
//! `chat_nonblocking.rs` (one thread owns everything, no lock), which share `chat_loop.rs`.
//!
//! Lesson: `lessons/12-chat.md`.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::SockRef;

use super::{chat_nonblocking, chat_poll, chat_select, chat_threaded, echo, Connection, Server};
use crate::chat::{Happening, MemberId, MAX_QUEUE};
use crate::cli::Mode;
use crate::event::{Event, Kind};
use crate::note;
use crate::outcome::{self, ReadOutcome};

/// The chat needs every member served at once, and one memory for the rooms.
pub fn fits(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Blocking => Err(
            "--app chat cannot run in --mode blocking: it serves one client \
at a time, so whoever connects second waits in the backlog and there is nobody to talk to; \
try --mode threaded or --mode poll"
                .into(),
        ),
        Mode::Process => Err(
            "--app chat cannot run in --mode process: a child process has its \
own memory, so the rooms would have to live in another process and be reached through IPC \
(pipes, sockets); try --mode threaded (shared memory, a lock) or --mode poll (one thread)"
                .into(),
        ),
        Mode::Threaded | Mode::Nonblocking | Mode::Select | Mode::Poll => Ok(()),
    }
}

/// Run the chat in the chosen mode.
pub fn run(listener: &TcpListener, server: &Arc<Server>) -> Result<()> {
    match server.config.mode {
        Mode::Threaded => chat_threaded::run(listener, server)?,
        Mode::Poll => chat_poll::run(listener, server).context("the poll chat failed")?,
        Mode::Select => chat_select::run(listener, server).context("the select chat failed")?,
        Mode::Nonblocking => {
            chat_nonblocking::run(listener, server).context("the nonblocking chat failed")?
        }
        Mode::Blocking | Mode::Process => unreachable!("refused by fits() before listening"),
    }
    Ok(())
}

/// What the rooms did, as events: `join`, `leave`, `nick`, `relay`.
pub fn report(happening: &Happening, server: &Server) {
    let event = match happening {
        Happening::Joined { who, nick, room } => Event::new(Kind::Join)
            .conn(*who)
            .nick(nick)
            .room(room)
            .note(note::CHAT_JOIN),
        Happening::Left {
            who,
            nick,
            room,
            why,
        } => Event::new(Kind::Leave)
            .conn(*who)
            .nick(nick)
            .room(room)
            .detail(why.reason())
            .note(note::CHAT_LEAVE),
        Happening::Renamed { who, old, new } => Event::new(Kind::Nick)
            .conn(*who)
            .from(old)
            .nick(new)
            .note(note::CHAT_NICK),
        Happening::Relayed {
            from,
            nick,
            room,
            to,
        } => {
            if !server.out.wants_data() {
                return; // --quiet: no per-line events
            }
            let event = Event::new(Kind::Relay).conn(*from).from(nick);
            let event = match room {
                Some(room) => event.room(room),
                None => event.detail("private: /msg"),
            };
            event.to(*to as u64).note(note::CHAT_RELAY)
        }
    };
    server.out.emit(event);
}

/// A member's queue passed MAX_QUEUE: it is dropped (event `limit`).
pub fn report_dropped(who: MemberId, unsent: usize, server: &Server) {
    server.out.emit(
        Event::new(Kind::Limit)
            .conn(who)
            .detail(format!(
                "{unsent} bytes waiting for it (limit {MAX_QUEUE}): not reading"
            ))
            .note(note::CHAT_DROPPED),
    );
}

/// What an over-long line gets, before its connection is closed.
pub fn too_long_message(max: usize) -> String {
    format!("! line longer than {max} bytes\n")
}

/// Can `more` bytes join `unsent` bytes already waiting for a member?
pub fn fits_queue(unsent: usize, more: usize) -> bool {
    unsent + more <= MAX_QUEUE
}

/// close() after a last look at the receive buffer: whatever the member sent that we will
/// never read (the rest of an over-long line, lines after `/quit`) is read and discarded
/// first, because closing a socket with unread input makes the kernel send an RST instead
/// of a FIN — and an RST can destroy our last message before the peer reads it.
pub fn drain_then_close(conn: Connection, server: &Server, why: &'static str) {
    if conn.stream.set_nonblocking(true).is_ok() {
        let mut scrap = [0u8; 4096];
        // Bounded: a peer still sending at full speed cannot keep us here.
        for _ in 0..64 {
            match outcome::classify_read((&conn.stream).read(&mut scrap)) {
                ReadOutcome::Data(_) | ReadOutcome::Interrupted => continue,
                _ => break, // empty (EAGAIN), its FIN, or dead: nothing left unread
            }
        }
    }
    echo::close(conn, server, why);
}

/// A dropped member: close() with SO_LINGER 0. The kernel throws away what it still holds
/// for this peer and sends an RST, instead of trying for minutes to deliver it to a peer
/// that does not read.
pub fn abort_dropped(conn: Connection, server: &Server) {
    if let Err(e) = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO)) {
        echo::report_error(&conn, server, "setsockopt(SO_LINGER)", &e);
    }
    let event = conn
        .event_closed(Kind::Abort)
        .detail("dropped: not reading");
    drop(conn); // the RST goes out here
    server.out.emit(event.note(note::CHAT_ABORT_DROPPED));
}

/// TCP_NODELAY: a chat line is a message someone is waiting to read. With Nagle's algorithm
/// the kernel would hold a small write back while an earlier one is unacknowledged, and the
/// reader's delayed ACK can make that wait 40 ms; a line should go out as soon as it is written.
pub fn send_lines_at_once(conn: &Connection) {
    // Should it fail, lines still go out, only sometimes a little later.
    let _ = conn.stream.set_nodelay(true);
}
