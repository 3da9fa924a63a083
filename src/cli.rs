//! The command line: the contract of shared/DESIGN.md, written with clap's derive API.
//!
//! Every doc comment here is the `--help` text a learner reads, so it says what an option
//! *shows*, not only what it does.

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::event::{ColorChoice, Format, OutputArgs};

/// Watch TCP servers work: echo servers in five concurrency models, a client, and every
/// socket call printed as an annotated event with the kernel's TCP state.
#[derive(Debug, Parser)]
#[command(name = "tcp-lab", version, propagate_version = true)]
#[command(after_help = "Start here:\n  \
    tcp-lab lesson 0                     # the course, lesson by lesson\n  \
    tcp-lab serve --mode blocking        # terminal 1: an echo server on 127.0.0.1:7788\n  \
    tcp-lab client                       # terminal 2: type lines, watch them echo\n  \
    tcp-lab client --count 3 --bye       # or a scripted client\n  \
    tcp-lab demo --list                  # one-terminal scenarios: RST, FIN, backlog, …")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an echo server in the concurrency model you pick.
    #[command(after_help = "Examples:\n  \
        tcp-lab serve --mode blocking            # one client at a time\n  \
        tcp-lab serve --port 0 --format json     # the kernel picks a port; JSON events\n  \
        tcp-lab serve --delay 1000 --crash-after 3")]
    Serve(ServeArgs),
    /// Connect to an echo server: scripted, interactive (the default) or naive.
    #[command(after_help = "Examples:\n  \
        tcp-lab client                           # interactive: stdin and the socket together\n  \
        tcp-lab client --count 10 --bye          # the seeds' client: 10 messages, then Bye\n  \
        tcp-lab client --send hi --half-close    # shutdown(Write), then read until EOF\n  \
        tcp-lab client --send hi --abort         # close with an RST instead of a FIN\n  \
        tcp-lab client --naive                   # blocks in recv: misses the server's FIN\n  \
        tcp-lab client --name alice --count 3    # label the events: two clients, one terminal")]
    Client(ClientArgs),
    /// Run a scenario: a real server and client(s) on 127.0.0.1, one phenomenon made to
    /// happen on purpose, drawn as one ladder diagram, then checked.
    #[command(after_help = "Examples:\n  \
        tcp-lab demo                              # every scenario, with what it shows\n  \
        tcp-lab demo write-after-fin              # the seeds' failure, in one command\n  \
        tcp-lab demo abort-rst --format json      # the same events as JSON lines\n  \
        tcp-lab demo abort-rst --wire             # the packets themselves (root or CAP_NET_RAW)\n  \
        tcp-lab demo orderly-close --port 7799    # a fixed port, for tcpdump -i lo port 7799")]
    Demo(DemoArgs),
    /// List the lessons, or print one (by number or name).
    #[command(after_help = "Examples:\n  \
        tcp-lab lesson                 # the list\n  \
        tcp-lab lesson 0               # start here\n  \
        tcp-lab lesson resets          # a lesson by name\n  \
        tcp-lab lesson 6 | less -R     # page through one")]
    Lesson(LessonArgs),
    /// Measure the models side by side on this machine: messages per second, latency, the
    /// server's CPU per message, memory, threads and processes.
    #[command(after_help = "Examples:\n  \
        tcp-lab bench                                        # every mode at 1, 50, 1,000 connections\n  \
        tcp-lab bench --modes select,poll --idle 0,1000      # the cost of idle connections\n  \
        tcp-lab bench --against 127.0.0.1:8000 --conns 1,10  # your own echo server\n  \
        tcp-lab bench --format json --plot bench.svg         # figures for a script, and a chart")]
    Bench(BenchArgs),
    /// Print a shell completion script: `tcp-lab completions bash > ~/.tcp-lab.bash`.
    Completions(CompletionsArgs),
    /// Internal: the process model's child, serving one inherited connection.
    #[command(hide = true, name = "serve-child")]
    ServeChild(ServeChildArgs),
}

/// The concurrency model of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One connection at a time: accept, serve until EOF, accept the next.
    Blocking,
    /// A thread per connection.
    Threaded,
    /// A child process per connection.
    Process,
    /// One thread trying every non-blocking socket in a loop.
    Nonblocking,
    /// One thread sleeping in select(2) over an fd_set rebuilt every turn.
    Select,
    /// One thread sleeping in epoll until a socket is ready (Linux).
    Poll,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::Threaded => "threaded",
            Mode::Process => "process",
            Mode::Nonblocking => "nonblocking",
            Mode::Select => "select",
            Mode::Poll => "poll",
        }
    }
}

/// How the poll server asks epoll for readiness: `serve --mode poll --trigger …`.
/// Lesson 5 compares them; the summary's `epoll_ctl` count shows what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trigger {
    /// Registered once for reading and writing; the kernel reports a *change* (new bytes,
    /// room freed, the peer's FIN), so the server reads until the socket is drained (a short
    /// read, EAGAIN or the FIN). No epoll_ctl per message.
    Edge,
    /// Reported for as long as the socket is ready; the interest changes (epoll_ctl) only
    /// when the server starts or stops waiting to write, or pauses reading.
    Level,
    /// Reported once, then disarmed: re-armed with epoll_ctl(MOD) after every event, so one
    /// epoll_ctl per message.
    Oneshot,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Edge => "edge",
            Trigger::Level => "level",
            Trigger::Oneshot => "oneshot",
        }
    }
}

/// What the server does with the bytes it reads (`--mode` still chooses how it waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum App {
    /// Send every byte back, exactly as it came.
    Echo,
    /// A chat with rooms: each user's lines go to the others in its room (nc, telnet, or
    /// `tcp-lab client`). Modes: threaded, nonblocking, select, poll.
    Chat,
    /// The server's operator talks to one client through this terminal (seed 004):
    /// blocking is half-duplex, poll and threaded are full-duplex.
    Talk,
}

impl App {
    pub fn name(self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Chat => "chat",
            App::Talk => "talk",
        }
    }
}

/// Where the server listens or the client connects.
#[derive(Debug, Clone, Args)]
pub struct AddrArgs {
    /// Host or IP address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port (serve: 0 lets the kernel pick one; the listen event says which).
    #[arg(long, default_value_t = 7788)]
    pub port: u16,
}

/// The longest `--idle-timeout` or `--delay` accepted: a year. Why a cap at all? A deadline
/// is `now + duration`, and a huge duration overflows `Instant` (a panic); refusing the value
/// here gives one clear error instead.
pub const YEAR_SECS: u64 = 365 * 24 * 60 * 60;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The concurrency model.
    #[arg(long, value_enum, default_value_t = Mode::Poll)]
    pub mode: Mode,
    /// What the server does with the bytes: echo them, run a chat, or talk (seed 004).
    #[arg(long, value_enum, default_value_t = App::Echo)]
    pub app: App,
    /// Chat: the longest line accepted, in bytes; a longer one is refused and its
    /// connection closed, so a peer that never sends a newline costs bounded memory.
    #[arg(long, value_name = "BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    pub max_line: u32,
    #[command(flatten)]
    pub addr: AddrArgs,
    /// `--mode poll` only: how readiness is asked for (edge-, level-triggered or oneshot).
    /// Default: edge.
    #[arg(long, value_enum)]
    pub trigger: Option<Trigger>,
    /// The listen backlog: how many finished handshakes the kernel queues before accept().
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i32).range(1..=65535))]
    pub backlog: i32,
    /// Wait MS milliseconds before each echo (the seeds' handler sleeps 1 s). At most a year.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=YEAR_SECS * 1000))]
    pub delay: Option<u64>,
    /// A message equal to this word closes the connection without an echo (what follows
    /// it in the same read is discarded, and the close event counts it).
    #[arg(long, value_name = "WORD", default_value = "Bye", value_parser = bye_word)]
    pub bye_word: String,
    /// Answer every message with TEXT plus a newline instead of echoing it (seed 003's
    /// "ok, 问题正在处理中..."): one read, one reply, however many bytes it held.
    #[arg(long, value_name = "TEXT")]
    pub reply: Option<String>,
    /// After N messages the handler dies abruptly: the kernel sends the FIN.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_after: Option<u64>,
    /// After N messages close with SO_LINGER 0, which sends an RST.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub reset_after: Option<u64>,
    /// Stop after N connections have finished. The listening socket is closed as soon as
    /// the Nth is accepted (no later one would be served): a late client is refused at once
    /// (SYN answered by RST) instead of waiting in the backlog to be reset when we exit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub exit_after: Option<u64>,
    /// After N connections are accepted, close the listening socket and serve on (seed 003):
    /// the connections already accepted go on; a new client's SYN is answered by an RST
    /// (ECONNREFUSED).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub close_listener_after: Option<u64>,
    /// Above N open connections, tell a newcomer `server full` and close it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,
    /// Close a connection that has been idle this many seconds. At most a year.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=YEAR_SECS))]
    pub idle_timeout: Option<u64>,
    /// Bind without SO_REUSEADDR, as a program that never sets it: right after a run whose
    /// server closed first, bind() fails EADDRINUSE while that TIME_WAIT lasts (~60 s).
    #[arg(long)]
    pub no_reuseaddr: bool,
    /// Show payloads decoded from this encoding (gbk, gb18030, big5, shift_jis, utf-8, …):
    /// a Chinese Windows peer (seed 003) sends GBK, which is not UTF-8. Bytes that do not
    /// decode are still shown escaped (\xNN); what is echoed is never changed.
    #[arg(long, value_name = "ENCODING", value_parser = encoding)]
    pub decode: Option<&'static encoding_rs::Encoding>,
    /// Lifecycle events only: no per-message recv/send events (for load).
    #[arg(long)]
    pub quiet: bool,
    /// Process mode, for `tcp-lab demo parent-keeps-fd`: the parent "forgets" to close its
    /// copy of each socket until the server stops.
    #[arg(long, hide = true)]
    pub parent_keeps_fd: bool,
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    /// Send TEXT plus a newline (repeatable); wait for its echo after each.
    #[arg(long, value_name = "TEXT")]
    pub send: Vec<String>,
    /// Send `message 1` … `message N`.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Pause MS milliseconds between sends.
    #[arg(long, value_name = "MS")]
    pub interval: Option<u64>,
    /// Send `Bye` last and wait for the server to close.
    #[arg(long)]
    pub bye: bool,
    /// Stay connected and idle SECS seconds before closing.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub hold: Option<f64>,
    /// Close with shutdown(Write) (our FIN), then keep reading until the server's EOF.
    #[arg(long, conflicts_with = "abort")]
    pub half_close: bool,
    /// Close with SO_LINGER 0: an RST instead of a FIN.
    #[arg(long)]
    pub abort: bool,
    /// The seeds' blocking client: read stdin, send, block in recv.
    #[arg(long, conflicts_with_all = ["send", "count", "bye", "half_close"])]
    pub naive: bool,
    /// How long to wait for an echo (and, after --bye or --half-close, for the server's FIN)
    /// before giving up on it; giving up is a `timeout` event, and the script goes on.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = positive_seconds)]
    pub wait: f64,
    /// Give up connecting after SECS seconds. A listener whose accept queue (its backlog) is
    /// full drops our SYN without an answer; Linux resends it (after 1 s, 3 s, 7 s, …) and
    /// connect() waits in SYN_SENT until this timeout ends it (exit status 1).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = positive_seconds)]
    pub connect_timeout: f64,
    /// Show payloads decoded from this encoding (gbk, big5, shift_jis, utf-8, …); bytes
    /// that do not decode are still shown escaped (\xNN). What is sent is never changed.
    #[arg(long, value_name = "ENCODING", value_parser = encoding)]
    pub decode: Option<&'static encoding_rs::Encoding>,
    /// Label this client's events (the text's who column, JSON field `name`), so two
    /// clients printing to one terminal can be told apart. 1 to 10 letters, digits, - or _.
    #[arg(long, value_name = "NAME", value_parser = client_name)]
    pub name: Option<String>,
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The scenario to run; without it, the list (the names are attached in
    /// [`crate::command`], which knows the demos).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// List the scenarios, one a line: its name, then what it shows.
    #[arg(long, conflicts_with = "name")]
    pub list: bool,
    /// The port the demo's server listens on (0: the kernel picks one). Pick one to watch
    /// the packets: `tcpdump -i lo -nn port P`.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--wire` and `--pcap`: the packets themselves, captured on `lo` (root or CAP_NET_RAW).
#[derive(Debug, Clone, Default, Args)]
pub struct WireArgs {
    /// Capture the run's packets on lo and show each one (flags, seq/ack, length, direction)
    /// between the calls, on the same clock. Needs root or CAP_NET_RAW; without, one line
    /// says so and the run goes on without packets.
    #[arg(long)]
    pub wire: bool,
    /// Also write the captured packets to FILE (pcap, for Wireshark or `tcpdump -r`).
    /// Implies --wire.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
}

impl WireArgs {
    /// Whether a capture was asked for.
    pub fn wanted(&self) -> bool {
        self.wire || self.pcap.is_some()
    }
}

#[derive(Debug, Clone, Args)]
pub struct LessonArgs {
    /// The lesson's number (`6`, `06`) or name (`close`); without it, the list.
    #[arg(value_name = "N|NAME")]
    pub lesson: Option<String>,
    /// Colour the headings, commands and code (the layout is the same either way).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The modes to measure: `all`, or a comma-separated list (`select,poll`).
    #[arg(long, default_value = "all", value_parser = modes, conflicts_with = "against")]
    pub modes: Modes,
    /// Connection counts, each a run: N connections, each with one message in flight.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_value = "1,50,1000",
          value_parser = clap::value_parser!(u32).range(1..=20_000).map(|n| n as usize))]
    pub conns: Vec<usize>,
    /// Idle connections opened beside the active ones (a list makes one run per value):
    /// they cost select() and the busy loop on every turn, epoll nothing.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_value = "0",
          value_parser = clap::value_parser!(u32).range(0..=20_000).map(|n| n as usize))]
    pub idle: Vec<usize>,
    /// Bytes per message.
    #[arg(long, value_name = "B", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|n| n as usize))]
    pub size: usize,
    /// Seconds each run is measured (after its warm-up).
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = bench_seconds)]
    pub secs: f64,
    /// Measure this echo server instead of tcp-lab's (your own, e.g. the seeds' Python one).
    #[arg(long, value_name = "HOST:PORT")]
    pub against: Option<String>,
    /// Print a table for people (text) or one JSON object per run (json).
    #[arg(long, value_enum, default_value_t = Format::Text, hide_possible_values = true)]
    pub format: Format,
    /// Also draw messages/s and CPU per message as an SVG chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

/// The modes `tcp-lab bench` measures, in the course's order.
#[derive(Debug, Clone)]
pub struct Modes(pub Vec<Mode>);

/// `all`, or a comma-separated list of modes.
fn modes(text: &str) -> Result<Modes, String> {
    if text == "all" {
        return Ok(Modes(Mode::value_variants().to_vec()));
    }
    let mut list = Vec::new();
    for name in text.split(',').map(str::trim) {
        let mode = Mode::from_str(name, true).map_err(|_| {
            let names: Vec<&str> = Mode::value_variants().iter().map(|m| m.name()).collect();
            format!("no mode {name:?}; give all, or some of {}", names.join(","))
        })?;
        if !list.contains(&mode) {
            list.push(mode);
        }
    }
    Ok(Modes(list))
}

/// Seconds a bench run is measured: 0.1 to 600.
fn bench_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=600.0).contains(&secs) => Ok(secs),
        Ok(_) => Err("must be between 0.1 and 600 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What the process model's parent tells the child it re-executes.
#[derive(Debug, Clone, Args)]
pub struct ServeChildArgs {
    /// The inherited, already accepted socket.
    #[arg(long)]
    pub fd: i32,
    /// The connection number the parent gave it.
    #[arg(long)]
    pub conn: u64,
    /// The write end of a pipe to the parent: the child's counts go there when it ends.
    #[arg(long)]
    pub report_fd: Option<i32>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// A combination of options clap's derive cannot refuse by itself, said as a usage error.
    pub fn misuse(&self) -> Option<String> {
        match &self.command {
            Command::Serve(args) if args.trigger.is_some() && args.mode != Mode::Poll => {
                Some(format!(
                    "--trigger is for --mode poll: the {} server registers no interest with a \
poller, so there is nothing to trigger",
                    args.mode.name()
                ))
            }
            _ => None,
        }
    }
}

impl AddrArgs {
    /// Resolve `--host` and `--port` to one socket address (the first the resolver gives).
    pub fn resolve(&self) -> anyhow::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| {
                anyhow::anyhow!(
                "unknown host {:?}: {e} — check the name, or use an IP address such as 127.0.0.1",
                self.host
            )
            })?;
        addrs
            .next()
            .ok_or_else(|| anyhow::anyhow!("host {:?} has no address — try 127.0.0.1", self.host))
    }
}

/// A number of seconds: finite and not negative (fractions allowed).
/// The most bytes one read() returns in the servers (server::echo::READ_BUF, checked by a
/// test there): a longer bye word could never match.
pub const BYE_WORD_MAX: usize = 64 * 1024;

/// `--bye-word`: refuse a word that could never match, or would match every blank line.
fn bye_word(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "the bye word cannot be empty or blank: every blank line would close \
the connection"
                .into(),
        );
    }
    if text.len() > BYE_WORD_MAX {
        return Err(format!(
            "the bye word is {} bytes, but one read() returns at most {BYE_WORD_MAX}, so it \
could never match",
            text.len()
        ));
    }
    if text.contains('\n') || text.trim_end() != text {
        return Err(
            "the bye word cannot hold a newline or end with whitespace: a message is \
compared with its trailing whitespace trimmed, so it could never match"
                .into(),
        );
    }
    Ok(text.to_string())
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => Ok(secs),
        Ok(_) => Err("must be between 0 and 86400 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A number of seconds more than 0 (a wait of nothing would give up at once).
fn positive_seconds(text: &str) -> Result<f64, String> {
    match seconds(text)? {
        secs if secs > 0.0 => Ok(secs),
        _ => Err("must be more than 0 seconds".into()),
    }
}

/// `--name`: short enough for the who column, and nothing that could drive a terminal.
fn client_name(text: &str) -> Result<String, String> {
    let fits = (1..=10).contains(&text.chars().count())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fits {
        Ok(text.to_string())
    } else {
        Err("1 to 10 letters, digits, - or _ (it labels the who column)".into())
    }
}

/// `--decode`: an encoding by any of its WHATWG labels (`gbk`, `GB2312`, `utf-8`, `big5`, …).
fn encoding(text: &str) -> Result<&'static encoding_rs::Encoding, String> {
    encoding_rs::Encoding::for_label(text.trim().as_bytes()).ok_or_else(|| {
        format!("unknown encoding {text:?}; try gbk, gb18030, big5, shift_jis, euc-kr or utf-8")
    })
}
