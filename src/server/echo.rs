//! The echo handler's steps, shared by the blocking, threaded and process models: each of
//! them hands one accepted connection to [`serve`] and differs only in *who* runs it.
//!
//! One connection's life: read whatever arrived, echo exactly those bytes back, and end on
//! the peer's FIN (EOF), its RST, the bye word, an idle timeout, Ctrl-C, or one of the
//! failure options (`--crash-after`, `--reset-after`) that make a lesson happen on purpose.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{Connection, Server, Stats, TICK};
use crate::event::{Event, Kind};
use crate::note;
use crate::outcome::{self, ReadOutcome, WriteOutcome};

/// The most a handler reads at once; also the memory a connection costs us.
pub const READ_BUF: usize = 64 * 1024;

/// How a connection ended, so the mode can do what its model does with a crash.
pub enum Ending {
    /// The handler closed (or lost) the connection itself; nothing is left to do.
    Finished,
    /// `--crash-after` was reached: the mode must die "abruptly" with the socket still open
    /// (blocking: drop it; threaded: panic; process: exit), so the kernel sends the FIN.
    Crashed(Connection),
}

/// Serve one connection until it ends.
pub fn serve(conn: Connection, server: &Server) -> Ending {
    let out = &server.out;
    let config = &server.config;
    // A blocked read() or write() wakes every TICK, so Ctrl-C and --idle-timeout are noticed
    // even while the peer is silent (SO_RCVTIMEO / SO_SNDTIMEO).
    if let Err(e) = set_timeouts(&conn) {
        out.emit(
            conn.event(Kind::Error)
                .detail(format!("cannot set timeouts: {e}")),
        );
        return Ending::Finished;
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut messages = 0u64;
    // When bytes last moved either way: a peer that sends but never reads stalls our
    // write, and is as idle as a silent one.
    let mut last_progress = Instant::now();

    loop {
        if server.stop.requested() {
            close(conn, server, note::CLOSE_STOP);
            return Ending::Finished;
        }
        let n = match outcome::classify_read((&conn.stream).read(&mut buf)) {
            ReadOutcome::Data(n) => n,
            ReadOutcome::Eof => {
                out.emit(conn.event(Kind::Eof).note(note::EOF));
                close(conn, server, note::CLOSE_AFTER_EOF);
                return Ending::Finished;
            }
            ReadOutcome::Reset => {
                report_reset(&conn, server, "read()");
                return Ending::Finished;
            }
            // The read timed out: nothing arrived during this TICK.
            ReadOutcome::WouldBlock => {
                let idle_for = last_progress.elapsed();
                if config.idle_timeout.is_some_and(|limit| idle_for >= limit) {
                    time_out(conn, server, idle_for);
                    return Ending::Finished;
                }
                continue;
            }
            // A signal interrupted read(); nothing happened to the socket.
            ReadOutcome::Interrupted => continue,
            ReadOutcome::Failed(e) => {
                report_error(&conn, server, "read()", &e);
                return Ending::Finished;
            }
        };

        let message = &buf[..n];
        last_progress = Instant::now();
        messages += 1;
        Stats::add(&server.stats.messages, 1);
        if out.wants_data() {
            out.emit(conn.event(Kind::Recv).payload(message).note(note::RECV));
        }
        // The bye word is not echoed; whatever came before it in the same read still is.
        let bye = bye_at(message, &config.bye_word);
        let answer = answer(&message[..bye.unwrap_or(n)], config);
        if !answer.is_empty() {
            if let Some(delay) = config.delay {
                // The handler "works" before answering: only this connection waits.
                if server.stop.sleep(delay) {
                    continue; // stopping: the top of the loop closes the connection
                }
            }
            match echo(&conn, answer, server, &mut last_progress) {
                Echoed::All => {}
                Echoed::Gone => return Ending::Finished,
                Echoed::Stopping => continue, // the top of the loop closes the connection
                Echoed::Stalled(idle_for) => {
                    time_out(conn, server, idle_for);
                    return Ending::Finished;
                }
            }
        }
        if let Some(before) = bye {
            close_after_bye(conn, server, n - before);
            return Ending::Finished;
        }
        if config.crash_after == Some(messages) {
            return Ending::Crashed(conn);
        }
        if config.reset_after == Some(messages) {
            abort(conn, server);
            return Ending::Finished;
        }
    }
}

fn set_timeouts(conn: &Connection) -> std::io::Result<()> {
    conn.stream.set_read_timeout(Some(TICK))?;
    conn.stream.set_write_timeout(Some(TICK))
}

/// How an echo ended.
enum Echoed {
    /// Every byte is in the kernel's send buffer.
    All,
    /// The connection died on the way (reported).
    Gone,
    /// Ctrl-C while the send buffer was full.
    Stopping,
    /// The peer has not read for `--idle-timeout`: the send buffer stayed full that long.
    Stalled(Duration),
}

/// Write all of `message` back. A write that cannot go on (the peer does not read) wakes
/// every TICK, like a read, to check for Ctrl-C and `--idle-timeout`.
fn echo(conn: &Connection, message: &[u8], server: &Server, last_progress: &mut Instant) -> Echoed {
    let mut written = 0;
    while written < message.len() {
        match outcome::classify_write((&conn.stream).write(&message[written..])) {
            WriteOutcome::Wrote(n) => {
                written += n;
                *last_progress = Instant::now();
            }
            // The send buffer stayed full for a TICK: the peer is not reading.
            WriteOutcome::WouldBlock => {
                if server.stop.requested() {
                    return Echoed::Stopping;
                }
                let idle_for = last_progress.elapsed();
                if server
                    .config
                    .idle_timeout
                    .is_some_and(|limit| idle_for >= limit)
                {
                    return Echoed::Stalled(idle_for);
                }
            }
            WriteOutcome::Interrupted => continue,
            WriteOutcome::BrokenPipe => {
                server.out.emit(
                    conn.event(Kind::BrokenPipe)
                        .errno(Some("EPIPE"))
                        .note(note::BROKEN_PIPE),
                );
                return Echoed::Gone;
            }
            WriteOutcome::Reset => {
                report_reset(conn, server, "write()");
                return Echoed::Gone;
            }
            WriteOutcome::Failed(e) => {
                report_error(conn, server, "write()", &e);
                return Echoed::Gone;
            }
        }
    }
    Stats::add(&server.stats.bytes_echoed, message.len() as u64);
    if server.out.wants_data() {
        server
            .out
            .emit(conn.event(Kind::Send).payload(message).note(note::SEND));
    }
    Echoed::All
}

/// `--idle-timeout`: nothing moved either way for that long.
pub fn time_out(conn: Connection, server: &Server, idle_for: Duration) {
    let event = conn
        .event(Kind::Timeout)
        .detail(format!("idle {:.1} s", idle_for.as_secs_f64()));
    close_reporting(conn, server, event, note::TIMEOUT);
}

/// What goes back for `message` (the bytes before any bye word): the message itself, or
/// the fixed `--reply`. Nothing comes back for nothing, so a lone bye word gets no reply.
pub fn answer<'a>(message: &'a [u8], config: &'a super::Config) -> &'a [u8] {
    match &config.reply {
        Some(reply) if !message.is_empty() => reply,
        _ => message,
    }
}

/// Does this message hold the bye word: all of one read's bytes (trailing whitespace
/// trimmed), or one whole line of them? If so, how many bytes come before it (to be echoed,
/// since TCP may have merged an earlier message into this read).
pub fn bye_at(message: &[u8], bye_word: &str) -> Option<usize> {
    let word = bye_word.as_bytes();
    let mut start = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.trim_ascii_end() == word {
            return Some(start);
        }
        start += line.len();
    }
    None
}

/// close(): the kernel sends our FIN (an RST if input is left unread).
pub fn close(conn: Connection, server: &Server, why: &'static str) {
    let event = conn.event_closed(Kind::Close);
    close_reporting(conn, server, event, why);
}

/// The bye word: close without echoing it, nor what followed it in the same read.
/// `discarded`: those bytes (the bye word's line and everything after it).
pub fn close_after_bye(conn: Connection, server: &Server, discarded: usize) {
    let event = conn.event_closed(Kind::Close).discarded(discarded);
    close_reporting(conn, server, event, note::CLOSE_BYE);
}

/// Every close the server decides goes through here: close(), then `event` with the note
/// that says what the kernel sent. `fin_note` if nothing was left unread; if the peer's bytes
/// still sit in our receive buffer, the kernel discards them and sends an RST instead, and
/// the event says so (`unread`, and the RST version of the note).
pub fn close_reporting(conn: Connection, server: &Server, event: Event, fin_note: &'static str) {
    // Only the last copy's close sends anything (`--parent-keeps-fd`).
    if server.config.copy_held_elsewhere {
        drop(conn);
        return server.out.emit(event.note(note::CLOSE_SHARED));
    }
    let unread = conn.unread();
    drop(conn); // the descriptor is closed here: the FIN (or RST) is on its way when we say so
    server.out.emit(match unread {
        0 => event.note(fin_note),
        n => super::with_unread(event, n, fin_note),
    });
}

/// close() with SO_LINGER 0: the kernel sends an RST instead of a FIN.
pub fn abort(conn: Connection, server: &Server) {
    if let Err(e) = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO)) {
        report_error(&conn, server, "setsockopt(SO_LINGER)", &e);
    }
    let event = conn.event_closed(Kind::Abort).note(note::ABORT);
    drop(conn); // the RST goes out here
    server.out.emit(event);
}

pub fn report_reset(conn: &Connection, server: &Server, call: &str) {
    Stats::add(&server.stats.resets, 1);
    server.out.emit(
        conn.event(Kind::Reset)
            .errno(Some("ECONNRESET"))
            .detail(format!("{call} failed"))
            .note(note::RESET),
    );
}

pub fn report_error(conn: &Connection, server: &Server, call: &str, e: &std::io::Error) {
    server.out.emit(
        conn.event(Kind::Error)
            .errno(outcome::errno_name(e))
            .detail(format!("{call} failed: {e}")),
    );
}

#[cfg(test)]
mod tests {
    use super::{bye_at, READ_BUF};

    #[test]
    fn the_longest_bye_word_fits_in_one_read() {
        assert_eq!(crate::cli::BYE_WORD_MAX, READ_BUF);
    }

    #[test]
    fn bye_is_a_whole_message_or_a_whole_line() {
        assert_eq!(bye_at(b"Bye", "Bye"), Some(0));
        assert_eq!(bye_at(b"Bye\r\n", "Bye"), Some(0));
        assert_eq!(bye_at(b"Bye\n\n", "Bye"), Some(0));
        assert_eq!(bye_at(b"hello\nBye\n", "Bye"), Some(6));
        assert_eq!(bye_at(b"Bye bye", "Bye"), None);
        assert_eq!(bye_at(b"Byeee", "Bye"), None);
    }
}
