//! # The threaded server: a thread per connection
//!
//! The main thread only accepts. Each connection gets its own thread, which runs the same
//! echo steps as the blocking server; while one thread waits in `read()`, the others run.
//!
//! What to watch for:
//! - `spawn` and `exit` events: a thread starts with its connection and ends with it.
//! - Threads share the process's descriptors. The socket *moves* into its thread, and the
//!   main thread must not close it: a close there would close it for the handler too
//!   (the seeds' threaded server makes the same point).
//! - `--crash-after N` makes a handler panic. Unwinding drops its socket (the kernel sends
//!   the FIN), the main thread sees the panic when it joins the thread, and every other
//!   connection carries on.
//!
//! Lesson: `lessons/03-threads.md`; demo: `tcp-lab demo thread-per-client`.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::echo::{self, Ending};
use super::{Acceptor, Connection, Server};
use crate::event::{Event, Kind};
use crate::{note, outcome};

/// A handler thread and the connection it serves.
struct Handler {
    conn: u64,
    thread: JoinHandle<()>,
}

/// The payload of a deliberate `--crash-after` panic, so the panic hook can keep it quiet:
/// the `exit` event reports it instead of a backtrace. `unread`: bytes the peer had sent
/// that the handler never read, which make the kernel answer the crash with an RST.
struct DeliberateCrash {
    unread: usize,
}

pub fn run(listener: &TcpListener, server: &Arc<Server>) {
    super::wake_accept_every_tick(listener, server);
    silence_deliberate_crashes();
    let mut handlers: Vec<Handler> = Vec::new();
    let mut acceptor = Acceptor::default();

    while server.keep_accepting() {
        reap_finished(&mut handlers, server);
        // accept(): sleeps until a connection is queued, or for one TICK (then Ctrl-C?).
        let Some(conn) = acceptor.accept_or_wait(listener, server) else {
            continue;
        };
        server.opened(&conn);
        // --close-listener-after / --exit-after: no more accepts, so close the listener now.
        acceptor.close_listener_if_due(listener, server);
        match spawn_handler(conn, server) {
            Ok(handler) => handlers.push(handler),
            // Out of threads (EAGAIN): the connection was moved into the failed spawn and
            // dropped there, so the peer got a FIN (an RST, had it sent bytes already).
            Err(e) => {
                server.out.emit(
                    Event::new(Kind::Error)
                        .errno(outcome::errno_name(&e))
                        .detail(format!("cannot start a thread: {e}")),
                );
                server.finished();
            }
        }
    }
    // Stopping (or --exit-after): each handler notices within a TICK, closes its connection
    // with a FIN, and returns. Wait for all of them.
    for handler in handlers {
        join(handler, server);
    }
}

/// Start a thread that owns `conn` from now on.
fn spawn_handler(conn: Connection, server: &Arc<Server>) -> std::io::Result<Handler> {
    let id = conn.id;
    let name = format!("conn-{id}");
    let spawn_event = conn
        .event(Kind::Spawn)
        .detail(format!("thread {name}"))
        .note(note::SPAWN_THREAD);
    let shared = Arc::clone(server);
    // The new thread prints its own `spawn` before anything else it does: printed by the
    // main thread after spawn() returns, it could come after the handler's first read.
    let thread = thread::Builder::new().name(name).spawn(move || {
        shared.out.emit(spawn_event);
        handle(conn, &shared)
    })?;
    Ok(Handler { conn: id, thread })
}

/// The handler thread's body: the shared echo steps, and a real crash when asked for one.
fn handle(conn: Connection, server: &Server) {
    if let Ending::Crashed(conn) = echo::serve(conn, server) {
        // `conn` is still open here. The panic unwinds this thread, dropping it: the kernel
        // sends the FIN (an RST over unread bytes). Nothing else in the process is touched.
        let unread = conn.unread();
        let _still_open = conn;
        std::panic::panic_any(DeliberateCrash { unread });
    }
}

/// Join the handlers that have finished, so their `exit` is reported promptly.
fn reap_finished(handlers: &mut Vec<Handler>, server: &Server) {
    let mut i = 0;
    while i < handlers.len() {
        if handlers[i].thread.is_finished() {
            join(handlers.swap_remove(i), server);
        } else {
            i += 1;
        }
    }
}

/// join(): wait for the thread and learn how it ended: returned, or panicked.
fn join(handler: Handler, server: &Server) {
    let name = format!("thread conn-{}", handler.conn);
    let mut event = Event::new(Kind::Exit).conn(handler.conn);
    event = match handler.thread.join() {
        Ok(()) => event
            .detail(format!("{name} returned"))
            .note(note::EXIT_THREAD),
        Err(panic) => {
            let unread = panic
                .downcast_ref::<DeliberateCrash>()
                .map_or(0, |c| c.unread);
            let event = event.detail(format!("{name} panicked"));
            match unread {
                0 => event.note(note::EXIT_THREAD_PANIC),
                n => event.unread(n).note(note::EXIT_THREAD_PANIC_UNREAD),
            }
        }
    };
    server.out.emit(event);
    server.finished();
}

/// Keep the default panic message for real bugs, but not for `--crash-after`: that one is
/// the lesson, and the `exit` event tells it.
fn silence_deliberate_crashes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<DeliberateCrash>() {
            default_hook(info);
        }
    }));
}
