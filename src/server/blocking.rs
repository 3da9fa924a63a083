//! # The blocking server: one connection at a time
//!
//! The simplest server there is: `accept()` a connection, serve it until it ends, then
//! `accept()` the next. Every call blocks, and while one client is being served nobody else
//! is.
//!
//! What to watch for: start two clients. The second one's `connect()` succeeds at once — the
//! kernel completes the handshake by itself and queues the connection (the listen backlog) —
//! but the server does not `accept()` it, let alone answer it, until the first client leaves.
//!
//! Lesson: `lessons/01-blocking.md`; demo: `tcp-lab demo blocking-backlog`.

use std::net::TcpListener;

use socket2::SockRef;

use super::echo::{self, Ending};
use super::{Connection, Server, EMFILE_BACKOFF, TICK};
use crate::event::Kind;
use crate::{note, outcome};

pub fn run(listener: &TcpListener, server: &Server) {
    // accept() blocks until a connection is queued. A receive timeout on the listening socket
    // makes it give up every TICK (EAGAIN), so we can notice Ctrl-C.
    if let Err(e) = SockRef::from(listener).set_read_timeout(Some(TICK)) {
        server
            .out
            .emit(crate::event::Event::new(Kind::Error).detail(format!(
                "cannot set an accept timeout: {e}; Ctrl-C will wait for a client"
            )));
    }
    let mut next_id = 1;
    let mut reported_emfile = false;

    while server.keep_accepting() {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            // No connection arrived during this TICK, or a signal interrupted accept().
            Err(e) if outcome::would_block(&e) || outcome::interrupted(&e) => continue,
            Err(e) => {
                server.accept_failed(&e, &mut reported_emfile);
                server.stop.sleep(EMFILE_BACKOFF);
                continue;
            }
        };
        reported_emfile = false;

        let conn = Connection::new(next_id, stream);
        next_id += 1;
        server.opened(&conn);

        // Serve this client to the end. Everyone else waits in the kernel's accept queue.
        match echo::serve(conn, server) {
            Ending::Finished => {}
            // A single-threaded server cannot die for one client: it drops the connection
            // as a crashing handler would, without a word, and the kernel sends the FIN.
            Ending::Crashed(conn) => {
                let event = conn.event_closed(Kind::Close).detail("handler crashed");
                server.out.emit(event.note(note::CLOSE_CRASH));
                drop(conn);
            }
        }
        server.finished();
    }
}
