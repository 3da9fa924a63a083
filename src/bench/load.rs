//! The load generator: N connections driven from one thread, each with one message in flight.
//!
//! It is an event loop like the poll server's, seen from the other end: every connection
//! is registered with `polling` (level-triggered, so nothing is re-armed per message), the
//! thread sleeps until a socket is ready, reads what came back, checks it is the echo of
//! what it sent, and when the whole echo is in, times it and sends the next message.
//! Nothing is allocated per message: the message, the read buffer, the event list and the
//! latency histogram are made once, before the clock starts.
//!
//! Every wait is bounded: a connect that does not finish by its deadline, a peer that closes,
//! resets or answers with bytes it was never sent is a failed connection, counted in
//! `failed`, never waited on. A server that stops answering simply earns no more messages.
//!
//! `tcp-lab bench` ([`super`]) and `benches/pingpong.rs` both use it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use polling::{Event, Events, PollMode, Poller};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::outcome;

/// The longest single sleep in the poller: short, so a Ctrl-C or a deadline is noticed.
const WAKE: Duration = Duration::from_millis(100);

/// How many ready sockets one wait() may report.
const EVENTS: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// connect() is under way (non-blocking: EINPROGRESS).
    Connecting,
    /// Connected, and (if active) exchanging messages.
    Open,
    /// Refused, reset, closed by the peer, or given something that was not an echo.
    Failed,
}

/// One connection of the load.
struct Conn {
    stream: TcpStream,
    state: State,
    /// Idle connections only sit there: no message is ever sent on them.
    active: bool,
    /// Bytes of the message in flight written so far, and echoed back so far.
    sent: usize,
    echoed: usize,
    /// When the message in flight was sent: its latency is measured from here.
    since: Instant,
    /// Echoes completed on this connection, over the whole run.
    echoes: u64,
    /// Whether write interest is registered (a message did not fit in one write).
    wants_write: bool,
}

/// N connections and the list of ready ones the poller fills in.
pub struct Load {
    /// Filled by each wait(); kept apart from [`Net`] so it can be read while a connection
    /// is handled.
    events: Events,
    net: Net,
}

/// The connections, their poller, and the buffers reused for every message.
struct Net {
    poller: Poller,
    conns: Vec<Conn>,
    message: Vec<u8>,
    buf: Vec<u8>,
    /// Latency of each echo, in microseconds, from the send to the last byte of the echo.
    latency: Histogram<u64>,
    /// Whether latencies are being recorded (only in the measured window).
    recording: bool,
    /// Whether a completed echo is answered with the next message (false while draining).
    sending: bool,
}

impl Load {
    /// Open `active + idle` connections to `addr`, all at once and without blocking, and
    /// wait until each is connected, refused, or `deadline` passes (then it counts as
    /// failed). The idle ones are opened first, so they hold the server's lower descriptors.
    pub fn connect(
        addr: SocketAddr,
        active: usize,
        idle: usize,
        size: usize,
        deadline: Instant,
    ) -> io::Result<Load> {
        let mut net = Net {
            poller: Poller::new()?,
            conns: Vec::with_capacity(active + idle),
            message: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
            buf: vec![0; size.clamp(4096, 64 * 1024)],
            // 1 µs to 10 minutes, three significant digits: a fixed, preallocated table.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).map_err(io::Error::other)?,
            recording: false,
            sending: true,
        };
        for i in 0..idle + active {
            let stream = start_connect(addr)?;
            let key = net.conns.len();
            // SAFETY: the stream stays in `conns` until `Load` is closed or dropped, and both
            // delete it from the poller first.
            unsafe {
                net.poller
                    .add_with_mode(&stream, Event::writable(key), PollMode::Level)?
            };
            net.conns.push(Conn {
                stream,
                state: State::Connecting,
                active: i >= idle,
                sent: 0,
                echoed: 0,
                since: Instant::now(),
                echoes: 0,
                wants_write: false,
            });
        }
        let mut load = Load {
            events: Events::with_capacity(NonZeroUsize::new(EVENTS).expect("not zero")),
            net,
        };
        load.finish_connecting(deadline)?;
        Ok(load)
    }

    /// Wait until no connect() is under way: each one succeeded, was refused, or timed out.
    fn finish_connecting(&mut self, deadline: Instant) -> io::Result<()> {
        let net = &mut self.net;
        let mut pending = net.conns.len();
        while pending > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.events.clear();
            net.poller
                .wait(&mut self.events, Some((deadline - now).min(WAKE)))?;
            for event in self.events.iter() {
                if net.conns[event.key].state != State::Connecting {
                    continue;
                }
                pending -= 1;
                // A finished connect() is writable; SO_ERROR says whether it worked.
                match net.conns[event.key].stream.take_error() {
                    Ok(None) => net.opened(event.key)?,
                    _ => net.fail(event.key), // ECONNREFUSED: nobody listens there
                }
            }
        }
        for key in 0..net.conns.len() {
            if net.conns[key].state == State::Connecting {
                net.fail(key); // still no handshake at the deadline
            }
        }
        Ok(())
    }

    /// Start recording latencies (the measured window begins) and clear what was recorded.
    pub fn record(&mut self, on: bool) {
        if on {
            self.net.latency.reset();
        }
        self.net.recording = on;
    }

    /// Latency of each echo recorded so far, in microseconds.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.net.latency
    }

    /// Exchange messages until `until`, or until `stop` says so (checked at every wake-up).
    /// Returns the echoes completed.
    pub fn run_until(&mut self, until: Instant, stop: &dyn Fn() -> bool) -> io::Result<u64> {
        let net = &mut self.net;
        net.start_messages();
        let mut echoes = 0;
        loop {
            let now = Instant::now();
            if now >= until || stop() {
                return Ok(echoes);
            }
            self.events.clear();
            net.poller
                .wait(&mut self.events, Some((until - now).min(WAKE)))?;
            for event in self.events.iter() {
                let key = event.key;
                if event.writable && net.conns[key].state == State::Open {
                    net.write_rest(key);
                }
                // Checked again: the write may have found the connection dead.
                if event.readable && net.conns[key].state == State::Open {
                    echoes += net.read_echo(key);
                }
            }
        }
    }

    /// Active connections that have had at least one echo.
    pub fn served(&self) -> usize {
        let conns = &self.net.conns;
        conns.iter().filter(|c| c.active && c.echoes > 0).count()
    }

    /// Active connections still open that have had no echo yet.
    pub fn waiting(&self) -> usize {
        let conns = &self.net.conns;
        let waiting = |c: &&Conn| c.active && c.state == State::Open && c.echoes == 0;
        conns.iter().filter(waiting).count()
    }

    /// Connections (active or idle) refused, timed out, closed or reset by the server, or
    /// answered with bytes that were not the echo.
    pub fn failed(&self) -> usize {
        let conns = &self.net.conns;
        conns.iter().filter(|c| c.state == State::Failed).count()
    }

    /// Send no new message, and wait (until `deadline` at most) for the echoes still on
    /// their way on every connection that has been served, so that closing finds nothing
    /// unread: the close is then a FIN, not an RST (close() with unread data sends an RST).
    pub fn drain(&mut self, deadline: Instant) -> io::Result<()> {
        self.net.sending = false;
        while self.net.in_flight() > 0 && Instant::now() < deadline {
            self.run_until(Instant::now() + Duration::from_millis(10), &|| false)?;
        }
        Ok(())
    }

    /// Close every connection: `Close::Orderly` after [`Load::drain`], so each server reads
    /// EOF as from any client; `Close::Abort` (SO_LINGER 0: an RST) leaves no TIME_WAIT on
    /// our side, for benchmarks that open hundreds of thousands of connections.
    pub fn close(mut self, how: Close) {
        let net = &mut self.net;
        for conn in net.conns.drain(..) {
            let _ = net.poller.delete(&conn.stream);
            if how == Close::Abort {
                abort(&conn.stream);
            }
        } // dropped: close()
    }
}

/// How [`Load::close`] ends the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// close(): a FIN.
    Orderly,
    /// SO_LINGER 0, then close(): an RST.
    Abort,
}

impl Drop for Load {
    fn drop(&mut self) {
        // Deregister before the sockets close (polling's rule for `add`).
        for conn in &self.net.conns {
            let _ = self.net.poller.delete(&conn.stream);
        }
    }
}

impl Net {
    /// A connect() finished: idle connections leave the poller; active ones now wait for
    /// echoes (read interest only).
    fn opened(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        conn.state = State::Open;
        if conn.active {
            let _ = conn.stream.set_nodelay(true); // each message goes out at once
            self.poller
                .modify_with_mode(&conn.stream, Event::readable(key), PollMode::Level)?;
        } else {
            self.poller.delete(&conn.stream)?;
        }
        Ok(())
    }

    /// Served connections with a message still in flight.
    fn in_flight(&self) -> usize {
        let waiting = |c: &&Conn| c.state == State::Open && c.echoes > 0 && c.sent > 0;
        self.conns.iter().filter(waiting).count()
    }

    /// Put a first message in flight on every open active connection that has none.
    fn start_messages(&mut self) {
        if !self.sending {
            return;
        }
        for key in 0..self.conns.len() {
            let conn = &self.conns[key];
            if conn.active && conn.state == State::Open && conn.sent == 0 {
                self.send_next(key);
            }
        }
    }

    /// Write the next message on `key`, from its first byte.
    fn send_next(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.sent = 0;
        conn.echoed = 0;
        conn.since = Instant::now();
        self.write_rest(key);
    }

    /// Write what is left of the message in flight; if the socket's buffer is full, ask the
    /// poller for write-readiness and finish later.
    fn write_rest(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        while conn.sent < self.message.len() {
            match conn.stream.write(&self.message[conn.sent..]) {
                Ok(n) => conn.sent += n,
                Err(e) if outcome::would_block(&e) => break,
                Err(e) if outcome::interrupted(&e) => continue,
                Err(_) => return self.fail(key), // EPIPE, ECONNRESET: the server is gone
            }
        }
        let wants_write = conn.sent < self.message.len();
        if wants_write != conn.wants_write {
            conn.wants_write = wants_write;
            let interest = if wants_write {
                Event::all(key)
            } else {
                Event::readable(key)
            };
            if self
                .poller
                .modify_with_mode(&conn.stream, interest, PollMode::Level)
                .is_err()
            {
                self.fail(key);
            }
        }
    }

    /// One read on `key`: check the bytes are the echo of what was sent, and when the echo
    /// is whole, time it and send the next message. Returns 1 if an echo completed.
    fn read_echo(&mut self, key: usize) -> u64 {
        let conn = &mut self.conns[key];
        let n = match conn.stream.read(&mut self.buf) {
            Ok(0) => {
                self.fail(key); // the server's FIN: it closed the connection
                return 0;
            }
            Ok(n) => n,
            Err(e) if outcome::would_block(&e) || outcome::interrupted(&e) => return 0,
            Err(_) => {
                self.fail(key); // ECONNRESET: the server's RST
                return 0;
            }
        };
        let expected = self.message.get(conn.echoed..conn.echoed + n);
        if expected != Some(&self.buf[..n]) || conn.echoed + n > conn.sent {
            // Bytes we never sent (e.g. select's "server full" line): not an echo server.
            self.fail(key);
            return 0;
        }
        conn.echoed += n;
        if conn.echoed < self.message.len() {
            return 0;
        }
        conn.echoes += 1;
        if self.recording {
            let micros = conn.since.elapsed().as_micros() as u64;
            self.latency.saturating_record(micros.max(1));
        }
        if self.sending {
            self.send_next(key);
        } else {
            conn.sent = 0; // nothing in flight any more
            conn.echoed = 0;
        }
        1
    }

    /// A connection failed: stop watching it and close it.
    fn fail(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.state != State::Failed {
            conn.state = State::Failed;
            let _ = self.poller.delete(&conn.stream);
            abort(&conn.stream); // the RST goes out when Load closes it
        }
    }
}

/// SO_LINGER 0: the close that follows sends an RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// socket(), non-blocking, connect(): returns at once with the handshake under way.
fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        // Refused at once (possible on loopback): the first wait reports it via SO_ERROR.
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}
