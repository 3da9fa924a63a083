//! # The client: scripted, interactive, and naive
//!
//! - **scripted** (`--send`, `--count`, `--bye`): send each message, wait for its echo, then
//!   close the way the learner asked: a FIN (`close`), a half-close (`--half-close`:
//!   `shutdown(Write)`, then read until the server's EOF) or an RST (`--abort`).
//! - **interactive** (the default): stdin *and* the socket are watched together with
//!   `polling`, so a FIN from the server is reported the moment it arrives, even while the
//!   learner is still typing. This is the fix the seeds arrive at.
//! - **naive** (`--naive`): the seeds' first client. It blocks reading stdin, sends, then
//!   blocks in `recv()`. A server that closed while it waited on stdin goes unnoticed until
//!   its next write — which "succeeds" — and its read returns 0.
//!
//! Lessons: `lessons/07-resets.md`, `lessons/08-half-close.md`, `lessons/09-multiplexing.md`.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use polling::{Event as Interest, Events, Poller};
use socket2::SockRef;

use crate::cli::ClientArgs;
use crate::event::{Event, Kind, Output, Role};
use crate::outcome::{self, ReadOutcome, WriteOutcome};
use crate::{note, tcp_state};

const READ_BUF: usize = 64 * 1024;

pub fn run(args: &ClientArgs) -> Result<()> {
    let out = Output::new(Role::Client, None, &args.output).named(args.name.clone());
    let addr = args.addr.resolve()?;
    // --wire: this connection's packets as `packet` events, from before the SYN.
    let _wire = crate::wire::print_for_peer(&args.wire, addr, &args.output, out.epoch_ns())?;
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    let mut client = Client::connect(addr, Arc::new(out), connect_timeout)?;
    client.wait = Duration::from_secs_f64(args.wait);
    // The state right after connect(), but the handler installed before the event is
    // printed: whoever reads it may press Ctrl-C at once.
    let connected = client.event(Kind::Connect).note(note::CONNECT);
    close_on_ctrl_c(&client)?;
    client.emit(connected);
    if args.naive {
        naive(client)
    } else if args.send.is_empty() && args.count.is_none() && !args.bye {
        interactive(client, args)
    } else {
        scripted(client, args)
    }
}

/// What waiting for the server gave us.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// As many bytes as we expected came back.
    Enough,
    /// The server's FIN (read returned 0).
    Eof,
    /// The deadline passed first.
    Nothing,
}

/// A connected socket and everything needed to report on it.
struct Client {
    stream: TcpStream,
    /// Shared with the Ctrl-C handler, which prints the close of an interrupted client.
    out: Arc<Output>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Bytes sent and bytes received so far: the client waits until they match.
    sent: u64,
    received: u64,
    /// The server's FIN has been read: whoever closes now closes second.
    peer_closed: bool,
    /// Our FIN went out with shutdown(Write): close() will send nothing new.
    shut_down: bool,
    buf: Vec<u8>,
    /// `--wait`: how long to wait for an echo or for the server's FIN.
    wait: Duration,
    /// The socket's descriptor, lent to the Ctrl-C handler while it is open (see
    /// [`close_on_ctrl_c`]). A copy (dup) would keep the connection open after our close():
    /// the FIN would leave only when the process exits, later than the event says.
    open_fd: OpenFd,
}

/// The socket's descriptor number while it is open, `None` once closed. Whoever holds the
/// lock may use the number: close() and abort() clear it and close the socket under the lock,
/// so the handler never touches a closed (or reused) descriptor.
type OpenFd = Arc<Mutex<Option<RawFd>>>;

fn lock(open_fd: &OpenFd) -> MutexGuard<'_, Option<RawFd>> {
    open_fd
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// connect(): the three-way handshake (the caller reports it). A refusal or a timeout is
    /// an event *and* an error.
    fn connect(addr: SocketAddr, out: Arc<Output>, timeout: Duration) -> Result<Client> {
        let stream = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                out.emit(
                    Event::new(Kind::Refused)
                        .addrs(None, Some(addr))
                        .errno(Some("ECONNREFUSED"))
                        .note(note::REFUSED),
                );
                bail!("connection refused by {addr} — is the server running? start one with `tcp-lab serve --port {}`", addr.port());
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                out.emit(
                    Event::new(Kind::Timeout)
                        .addrs(None, Some(addr))
                        .errno(Some("ETIMEDOUT"))
                        .detail(format!("no answer within {:.1} s", timeout.as_secs_f64()))
                        .note(note::CONNECT_TIMEOUT),
                );
                bail!(
                    "connect to {addr} timed out after {:.1} s — is its backlog full (a server \
that does not accept)? try a longer --connect-timeout",
                    timeout.as_secs_f64()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
        };
        let client = Client {
            local: stream.local_addr().ok(),
            peer: stream.peer_addr().ok(),
            open_fd: Arc::new(Mutex::new(Some(stream.as_raw_fd()))),
            stream,
            out,
            sent: 0,
            received: 0,
            peer_closed: false,
            shut_down: false,
            buf: vec![0; READ_BUF],
            wait: Duration::from_secs(5),
        };
        Ok(client)
    }

    fn event(&self, kind: Kind) -> Event {
        Event::new(kind)
            .addrs(self.local, self.peer)
            .state(tcp_state::of(&self.stream))
    }

    fn emit(&self, event: Event) {
        self.out.emit(event);
    }

    /// write() all of `bytes`. EPIPE and ECONNRESET end the client with exit status 1.
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            match outcome::classify_write(self.stream.write(&bytes[written..])) {
                WriteOutcome::Wrote(n) => written += n,
                WriteOutcome::Interrupted | WriteOutcome::WouldBlock => continue,
                WriteOutcome::BrokenPipe => {
                    self.emit(
                        self.event(Kind::BrokenPipe)
                            .errno(Some("EPIPE"))
                            .note(note::BROKEN_PIPE),
                    );
                    bail!("write failed with EPIPE: the server closed this connection long ago");
                }
                WriteOutcome::Reset => return Err(self.reset("write()")),
                WriteOutcome::Failed(e) => return Err(e).context("write() failed"),
            }
        }
        self.sent += bytes.len() as u64;
        self.emit(self.event(Kind::Send).payload(bytes).note(note::SEND));
        Ok(())
    }

    /// One read(), reported. `None` means nothing arrived before the socket's timeout.
    fn receive_once(&mut self, eof_note: &'static str) -> Result<Option<Heard>> {
        match outcome::classify_read(self.stream.read(&mut self.buf)) {
            ReadOutcome::Data(n) => {
                self.received += n as u64;
                let event = self
                    .event(Kind::Recv)
                    .payload(&self.buf[..n])
                    .note(note::RECV);
                self.emit(event);
                Ok(Some(Heard::Enough))
            }
            ReadOutcome::Eof => {
                self.peer_closed = true;
                // After our shutdown(), this FIN answers ours: nothing is left open.
                let why = if self.shut_down {
                    note::EOF_AFTER_SHUTDOWN
                } else {
                    eof_note
                };
                self.emit(self.event(Kind::Eof).note(why));
                Ok(Some(Heard::Eof))
            }
            ReadOutcome::Reset => Err(self.reset("read()")),
            ReadOutcome::WouldBlock | ReadOutcome::Interrupted => Ok(None),
            ReadOutcome::Failed(e) => Err(e).context("read() failed"),
        }
    }

    /// Read until everything we sent has come back, the server closes, or `--wait` passes
    /// (then say so: a `timeout` event, never a silent give-up).
    fn await_echo(&mut self) -> Result<Heard> {
        let heard = self.read_until(self.wait, |client| client.received >= client.sent)?;
        if heard == Heard::Nothing {
            let missing = self.sent - self.received;
            let detail = format!("{missing} bytes not echoed within {}", secs(self.wait));
            self.emit(
                self.event(Kind::Timeout)
                    .detail(detail)
                    .note(note::WAIT_ECHO),
            );
        }
        Ok(heard)
    }

    /// Read (and report) whatever comes until the server's FIN or until `--wait` passes
    /// (then a `timeout` event).
    fn await_eof(&mut self) -> Result<Heard> {
        let heard = self.read_until(self.wait, |_| false)?;
        if heard == Heard::Nothing {
            let detail = format!("no FIN within {}", secs(self.wait));
            self.emit(
                self.event(Kind::Timeout)
                    .detail(detail)
                    .note(note::WAIT_FIN),
            );
        }
        Ok(heard)
    }

    /// Stay connected and idle for `hold`, still reading: a FIN meanwhile is seen at once.
    fn hold(&mut self, hold: Duration) -> Result<Heard> {
        self.read_until(hold, |_| false)
    }

    fn read_until(&mut self, wait: Duration, done: impl Fn(&Client) -> bool) -> Result<Heard> {
        let deadline = Instant::now() + wait;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Heard::Nothing);
            }
            self.stream.set_read_timeout(Some(left))?;
            if let Some(Heard::Eof) = self.receive_once(note::EOF)? {
                return Ok(Heard::Eof);
            }
        }
        Ok(Heard::Enough)
    }

    /// The peer's RST: report it and turn it into the error that ends the client.
    fn reset(&self, call: &str) -> anyhow::Error {
        self.emit(
            self.event(Kind::Reset)
                .errno(Some("ECONNRESET"))
                .detail(format!("{call} failed"))
                .note(note::RESET),
        );
        anyhow!("the server reset the connection (ECONNRESET) during {call}")
    }

    /// close(): our FIN.
    fn close(self) {
        let why = match (self.shut_down, self.peer_closed) {
            (true, _) => note::CLOSE_AFTER_SHUTDOWN,
            (false, true) => note::CLOSE_AFTER_EOF,
            (false, false) => note::CLOSE_FIRST,
        };
        let event = Event::new(Kind::Close).addrs(self.local, self.peer);
        let open_fd = Arc::clone(&self.open_fd);
        let mut open = lock(&open_fd); // a Ctrl-C now waits until the close is reported
        *open = None;
        drop(self.stream); // the FIN goes out here
        self.out.emit(event.note(why));
    }

    /// close() with SO_LINGER 0: an RST instead of a FIN.
    fn abort(self) -> Result<()> {
        SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .context("cannot set SO_LINGER")?;
        let event = Event::new(Kind::Abort)
            .addrs(self.local, self.peer)
            .note(note::ABORT);
        let open_fd = Arc::clone(&self.open_fd);
        let mut open = lock(&open_fd); // a Ctrl-C now waits until the abort is reported
        *open = None;
        drop(self.stream); // the RST goes out here
        self.out.emit(event);
        Ok(())
    }

    /// shutdown(Write): our FIN, while we keep reading.
    fn shutdown_write(&mut self) -> Result<()> {
        self.stream
            .shutdown(Shutdown::Write)
            .context("shutdown(Write) failed")?;
        self.shut_down = true;
        self.emit(self.event(Kind::Shutdown).note(note::SHUTDOWN));
        Ok(())
    }
}

/// `5 s`, `0.5 s`: a duration as the learner gave it.
fn secs(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

/// Ctrl-C (or SIGTERM) ends the client at once, wherever it is blocked (on stdin, in a read,
/// in a pause): the handler reports the close the kernel is about to do for us, then exits.
/// It borrows the socket's descriptor (never a copy of it) to read the state and what is left
/// unread; if the socket is already closed, that close was reported and there is nothing to add.
fn close_on_ctrl_c(client: &Client) -> Result<()> {
    let open_fd = Arc::clone(&client.open_fd);
    let out = Arc::clone(&client.out);
    let (local, peer) = (client.local, client.peer);
    ctrlc::set_handler(move || {
        let open = lock(&open_fd);
        if let Some(fd) = *open {
            // SAFETY: the descriptor stays open while we hold the lock (close() and abort()
            // clear it under the lock before closing), and we exit still holding it.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            out.emit(ctrl_c_close(&socket, local, peer));
        }
        out.flush();
        std::process::exit(0); // the kernel closes every descriptor: the FIN (or RST) goes out
    })
    .context("cannot install the Ctrl-C handler")
}

/// The close the kernel is about to do for an interrupted client: data left unread makes it
/// an RST; a FIN already sent (shutdown) leaves nothing to send.
fn ctrl_c_close(
    socket: &BorrowedFd<'_>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
) -> Event {
    let state = tcp_state::of(socket);
    let why = if unread_bytes(socket) > 0 {
        note::CLOSE_CTRL_C_UNREAD
    } else if matches!(
        state,
        Some("FIN_WAIT1" | "FIN_WAIT2" | "CLOSING" | "TIME_WAIT")
    ) {
        note::CLOSE_CTRL_C_AFTER_FIN
    } else {
        note::CLOSE_CTRL_C
    };
    Event::new(Kind::Close)
        .addrs(local, peer)
        .state(state)
        .detail("Ctrl-C")
        .note(why)
}

/// How many received bytes wait unread in the socket's receive buffer (FIONREAD).
fn unread_bytes(socket: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`; the descriptor is open for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// `--send`, `--count`, `--bye`: a fixed script, each send answered before the next.
fn scripted(mut client: Client, args: &ClientArgs) -> Result<()> {
    let mut messages: Vec<String> = args.send.clone();
    messages.extend((1..=args.count.unwrap_or(0)).map(|i| format!("message {i}")));

    for (i, text) in messages.iter().enumerate() {
        if i > 0 {
            if let Some(ms) = args.interval {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        client.send(format!("{text}\n").as_bytes())?;
        // A half-closing client sends everything first and reads the echoes after its FIN.
        if !args.half_close && client.await_echo()? == Heard::Eof {
            break; // the server closed: there is nobody left to talk to
        }
    }
    if args.bye && !client.peer_closed {
        client.send(b"Bye\n")?;
        client.await_eof()?;
    }
    if let Some(secs) = args.hold.filter(|_| !client.peer_closed) {
        client.hold(Duration::from_secs_f64(secs))?;
    }
    finish(client, args)
}

/// End the connection the way the learner asked: RST, half-close then FIN, or FIN.
fn finish(mut client: Client, args: &ClientArgs) -> Result<()> {
    if args.abort {
        return client.abort();
    }
    if args.half_close && !client.peer_closed {
        client.shutdown_write()?;
        client.await_eof()?;
    }
    client.close();
    Ok(())
}

/// Poller keys: which source is ready.
const SOCKET: usize = 0;
const STDIN: usize = 1;

/// Interactive: lines from stdin are sent, echoes are printed, and both are watched at once.
fn interactive(mut client: Client, args: &ClientArgs) -> Result<()> {
    // Our own descriptor for stdin, read without std's buffer: the poller reports readiness
    // of the descriptor, so bytes must not hide in a buffer it cannot see.
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let poller = Poller::new().context("cannot create a poller")?;
    // SAFETY: both sources are deleted from the poller (below) before they are dropped.
    unsafe { poller.add(&client.stream, Interest::readable(SOCKET)) }?;
    // epoll refuses regular files and /dev/null (EPERM): such a stdin is always "ready",
    // so we read it directly instead of waiting for it.
    let stdin_polled = unsafe { poller.add(&stdin, Interest::readable(STDIN)) }.is_ok();

    let result = watch_both(&mut client, &poller, &mut stdin, stdin_polled);
    let _ = poller.delete(&client.stream);
    if stdin_polled {
        let _ = poller.delete(&stdin);
    }
    match result? {
        Watch::ServerClosed => {
            client.close();
            Ok(())
        }
        Watch::StdinEnded => {
            // Let the echoes of what we sent come home, then close the way we were asked.
            client.stream.set_nonblocking(false)?;
            client.await_echo()?;
            finish(client, args)
        }
    }
}

/// Why the interactive loop ended.
enum Watch {
    ServerClosed,
    StdinEnded,
}

fn watch_both(
    client: &mut Client,
    poller: &Poller,
    stdin: &mut File,
    stdin_polled: bool,
) -> Result<Watch> {
    let mut events = Events::new();
    let mut line = vec![0u8; 4096];
    // The socket is only read when the poller says it is readable: make sure a read can
    // never block the loop anyway.
    client.stream.set_nonblocking(true)?;
    loop {
        events.clear();
        // A stdin we cannot poll is always ready: don't sleep at all then.
        let timeout = (!stdin_polled).then_some(Duration::ZERO);
        poller.wait(&mut events, timeout)?;
        let mut stdin_ready = !stdin_polled;
        let mut socket_ready = false;
        for ev in events.iter() {
            match ev.key {
                SOCKET => socket_ready = true,
                STDIN => stdin_ready = true,
                _ => {}
            }
        }
        if socket_ready {
            // Everything that arrived, then re-arm: interest is oneshot.
            while let Some(heard) = client.receive_once(note::EOF)? {
                if heard == Heard::Eof {
                    return Ok(Watch::ServerClosed);
                }
            }
            poller.modify(&client.stream, Interest::readable(SOCKET))?;
        }
        if stdin_ready {
            let n = match stdin.read(&mut line) {
                Ok(n) => n,
                Err(e) if outcome::interrupted(&e) => continue,
                Err(e) => return Err(e).context("cannot read stdin"),
            };
            if n == 0 {
                return Ok(Watch::StdinEnded);
            }
            client.stream.set_nonblocking(false)?;
            client.send(&line[..n])?;
            client.stream.set_nonblocking(true)?;
            if stdin_polled {
                poller.modify(&*stdin, Interest::readable(STDIN))?;
            }
        }
    }
}

/// `--naive`: the seeds' blocking client. Read a line, send it, block in recv(), repeat.
/// While it sits in the first step, nothing tells it the server has gone.
fn naive(mut client: Client) -> Result<()> {
    let stdin = io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        // Blocked here, on the keyboard: a FIN from the server goes unnoticed.
        if stdin.lock().read_line(&mut line)? == 0 {
            client.close();
            return Ok(());
        }
        client.send(line.as_bytes())?;
        // Blocked here, on the socket, with no timeout: the seeds' recv(1024).
        client.stream.set_read_timeout(None)?;
        while client.receive_once(note::EOF_NAIVE)?.is_none() {}
    }
}
