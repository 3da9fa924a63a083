//! Events: what tcp-lab prints for every socket call that matters.
//!
//! An [`Event`] is built where the call happens (a kind, the connection, the bytes, the
//! kernel's TCP state, a teaching note) and handed to [`Output`], which stamps the time and
//! renders it as a line of JSON or as text for people. Bytes that came from a peer are always
//! escaped first ([`escape_bytes`]): a peer must never be able to drive the learner's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use colored::{ColoredString, Colorize};
use serde_json::{Map, Value};

use clap::{Args, ValueEnum};

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: a timeline with coloured labels and notes.
    Text,
    /// One JSON object per line, for scripts and tests.
    Json,
}

/// When to colour the text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

/// How events are shown; shared by every command that prints events.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print events as text for people or as JSON lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Colour the text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Drop the teaching notes (the indented line under each event).
    #[arg(long)]
    pub no_explain: bool,
}

/// Every kind of event, named as in shared/DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Listen,
    Accept,
    Connect,
    Refused,
    Recv,
    Send,
    Eof,
    Shutdown,
    Close,
    Abort,
    Reset,
    BrokenPipe,
    Timeout,
    Limit,
    Spawn,
    Exit,
    WouldBlock,
    Error,
    Stop,
    Summary,
    /// Chat: a member entered a room.
    Join,
    /// Chat: a member left a room (or the chat), with the reason.
    Leave,
    /// Chat: a member changed its nick.
    Nick,
    /// Chat: one line relayed to the other members of a room (or to one, `/msg`).
    Relay,
    /// A TCP segment seen on the wire (`--wire`), not a call.
    Packet,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Listen => "listen",
            Kind::Accept => "accept",
            Kind::Connect => "connect",
            Kind::Refused => "refused",
            Kind::Recv => "recv",
            Kind::Send => "send",
            Kind::Eof => "eof",
            Kind::Shutdown => "shutdown",
            Kind::Close => "close",
            Kind::Abort => "abort",
            Kind::Reset => "reset",
            Kind::BrokenPipe => "broken_pipe",
            Kind::Timeout => "timeout",
            Kind::Limit => "limit",
            Kind::Spawn => "spawn",
            Kind::Exit => "exit",
            Kind::WouldBlock => "wouldblock",
            Kind::Error => "error",
            Kind::Stop => "stop",
            Kind::Summary => "summary",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Nick => "nick",
            Kind::Relay => "relay",
            Kind::Packet => "packet",
        }
    }

    /// Per-message events, dropped by `--quiet`.
    pub fn is_data(self) -> bool {
        matches!(self, Kind::Recv | Kind::Send | Kind::Relay)
    }

    /// The label's colour: green opens, yellow FIN/EOF and orderly ends, red RST and errors,
    /// dim for data.
    pub fn paint(self, label: &str) -> ColoredString {
        match self {
            Kind::Listen | Kind::Accept | Kind::Connect | Kind::Spawn => label.green().bold(),
            Kind::Eof | Kind::Shutdown | Kind::Close | Kind::Timeout | Kind::Exit | Kind::Stop => {
                label.yellow().bold()
            }
            Kind::Limit => label.yellow(),
            Kind::Refused | Kind::Abort | Kind::Reset | Kind::BrokenPipe | Kind::Error => {
                label.red().bold()
            }
            Kind::Recv | Kind::Send | Kind::WouldBlock | Kind::Relay => label.dimmed(),
            Kind::Summary => label.bold(),
            Kind::Join | Kind::Nick => label.green(),
            Kind::Leave => label.yellow(),
            Kind::Packet => label.blue(),
        }
    }
}

/// How much of a payload an event shows; `bytes` always gives the full size.
pub const DATA_PREVIEW: usize = 256;

/// One annotated event. Build it with [`Event::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    /// The connection number, 1, 2, …; absent for listener-level events.
    pub conn: Option<u64>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Payload size of a recv or send.
    pub bytes: Option<usize>,
    /// The payload (at most [`DATA_PREVIEW`] bytes of it), already escaped.
    pub data: Option<String>,
    pub data_truncated: bool,
    /// The kernel's TCP state right after the call, from TCP_INFO.
    pub tcp_state: Option<&'static str>,
    /// The C name of the errno, where a call failed.
    pub errno: Option<&'static str>,
    /// Facts that fit no other field ("backlog 128", "exit status 101"), for people and scripts.
    pub detail: Option<String>,
    /// The process id, on `listen`: so a learner can point strace, ss -p or pstree at this
    /// very server, and not at someone else's on a shared machine.
    pub pid: Option<u32>,
    /// Bytes left unread in our receive buffer when we closed: the kernel discarded them
    /// and sent an RST instead of a FIN.
    pub unread: Option<usize>,
    /// Bytes we read but did not echo: the bye word's line and whatever followed it in
    /// the same read.
    pub discarded: Option<usize>,
    /// Counters, on `summary` events.
    pub stats: Vec<(&'static str, Value)>,
    /// Chat: the room (without `#`) a `join`, `leave` or `relay` is about.
    pub room: Option<String>,
    /// Chat: the member's nick (`nick`: the new one).
    pub nick: Option<String>,
    /// Chat: who said the relayed line (`relay`); the old nick (`nick`).
    pub from: Option<String>,
    /// Chat: how many members received the relayed line (`relay`).
    pub to: Option<u64>,
    /// What happened on the wire and in the kernel, and why.
    pub note: Cow<'static, str>,
    /// A `packet` event's segment (`--wire`).
    pub packet: Option<PacketFacts>,
    /// When the kernel saw it (nanoseconds since the Unix epoch): a packet is stamped with
    /// the capture's time, not the time it is printed.
    pub at_ns: Option<u128>,
}

/// What a `packet` event says about its segment (JSON: `flags`, `seq`, `ack`, `len`,
/// `from`, `to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketFacts {
    /// `SYN`, `SYN,ACK`, `PSH,ACK`, `FIN,ACK`, `RST`, …
    pub flags: String,
    /// Counted from the sender's first sequence number (its SYN is 0).
    pub seq: u32,
    /// Counted from the receiver's first; absent when the ACK flag is not set.
    pub ack: Option<u32>,
    /// Payload bytes.
    pub len: usize,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl Event {
    pub fn new(kind: Kind) -> Event {
        Event {
            kind,
            conn: None,
            local: None,
            peer: None,
            bytes: None,
            data: None,
            data_truncated: false,
            tcp_state: None,
            errno: None,
            detail: None,
            pid: None,
            unread: None,
            discarded: None,
            stats: Vec::new(),
            room: None,
            nick: None,
            from: None,
            to: None,
            note: Cow::Borrowed(""),
            packet: None,
            at_ns: None,
        }
    }

    pub fn conn(mut self, id: u64) -> Event {
        self.conn = Some(id);
        self
    }

    pub fn addrs(mut self, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Event {
        self.local = local;
        self.peer = peer;
        self
    }

    /// The payload: its size, and an escaped preview of it.
    pub fn payload(mut self, bytes: &[u8]) -> Event {
        self.bytes = Some(bytes.len());
        let shown = &bytes[..bytes.len().min(DATA_PREVIEW)];
        self.data = Some(match DECODE.get() {
            Some(&encoding) => escape_decoded(shown, encoding),
            None => escape_bytes(shown),
        });
        self.data_truncated = shown.len() < bytes.len();
        self
    }

    pub fn state(mut self, tcp_state: Option<&'static str>) -> Event {
        self.tcp_state = tcp_state;
        self
    }

    pub fn errno(mut self, errno: Option<&'static str>) -> Event {
        self.errno = errno;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }

    pub fn pid(mut self, pid: u32) -> Event {
        self.pid = Some(pid);
        self
    }

    pub fn unread(mut self, bytes: usize) -> Event {
        self.unread = Some(bytes);
        self
    }

    pub fn discarded(mut self, bytes: usize) -> Event {
        self.discarded = Some(bytes);
        self
    }

    pub fn stat(mut self, name: &'static str, value: impl Into<Value>) -> Event {
        self.stats.push((name, value.into()));
        self
    }

    /// Chat: the room the event is about.
    pub fn room(mut self, room: impl Into<String>) -> Event {
        self.room = Some(room.into());
        self
    }

    /// Chat: the member's nick.
    pub fn nick(mut self, nick: impl Into<String>) -> Event {
        self.nick = Some(nick.into());
        self
    }

    /// Chat: who said it (`relay`), or the old nick (`nick`).
    pub fn from(mut self, from: impl Into<String>) -> Event {
        self.from = Some(from.into());
        self
    }

    /// Chat: how many received it (`relay`).
    pub fn to(mut self, to: u64) -> Event {
        self.to = Some(to);
        self
    }

    pub fn note(mut self, note: impl Into<Cow<'static, str>>) -> Event {
        self.note = note.into();
        self
    }

    /// This event as the JSON object `--format json` prints: `ts` seconds since the start,
    /// who printed it, and the fields in the documented order. `tcp-lab demo` uses it for
    /// the events of the sockets it drives itself.
    pub fn to_json(&self, ts: f64, role: Role, mode: Option<&'static str>, explain: bool) -> Value {
        let e = self;
        let mut obj = Map::new();
        obj.insert("ts".into(), ts.into());
        obj.insert("role".into(), role.name().into());
        if let (Role::Server, Some(mode)) = (role, mode) {
            obj.insert("mode".into(), mode.into());
        }
        if let Some(conn) = e.conn {
            obj.insert("conn".into(), conn.into());
        }
        obj.insert("kind".into(), e.kind.name().into());
        if let Some(local) = e.local {
            obj.insert("local".into(), local.to_string().into());
        }
        if let Some(peer) = e.peer {
            obj.insert("peer".into(), peer.to_string().into());
        }
        if let Some(bytes) = e.bytes {
            obj.insert("bytes".into(), bytes.into());
        }
        if let Some(data) = &e.data {
            obj.insert("data".into(), data.clone().into());
            if e.data_truncated {
                obj.insert("data_truncated".into(), true.into());
            }
        }
        if let Some(state) = e.tcp_state {
            obj.insert("tcp_state".into(), state.into());
        }
        if let Some(errno) = e.errno {
            obj.insert("errno".into(), errno.into());
        }
        if let Some(detail) = &e.detail {
            obj.insert("detail".into(), detail.clone().into());
        }
        if let Some(pid) = e.pid {
            obj.insert("pid".into(), pid.into());
        }
        if let Some(unread) = e.unread {
            obj.insert("unread".into(), unread.into());
        }
        if let Some(discarded) = e.discarded {
            obj.insert("discarded".into(), discarded.into());
        }
        if let Some(room) = &e.room {
            obj.insert("room".into(), room.clone().into());
        }
        if let Some(nick) = &e.nick {
            obj.insert("nick".into(), nick.clone().into());
        }
        if let Some(from) = &e.from {
            obj.insert("from".into(), from.clone().into());
        }
        if let Some(to) = e.to {
            obj.insert("to".into(), to.into());
        }
        if !e.stats.is_empty() {
            let stats: Map<String, Value> = e
                .stats
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            obj.insert("stats".into(), stats.into());
        }
        if let Some(p) = &e.packet {
            obj.insert("flags".into(), p.flags.clone().into());
            obj.insert("seq".into(), p.seq.into());
            if let Some(ack) = p.ack {
                obj.insert("ack".into(), ack.into());
            }
            obj.insert("len".into(), p.len.into());
            obj.insert("from".into(), p.from.to_string().into());
            obj.insert("to".into(), p.to.to_string().into());
        }
        if explain && !e.note.is_empty() {
            obj.insert("note".into(), e.note.as_ref().into());
        }
        Value::Object(obj)
    }
}

/// The environment variable through which a parent shares its clock with its children.
pub const EPOCH_ENV: &str = "TCP_LAB_EPOCH_NS";

/// Who prints: the server or the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    /// The packet capture (`--wire`): what crossed the wire, not a call.
    Wire,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Wire => "wire",
        }
    }
}

/// Where events go: stdout, as JSON lines or text, buffered.
///
/// `emit` can be called from any thread; each event is written as one whole line, so lines
/// from threads (and from the process model's children, which share our stdout) never mix.
pub struct Output {
    role: Role,
    mode: Option<&'static str>,
    format: Format,
    explain: bool,
    quiet: bool,
    /// Flush after every event (people watching), or only on [`Output::flush`] (the event
    /// loops flush once per turn of the loop).
    flush_each: bool,
    /// Columns to wrap notes at.
    width: usize,
    /// `client --name`: shown instead of the role in text, and as JSON `name`, so two
    /// clients printing to one terminal can be told apart.
    name: Option<String>,
    start: Instant,
    sink: Sink,
}

/// Where the rendered lines go.
enum Sink {
    /// Written by the caller (the client and the demos: they have nothing else to do).
    Direct(Mutex<BufWriter<Stdout>>),
    /// Handed to a writer thread through a bounded queue (servers: see [`Shedding`]).
    Shedding(Arc<Shedding>),
}

/// A server must never wait for its stdout: if nobody reads it (`tcp-lab serve | sleep
/// 600`), a blocking write would freeze every connection, and Ctrl-C with them. So events
/// go into a queue of at most [`QUEUE_LIMIT`] bytes that a thread of their own writes out;
/// when it is full, an event is dropped and counted, like a logger that sheds. The count is
/// in the summary and, at exit, on stderr.
struct Shedding {
    queue: Mutex<Queue>,
    /// The writer thread sleeps on it until there is something to write.
    wake: Condvar,
    /// [`Output::finish`] sleeps on it until the queue is written out.
    drained: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Rendered lines not yet taken by the writer, and how many events they are.
    bytes: Vec<u8>,
    events: u64,
    /// Lines to write now (set by a flush, or by every event when not buffered).
    ready: bool,
    /// The writer holds a batch it has not finished writing, of this many events.
    writing: bool,
    in_flight: u64,
    /// Events dropped: the queue was full, or stdout failed.
    dropped: u64,
    /// stdout failed (closed: `tcp-lab serve | head`), rather than being slow.
    failed: bool,
    /// A wait for the queue to be written ran out: nobody waits again until a batch is out.
    stuck: bool,
}

/// The most event text a server holds for a slow stdout: memory stays bounded.
pub const QUEUE_LIMIT: usize = 1024 * 1024;

impl Shedding {
    fn start() -> Arc<Shedding> {
        let shedding = Arc::new(Shedding {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
        });
        let writer = Arc::clone(&shedding);
        let started = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || writer.write_forever());
        if started.is_err() {
            // No thread: nothing will be written, so everything is counted as dropped.
            shedding.lock().writing = true;
        }
        shedding
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: &str, now: bool) {
        let mut queue = self.lock();
        if queue.bytes.len() + line.len() > QUEUE_LIMIT {
            queue.dropped += 1;
            return;
        }
        queue.bytes.extend_from_slice(line.as_bytes());
        queue.events += 1;
        if now {
            queue.ready = true;
            self.wake.notify_one();
        }
    }

    fn flush(&self) {
        let mut queue = self.lock();
        if !queue.bytes.is_empty() {
            queue.ready = true;
            self.wake.notify_one();
        }
    }

    /// The writer thread: take what is queued, write it with the lock released (this is
    /// where a stdout nobody reads blocks: only this thread waits), repeat.
    fn write_forever(&self) {
        let mut stdout = std::io::stdout();
        loop {
            let (batch, events) = {
                let mut queue = self.lock();
                while !queue.ready || queue.bytes.is_empty() {
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                queue.ready = false;
                queue.writing = true;
                queue.in_flight = std::mem::take(&mut queue.events);
                (std::mem::take(&mut queue.bytes), queue.in_flight)
            };
            // A closed stdout (the learner piped us into `head`) must not stop the server.
            let written = stdout.write_all(&batch).and_then(|()| stdout.flush());
            let mut queue = self.lock();
            queue.writing = false;
            queue.in_flight = 0;
            queue.stuck = false;
            if written.is_err() {
                queue.failed = true;
                queue.dropped += events;
            }
            self.drained.notify_all();
        }
    }

    /// Wait up to `limit` for the queue to be written out. Returns the lock, and whether
    /// it was. A wait that ran out marks stdout as stuck; the writer clears the mark when
    /// it gets a batch out.
    fn wait_written(&self, limit: Duration) -> (std::sync::MutexGuard<'_, Queue>, bool) {
        let deadline = Instant::now() + limit;
        let mut queue = self.lock();
        queue.ready = true;
        self.wake.notify_one();
        while queue.writing || !queue.bytes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                queue.stuck = true;
                return (queue, false);
            }
            queue = self
                .drained
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        (queue, true)
    }

    /// Before exiting: what was dropped, plus what is still unwritten after `limit`; and
    /// whether stdout failed (closed) rather than being slow.
    fn finish(&self, limit: Duration) -> (u64, bool) {
        let (queue, _) = self.wait_written(limit);
        (queue.dropped + queue.events + queue.in_flight, queue.failed)
    }
}

impl Output {
    /// Events to stdout. Times count from now, or from `TCP_LAB_EPOCH_NS` (nanoseconds since
    /// the Unix epoch) when a parent process (`tcp-lab demo`) set it to share one clock.
    pub fn new(role: Role, mode: Option<&'static str>, args: &OutputArgs) -> Output {
        let output = Output {
            role,
            mode,
            format: args.format,
            explain: !args.no_explain,
            quiet: false,
            flush_each: true,
            width: note_width(),
            name: None,
            start: Instant::now(),
            sink: Sink::Direct(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            ))),
        };
        match std::env::var(EPOCH_ENV).ok().and_then(|v| v.parse().ok()) {
            Some(epoch_ns) => output.since_epoch_ns(epoch_ns),
            None => output,
        }
    }

    /// Drop per-message events (`--quiet`).
    pub fn quiet(mut self, quiet: bool) -> Output {
        self.quiet = quiet;
        self
    }

    /// Label every event with `name` (`client --name`).
    pub fn named(mut self, name: Option<String>) -> Output {
        self.name = name;
        self
    }

    /// Buffer events until [`Output::flush`] instead of flushing each one.
    pub fn buffered(mut self) -> Output {
        self.flush_each = false;
        self
    }

    /// Never wait for stdout: a thread writes the events, and what does not fit in its
    /// bounded queue is dropped and counted (servers: see [`Shedding`]).
    pub fn shedding(mut self) -> Output {
        self.sink = Sink::Shedding(Shedding::start());
        self
    }

    /// Events dropped so far because stdout did not keep up.
    pub fn dropped(&self) -> u64 {
        match &self.sink {
            Sink::Direct(_) => 0,
            Sink::Shedding(shedding) => shedding.lock().dropped,
        }
    }

    /// Write out what is queued and wait until it is, at most `limit`: for an order between
    /// processes that share our stdout (the process model prints a child's `spawn` before
    /// the child prints anything). While stdout stays stuck, it does not wait again.
    pub fn flush_and_wait(&self, limit: Duration) {
        match &self.sink {
            Sink::Direct(_) => self.flush(),
            Sink::Shedding(shedding) => {
                if !shedding.lock().stuck {
                    let _written = shedding.wait_written(limit);
                }
            }
        }
    }

    /// Before exiting: write out what is queued, waiting at most `limit` for a stdout that
    /// nobody reads, and say on stderr how many events were lost.
    pub fn finish(&self, limit: Duration) {
        let (lost, failed) = match &self.sink {
            Sink::Direct(_) => return self.flush(),
            Sink::Shedding(shedding) => shedding.finish(limit),
        };
        if lost > 0 {
            let line = match failed {
                true => format!("tcp-lab: {lost} events were not written: stdout was closed\n"),
                false => format!(
                    "tcp-lab: {lost} events were dropped: stdout was not read fast enough (at \
most {} KiB of events wait for it)\n",
                    QUEUE_LIMIT / 1024
                ),
            };
            // stderr may be a pipe nobody reads too: try from a thread, and do not wait long.
            let (done, wait) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new().spawn(move || {
                let _ = std::io::stderr().write_all(line.as_bytes());
                let _ = done.send(());
            });
            let _ = wait.recv_timeout(Duration::from_millis(200));
        }
    }

    /// Count time from another process's start (the process model's children use the
    /// parent's, so one stream has one clock).
    pub fn since_epoch_ns(mut self, epoch_ns: u128) -> Output {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let elapsed = Duration::from_nanos(now_ns.saturating_sub(epoch_ns) as u64);
        self.start = Instant::now().checked_sub(elapsed).unwrap_or(self.start);
        self
    }

    /// This output's start, in nanoseconds since the Unix epoch (for [`Output::since_epoch_ns`]).
    pub fn epoch_ns(&self) -> u128 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        now.saturating_sub(self.start.elapsed().as_nanos())
    }

    /// Whether per-message events are wanted: callers check this before building them, so
    /// `--quiet` costs nothing per message.
    pub fn wants_data(&self) -> bool {
        !self.quiet
    }

    pub fn emit(&self, event: Event) {
        if self.quiet && event.kind.is_data() {
            return;
        }
        let line = match self.format {
            Format::Json => self.json_line(&event),
            Format::Text => self.text_lines(&event),
        };
        let sink = match &self.sink {
            Sink::Direct(sink) => sink,
            Sink::Shedding(shedding) => return shedding.push(&line, self.flush_each),
        };
        let mut sink = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A closed stdout (the learner piped us into `head`) must not stop the client.
        let _ = sink.write_all(line.as_bytes());
        if self.flush_each {
            let _ = sink.flush();
        }
    }

    /// Write what is buffered (shedding: hand it to the writer thread, without waiting).
    pub fn flush(&self) {
        match &self.sink {
            Sink::Direct(sink) => {
                let mut sink = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = sink.flush();
            }
            Sink::Shedding(shedding) => shedding.flush(),
        }
    }

    /// Seconds since the start: now, or when the kernel saw a packet.
    fn seconds(&self, e: &Event) -> f64 {
        match e.at_ns {
            Some(at_ns) => at_ns.saturating_sub(self.epoch_ns()) as f64 / 1e9,
            None => self.start.elapsed().as_secs_f64(),
        }
    }

    fn json_line(&self, e: &Event) -> String {
        let ts = (self.seconds(e) * 1e6).round() / 1e6;
        let mut json = e.to_json(ts, self.role, self.mode, self.explain);
        if let (Some(name), Value::Object(obj)) = (&self.name, &mut json) {
            obj.shift_insert(2, "name".into(), name.as_str().into()); // after ts and role
        }
        let mut line = json.to_string();
        line.push('\n');
        line
    }

    /// `  0.532 server #1  recv        6 bytes "hello\n"            ESTABLISHED`
    /// `                   ↳ read() returned 6 bytes: …`
    fn text_lines(&self, e: &Event) -> String {
        let ts = format!("{:8.3}", self.seconds(e));
        let who = self.name.as_deref().unwrap_or(self.role.name());
        let who = match e.conn {
            Some(id) => format!("{who} #{id}"),
            None => who.to_string(),
        };
        let mut facts = text_facts(e, self.width);
        // The state stands apart from the facts, by two spaces even when it is alone.
        let first_gap = if facts.is_empty() { "  " } else { " " };
        if let Some(state) = e.tcp_state {
            facts.push(format!("[{state}]").cyan().to_string());
        }
        // The label is padded to line the facts up; with nothing after it, it is not.
        let label = match facts.is_empty() {
            true => e.kind.paint(e.kind.name()),
            false => e.kind.paint(&format!("{:<11}", e.kind.name())),
        };
        let mut line = format!("{} {:<10} {label}", ts.dimmed(), who);
        // The facts follow the label; a long list (a summary) goes on under them, so the
        // line never runs past the width the notes are wrapped to.
        let mut column = FACTS_INDENT;
        for (i, fact) in facts.iter().enumerate() {
            let width = visible_len(fact);
            if i > 0 && column + 2 + width > self.width {
                let _ = write!(line, "\n{:FACTS_INDENT$}{fact}", "");
                column = FACTS_INDENT + width;
            } else {
                let gap = if i == 0 { first_gap } else { "  " };
                let _ = write!(line, "{gap}{fact}");
                column += gap.len() + width;
            }
        }
        line.push('\n');
        if self.explain && !e.note.is_empty() {
            for (i, part) in wrap(&e.note, self.width.saturating_sub(NOTE_INDENT + 2)).enumerate() {
                let arrow = if i == 0 { "↳" } else { " " };
                let _ = writeln!(
                    line,
                    "{:NOTE_INDENT$}{} {}",
                    "",
                    arrow.dimmed(),
                    part.italic()
                );
            }
        }
        line
    }
}

/// Where a note starts: under the kind label.
const NOTE_INDENT: usize = 20;

/// Where the facts start: after the time, who and the label (8 + 1 + 10 + 1 + 11 + 1).
const FACTS_INDENT: usize = 32;

/// Columns a string takes on screen: characters, not counting colour escape sequences.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, _) => len += 1,
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    len
}

/// Split `text` into lines of at most `width` characters, at spaces.
pub fn wrap(text: &str, width: usize) -> impl Iterator<Item = String> + '_ {
    let width = width.max(20);
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines.into_iter()
}

/// The width to wrap notes at: the terminal's, at most 100 columns; 100 when not a terminal.
fn note_width() -> usize {
    terminal_size::terminal_size()
        .map(|(terminal_size::Width(w), _)| usize::from(w))
        .unwrap_or(100)
        .min(100)
}

/// The facts of an event for people: addresses, sizes, payload, errno, detail. The payload is
/// cut to what fits on the line at `width` (JSON keeps its whole preview).
fn text_facts(e: &Event, width: usize) -> Vec<String> {
    let mut facts = Vec::new();
    match e.kind {
        Kind::Listen => facts.extend(e.local.map(|l| format!("on {l}"))),
        Kind::Accept | Kind::Limit => facts.extend(e.peer.map(|p| format!("from {p}"))),
        Kind::Connect | Kind::Refused => {
            facts.extend(e.peer.map(|p| format!("to {p}")));
            facts.extend(e.local.map(|l| format!("(from {l})")));
        }
        _ => {}
    }
    if let Some(p) = &e.packet {
        facts.push(format!("{} → {}", p.from, p.to));
        facts.push(p.flags.clone());
        facts.push(format!("seq={}", p.seq));
        facts.extend(p.ack.map(|ack| format!("ack={ack}")));
        facts.push(format!("len={}", p.len));
    }
    if let Some(bytes) = e.bytes {
        facts.push(format!("{bytes} bytes"));
    }
    if let Some(data) = &e.data {
        // What goes on the line besides: the facts before it, and the state after it (which
        // moves to the next line rather than leave almost no room for the data).
        let before: usize = facts.iter().map(|f| visible_len(f) + 2).sum();
        let after = e.tcp_state.map_or(0, |state| state.len() + 4);
        // (text_lines counts the gap after the label as one column more.)
        let room = width.saturating_sub(FACTS_INDENT + 1 + before);
        let bytes = e.bytes.unwrap_or(0);
        let room = match room.checked_sub(after) {
            Some(left) if left >= suffix_len(bytes) + MIN_PREVIEW => left,
            _ => room,
        };
        facts.push(data_fact(data, bytes, e.data_truncated, room));
    }
    if let Some(errno) = e.errno {
        facts.push(errno.red().to_string());
    }
    // Chat: `alice (was user3) #lobby → 4`
    if let (Kind::Relay, Some(from)) = (e.kind, &e.from) {
        facts.push(format!("<{from}>"));
    }
    if let Some(nick) = &e.nick {
        facts.push(nick.clone());
    }
    if let (Kind::Nick, Some(old)) = (e.kind, &e.from) {
        facts.push(format!("(was {old})"));
    }
    if let Some(room) = &e.room {
        facts.push(format!("#{room}"));
    }
    if let Some(to) = e.to {
        facts.push(format!("to {to}"));
    }
    if let Some(detail) = &e.detail {
        facts.push(detail.clone());
    }
    if let Some(pid) = e.pid {
        facts.push(format!("pid {pid}"));
    }
    if let Some(unread) = e.unread {
        facts.push(format!("{unread} bytes unread"));
    }
    if let Some(discarded) = e.discarded {
        facts.push(format!("{discarded} bytes discarded"));
    }
    for (name, value) in &e.stats {
        facts.push(format!("{}={}", name.replace('_', " "), value));
    }
    facts
}

/// The payload for people, in quotes, within `room` columns: cut where it would not fit (or
/// where the preview ended), and then followed by how many bytes are not shown, so a 4 KiB read
/// is one line, not a screenful: `"\x00\x00…"… (4080 more bytes)`.
fn data_fact(data: &str, bytes: usize, preview_cut: bool, room: usize) -> String {
    let whole = format!("\"{data}\"");
    if !preview_cut && whole.chars().count() <= room {
        return whole;
    }
    let (shown, shown_bytes) = cut_escaped(
        data,
        room.saturating_sub(suffix_len(bytes)).max(MIN_PREVIEW),
    );
    let more = bytes.saturating_sub(shown_bytes);
    format!("\"{shown}\"… ({more} more bytes)")
}

/// The quotes and the `… (N more bytes)` of a cut payload, with the largest N it can show.
fn suffix_len(bytes: usize) -> usize {
    format!("\"\"… ({bytes} more bytes)").chars().count()
}

/// Never cut a payload shorter than this, however narrow the room.
const MIN_PREVIEW: usize = 8;

/// The longest start of escaped text that fits `columns` without splitting an escape (`\xNN`,
/// `\u{…}`, `\n`), and how many of the original bytes it stands for.
fn cut_escaped(escaped: &str, columns: usize) -> (&str, usize) {
    let mut chars = escaped.char_indices().peekable();
    let (mut end, mut used, mut bytes) = (0, 0, 0);
    while let Some((at, c)) = chars.next() {
        let (len, width, stands_for) = match (c, chars.peek().map(|&(_, next)| next)) {
            ('\\', Some('x')) => (4, 4, 1),
            ('\\', Some('u')) => {
                let close = escaped[at..]
                    .find('}')
                    .map_or(escaped.len() - at, |i| i + 1);
                let code = u32::from_str_radix(&escaped[at + 3..at + close - 1], 16).ok();
                let original = code.and_then(char::from_u32).map_or(1, char::len_utf8);
                (close, close, original)
            }
            ('\\', Some(_)) => (2, 2, 1),
            (c, _) => (c.len_utf8(), 1, c.len_utf8()),
        };
        if used + width > columns {
            break;
        }
        used += width;
        bytes += stands_for;
        end = at + len;
        // Skip the rest of this escape.
        while chars.peek().is_some_and(|&(next_at, _)| next_at < end) {
            chars.next();
        }
    }
    (&escaped[..end], bytes)
}

/// Show bytes from a peer safely: valid UTF-8 is kept, every control character and every
/// invalid byte is escaped. The text reads back unambiguously ([`unescape`]):
/// - `\n`, `\r`, `\t`, and `\\` for a backslash;
/// - `\xNN`: one byte — an ASCII control (C0, DEL: `\x1B`) or a byte that is not UTF-8
///   (`\xC4`, `\x9B`);
/// - `\u{N}`: one character — a C1 control (`\u{9B}`, two bytes in UTF-8) or a bidi
///   override (`\u{202E}`).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped_char(&mut out, c);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
    out
}

/// `--decode`: the encoding peer bytes are shown in (unset: UTF-8). One setting for the
/// whole process, set once from the command line, like the colour.
static DECODE: OnceLock<&'static encoding_rs::Encoding> = OnceLock::new();

/// Show every payload from now on decoded as `encoding` (`--decode`).
pub fn set_decode(encoding: Option<&'static encoding_rs::Encoding>) {
    if let Some(encoding) = encoding {
        let _ = DECODE.set(encoding);
    }
}

/// Show bytes from a peer decoded as `encoding` (GBK: `C4 E3 BA C3` is "你好"): what decodes
/// is kept, escaped like any text (control characters), and every byte that does not decode
/// is escaped as `\xNN`, exactly as [`escape_bytes`] does for UTF-8.
pub fn escape_decoded(bytes: &[u8], encoding: &'static encoding_rs::Encoding) -> String {
    use encoding_rs::DecoderResult;
    if encoding == encoding_rs::UTF_8 {
        return escape_bytes(bytes);
    }
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(bytes.len() * 2);
    let mut text = String::new();
    let mut pos = 0; // how far into `bytes` the decoder has read
    loop {
        // Room for everything left: a decoder never writes more than this.
        let room = decoder
            .max_utf8_buffer_length_without_replacement(bytes.len() - pos)
            .unwrap_or(4 * (bytes.len() - pos) + 16);
        text.reserve(room);
        let (result, read) =
            decoder.decode_to_string_without_replacement(&bytes[pos..], &mut text, true);
        pos += read;
        for c in text.chars() {
            push_escaped_char(&mut out, c);
        }
        text.clear();
        match result {
            DecoderResult::InputEmpty => return out,
            DecoderResult::OutputFull => continue,
            // `bad` bytes that do not decode, followed by `after` bytes it read past them.
            DecoderResult::Malformed(bad, after) => {
                let end = pos - usize::from(after);
                for byte in &bytes[end.saturating_sub(usize::from(bad))..end] {
                    let _ = write!(out, "\\x{byte:02X}");
                }
            }
        }
    }
}

fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        // One byte of ASCII (C0, DEL). A C1 control is a character of two bytes: it goes
        // below as `\u{9B}`, so it cannot be mistaken for the invalid byte 0x9B (`\x9B`).
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02X}", c as u32);
        }
        c if c.is_control() || is_bidi_control(c) => {
            let _ = write!(out, "\\u{{{:X}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// The bytes an [`escape_bytes`] text stands for (None if it is not one).
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        match chars.next()? {
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            '\\' => out.push(b'\\'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                (hex.len() == 2).then_some(())?;
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' => {
                (chars.next()? == '{').then_some(())?;
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Characters that reorder the text around them: a peer could make a line lie.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Resolve `--color` once, for the whole process (`colored` reads a global override).
pub fn set_color(choice: ColorChoice) {
    let on = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    colored::control::set_override(on);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_and_controls_are_escaped() {
        assert_eq!(escape_bytes(b"hello"), "hello");
        assert_eq!(escape_bytes("你好".as_bytes()), "你好");
        assert_eq!(escape_bytes(b"a\nb\r\t"), "a\\nb\\r\\t");
        assert_eq!(escape_bytes(b"\x1b[31m\x00\x7f"), "\\x1B[31m\\x00\\x7F");
        assert_eq!(escape_bytes("\u{9b}".as_bytes()), "\\u{9B}");
        assert_eq!(escape_bytes(b"\x9b"), "\\x9B");
        assert_eq!(escape_bytes("\u{202e}".as_bytes()), "\\u{202E}");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn invalid_utf8_is_escaped_byte_by_byte() {
        // "你好" in GBK, not UTF-8.
        assert_eq!(
            escape_bytes(&[0xC4, 0xE3, 0xBA, 0xC3]),
            "\\xC4\\xE3\\xBA\\xC3"
        );
        assert_eq!(escape_bytes(&[b'o', b'k', 0xFF]), "ok\\xFF");
    }

    #[test]
    fn gbk_is_decoded_and_what_does_not_decode_stays_escaped() {
        let gbk = encoding_rs::Encoding::for_label(b"gbk").unwrap();
        // "你好" as a GBK peer sends it, then a newline.
        assert_eq!(
            escape_decoded(&[0xC4, 0xE3, 0xBA, 0xC3, b'\n'], gbk),
            "你好\\n"
        );
        // A lone lead byte at the end, and 0xFF (never valid in GBK), stay bytes.
        assert_eq!(escape_decoded(&[b'o', b'k', 0xC4], gbk), "ok\\xC4");
        assert_eq!(escape_decoded(&[0xFF, 0xC4, 0xE3], gbk), "\\xFF你");
        // A lead byte followed by ASCII: the lead is escaped, the ASCII kept.
        assert_eq!(escape_decoded(&[0xC4, b'\n', b'a'], gbk), "\\xC4\\na");
        // Control characters are escaped whatever the encoding.
        assert_eq!(escape_decoded(b"\x1b[31m", gbk), "\\x1B[31m");
        // UTF-8 as the encoding is the default escaping.
        let utf8 = encoding_rs::Encoding::for_label(b"utf-8").unwrap();
        assert_eq!(escape_decoded("你好".as_bytes(), utf8), "你好");
    }

    #[test]
    fn every_byte_is_accounted_for_in_a_decoded_preview() {
        // A four-byte GB18030 start cut short, then text: nothing may vanish.
        let gb18030 = encoding_rs::Encoding::for_label(b"gb18030").unwrap();
        let shown = escape_decoded(&[0x81, 0x30, b'x', b'y'], gb18030);
        assert_eq!(shown, "\\x810xy");
    }

    #[test]
    fn notes_wrap_at_spaces() {
        let text = "the peer's FIN arrived: read() returned 0 and we close too";
        let lines: Vec<String> = wrap(text, 24).collect();
        assert_eq!(
            lines,
            [
                "the peer's FIN arrived:",
                "read() returned 0 and we",
                "close too"
            ]
        );
    }

    #[test]
    fn a_long_summary_goes_on_under_its_facts_within_the_width() {
        let args = OutputArgs {
            format: Format::Text,
            color: ColorChoice::Never,
            no_explain: true,
        };
        let mut out = Output::new(Role::Server, None, &args);
        out.width = 80;
        let mut summary = Event::new(Kind::Summary);
        for name in [
            "connections",
            "finished",
            "messages",
            "bytes_echoed",
            "resets",
        ] {
            summary = summary.stat(name, 123_456);
        }
        let text = out.text_lines(&summary);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 1, "{text}");
        for line in &lines {
            assert!(visible_len(line) <= 80, "too wide: {line:?}");
        }
        for continuation in &lines[1..] {
            assert!(continuation.starts_with(&" ".repeat(FACTS_INDENT)));
        }
        assert!(text.contains("resets=123456"));
    }

    #[test]
    fn a_packet_is_stamped_with_the_kernels_time_on_the_events_clock() {
        let args = OutputArgs {
            format: Format::Json,
            color: ColorChoice::Never,
            no_explain: false,
        };
        let out = Output::new(Role::Wire, None, &args);
        let mut packet = Event::new(Kind::Packet);
        packet.at_ns = Some(out.epoch_ns() + 1_500_000_000);
        packet.packet = Some(PacketFacts {
            flags: "FIN,ACK".into(),
            seq: 7,
            ack: Some(8),
            len: 0,
            from: "127.0.0.1:7788".parse().unwrap(),
            to: "127.0.0.1:40000".parse().unwrap(),
        });
        let line: Value = serde_json::from_str(&out.json_line(&packet)).unwrap();
        // Two reads of two clocks (realtime, monotonic) apart: equal within a microsecond or so.
        let ts = line["ts"].as_f64().unwrap();
        assert!((ts - 1.5).abs() < 1e-3, "{ts}");
        assert_eq!(line["role"], "wire");
        assert_eq!(line["kind"], "packet");
        assert_eq!(line["flags"], "FIN,ACK");
        assert_eq!(
            (line["seq"].as_u64(), line["ack"].as_u64()),
            (Some(7), Some(8))
        );
        assert_eq!(line["from"], "127.0.0.1:7788");
        assert_eq!(line["to"], "127.0.0.1:40000");
    }

    #[test]
    fn visible_len_skips_colour() {
        assert_eq!(visible_len("\x1b[36m[LISTEN]\x1b[0m"), 8);
    }

    #[test]
    fn a_payload_is_cut_to_the_line_and_says_how_much_is_left() {
        let zeros = Event::new(Kind::Recv).payload(&[0u8; 4096]);
        let facts = text_facts(&zeros, 100);
        let data = &facts[1];
        assert_eq!(
            data,
            &format!("\"{}\"… (4088 more bytes)", "\\x00".repeat(8))
        );
        assert!(FACTS_INDENT + visible_len(&facts[0]) + 2 + visible_len(data) <= 100);
        // At 100 columns the state still fits on the line; at 80 it goes under the facts.
        let args = OutputArgs {
            format: Format::Text,
            color: ColorChoice::Never,
            no_explain: true,
        };
        let mut out = Output::new(Role::Server, None, &args);
        let zeros = zeros.state(Some("ESTABLISHED"));
        for (width, lines) in [(100, 1), (80, 2)] {
            out.width = width;
            let shown = out.text_lines(&zeros);
            assert_eq!(shown.lines().count(), lines, "{shown}");
            for line in shown.lines() {
                assert!(visible_len(line) <= width, "{shown}");
            }
        }
        // Short enough: whole, no suffix.
        let short = Event::new(Kind::Recv).payload(b"hello\n");
        assert_eq!(text_facts(&short, 80)[1], "\"hello\\n\"");
        // A cut never splits an escape, and counts what each escape stands for.
        assert_eq!(cut_escaped("ab\\x00\\u{202E}é", 5), ("ab", 2));
        assert_eq!(cut_escaped("ab\\x00\\u{202E}é", 6), ("ab\\x00", 3));
        assert_eq!(
            cut_escaped("ab\\x00\\u{202E}é", 14),
            ("ab\\x00\\u{202E}", 6)
        );
        assert_eq!(
            cut_escaped("ab\\x00\\u{202E}é", 15),
            ("ab\\x00\\u{202E}é", 8)
        );
    }

    #[test]
    fn payload_is_previewed_but_fully_counted() {
        let big = vec![b'a'; DATA_PREVIEW + 10];
        let e = Event::new(Kind::Recv).payload(&big);
        assert_eq!(e.bytes, Some(DATA_PREVIEW + 10));
        assert_eq!(e.data.as_deref().map(str::len), Some(DATA_PREVIEW));
        assert!(e.data_truncated);
    }
}
