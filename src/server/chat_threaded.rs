//! # The chat in threads: a thread per member, the rooms behind one lock
//!
//! Seed 004's threaded chat. Each member has its own thread, blocked in `read()` on its own
//! socket; the rooms ([`Chat`]) are shared by all of them, so they live behind a `Mutex`.
//! A thread that reads a line takes the lock, asks the chat who must get it, and hands the
//! text to each recipient's mailbox — then lets go.
//!
//! Why a mailbox, and not a `write()` to the other members' sockets? A write blocks when
//! the recipient does not read and its kernel buffers are full. A thread blocked there while
//! holding the lock would stop the whole chat: every other thread waits for the lock, for
//! a peer that may never read again. So under the lock nothing touches a socket: text is
//! only appended to a bounded queue in memory, and each member has a second thread, its
//! writer, that sleeps on its own mailbox and writes to its own socket, outside any lock.
//! A slow reader then only ever blocks its own writer; once 64 KiB wait for it, it is
//! dropped (event `limit`, then `abort`: an RST).
//!
//! What to watch for: two threads per member (`spawn`, `exit`); lines from one sender
//! arrive in order, because they enter every queue under the lock; the lock is held only
//! for the copying, never while a socket or stdout is written.
//!
//! Lesson: `lessons/12-chat.md`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use anyhow::Result;

use super::chat::{
    abort_dropped, drain_then_close, fits_queue, report, report_dropped, send_lines_at_once,
    too_long_message,
};
use super::{echo, Acceptor, Connection, Server, Stats, TICK};
use crate::chat::{Chat, Happening, LineFramer, MemberId, Outbox, Why};
use crate::event::{Event, Kind};
use crate::outcome::{self, ReadOutcome, WriteOutcome};
use crate::{note, tcp_state};

/// Everything the member threads share, behind one lock.
#[derive(Default)]
struct Rooms {
    chat: Chat,
    mailboxes: HashMap<MemberId, Arc<Mailbox>>,
}

/// Text waiting for one member, and how its writer thread should go on.
struct Mailbox {
    queue: Mutex<Queue>,
    /// Signalled when text arrives or the state changes: the writer wakes up.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    text: Vec<u8>,
    /// Bytes the writer took and is writing right now (they count towards the limit).
    in_flight: usize,
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// Write what is queued, then stop (the member leaves with a FIN).
    Closing,
    /// Not reading: stop at once, the text is thrown away.
    Dropped,
    /// A write failed: the connection is dead.
    Broken,
}

/// What a delivery under the lock found out, reported once the lock is released.
#[derive(Default)]
struct Reports {
    happenings: Vec<Happening>,
    dropped: Vec<(MemberId, usize)>,
}

impl Reports {
    fn emit(self, server: &Server) {
        for (who, unsent) in self.dropped {
            report_dropped(who, unsent, server);
        }
        for happening in &self.happenings {
            report(happening, server);
        }
    }
}

pub fn run(listener: &TcpListener, server: &Arc<Server>) -> Result<()> {
    super::wake_accept_every_tick(listener, server);
    let rooms = Arc::new(Mutex::new(Rooms::default()));
    let mut handlers: Vec<(u64, JoinHandle<()>)> = Vec::new();
    let mut acceptor = Acceptor::default();

    while server.keep_accepting() {
        reap_finished(&mut handlers, server);
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        // --close-listener-after / --exit-after: no more accepts, so close the listener now.
        acceptor.close_listener_if_due(listener, server);
        let id = conn.id;
        let spawned = conn
            .event(Kind::Spawn)
            .detail(format!(
                "threads conn-{id} (reads) and conn-{id}-w (writes)"
            ))
            .note(note::SPAWN_THREAD);
        let (shared, rooms) = (Arc::clone(server), Arc::clone(&rooms));
        let thread = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || serve_member(conn, &rooms, &shared));
        match thread {
            Ok(thread) => {
                server.out.emit(spawned);
                handlers.push((id, thread));
            }
            Err(e) => {
                let event = Event::new(Kind::Error).errno(outcome::errno_name(&e));
                server
                    .out
                    .emit(event.detail(format!("cannot start a thread: {e}")));
                server.finished(); // the connection was dropped with the closure: a FIN
            }
        }
    }
    // Stopping: every member thread notices within a TICK and closes with a FIN.
    for (id, thread) in handlers {
        join(id, thread, server);
    }
    Ok(())
}

/// How a member's reading thread ends.
enum Ending {
    /// Our FIN, once its writer has written what waits for it.
    Close(&'static str),
    Timeout(f64),
    /// Dropped by another thread: an RST.
    Dropped,
    /// Dead already (RST, an error), reported.
    Dead,
}

/// A member's reading thread: join the chat, start the writer, read lines until it ends.
fn serve_member(conn: Connection, rooms: &Mutex<Rooms>, server: &Arc<Server>) {
    send_lines_at_once(&conn);
    let mailbox = Arc::new(Mailbox {
        queue: Mutex::new(Queue::default()),
        changed: Condvar::new(),
    });
    let writer = match start_writer(&conn, &mailbox, server) {
        Ok(writer) => writer,
        Err(e) => {
            echo::report_error(&conn, server, "starting the writer thread", &e);
            return; // dropped: closed with a FIN
        }
    };
    let id = conn.id;
    let reports = {
        let mut rooms = lock(rooms);
        rooms.mailboxes.insert(id, Arc::clone(&mailbox));
        let welcome = rooms.chat.arrive(id);
        deliver(&mut rooms, welcome)
    };
    reports.emit(server); // outside the lock: stdout may be slow

    let ending = read_lines(&conn, rooms, &mailbox, server);

    // Tell the writer how to stop, and wait for it: it owns the other copy of the socket.
    let state = match ending {
        Ending::Close(_) | Ending::Timeout(_) => State::Closing,
        Ending::Dropped => State::Dropped,
        Ending::Dead => State::Broken,
    };
    mailbox.set_state(state);
    let _ = writer.join();
    match ending {
        Ending::Close(why) => drain_then_close(conn, server, why),
        Ending::Timeout(idle) => {
            let event = conn
                .event(Kind::Timeout)
                .detail(format!("idle {idle:.1} s"));
            drop(conn); // close(): the FIN goes out
            server.out.emit(event.note(note::TIMEOUT));
        }
        Ending::Dropped => abort_dropped(conn, server),
        Ending::Dead => drop(conn),
    }
}

/// read() until the member leaves, is dropped, or the server stops.
fn read_lines(
    conn: &Connection,
    rooms: &Mutex<Rooms>,
    mailbox: &Mailbox,
    server: &Server,
) -> Ending {
    let id = conn.id;
    // read() wakes every TICK, to notice Ctrl-C, --idle-timeout, or being dropped.
    if let Err(e) = conn.stream.set_read_timeout(Some(TICK)) {
        echo::report_error(conn, server, "setsockopt(SO_RCVTIMEO)", &e);
        leave(rooms, id, Why::Failed, server);
        return Ending::Dead;
    }
    let mut framer = LineFramer::new(server.config.max_line);
    let mut buf = vec![0u8; super::echo::READ_BUF];
    let mut lines = Vec::new();
    let mut last_heard = Instant::now();
    loop {
        if mailbox.state() == State::Dropped {
            return Ending::Dropped; // another thread dropped us and told the room
        }
        if server.stop.requested() {
            leave(rooms, id, Why::Stopping, server);
            return Ending::Close(note::CLOSE_STOP);
        }
        let n = match outcome::classify_read((&conn.stream).read(&mut buf)) {
            ReadOutcome::Data(n) => n,
            // The first call after an RST fails ECONNRESET, whichever it is: if this
            // member's writer thread made it, our read only returns 0. The kernel's state
            // tells them apart: CLOSE after an RST, CLOSE_WAIT after a FIN.
            ReadOutcome::Eof if tcp_state::of(&conn.stream) == Some("CLOSE") => {
                server
                    .out
                    .emit(conn.event(Kind::Eof).note(note::EOF_AFTER_RESET));
                leave(rooms, id, Why::Reset, server);
                return Ending::Dead;
            }
            ReadOutcome::Eof => {
                server.out.emit(conn.event(Kind::Eof).note(note::EOF));
                leave(rooms, id, Why::Eof, server);
                return Ending::Close(note::CLOSE_AFTER_EOF);
            }
            ReadOutcome::Reset => {
                echo::report_reset(conn, server, "read()");
                leave(rooms, id, Why::Reset, server);
                return Ending::Dead;
            }
            // The TICK passed with nothing read.
            ReadOutcome::WouldBlock => {
                let idle = last_heard.elapsed();
                if server
                    .config
                    .idle_timeout
                    .is_some_and(|limit| idle >= limit)
                {
                    leave(rooms, id, Why::Timeout, server);
                    return Ending::Timeout(idle.as_secs_f64());
                }
                continue;
            }
            ReadOutcome::Interrupted => continue,
            ReadOutcome::Failed(e) => {
                echo::report_error(conn, server, "read()", &e);
                leave(rooms, id, Why::Failed, server);
                return Ending::Dead;
            }
        };
        last_heard = Instant::now();
        if server.out.wants_data() {
            let event = conn.event(Kind::Recv).payload(&buf[..n]);
            server.out.emit(event.note(note::RECV));
        }
        let framed = framer.push(&buf[..n], &mut lines);
        for line in lines.drain(..) {
            Stats::add(&server.stats.messages, 1);
            let (reports, quit) = {
                let mut rooms = lock(rooms);
                let out = rooms.chat.line(id, &line);
                let quit = out.quit;
                let reports = deliver(&mut rooms, out); // "* bye" included
                if quit {
                    rooms.mailboxes.remove(&id);
                }
                (reports, quit)
            };
            reports.emit(server);
            if quit {
                // `/quit`: our FIN once "* bye" is out; the rest is never read.
                return Ending::Close(note::CHAT_QUIT);
            }
        }
        if let Err(too_long) = framed {
            let event = conn.event(Kind::Limit).detail(format!(
                "a line longer than {} bytes (--max-line)",
                too_long.max
            ));
            server.out.emit(event.note(note::CHAT_TOO_LONG));
            let _ = mailbox.push(too_long_message(too_long.max).as_bytes());
            leave(rooms, id, Why::TooLong, server);
            return Ending::Close(note::CHAT_CLOSE_TOO_LONG);
        }
    }
}

/// The member leaves the chat: its mailbox is taken out and its room told why.
fn leave(rooms: &Mutex<Rooms>, id: MemberId, why: Why, server: &Server) {
    let reports = {
        let mut rooms = lock(rooms);
        rooms.mailboxes.remove(&id);
        let out = rooms.chat.leave(id, why);
        deliver(&mut rooms, out)
    };
    reports.emit(server);
}

/// Under the lock: copy each delivery into its recipients' mailboxes. Nothing here can
/// block on a socket. A mailbox past its limit drops its member, whose room is told: more
/// deliveries, handled in turn.
fn deliver(rooms: &mut MutexGuard<'_, Rooms>, outbox: Outbox) -> Reports {
    let mut reports = Reports::default();
    let mut outboxes = vec![outbox];
    while let Some(outbox) = outboxes.pop() {
        let mut dropped = Vec::new();
        for delivery in &outbox.deliveries {
            for to in &delivery.to {
                let Some(mailbox) = rooms.mailboxes.get(to) else {
                    continue;
                };
                if let Err(unsent) = mailbox.push(delivery.text.as_bytes()) {
                    reports.dropped.push((*to, unsent));
                    dropped.push(*to);
                }
            }
        }
        reports.happenings.extend(outbox.happenings);
        for id in dropped {
            if let Some(mailbox) = rooms.mailboxes.remove(&id) {
                mailbox.set_state(State::Dropped);
                outboxes.push(rooms.chat.leave(id, Why::NotReading));
            }
        }
    }
    reports
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> State {
        self.lock().state
    }

    fn set_state(&self, state: State) {
        let mut queue = self.lock();
        if queue.state == State::Open || state == State::Dropped {
            queue.state = state;
        }
        self.changed.notify_one();
    }

    /// Queue text for the writer; Err(bytes waiting) if it would pass the limit.
    fn push(&self, text: &[u8]) -> Result<(), usize> {
        let mut queue = self.lock();
        let unsent = queue.text.len() + queue.in_flight;
        if !fits_queue(unsent, text.len()) {
            return Err(unsent);
        }
        queue.text.extend_from_slice(text);
        self.changed.notify_one();
        Ok(())
    }

    /// The writer's wait: the next text to write, or None when it must stop.
    fn next_chunk(&self, server: &Server) -> Option<Vec<u8>> {
        let mut queue = self.lock();
        queue.in_flight = 0; // the last chunk is written
        loop {
            match queue.state {
                State::Dropped | State::Broken => return None,
                _ if !queue.text.is_empty() => break,
                State::Closing => return None, // all written
                State::Open if server.stop.requested() => return None,
                State::Open => {
                    queue = self
                        .changed
                        .wait_timeout(queue, TICK)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        let chunk = std::mem::take(&mut queue.text);
        queue.in_flight = chunk.len();
        Some(chunk)
    }
}

/// Start the member's writer thread, with its own copy of the socket.
fn start_writer(
    conn: &Connection,
    mailbox: &Arc<Mailbox>,
    server: &Arc<Server>,
) -> std::io::Result<JoinHandle<()>> {
    let copy = Connection::new(conn.id, conn.stream.try_clone()?);
    // write() gives up every TICK when the peer does not read, to see if it was dropped.
    copy.stream.set_write_timeout(Some(TICK))?;
    let (mailbox, server) = (Arc::clone(mailbox), Arc::clone(server));
    thread::Builder::new()
        .name(format!("conn-{}-w", conn.id))
        .spawn(move || write_mailbox(&copy, &mailbox, &server))
}

/// The writer thread: sleep until text arrives, write it to this member's socket (and to
/// no other), until the member leaves or is dropped.
fn write_mailbox(conn: &Connection, mailbox: &Mailbox, server: &Server) {
    while let Some(chunk) = mailbox.next_chunk(server) {
        let mut written = 0;
        while written < chunk.len() {
            match outcome::classify_write((&conn.stream).write(&chunk[written..])) {
                WriteOutcome::Wrote(n) => {
                    if server.out.wants_data() {
                        let event = conn.event(Kind::Send).payload(&chunk[written..written + n]);
                        server.out.emit(event.note(note::SEND));
                    }
                    Stats::add(&server.stats.bytes_echoed, n as u64);
                    written += n;
                }
                WriteOutcome::Interrupted => continue,
                // A TICK without progress: the peer is not reading. Go on while it is a
                // member; not once it was dropped, has left, or the server stops.
                WriteOutcome::WouldBlock => {
                    if mailbox.state() != State::Open || server.stop.requested() {
                        return;
                    }
                }
                WriteOutcome::BrokenPipe => {
                    let event = conn.event(Kind::BrokenPipe).errno(Some("EPIPE"));
                    server.out.emit(event.note(note::BROKEN_PIPE));
                    return mailbox.set_state(State::Broken);
                }
                WriteOutcome::Reset => {
                    echo::report_reset(conn, server, "write()");
                    return mailbox.set_state(State::Broken);
                }
                WriteOutcome::Failed(e) => {
                    echo::report_error(conn, server, "write()", &e);
                    return mailbox.set_state(State::Broken);
                }
            }
        }
    }
}

fn lock(rooms: &Mutex<Rooms>) -> MutexGuard<'_, Rooms> {
    rooms.lock().unwrap_or_else(|p| p.into_inner())
}

/// Join the member threads that have finished, so their `exit` is reported promptly.
fn reap_finished(handlers: &mut Vec<(u64, JoinHandle<()>)>, server: &Server) {
    let mut i = 0;
    while i < handlers.len() {
        if handlers[i].1.is_finished() {
            let (id, thread) = handlers.swap_remove(i);
            join(id, thread, server);
        } else {
            i += 1;
        }
    }
}

fn join(id: u64, thread: JoinHandle<()>, server: &Server) {
    let detail = match thread.join() {
        Ok(()) => format!("threads conn-{id} and conn-{id}-w returned"),
        Err(_) => format!("thread conn-{id} panicked"),
    };
    let event = Event::new(Kind::Exit).conn(id).detail(detail);
    server.out.emit(event.note(note::EXIT_THREAD));
    server.finished();
}
