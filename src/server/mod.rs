//! What every server mode shares: its options, the listening socket, Ctrl-C, counters and
//! the summary. The modes themselves live one per file beside this one.
//!
//! Read [`run`] first: it binds, listens, installs the Ctrl-C handler and hands the
//! listening socket to the mode the learner picked.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::cli::{App, Mode, ServeArgs, Trigger};
use crate::event::{Event, Kind, Output, Role};
use crate::{note, outcome, tcp_state};

pub mod blocking;
pub mod chat;
pub mod chat_loop;
pub mod chat_nonblocking;
pub mod chat_poll;
pub mod chat_select;
pub mod chat_threaded;
pub mod echo;
pub mod event_loop;
pub mod nonblocking;
#[cfg(target_os = "linux")]
pub mod poll;
pub mod process;
pub mod select;
pub mod talk;
pub mod threaded;

/// How often a blocked call wakes up to check for Ctrl-C and idle connections. Short enough
/// that the server stops "within a second", long enough to cost nothing.
pub const TICK: Duration = Duration::from_millis(100);

/// How long a server waits at exit for a slow stdout to take its last events.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long to wait before accepting again after running out of descriptors.
pub const EMFILE_BACKOFF: Duration = Duration::from_millis(200);

/// The options every mode obeys, in the units the code needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Poll mode: how readiness is asked for (`--trigger`, edge unless told otherwise).
    pub trigger: Trigger,
    /// What is done with the bytes: echo, chat or talk.
    pub app: App,
    /// Chat: the longest line accepted (`--max-line`).
    pub max_line: usize,
    /// The handler "works" this long before echoing.
    pub delay: Option<Duration>,
    /// A message equal to it closes the connection.
    pub bye_word: String,
    /// `--reply`: the bytes sent back for every message instead of the message itself.
    pub reply: Option<Vec<u8>>,
    /// After this many messages the handler dies abruptly.
    pub crash_after: Option<u64>,
    /// After this many messages close with an RST.
    pub reset_after: Option<u64>,
    /// Stop once this many connections have finished.
    pub exit_after: Option<u64>,
    /// Close the listening socket once this many connections are accepted.
    pub close_listener_after: Option<u64>,
    /// Above this many open connections, turn newcomers away.
    pub max_conns: Option<u64>,
    /// Close a connection idle this long.
    pub idle_timeout: Option<Duration>,
    /// Another process holds a copy of every socket (a process-model child whose parent
    /// keeps its copy, `--parent-keeps-fd`): our close() sends no FIN.
    pub copy_held_elsewhere: bool,
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> Config {
        Config {
            mode: args.mode,
            trigger: args.trigger.unwrap_or(Trigger::Edge),
            app: args.app,
            max_line: args.max_line as usize,
            delay: args.delay.map(Duration::from_millis),
            bye_word: args.bye_word.clone(),
            reply: args
                .reply
                .as_ref()
                .map(|text| format!("{text}\n").into_bytes()),
            crash_after: args.crash_after,
            reset_after: args.reset_after,
            exit_after: args.exit_after,
            close_listener_after: args.close_listener_after,
            max_conns: args.max_conns,
            idle_timeout: args.idle_timeout.map(Duration::from_secs),
            copy_held_elsewhere: false,
        }
    }
}

impl Config {
    /// When to close the listening socket, and the note that says why: after
    /// `--close-listener-after N` connections, or after `--exit-after N` (no later connection
    /// would be served), whichever comes first.
    pub fn listener_close_after(&self) -> Option<(u64, &'static str)> {
        let closing = self.close_listener_after.map(|n| (n, note::CLOSE_LISTENER));
        let exiting = self.exit_after.map(|n| (n, note::CLOSE_LISTENER_EXIT));
        match (closing, exiting) {
            (Some(c), Some(e)) if e.0 < c.0 => Some(e),
            (Some(c), _) => Some(c),
            (None, e) => e,
        }
    }
}

/// Counters for the summary; atomics, because the threaded mode's handlers share them.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub finished: AtomicU64,
    pub messages: AtomicU64,
    pub bytes_echoed: AtomicU64,
    pub resets: AtomicU64,
    /// The chat only: lines read from members (commands included).
    pub lines: AtomicU64,
    /// The chat only: copies of lines handed to other members (one line to a room of four
    /// is three).
    pub relayed: AtomicU64,
    /// The chat and talk: bytes written to the clients (nothing is echoed there).
    pub bytes_sent: AtomicU64,
    /// Connections being served right now (for --max-conns).
    pub open: AtomicU64,
    /// Connections turned away by --max-conns.
    pub turned_away: AtomicU64,
    /// Event loops only: turns of the loop (nonblocking: tries of everything; poll: waits).
    pub loop_iterations: AtomicU64,
    /// Event loops only: calls that found nothing to do (EAGAIN), the cost of asking.
    pub wouldblock: AtomicU64,
    /// Select mode only: descriptors examined over all select() calls (the scan).
    pub scanned: AtomicU64,
    /// Poll mode only: epoll_ctl calls that added, changed or removed an interest: what
    /// `--trigger` costs beyond the wait itself (`strace -c` counts the same).
    pub epoll_ctl: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Something to call when a stop is requested: an event loop asleep in `wait` cannot see a
/// flag, so it leaves a way to wake it (`Poller::notify`).
pub type StopHook = Box<dyn Fn() + Send + Sync>;

/// A stop request (Ctrl-C or SIGTERM) that sleeping code can wait on.
#[derive(Default)]
pub struct Stop {
    requested: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    hooks: Mutex<Vec<StopHook>>,
}

impl Stop {
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        for hook in hooks.iter() {
            hook();
        }
    }

    /// Call `hook` whenever a stop is requested (the event loops wake their poller with it).
    /// Register it before checking [`Stop::requested`], so a request in between is not missed.
    pub fn on_request(&self, hook: StopHook) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks.push(hook);
    }

    /// Sleep up to `duration`, waking early on a stop request. Returns true if stopped.
    pub fn sleep(&self, duration: Duration) -> bool {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .wait_timeout_while(guard, duration, |_| !self.requested())
            .unwrap_or_else(|p| p.into_inner());
        self.requested()
    }
}

/// Everything a mode needs, shared (by `Arc`) with handler threads.
pub struct Server {
    pub config: Config,
    pub out: Output,
    pub stop: Stop,
    pub stats: Stats,
}

impl Server {
    /// True once `--exit-after` connections have finished.
    pub fn exit_after_reached(&self) -> bool {
        self.config
            .exit_after
            .is_some_and(|n| Stats::get(&self.stats.finished) >= n)
    }

    /// Should the accept loop keep going?
    pub fn keep_accepting(&self) -> bool {
        !self.stop.requested() && !self.exit_after_reached()
    }

    /// Is the server at `--max-conns`? Then the next connection is turned away.
    pub fn is_full(&self) -> bool {
        self.config
            .max_conns
            .is_some_and(|max| Stats::get(&self.stats.open) >= max)
    }

    /// Over `--max-conns`: the kernel already accepted the connection for us, so the polite
    /// answer is to say why and close (a FIN, or an RST if it spoke first), rather than
    /// leave the peer waiting.
    pub fn turn_away(&self, conn: Connection) {
        // One short write into an empty send buffer: it never blocks, and if the peer is
        // already gone there is nobody to tell.
        let _ = (&conn.stream).write(b"server full\n");
        Stats::add(&self.stats.turned_away, 1);
        // event_closed: no TCP state, for the event is the close() (as `close` events are).
        let event = conn
            .event_closed(Kind::Limit)
            .detail(format!("{} connections open", Stats::get(&self.stats.open)));
        echo::close_reporting(conn, self, event, note::LIMIT);
    }

    /// A connection was accepted and will be served: count it and say so.
    pub fn opened(&self, conn: &Connection) {
        Stats::add(&self.stats.accepted, 1);
        Stats::add(&self.stats.open, 1);
        self.out.emit(conn.event(Kind::Accept).note(note::ACCEPT));
    }

    /// A connection's service ended (however it ended).
    pub fn finished(&self) {
        Stats::sub(&self.stats.open, 1);
        Stats::add(&self.stats.finished, 1);
    }
}

/// What one accept() gave.
pub enum Accepted {
    /// A new connection, numbered, within `--max-conns`; not yet counted as open (the mode
    /// calls [`Server::opened`] once it can really serve it).
    Conn(Connection),
    /// Over `--max-conns`: told `server full` and closed (event `limit`).
    TurnedAway,
    /// Nothing queued (EAGAIN, or the TICK of the blocking models ran out), a signal
    /// interrupted the call, or a queued connection was reset before we took it.
    Nothing,
    /// The listening socket is closed (`--close-listener-after`, `--exit-after`): there is
    /// nothing to accept any more.
    Closed,
    /// Out of descriptors (reported once per episode) or another failure (reported): stop
    /// accepting for EMFILE_BACKOFF rather than failing again at once, the way nginx does.
    /// The connections wait in the kernel's queue meanwhile.
    BackOff,
}

/// accept() for every mode: numbers the connections 1, 2, …, applies `--max-conns`, and
/// remembers whether running out of descriptors was already reported.
#[derive(Default)]
pub struct Acceptor {
    accepted: u64,
    reported_emfile: bool,
    /// The listening socket has been closed ([`Acceptor::close_listener_if_due`]).
    listener_closed: bool,
}

impl Acceptor {
    pub fn accept(&mut self, listener: &TcpListener, server: &Server) -> Accepted {
        if self.listener_closed {
            return Accepted::Closed;
        }
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) => return self.failed(&e, server),
        };
        self.reported_emfile = false;
        self.accepted += 1;
        let conn = Connection::new(self.accepted, stream);
        if server.is_full() {
            server.turn_away(conn);
            return Accepted::TurnedAway;
        }
        Accepted::Conn(conn)
    }

    /// The blocking models' accept(): sleeps until a connection is queued, or for one TICK
    /// (None: look for Ctrl-C, then call again). Out of descriptors, it first backs off for
    /// EMFILE_BACKOFF instead of failing again at once.
    pub fn accept_or_wait(
        &mut self,
        listener: &TcpListener,
        server: &Server,
    ) -> Option<Connection> {
        match self.accept(listener, server) {
            Accepted::Conn(conn) => Some(conn),
            Accepted::Nothing | Accepted::TurnedAway => None,
            // Nothing will ever be accepted again: wait like an empty accept() would.
            Accepted::Closed => {
                server.stop.sleep(TICK);
                None
            }
            Accepted::BackOff => {
                server.stop.sleep(EMFILE_BACKOFF);
                None
            }
        }
    }

    /// Has the listening socket been closed? (The event loops stop watching it.)
    pub fn listener_closed(&self) -> bool {
        self.listener_closed
    }

    /// Is it time to close the listening socket (and has it not been closed yet)?
    pub fn listener_close_due(&self, server: &Server) -> bool {
        server
            .config
            .listener_close_after()
            .is_some_and(|(n, _)| !self.listener_closed && Stats::get(&server.stats.accepted) >= n)
    }

    /// `--close-listener-after N`, or `--exit-after N`: once N connections are accepted,
    /// close() the listening socket, and say so. Every mode calls this right after it
    /// accepted a connection. Returns true when it closed it just now.
    pub fn close_listener_if_due(&mut self, listener: &TcpListener, server: &Server) -> bool {
        let Some((n, why)) = server.config.listener_close_after() else {
            return false;
        };
        if !self.listener_close_due(server) {
            return false;
        }
        self.listener_closed = true;
        let local = listener.local_addr().ok();
        let event = match close_in_place(listener) {
            Ok(()) => Event::new(Kind::Close)
                .addrs(local, None)
                .detail(format!(
                    "listening socket, after {n} connection{}",
                    if n == 1 { "" } else { "s" }
                ))
                .note(why),
            Err(e) => Event::new(Kind::Error).addrs(local, None).detail(format!(
                "cannot close the listening socket: {e}; accepting no more"
            )),
        };
        server.out.emit(event);
        true
    }

    fn failed(&mut self, error: &io::Error, server: &Server) -> Accepted {
        if outcome::would_block(error) || outcome::interrupted(error) || outcome::is_reset(error) {
            return Accepted::Nothing;
        }
        if !outcome::out_of_descriptors(error) {
            let event = Event::new(Kind::Error).detail(format!("accept() failed: {error}"));
            server.out.emit(event.errno(outcome::errno_name(error)));
        } else if !self.reported_emfile {
            self.reported_emfile = true;
            server.out.emit(
                Event::new(Kind::Error)
                    .errno(outcome::errno_name(error))
                    .detail("accept() failed: out of file descriptors")
                    .note(note::EMFILE),
            );
        }
        Accepted::BackOff
    }
}

/// close() the listening socket while `server::run` still owns its descriptor (every mode
/// borrows it): dup3() puts /dev/null at the same number, which closes the socket exactly
/// as close() would (its port stops listening; connections still in its queue are reset),
/// and leaves a descriptor its owner can drop as usual.
fn close_in_place(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup3/dup2 onto a descriptor this process owns; no memory is involved.
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::dup3(null.as_raw_fd(), listener.as_raw_fd(), libc::O_CLOEXEC) };
    #[cfg(not(target_os = "linux"))]
    let rc = unsafe {
        let rc = libc::dup2(null.as_raw_fd(), listener.as_raw_fd());
        if rc >= 0 {
            libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        rc
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// accept() blocks until a connection is queued. A receive timeout on the listening socket
/// makes it give up every TICK (EAGAIN), so the blocking models can notice Ctrl-C.
pub fn wake_accept_every_tick(listener: &TcpListener, server: &Server) {
    if let Err(e) = SockRef::from(listener).set_read_timeout(Some(TICK)) {
        server.out.emit(Event::new(Kind::Error).detail(format!(
            "cannot set an accept timeout: {e}; Ctrl-C waits for a client"
        )));
    }
}

/// One accepted connection: its number, its socket, and both ends' addresses.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub stream: TcpStream,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

impl Connection {
    pub fn new(id: u64, stream: TcpStream) -> Connection {
        let local = stream.local_addr().ok();
        let peer = stream.peer_addr().ok();
        Connection {
            id,
            stream,
            local,
            peer,
        }
    }

    /// An event about this connection, with the kernel's TCP state of its socket right now.
    pub fn event(&self, kind: Kind) -> Event {
        Event::new(kind)
            .conn(self.id)
            .addrs(self.local, self.peer)
            .state(tcp_state::of(&self.stream))
    }

    /// Bytes that arrived and were never read: closing the socket now would send an RST.
    pub fn unread(&self) -> usize {
        unread_bytes(&self.stream)
    }

    /// An event about this connection after its socket is gone (no TCP state to read).
    pub fn event_closed(&self, kind: Kind) -> Event {
        Event::new(kind).conn(self.id).addrs(self.local, self.peer)
    }
}

/// `tcp-lab serve`: listen, then run the chosen mode until it stops.
pub fn run(args: &ServeArgs) -> Result<()> {
    give_large_blocks_back();
    let config = Config::from_args(args);
    let mut out = Output::new(Role::Server, Some(args.mode.name()), &args.output)
        .quiet(args.quiet)
        .shedding(); // a stdout nobody reads must not stop the serving
    if matches!(args.mode, Mode::Nonblocking | Mode::Select | Mode::Poll) {
        // One thread serves everyone: it writes events out once per turn of its loop, not
        // once per event.
        out = out.buffered();
    }
    let addr = args.addr.resolve()?;
    let listener = listen(addr, args.backlog, !args.no_reuseaddr)?;
    let server = Arc::new(Server {
        config,
        out,
        stop: Stop::default(),
        stats: Stats::default(),
    });
    // Before the listen event: whoever reads it may press Ctrl-C (or send SIGTERM) at once.
    install_stop_handler(&server, true)?;
    // The process model's report pipe, before the listen event too: from that event on, the
    // server's descriptors are its listener and its connections only.
    let reports = (args.mode == Mode::Process && args.app == App::Echo).then(process::report_pipe);
    // --wire: this port's packets as `packet` events; the capture stops when `run` returns.
    let local = listener.local_addr().unwrap_or(addr);
    let _wire =
        crate::wire::print_for_listener(&args.wire, local, &args.output, server.out.epoch_ns())?;
    server.out.emit(
        Event::new(Kind::Listen)
            .addrs(listener.local_addr().ok(), None)
            .state(tcp_state::of(&listener))
            .detail(format!("backlog {}", args.backlog))
            .pid(std::process::id())
            .note(note::LISTEN),
    );
    server.out.flush(); // a script waits for this line to learn the port

    let served = match args.app {
        App::Echo => run_echo(&listener, &server, args, reports),
        App::Chat => chat::run(&listener, &server),
        App::Talk => talk::run(&listener, &server),
    };

    if served.is_ok() {
        if server.stop.requested() {
            close_queued(&listener, &server);
        }
        emit_summary(&server);
    }
    server.out.finish(OUTPUT_GRACE); // the events still queued, even before an error
    served
}

/// The echo server, in the mode the learner picked.
fn run_echo(
    listener: &TcpListener,
    server: &Arc<Server>,
    args: &ServeArgs,
    reports: Option<Result<process::Reports>>,
) -> Result<()> {
    match args.mode {
        Mode::Blocking => {
            blocking::run(listener, server);
            Ok(())
        }
        Mode::Threaded => {
            threaded::run(listener, server);
            Ok(())
        }
        Mode::Process => {
            process::run(listener, server, args.parent_keeps_fd, reports);
            Ok(())
        }
        Mode::Nonblocking => {
            nonblocking::run(listener, server).context("the nonblocking server failed")
        }
        Mode::Select => select::run(listener, server).context("the select server failed"),
        #[cfg(target_os = "linux")]
        Mode::Poll => poll::run(listener, server).context("the poll server failed"),
        #[cfg(not(target_os = "linux"))]
        Mode::Poll => anyhow::bail!(
            "the poll server calls epoll, which only Linux has: here, try --mode select \
             (or --app chat, whose poll loop runs on kqueue too)"
        ),
    }
}

/// Can this app run in this mode, with these options? If not, the sentence that says why
/// (a usage error: `tcp-lab` exits 2 with it before listening).
pub fn app_fits(args: &ServeArgs) -> Result<(), String> {
    match args.app {
        App::Echo => return Ok(()),
        App::Chat => chat::fits(args.mode)?,
        App::Talk => talk::fits(args.mode)?,
    }
    // The echo's ways to misbehave on purpose mean nothing to a chat or a talk.
    let echo_only = [
        ("--delay", args.delay.is_some()),
        ("--reply", args.reply.is_some()),
        ("--crash-after", args.crash_after.is_some()),
        ("--reset-after", args.reset_after.is_some()),
        ("--trigger", args.trigger.is_some()),
    ];
    match echo_only.iter().find(|(_, given)| *given) {
        Some((option, _)) => Err(format!(
            "{option} shapes the echo; it has no meaning with --app {}",
            args.app.name()
        )),
        None => Ok(()),
    }
}

/// socket(), setsockopt(SO_REUSEADDR), bind(), listen(): the four calls of every server.
fn listen(addr: SocketAddr, backlog: i32, reuse_addr: bool) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a socket")?;
    // SO_REUSEADDR lets a restarted server bind its port while connections of the last run
    // still sit in TIME_WAIT (the seeds set it too; std's TcpListener::bind always does).
    // `--no-reuseaddr` leaves it off, to see what it is for.
    socket
        .set_reuse_address(reuse_addr)
        .context("cannot set SO_REUSEADDR")?;
    socket
        .bind(&addr.into())
        .map_err(|e| anyhow::anyhow!(bind_error(&e, addr, reuse_addr)))?;
    // std's TcpListener::bind fixes the backlog at 128; socket2 lets the learner choose it.
    socket
        .listen(backlog)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket.into())
}

/// A server's memory should come back after a burst. glibc's malloc gives a large block
/// (128 KiB and more) its own mmap, returned to the kernel when freed, but it raises that
/// threshold to the size of every such block freed: after one burst (an accept storm's event
/// text, a peer's 1 MB echo) the next large blocks come from the heap and stay resident once
/// freed. A fixed threshold keeps every block of 64 KiB or more in its own mapping.
fn give_large_blocks_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// bind() errors, said so a learner knows what to do next.
fn bind_error(e: &io::Error, addr: SocketAddr, reuse_addr: bool) -> String {
    match e.raw_os_error() {
        // Without SO_REUSEADDR a connection of the last run in TIME_WAIT is enough to refuse.
        Some(libc::EADDRINUSE) if !reuse_addr => format!(
            "{addr} is already in use — with --no-reuseaddr a connection left in TIME_WAIT \
by the last run blocks bind() for ~60 s (ss -tan state time-wait); drop --no-reuseaddr, \
or another server may be running"
        ),
        Some(libc::EADDRINUSE) => {
            format!("{addr} is already in use — is another server running? try --port 0")
        }
        Some(libc::EACCES) => format!(
            "cannot bind {addr}: permission denied — ports below 1024 need privileges; try --port 7788 or --port 0"
        ),
        Some(libc::EADDRNOTAVAIL) => format!(
            "cannot bind {addr}: no interface of this machine has that address — try --host 127.0.0.1"
        ),
        _ => format!("cannot bind {addr}: {e}"),
    }
}

/// Ctrl-C (SIGINT) and SIGTERM set the stop flag; every mode checks it at least every TICK.
/// `announce`: print the `stop` event (the process model's children leave that to the parent).
fn install_stop_handler(server: &Arc<Server>, announce: bool) -> Result<()> {
    let server = Arc::clone(server);
    ctrlc::set_handler(move || {
        // The `stop` event first, so it comes before the closes the stop causes. Printing
        // cannot hold the stop up: a server's events go into a queue that sheds, never
        // waiting for stdout (a handler that blocked here on a full pipe ignored Ctrl-C).
        if announce && !server.stop.requested() {
            server.out.emit(Event::new(Kind::Stop).note(note::STOP));
        }
        server.stop.request();
    })
    .context("cannot install the Ctrl-C handler")?;
    // A process-model child starts with these signals blocked (see block_stop_signals):
    // one sent before the handler existed waits, and is delivered to the handler now.
    set_stop_signals(libc::SIG_UNBLOCK).context("cannot unblock SIGINT and SIGTERM")
}

/// Block SIGINT and SIGTERM in a process-model child from before it is exec'd until its
/// handler is installed: otherwise a stop in that moment kills it outright, without the
/// close and the event its connection is owed. Async-signal-safe (it runs in pre_exec).
pub(crate) fn block_stop_signals() -> io::Result<()> {
    set_stop_signals(libc::SIG_BLOCK)
}

fn set_stop_signals(how: libc::c_int) -> io::Result<()> {
    // SAFETY: sigemptyset, sigaddset and sigprocmask only touch the set we pass and this
    // thread's signal mask; all three are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::sigprocmask(how, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Connections the kernel finished but nobody accepted yet would get an RST when the
/// listening socket closes. Accept each one only to close it, so it gets a FIN like the rest
/// (an RST all the same if its peer had sent bytes: they are unread).
fn close_queued(listener: &TcpListener, server: &Server) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while let Ok((stream, peer)) = listener.accept() {
        let local = stream.local_addr().ok();
        let event = Event::new(Kind::Close)
            .addrs(local, Some(peer))
            .detail("queued, never served");
        let unread = unread_bytes(&stream);
        drop(stream); // close(): FIN, or RST over unread bytes
        server.out.emit(match unread {
            0 => event.note(note::CLOSE_QUEUED),
            n => with_unread(event, n, note::CLOSE_QUEUED),
        });
    }
}

/// FIONREAD (SIOCINQ): how many bytes wait in a socket's receive buffer, unread. Linux
/// discards them when the socket is closed and tells the peer with an RST, not a FIN.
pub fn unread_bytes(socket: &impl AsRawFd) -> usize {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into the variable we pass.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if rc < 0 {
        return 0; // not a connected socket any more: nothing to discard
    }
    unread.max(0) as usize
}

/// The event of a close that left `unread` bytes behind: the kernel sent an RST. A plain
/// `close` becomes an `abort` (we closed: RST); a `timeout` or `limit` keeps its kind.
pub fn with_unread(event: Event, unread: usize, fin_note: &str) -> Event {
    let kind = match event.kind {
        Kind::Close => Kind::Abort,
        kind => kind,
    };
    Event { kind, ..event }
        .unread(unread)
        .note(note::unread(fin_note))
}

/// User plus system CPU time of this process so far, in milliseconds (getrusage).
pub fn cpu_ms() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

fn emit_summary(server: &Server) {
    let stats = &server.stats;
    let mut summary = Event::new(Kind::Summary)
        .stat("connections", Stats::get(&stats.accepted))
        .stat("finished", Stats::get(&stats.finished));
    summary = match server.config.app {
        // In the process model the children count these; their reports add them up here.
        App::Echo => summary
            .stat("messages", Stats::get(&stats.messages))
            .stat("bytes_echoed", Stats::get(&stats.bytes_echoed))
            .stat("resets", Stats::get(&stats.resets)),
        // Nothing is echoed in a chat: lines come in, copies of them go out to others.
        App::Chat => summary
            .stat("lines", Stats::get(&stats.lines))
            .stat("relayed", Stats::get(&stats.relayed))
            .stat("bytes_sent", Stats::get(&stats.bytes_sent))
            .stat("resets", Stats::get(&stats.resets)),
        // Talk: the client's words (one per read()) and the operator's replies.
        App::Talk => summary
            .stat("reads", Stats::get(&stats.messages))
            .stat("bytes_sent", Stats::get(&stats.bytes_sent)),
    };
    summary = summary.stat("turned_away", Stats::get(&stats.turned_away));
    // The event loops' cost: how often they went round, how many calls found nothing, and
    // the CPU time the whole process used.
    if matches!(
        server.config.mode,
        Mode::Nonblocking | Mode::Select | Mode::Poll
    ) {
        summary = summary
            .stat("loop_iterations", Stats::get(&stats.loop_iterations))
            .stat("wouldblock", Stats::get(&stats.wouldblock))
            .stat("cpu_ms", cpu_ms());
    }
    if server.config.mode == Mode::Select {
        summary = summary.stat("scanned", Stats::get(&stats.scanned));
    }
    // (The chat's and talk's poll loops do not count theirs: only the echo's has --trigger.)
    if server.config.mode == Mode::Poll && server.config.app == App::Echo {
        summary = summary.stat("epoll_ctl", Stats::get(&stats.epoll_ctl));
    }
    // Events shed because stdout did not keep up (only when some were).
    let dropped = server.out.dropped();
    if dropped > 0 {
        summary = summary.stat("events_dropped", dropped);
    }
    server.out.emit(summary.note(note::SUMMARY));
}
