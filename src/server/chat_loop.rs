//! # What the chat's event loops share: one thread owns every member and every room
//!
//! The poll, select and nonblocking chats serve everyone from one thread, so the rooms need
//! no lock: nothing else can touch them. [`Hub`] holds the [`Chat`] and, for each member, its
//! socket, its line framer and the text waiting for it. The three models call the same steps
//! (a member is readable, writable, idle; the end of a turn) and differ only in how they wait.
//!
//! Delivering a line to a room never writes at once: the text is appended to each
//! recipient's queue and the queues are written once at the end of the turn (a burst of lines
//! to one member costs one write, not one per line). A write that does not fit waits for
//! write readiness. A queue that passes MAX_QUEUE means its member is not reading: it is
//! dropped, so one slow reader can neither stall the room nor grow the server's memory.
//!
//! Lesson: `lessons/12-chat.md`.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::chat::{
    abort_dropped, drain_then_close, fits_queue, report, report_dropped, send_lines_at_once,
    too_long_message,
};
use super::{echo, Connection, Server, Stats};
use crate::chat::{Chat, LineFramer, MemberId, Outbox, Why};
use crate::event::Kind;
use crate::note;
use crate::outcome::{self, ReadOutcome, WriteOutcome};

/// How a member's connection ends.
#[derive(Debug)]
pub enum End {
    /// close() with this note, once its queue is out: a FIN.
    Close(&'static str),
    /// Dropped (not reading): close() with SO_LINGER 0, an RST; its queue is thrown away.
    Drop,
    /// `--idle-timeout`: silent this long; a FIN.
    Timeout(Duration),
    /// Already dead (RST, EPIPE, an error) and reported: only the descriptor is left.
    Dead,
}

/// One member's connection and what it needs between two turns.
pub struct Member {
    pub conn: Connection,
    framer: LineFramer,
    /// Text for it; `out[sent..]` is what the kernel has not taken yet.
    out: Vec<u8>,
    sent: usize,
    /// In the hub's list of queues to write at the end of the turn.
    dirty: bool,
    last_heard: Instant,
    /// Decided: end this way once the queue is out (`/quit`, an over-long line, its FIN).
    closing: Option<End>,
}

impl Member {
    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Nothing more is read from a member whose end is decided.
    pub fn wants_read(&self) -> bool {
        self.closing.is_none()
    }

    pub fn wants_write(&self) -> bool {
        self.unsent() > 0
    }
}

/// Every member and the rooms, owned by the loop's one thread. Members are keyed by their
/// connection number, never reused, so a stale readiness event can never hit a newcomer.
pub struct Hub {
    chat: Chat,
    members: HashMap<usize, Member>,
    /// Members with new text, to write at the end of the turn.
    dirty: Vec<usize>,
    /// Members whose wish to read or write may have changed: the poll loop re-arms them.
    touched: Vec<usize>,
    /// Members taken out, for the loop to close (the poll loop deletes them from its poller
    /// first).
    ended: Vec<(Member, End)>,
    /// Lines framed from one read (kept, to reuse its memory).
    lines: Vec<Vec<u8>>,
    max_line: usize,
}

impl Hub {
    pub fn new(server: &Server) -> Hub {
        Hub {
            chat: Chat::new(),
            members: HashMap::new(),
            dirty: Vec::new(),
            touched: Vec::new(),
            ended: Vec::new(),
            lines: Vec::new(),
            max_line: server.config.max_line,
        }
    }

    pub fn keys(&self) -> Vec<usize> {
        self.members.keys().copied().collect()
    }

    pub fn get(&self, key: usize) -> Option<&Member> {
        self.members.get(&key)
    }

    /// A new connection joins the lobby; its key is its connection number.
    pub fn admit(&mut self, conn: Connection, server: &Server) -> usize {
        let key = conn.id as usize;
        send_lines_at_once(&conn);
        let member = Member {
            conn,
            framer: LineFramer::new(self.max_line),
            out: Vec::new(),
            sent: 0,
            dirty: false,
            last_heard: Instant::now(),
            closing: None,
        };
        self.members.insert(key, member);
        let welcome = self.chat.arrive(key as MemberId);
        self.deliver(welcome, server);
        key
    }

    /// The member's socket is readable: one read(), its lines to the chat.
    pub fn on_readable(&mut self, key: usize, buf: &mut [u8], server: &Server) {
        let Some(member) = self.members.get_mut(&key) else {
            return;
        };
        if !member.wants_read() {
            return;
        }
        let conn = &member.conn;
        let n = match outcome::classify_read((&conn.stream).read(buf)) {
            ReadOutcome::Data(n) => n,
            // Its FIN: it leaves; what is queued for it still goes out, then our FIN.
            ReadOutcome::Eof => {
                server.out.emit(conn.event(Kind::Eof).note(note::EOF));
                self.leave(key, Why::Eof, server);
                return self.close_after_output(key, End::Close(note::CLOSE_AFTER_EOF));
            }
            ReadOutcome::Reset => {
                echo::report_reset(conn, server, "read()");
                return self.end(key, Why::Reset, End::Dead, server);
            }
            ReadOutcome::WouldBlock => {
                Stats::add(&server.stats.wouldblock, 1);
                return;
            }
            ReadOutcome::Interrupted => return,
            ReadOutcome::Failed(e) => {
                echo::report_error(conn, server, "read()", &e);
                return self.end(key, Why::Failed, End::Dead, server);
            }
        };
        member.last_heard = Instant::now();
        if server.out.wants_data() {
            let event = conn.event(Kind::Recv).payload(&buf[..n]);
            server.out.emit(event.note(note::RECV));
        }
        let mut lines = std::mem::take(&mut self.lines);
        let framed = member.framer.push(&buf[..n], &mut lines);
        let mut quit = false;
        for line in &lines {
            Stats::add(&server.stats.messages, 1);
            let out = self.chat.line(key as MemberId, line);
            quit = out.quit;
            self.deliver(out, server);
            if quit {
                break; // the rest is never read
            }
        }
        lines.clear();
        self.lines = lines;
        if quit {
            // `/quit`: our FIN once "* bye" is out.
            self.close_after_output(key, End::Close(note::CHAT_QUIT));
        } else if let Err(too_long) = framed {
            self.refuse_long_line(key, too_long.max, server);
        }
    }

    /// The member's socket is writable: write what waits for it.
    pub fn on_writable(&mut self, key: usize, server: &Server) {
        self.write_queue(key, server);
    }

    /// `--idle-timeout`: members silent too long leave, with the reason.
    pub fn expire(&mut self, now: Instant, server: &Server) {
        let Some(limit) = server.config.idle_timeout else {
            return;
        };
        let idle: Vec<(usize, Duration)> = self
            .members
            .iter()
            .map(|(&key, m)| (key, now.saturating_duration_since(m.last_heard)))
            .filter(|&(_, idle)| idle >= limit)
            .collect();
        for (key, idle_for) in idle {
            self.end(key, Why::Timeout, End::Timeout(idle_for), server);
        }
    }

    /// The end of a turn: write every queue that got text. A write may fail and its member
    /// leave, which queues more text for others: go on until nothing is left to write.
    pub fn flush(&mut self, server: &Server) {
        while let Some(key) = self.dirty.pop() {
            if let Some(member) = self.members.get_mut(&key) {
                member.dirty = false;
                self.write_queue(key, server);
            }
        }
    }

    /// Stopping: every member gets our FIN.
    pub fn stop_all(&mut self) {
        for key in self.keys() {
            if let Some(member) = self.members.remove(&key) {
                self.ended.push((member, End::Close(note::CLOSE_STOP)));
            }
        }
    }

    /// Members taken out this turn, to close.
    pub fn take_ended(&mut self) -> Vec<(Member, End)> {
        std::mem::take(&mut self.ended)
    }

    /// Members whose interest may have changed since the last call.
    pub fn take_touched(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.touched)
    }

    /// The poll loop's oneshot interest must be re-armed after each event.
    pub fn touch(&mut self, key: usize) {
        self.touched.push(key);
    }

    /// Hand the chat's outbox to the members' queues, in order. A queue that would pass
    /// MAX_QUEUE drops its member, whose room is then told: more text, handled in turn.
    fn deliver(&mut self, outbox: Outbox, server: &Server) {
        let mut outboxes = VecDeque::from([outbox]);
        while let Some(outbox) = outboxes.pop_front() {
            let mut dropped = Vec::new();
            for delivery in &outbox.deliveries {
                for &to in &delivery.to {
                    let key = to as usize;
                    let Some(member) = self.members.get_mut(&key) else {
                        continue;
                    };
                    if !fits_queue(member.unsent(), delivery.text.len()) {
                        report_dropped(to, member.unsent(), server);
                        dropped.push(key);
                        continue;
                    }
                    member.out.extend_from_slice(delivery.text.as_bytes());
                    self.dirty(key);
                }
            }
            for happening in &outbox.happenings {
                report(happening, server);
            }
            for key in dropped {
                if let Some(member) = self.members.remove(&key) {
                    self.ended.push((member, End::Drop));
                    outboxes.push_back(self.chat.leave(key as MemberId, Why::NotReading));
                }
            }
        }
    }

    fn dirty(&mut self, key: usize) {
        if let Some(member) = self.members.get_mut(&key) {
            if !member.dirty {
                member.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// `! line longer than N bytes`, then our FIN (event `limit`).
    fn refuse_long_line(&mut self, key: usize, max: usize, server: &Server) {
        let Some(member) = self.members.get_mut(&key) else {
            return;
        };
        let event = member.conn.event(Kind::Limit);
        let event = event.detail(format!("a line longer than {max} bytes (--max-line)"));
        server.out.emit(event.note(note::CHAT_TOO_LONG));
        member
            .out
            .extend_from_slice(too_long_message(max).as_bytes());
        self.dirty(key);
        self.leave(key, Why::TooLong, server);
        self.close_after_output(key, End::Close(note::CHAT_CLOSE_TOO_LONG));
    }

    /// Leave the chat now; the connection ends once its queue is out.
    fn close_after_output(&mut self, key: usize, end: End) {
        if let Some(member) = self.members.get_mut(&key) {
            member.closing = Some(end);
        }
        self.dirty(key);
    }

    /// The member leaves the chat (its room is told why); its socket stays for now.
    fn leave(&mut self, key: usize, why: Why, server: &Server) {
        let out = self.chat.leave(key as MemberId, why);
        self.deliver(out, server);
    }

    /// The member leaves and its connection ends now.
    fn end(&mut self, key: usize, why: Why, end: End, server: &Server) {
        if let Some(member) = self.members.remove(&key) {
            self.ended.push((member, end));
        }
        self.leave(key, why, server);
    }

    /// write() the member's queue until it is empty or the kernel's buffer is full.
    fn write_queue(&mut self, key: usize, server: &Server) {
        let Some(member) = self.members.get_mut(&key) else {
            return;
        };
        while member.sent < member.out.len() {
            let chunk = &member.out[member.sent..];
            match outcome::classify_write((&member.conn.stream).write(chunk)) {
                WriteOutcome::Wrote(n) => {
                    if server.out.wants_data() {
                        let event = member.conn.event(Kind::Send).payload(&chunk[..n]);
                        server.out.emit(event.note(note::SEND));
                    }
                    Stats::add(&server.stats.bytes_echoed, n as u64);
                    member.sent += n;
                }
                // The kernel's buffer is full: the rest waits for write readiness.
                WriteOutcome::WouldBlock => {
                    Stats::add(&server.stats.wouldblock, 1);
                    break;
                }
                WriteOutcome::Interrupted => continue,
                WriteOutcome::BrokenPipe => {
                    let event = member.conn.event(Kind::BrokenPipe).errno(Some("EPIPE"));
                    server.out.emit(event.note(note::BROKEN_PIPE));
                    return self.end(key, Why::Failed, End::Dead, server);
                }
                WriteOutcome::Reset => {
                    echo::report_reset(&member.conn, server, "write()");
                    return self.end(key, Why::Reset, End::Dead, server);
                }
                WriteOutcome::Failed(e) => {
                    echo::report_error(&member.conn, server, "write()", &e);
                    return self.end(key, Why::Failed, End::Dead, server);
                }
            }
        }
        if member.sent == member.out.len() {
            member.out.clear();
            member.sent = 0;
            if member.out.capacity() > crate::chat::MAX_QUEUE {
                member.out = Vec::new(); // a burst made it large: give it back
            }
            if let Some(end) = member.closing.take() {
                let member = self.members.remove(&key).expect("a member");
                self.ended.push((member, end));
                return;
            }
        }
        self.touched.push(key);
    }
}

/// A member's last step: close its socket the way `end` says, and report it.
pub fn finish(member: Member, end: End, server: &Server) {
    let conn = member.conn;
    match end {
        End::Close(why) => drain_then_close(conn, server, why),
        End::Drop => abort_dropped(conn, server),
        End::Timeout(idle_for) => {
            let event = conn.event(Kind::Timeout);
            let detail = format!("idle {:.1} s", idle_for.as_secs_f64());
            drop(conn); // close(): the FIN goes out
            server.out.emit(event.detail(detail).note(note::TIMEOUT));
        }
        End::Dead => drop(conn),
    }
    server.finished();
}
