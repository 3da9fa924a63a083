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

use super::echo::{self, Ending};
use super::{Acceptor, Server};
use crate::event::Kind;
use crate::note;

pub fn run(listener: &TcpListener, server: &Server) {
    super::wake_accept_every_tick(listener, server);
    let mut acceptor = Acceptor::default();

    while server.keep_accepting() {
        // accept(): sleeps until a connection is queued, or for one TICK (then Ctrl-C?).
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        // --close-listener-after / --exit-after: no more accepts, so close the listener now.
        acceptor.close_listener_if_due(listener, server);

        // Serve this client to the end. Everyone else waits in the kernel's accept queue.
        match echo::serve(conn, server) {
            Ending::Finished => {}
            // A single-threaded server cannot die for one client: it drops the connection
            // as a crashing handler would, without a word, and the kernel sends the FIN.
            Ending::Crashed(conn) => {
                let event = conn.event_closed(Kind::Close).detail("handler crashed");
                echo::close_reporting(conn, server, event, note::CLOSE_CRASH);
            }
        }
        server.finished();
    }
}
