//! # `tcp-lab demo`: one phenomenon, on purpose, in one terminal
//!
//! A scenario ([`scenarios`]) starts the real binary as child processes (`serve`, `client`,
//! all printing JSON events on one shared clock), drives raw sockets itself where it needs
//! precise control, and waits for the events that prove what it teaches. The [`Lab`] collects
//! every event; [`causal_order`] merges them into one timeline; [`ladder`] draws it as the
//! sequence diagram of a TCP textbook. A scenario that did not see what it promised says what
//! happened instead, and the demo exits 1.
//!
//! Children never outlive the demo: each one is a [`Proc`] whose `Drop` stops it (SIGINT,
//! then SIGKILL), and on Linux the kernel sends it SIGTERM if the demo itself dies.

mod ladder;
mod scenarios;
mod wire_check;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use colored::Colorize;
use serde_json::Value;

use crate::cli::DemoArgs;
use crate::event::Format;
use crate::event::{Event, Kind, Role, EPOCH_ENV};
use crate::wire::{self, Capture};
use ladder::Arrows;

pub use scenarios::{Scenario, SCENARIOS};

/// The longest a demo waits for any one step. A demo that works never comes close.
const STEP_WAIT: Duration = Duration::from_secs(5);

/// How long a demo waits, at its end, for children that end by themselves.
const ENDING_WAIT: Duration = Duration::from_secs(1);

/// How long a child gets to stop after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub const CLIENT: &str = "client";
pub const SERVER: &str = "server";
pub const WIRE: &str = "wire";

/// `tcp-lab demo`: list the scenarios, or run one and draw its timeline.
pub fn run(args: &DemoArgs) -> Result<()> {
    let Some(name) = args.name.as_deref().filter(|_| !args.list) else {
        list(args.list);
        return Ok(());
    };
    let scenario = SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        anyhow!(
            "no demo called {name:?}; the demos are: {}",
            names.join(", ")
        )
    })?;
    let text = args.output.format == Format::Text;
    if text {
        let title = format!("tcp-lab demo {}:", scenario.name);
        let gap = if title.len() + 1 + scenario.about.len() > 80 {
            "\n  "
        } else {
            " "
        };
        let _ = writeln!(std::io::stdout(), "{}{gap}{}", title.bold(), scenario.about);
        let _ = std::io::stdout().flush();
    }

    let mut lab = Lab::new(args.port)?;
    let arrows = lab.capture(&args.wire)?;
    let result = (scenario.run)(&mut lab);
    let ended = lab.now();
    let events = causal_order(lab.finish());
    // What the scenario showed through the calls, the wire must show too.
    let result = match arrows {
        Arrows::Captured => result.and_then(|shown| {
            let wire = wire_check::check(scenario.name, &events)?;
            Ok(format!("{shown}; on the wire: {wire}"))
        }),
        _ => result,
    };

    let explain = !args.output.no_explain;
    let mut stdout = std::io::stdout().lock();
    match args.output.format {
        Format::Json => {
            for mut event in events {
                if !explain {
                    if let Some(obj) = event.as_object_mut() {
                        obj.remove("note");
                    }
                }
                let _ = writeln!(stdout, "{event}");
            }
        }
        Format::Text => {
            let _ = write!(stdout, "{}", ladder::render(&events, explain, arrows));
        }
    }
    let _ = stdout.flush();
    if !text {
        // The verdict is one more JSON object, the last line, for scripts as for people.
        let _ = writeln!(stdout, "{}", verdict(name, ended, &result));
        let _ = stdout.flush();
    }
    match result {
        Ok(shown) => {
            let line = format!("shown: {shown}");
            if text {
                // Wrapped to 80 columns, under the check mark.
                for (i, part) in crate::event::wrap(&line, 77).enumerate() {
                    let mark = if i == 0 {
                        "✓".green().bold()
                    } else {
                        " ".normal()
                    };
                    let _ = writeln!(stdout, "{mark} {}", part.bold());
                }
            }
            Ok(())
        }
        // A port someone else holds is the learner's to fix, not a failed lesson.
        Err(error) if error.downcast_ref::<PortInUse>().is_some() => Err(error),
        Err(error) => Err(error.context(format!("demo {name} did not show what it teaches"))),
    }
}

/// `tcp-lab demo` or `--list`: every scenario, one a line; without `--list` (a learner
/// browsing), a title and a hint too, as `tcp-lab lesson` does.
fn list(bare: bool) {
    let mut text = String::new();
    if !bare {
        text.push_str(&format!("{}\n", "The tcp-lab demos".bold()));
    }
    for scenario in SCENARIOS {
        text.push_str(&format!("{:<20} {}\n", scenario.name, scenario.about));
    }
    if !bare {
        text.push_str(
            "\nRun one with `tcp-lab demo NAME`; `--format json` prints its events as JSON lines.\n",
        );
    }
    // A reader that left early (`| head`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// The demo's verdict as JSON: `{"role":"demo","kind":"verdict","demo":…,"shown":…,"detail":…}`.
fn verdict(name: &str, ts: f64, result: &Result<String>) -> Value {
    let (shown, detail) = match result {
        Ok(shown) => (true, shown.clone()),
        Err(error) if error.downcast_ref::<PortInUse>().is_some() => (false, format!("{error:#}")),
        Err(error) => (false, format!("did not show what it teaches: {error:#}")),
    };
    serde_json::json!({
        "ts": (ts * 1e6).round() / 1e6,
        "role": "demo",
        "kind": "verdict",
        "demo": name,
        "shown": shown,
        "detail": detail,
    })
}

/// The port the demo was told to use (`--port`) is taken: said as such, and not as a demo
/// that failed to show its point.
#[derive(Debug)]
pub struct PortInUse(pub u16);

impl std::fmt::Display for PortInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "port {} is in use — is another server running? leave out --port (the kernel \
picks a free one) or pick another",
            self.0
        )
    }
}

impl std::error::Error for PortInUse {}

/// A child process of the demo, stopped when dropped.
struct Proc {
    name: String,
    /// What it wrote to stderr (tcp-lab's one-line errors).
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout reached EOF: every event it will ever print has arrived.
    drained: bool,
    /// A client, or a server told `--exit-after`: it ends by itself, given a moment.
    ends_by_itself: bool,
    status: Option<ExitStatus>,
}

impl Proc {
    fn stderr_text(&self) -> String {
        let text = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        text.trim().to_string()
    }

    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
        // (`status` is only set by try_wait/wait, which reap it).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// SIGINT, a moment to stop cleanly, then SIGKILL.
    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        self.stdin = None;
        self.signal(libc::SIGINT);
        let deadline = Instant::now() + STOP_GRACE;
        while self.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if self.running() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which child a scenario means.
#[derive(Debug, Clone, Copy)]
pub struct ProcId(usize);

/// What the children's reader threads send.
enum Msg {
    Event(Value),
    Done(usize),
}

/// The demo's workbench: its children, the sockets' shared clock, and every event so far.
pub struct Lab {
    start: Instant,
    epoch_ns: u128,
    /// The port for the demo's server (`--port`; 0: the kernel picks).
    pub port: u16,
    exe: PathBuf,
    events: Vec<Value>,
    /// Events already returned by [`Lab::wait`]: each wait finds a new one.
    taken: Vec<bool>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    procs: Vec<Proc>,
    /// `--wire`: the packet capture, its packets arriving as events like the children's.
    capture: Option<Capture>,
}

impl Lab {
    fn new(port: u16) -> Result<Lab> {
        let (tx, rx) = mpsc::channel();
        let epoch_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Lab {
            start: Instant::now(),
            epoch_ns,
            port,
            exe: std::env::current_exe().context("cannot find the tcp-lab executable")?,
            events: Vec::new(),
            taken: Vec::new(),
            tx,
            rx,
            procs: Vec::new(),
            capture: None,
        })
    }

    /// `--wire`: capture the demo's packets, each one an event on the demo's clock. The ports
    /// are added as servers listen ([`Lab::push`]) and clients are sent to them.
    fn capture(&mut self, args: &crate::cli::WireArgs) -> Result<Arrows> {
        let tx = self.tx.clone();
        let epoch_ns = self.epoch_ns;
        self.capture = wire::start(args, &[], move |packet| {
            let ts = packet.at_ns.saturating_sub(epoch_ns) as f64 / 1e9;
            let ts = (ts * 1e6).round() / 1e6;
            let event = wire::event(&packet).to_json(ts, Role::Wire, None, true);
            let _ = tx.send(Msg::Event(event));
        })?;
        Ok(match (&self.capture, args.wanted()) {
            (Some(_), _) => Arrows::Captured,
            (None, true) => Arrows::InferredNoCapture,
            (None, false) => Arrows::Inferred,
        })
    }

    /// Whether the packets are being captured (`--wire`, and allowed).
    pub fn capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// With a capture, wait until the packets so far satisfy `holds` (given every `packet`
    /// event); without one, return at once.
    pub fn wait_wire(&mut self, what: &str, holds: impl Fn(&[&Value]) -> bool) -> Result<()> {
        if !self.capturing() {
            return Ok(());
        }
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let packets: Vec<&Value> = self.events.iter().filter(|e| e["role"] == WIRE).collect();
            if holds(&packets) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "expected {what} on the wire within {} s, but it did not come",
                    STEP_WAIT.as_secs()
                );
            }
            self.pump(Duration::from_millis(20));
        }
    }

    /// Seconds since the demo started: the clock every event shares.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Start `tcp-lab ARGS --format json --color never` on the demo's clock.
    pub fn spawn(&mut self, args: &[&str]) -> Result<ProcId> {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .args(["--format", "json", "--color", "never"])
            .env(EPOCH_ENV, self.epoch_ns.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start tcp-lab {}", args.join(" ")))?;
        let index = self.procs.len();
        let stdout = child.stdout.take().expect("stdout is piped");
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str(&line) {
                    if tx.send(Msg::Event(event)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Msg::Done(index));
        });
        // Its error line, if it fails, explains a demo that went wrong.
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let text = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(line.trim().trim_start_matches("tcp-lab: error: "));
                text.push(' ');
            }
        });
        let stdin = child.stdin.take();
        self.procs.push(Proc {
            stderr,
            stderr_reader: Some(stderr_reader),
            name: format!("tcp-lab {}", args.join(" ")),
            child,
            stdin,
            drained: false,
            ends_by_itself: args.first() == Some(&"client") || args.contains(&"--exit-after"),
            status: None,
        });
        Ok(ProcId(index))
    }

    /// `tcp-lab serve --port P ARGS`, and the port it listens on (from its `listen` event).
    pub fn serve(&mut self, args: &[&str]) -> Result<(ProcId, u16)> {
        let port = self.port.to_string();
        let mut all = vec!["serve", "--port", port.as_str()];
        all.extend_from_slice(args);
        let id = self.spawn(&all)?;
        let deadline = Instant::now() + STEP_WAIT;
        while !self.seen(|e| is(e, SERVER, "listen")) && Instant::now() < deadline {
            let proc = &mut self.procs[id.0];
            if !proc.running() {
                // It exited: its stderr is closed, so the reader ends at once.
                if let Some(reader) = proc.stderr_reader.take() {
                    let _ = reader.join();
                }
                let said = proc.stderr_text();
                if said.contains("already in use") && self.port != 0 {
                    return Err(PortInUse(self.port).into());
                }
                bail!("the server did not start: {said}");
            }
            self.pump(Duration::from_millis(10));
        }
        let listen = self.wait("the server's listen()", |e| is(e, SERVER, "listen"))?;
        Ok((
            id,
            port_of(&listen["local"]).context("no port in the listen event")?,
        ))
    }

    /// `tcp-lab client --port PORT ARGS`.
    pub fn client(&mut self, port: u16, args: &[&str]) -> Result<ProcId> {
        if let Some(capture) = &self.capture {
            capture.watch(port);
        }
        let port = port.to_string();
        let mut all = vec!["client", "--port", port.as_str()];
        all.extend_from_slice(args);
        self.spawn(&all)
    }

    pub fn pid(&self, id: ProcId) -> u32 {
        self.procs[id.0].child.id()
    }

    /// Type into a child's stdin.
    pub fn type_line(&mut self, id: ProcId, line: &str) -> Result<()> {
        let proc = &mut self.procs[id.0];
        let stdin = proc.stdin.as_mut().context("stdin already closed")?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot type into {}", proc.name))
    }

    /// Ctrl-C for one child: SIGINT, as a learner would press it.
    pub fn interrupt(&mut self, id: ProcId) {
        self.procs[id.0].signal(libc::SIGINT);
    }

    /// Wait for a process to exit with `code` (1: the failure the scenario leads it into).
    pub fn expect_exit_code(&mut self, id: ProcId, code: i32) -> Result<()> {
        let status = self.wait_exit(id)?;
        let name = &self.procs[id.0].name;
        anyhow::ensure!(
            status.code() == Some(code),
            "`{name}` ended with {status}, not exit status {code}"
        );
        Ok(())
    }

    /// Wait for a child to exit and for all of its events.
    pub fn wait_exit(&mut self, id: ProcId) -> Result<ExitStatus> {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let proc = &mut self.procs[id.0];
            if !proc.running() && proc.drained {
                return Ok(proc.status.expect("exited"));
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` was still running after {} s",
                    proc.name,
                    STEP_WAIT.as_secs()
                );
            }
            self.pump(Duration::from_millis(10));
        }
    }

    /// Record an event of a socket the demo drives itself, on the shared clock.
    pub fn emit(&mut self, role: Role, event: Event) -> Value {
        let ts = (self.now() * 1e6).round() / 1e6;
        let value = event.to_json(ts, role, None, true);
        self.push(value.clone());
        value
    }

    fn push(&mut self, event: Value) {
        // A server now listens: its port's packets are the demo's.
        if let (Some(capture), true) = (&self.capture, event["kind"] == "listen") {
            if let Some(port) = port_of(&event["local"]) {
                capture.watch(port);
            }
        }
        self.events.push(event);
        self.taken.push(false);
    }

    /// Take whatever the children printed, waiting at most `timeout` for the first of it.
    fn pump(&mut self, timeout: Duration) {
        let mut next = self.rx.recv_timeout(timeout).ok();
        while let Some(msg) = next {
            match msg {
                Msg::Event(event) => self.push(event),
                Msg::Done(index) => self.procs[index].drained = true,
            }
            next = self.rx.try_recv().ok();
        }
    }

    /// Replace the note of every event so far that satisfies `matches`: for where the demo
    /// knows more of the story than the process that printed it (what fed a client's stdin).
    pub fn renote(&mut self, matches: impl Fn(&Value) -> bool, note: &'static str) {
        self.pump(Duration::ZERO);
        for event in self.events.iter_mut().filter(|e| matches(e)) {
            event["note"] = note.into();
        }
    }

    /// Let time pass (the children keep printing).
    pub fn pause(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            self.pump(left.min(Duration::from_millis(20)));
        }
    }

    /// The first event not yet taken that satisfies `matches`, waiting up to STEP_WAIT.
    /// `what` says what the demo waits for, to explain a failure.
    pub fn wait(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + STEP_WAIT;
        let mut looked = 0;
        loop {
            for i in looked..self.events.len() {
                if !self.taken[i] && matches(&self.events[i]) {
                    self.taken[i] = true;
                    return Ok(self.events[i].clone());
                }
            }
            looked = self.events.len();
            if Instant::now() >= deadline {
                bail!(
                    "expected {what} within {} s, but it did not happen; instead: {}{}",
                    STEP_WAIT.as_secs(),
                    self.story(),
                    self.errors()
                );
            }
            self.pump(Duration::from_millis(20));
        }
    }

    /// Wait until `n` events satisfy `matches` (taking them all), in one pass over the events.
    pub fn wait_many(
        &mut self,
        what: &str,
        n: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + STEP_WAIT;
        let (mut got, mut looked) = (0, 0);
        loop {
            for i in looked..self.events.len() {
                if got < n && !self.taken[i] && matches(&self.events[i]) {
                    self.taken[i] = true;
                    got += 1;
                }
            }
            looked = self.events.len();
            if got == n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "expected {what} ({n} times) within {} s, but it happened {got} times",
                    STEP_WAIT.as_secs()
                );
            }
            self.pump(Duration::from_millis(20));
        }
    }

    /// The first event so far not yet taken that satisfies `matches`, without waiting.
    pub fn take_now(&mut self, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        self.pump(Duration::ZERO);
        let i = (0..self.events.len()).find(|&i| !self.taken[i] && matches(&self.events[i]))?;
        self.taken[i] = true;
        Some(self.events[i].clone())
    }

    /// Has any event so far (taken or not) satisfied `matches`?
    pub fn seen(&mut self, matches: impl Fn(&Value) -> bool) -> bool {
        self.pump(Duration::ZERO);
        self.events.iter().any(matches)
    }

    /// What the children said on stderr, for a failure message.
    fn errors(&self) -> String {
        let said: Vec<String> = self
            .procs
            .iter()
            .map(Proc::stderr_text)
            .filter(|t| !t.is_empty())
            .collect();
        if said.is_empty() {
            String::new()
        } else {
            format!(" (and on stderr: {})", said.join(" / "))
        }
    }

    /// The events so far, said briefly, for a failure message.
    pub fn story(&self) -> String {
        let mut sorted: Vec<&Value> = self.events.iter().collect();
        sorted.sort_by(|a, b| ts(a).total_cmp(&ts(b)));
        let told: Vec<String> = sorted.iter().map(|e| brief(e)).collect();
        let skip = told.len().saturating_sub(14);
        let mut story = told[skip..].join(", ");
        if skip > 0 {
            story = format!("… {story}");
        }
        if story.is_empty() {
            "no event at all".into()
        } else {
            story
        }
    }

    /// Stop every child still running and return every event.
    fn finish(mut self) -> Vec<Value> {
        // A server that stops by itself after --exit-after says so better than a Ctrl-C.
        let deadline = Instant::now() + ENDING_WAIT;
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|p| p.ends_by_itself && p.running())
        {
            self.pump(Duration::from_millis(10));
        }
        for proc in &mut self.procs {
            proc.stop();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while self.procs.iter().any(|p| !p.drained) && Instant::now() < deadline {
            self.pump(Duration::from_millis(20));
        }
        self.stop_capture();
        std::mem::take(&mut self.events)
    }

    /// Stop the capture once it has read every packet of the run, and take them in. A capture
    /// that fell behind says so, as an event: its picture of the wire is not whole.
    fn stop_capture(&mut self) {
        let Some(mut capture) = self.capture.take() else {
            return;
        };
        let failed = match capture.stop() {
            Ok(summary) if summary.dropped == 0 => None,
            Ok(summary) => Some(format!(
                "the capture missed {} packets (its queue was full): the wire shown is not whole",
                summary.dropped
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        self.pump(Duration::ZERO);
        if let Some(detail) = failed {
            self.emit(Role::Wire, Event::new(Kind::Error).detail(detail));
        }
    }
}

/// On Linux, ask the kernel to SIGTERM the child if the demo dies first (even of SIGKILL),
/// so no server is left behind holding a port.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let demo = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || crate::server::process::die_with_parent(demo));
    }
}

/// Is `e` an event of `role` (`client` or `server`) and `kind`?
pub fn is(e: &Value, role: &str, kind: &str) -> bool {
    e["role"] == role && e["kind"] == kind
}

pub fn ts(e: &Value) -> f64 {
    e["ts"].as_f64().unwrap_or(0.0)
}

pub fn conn(e: &Value) -> Option<u64> {
    e["conn"].as_u64()
}

pub fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit(':').next()?.parse().ok()
}

/// `client recv`, `server #1 close`: an event in a few words.
fn brief(e: &Value) -> String {
    let who = e["role"].as_str().unwrap_or("?");
    let kind = e["kind"].as_str().unwrap_or("?");
    let mut text = match conn(e) {
        Some(id) => format!("{who} #{id} {kind}"),
        None => format!("{who} {kind}"),
    };
    if let Some(errno) = e["errno"].as_str() {
        text.push_str(&format!(" {errno}"));
    }
    if let Some(flags) = e["flags"].as_str() {
        text.push_str(&format!(" {flags}"));
    }
    text
}

/// The client's address names a connection on both sides: the client's `local`, the
/// server's `peer`. Server events that carry no address (`exit`) borrow it from an earlier
/// event of the same connection number.
fn conn_keys(events: &[Value]) -> Vec<Option<String>> {
    let mut by_conn: HashMap<u64, String> = HashMap::new();
    events
        .iter()
        .map(|e| {
            let addr = if e["role"] == CLIENT {
                &e["local"]
            } else {
                &e["peer"]
            };
            match (addr.as_str(), conn(e)) {
                (Some(addr), Some(id)) => {
                    by_conn.insert(id, addr.to_string());
                    Some(addr.to_string())
                }
                (Some(addr), None) => Some(addr.to_string()),
                (None, Some(id)) => by_conn.get(&id).cloned(),
                (None, None) => None,
            }
        })
        .collect()
}

/// Sort by time, then make sure nothing is seen before it was sent. Each process stamps an
/// event when its call *returned*, so a server's `recv` can carry an earlier time than the
/// client's `send` that it read. A receiving event (`recv`, `eof`, `reset`, `accept`) is moved
/// after the event on the other side that caused it, and otherwise keeps its place.
pub fn causal_order(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by(|a, b| ts(a).total_cmp(&ts(b)));
    let keys = conn_keys(&events);
    let n = events.len();
    let mut cause: Vec<Option<usize>> = vec![None; n];

    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = key {
            by_key.entry(key.as_str()).or_default().push(i);
        }
    }
    for indices in by_key.values() {
        for (side, other) in [(CLIENT, SERVER), (SERVER, CLIENT)] {
            let theirs: Vec<usize> = indices
                .iter()
                .copied()
                .filter(|&i| events[i]["role"] == other)
                .collect();
            // Their sends, with the byte count up to and including each.
            let mut sent = Vec::new();
            let mut total = 0;
            for &i in &theirs {
                if events[i]["kind"] == "send" {
                    total += events[i]["bytes"].as_u64().unwrap_or(0);
                    sent.push((total, i));
                }
            }
            // Their first event of one of `kinds` that sent something: closing one copy of
            // a shared socket sends nothing.
            let first_of = |kinds: &[&str]| {
                theirs.iter().copied().find(|&i| {
                    kinds.iter().any(|k| events[i]["kind"] == *k)
                        && events[i]["note"] != crate::note::CLOSE_SHARED
                        && !is(&events[i], CLIENT, "timeout") // gave up waiting: sent nothing
                })
            };
            let mut received = 0;
            for &i in indices.iter().filter(|&&i| events[i]["role"] == side) {
                cause[i] = match events[i]["kind"].as_str().unwrap_or("") {
                    "recv" => {
                        received += events[i]["bytes"].as_u64().unwrap_or(0);
                        sent.iter().find(|(t, _)| *t >= received).map(|&(_, s)| s)
                    }
                    "eof" => first_of(&["close", "shutdown", "timeout", "limit"]),
                    "reset" => first_of(&["abort", "close"]),
                    "accept" => first_of(&["connect"]),
                    _ => None,
                };
            }
        }
    }

    // Merge the streams (the server's events; each client's) in time order, keeping each
    // stream's own order, and taking an event only once its cause has been taken.
    let mut streams: Vec<Vec<usize>> = Vec::new();
    let mut stream_of: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let name = match (&keys[i], e["role"].as_str()) {
            (Some(key), Some(CLIENT)) => format!("client {key}"),
            (None, Some(CLIENT)) => format!("client event {i}"),
            // Captured packets carry the kernel's own times: they need no reordering.
            (_, Some(WIRE)) => "wire".to_string(),
            _ => "server".to_string(),
        };
        let s = *stream_of.entry(name).or_insert_with(|| {
            streams.push(Vec::new());
            streams.len() - 1
        });
        streams[s].push(i);
    }
    let mut heads = vec![0; streams.len()];
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let candidates = || {
            (0..streams.len())
                .filter(|&s| heads[s] < streams[s].len())
                .map(|s| (s, streams[s][heads[s]]))
        };
        let ready = |&(_, i): &(usize, usize)| cause[i].is_none_or(|c| placed[c]);
        let first = |a: &(usize, usize), b: &(usize, usize)| a.1.cmp(&b.1);
        // An event whose cause is stuck cannot happen in real data; never stall on one.
        let Some((s, i)) = candidates()
            .filter(ready)
            .min_by(first)
            .or_else(|| candidates().min_by(first))
        else {
            break;
        };
        placed[i] = true;
        heads[s] += 1;
        order.push(i);
    }
    let mut slots: Vec<Option<Value>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_read_is_never_drawn_before_the_write_it_read() {
        let events = vec![
            json!({"ts": 0.0, "role": "client", "kind": "connect", "local": "c"}),
            json!({"ts": 0.1, "role": "server", "conn": 1, "kind": "recv", "peer": "c", "bytes": 6}),
            json!({"ts": 0.2, "role": "client", "kind": "send", "local": "c", "bytes": 3}),
            json!({"ts": 0.3, "role": "client", "kind": "send", "local": "c", "bytes": 3}),
            json!({"ts": 0.4, "role": "server", "conn": 1, "kind": "exit"}),
        ];
        let kinds: Vec<String> = causal_order(events)
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["connect", "send", "send", "recv", "exit"]);
    }

    #[test]
    fn a_held_back_read_holds_back_what_its_process_did_next() {
        let events = vec![
            json!({"ts": 0.1, "role": "server", "conn": 1, "kind": "recv", "peer": "c", "bytes": 3}),
            json!({"ts": 0.2, "role": "server", "conn": 1, "kind": "abort", "peer": "c"}),
            json!({"ts": 0.3, "role": "client", "kind": "send", "local": "c", "bytes": 3}),
            json!({"ts": 0.4, "role": "client", "kind": "reset", "local": "c"}),
        ];
        let kinds: Vec<String> = causal_order(events)
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["send", "recv", "abort", "reset"]);
    }
}
