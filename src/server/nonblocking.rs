//! # The nonblocking server: one thread that asks every socket, again and again
//!
//! The listening socket and every connection are non-blocking: a call that cannot do its job
//! at once fails with EAGAIN (Rust's `ErrorKind::WouldBlock`) instead of sleeping. One
//! thread then loops for ever: try accept(), try every connection's write and read, repeat.
//! Nobody waits for anybody, so every client is served at once.
//!
//! What to watch for:
//! - The CPU: the loop never sleeps, so even with no client at all it uses a whole core
//!   (`top`). Almost every call finds nothing: a `wouldblock` event each second counts the
//!   wasted tries, and the summary adds them up with the loop's turns and its CPU time.
//! - `--delay` is a deadline per connection, checked on every turn, not a sleep: a sleeping
//!   handler would stop the whole loop, and everyone with it.
//! - A write that does not fit stays queued for that connection (event_loop.rs) and is
//!   tried again on the next turn; nothing is lost, and nothing waits.
//!
//! Lesson: `lessons/04-nonblocking.md`; demo: `tcp-lab demo nonblocking-spin`.

use std::io;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use super::echo::READ_BUF;
use super::event_loop::{self, End, LoopAccepted, LoopConn, Step, ACCEPT_BATCH};
use super::{Acceptor, Server, Stats, EMFILE_BACKOFF};
use crate::event::{Event, Kind};
use crate::note;

/// How often the loop reports its wasted tries.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub fn run(listener: &TcpListener, server: &Server) -> io::Result<()> {
    listener.set_nonblocking(true)?; // accept() now returns EAGAIN instead of sleeping
    let mut conns: Vec<LoopConn> = Vec::new();
    let mut buf = vec![0u8; READ_BUF]; // one read buffer for everyone
    let mut acceptor = Acceptor::default();
    let mut accept_paused_until: Option<Instant> = None;
    let mut report = SpinReport::new();

    while server.keep_accepting() {
        Stats::add(&server.stats.loop_iterations, 1);
        let now = Instant::now();

        // 1. Anyone new? Usually not: EAGAIN, counted as a wasted try.
        if accept_paused_until.is_none_or(|until| now >= until) {
            accept_paused_until = None;
            if accept_some(&mut acceptor, listener, &mut conns, server) {
                // Out of descriptors: accept() would fail at once on every turn, so stop
                // asking for a moment (the queued connections wait in the kernel).
                accept_paused_until = Some(now + EMFILE_BACKOFF);
            }
        }

        // 2. Try every connection, ready or not.
        let mut i = 0;
        while i < conns.len() {
            match try_everything(&mut conns[i], &mut buf, now, server) {
                Ok(()) => i += 1,
                Err(end) => event_loop::finish(conns.swap_remove(i), end, server),
            }
        }

        report.every_second(now, conns.len(), server);
        server.out.flush();
        // Let any other program that wants this CPU run first; the loop still takes every
        // cycle left over, which is the point of this lesson.
        thread::yield_now();
    }

    // Ctrl-C (or --exit-after): every connection still open gets a FIN.
    for lc in conns {
        event_loop::finish(lc, End::Close(note::CLOSE_STOP), server);
    }
    Ok(())
}

/// accept() until the queue is empty (EAGAIN) or ACCEPT_BATCH were taken: a thousand
/// clients arriving together wait one turn, not a thousand. Returns true if out of
/// descriptors.
fn accept_some(
    acceptor: &mut Acceptor,
    listener: &TcpListener,
    conns: &mut Vec<LoopConn>,
    server: &Server,
) -> bool {
    for _ in 0..ACCEPT_BATCH {
        match event_loop::accept(acceptor, listener, server) {
            LoopAccepted::Conn(lc) => {
                conns.push(lc);
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

/// One connection's share of a turn: its deadlines, then write() what is queued, then
/// read(). Each call either does something or fails with EAGAIN at once.
fn try_everything(lc: &mut LoopConn, buf: &mut [u8], now: Instant, server: &Server) -> Step {
    lc.on_time(now, server)?;
    if lc.wants_write() {
        lc.write(server)?;
    }
    if lc.wants_read() {
        lc.read(buf, server)?;
    }
    Ok(())
}

/// The aggregated `wouldblock` event: the turns and wasted tries of the last second.
struct SpinReport {
    since: Instant,
    turns: u64,
    wasted: u64,
}

impl SpinReport {
    fn new() -> SpinReport {
        SpinReport {
            since: Instant::now(),
            turns: 0,
            wasted: 0,
        }
    }

    fn every_second(&mut self, now: Instant, open: usize, server: &Server) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < REPORT_EVERY {
            return;
        }
        let turns = Stats::get(&server.stats.loop_iterations);
        let wasted = Stats::get(&server.stats.wouldblock);
        server.out.emit(
            Event::new(Kind::WouldBlock)
                .detail(format!("in the last {:.1} s", elapsed.as_secs_f64()))
                .stat("turns", turns - self.turns)
                .stat("wasted", wasted - self.wasted)
                .stat("open", open as u64)
                .note(note::WOULDBLOCK),
        );
        *self = SpinReport {
            since: now,
            turns,
            wasted,
        };
    }
}
