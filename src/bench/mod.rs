//! # `tcp-lab bench`: the models measured side by side, on the learner's own machine
//!
//! For each mode (or the server given with `--against`), each connection count and each
//! number of idle connections, one run:
//!
//! 1. start the server ([`target`]) and open the connections ([`load`]);
//! 2. warm up: exchange messages until every connection has been served once, or nobody new
//!    was served for half a second (a blocking server serves one), or WARMUP_MAX passed;
//! 3. measure for `--secs`: echoes, their latency, and the server's CPU time over the
//!    window, its memory, threads and processes (its whole process tree);
//! 4. let the echoes in flight come back, close the connections (a FIN each, as any client
//!    would: a learner's own server sees plain EOFs), and stop the server.
//!
//! Every step is bounded in time; a server that stops answering earns no messages and is
//! reported, a connection refused, reset or closed is counted in `errors`. The rows are
//! printed as a table ([`report`]) or JSON lines, and drawn with `--plot` ([`plot`]).
//!
//! Lesson: `lessons/13-measure.md`.

pub mod load;
mod plot;
mod report;
mod target;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BenchArgs, Mode};
use crate::event::Format;
use load::{Close, Load};
use target::Target;

pub use report::Row;

/// The longest a warm-up lasts, whatever happens (two thousand processes to start take a while).
const WARMUP_MAX: Duration = Duration::from_secs(20);

/// The shortest warm-up, and how long without a newly served connection ends it.
const WARMUP_MIN: Duration = Duration::from_millis(100);
const WARMUP_QUIET: Duration = Duration::from_millis(300);

/// How long the echoes still in flight at the end of a run get to come back.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How long all the connections of a run get to finish their handshakes.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Set by Ctrl-C: every loop of the bench looks at it at least every 100 ms.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// One run's settings.
#[derive(Debug, Clone, Copy)]
struct Plan {
    conns: usize,
    idle: usize,
    size: usize,
    secs: f64,
}

/// Which server a run measures.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// One of tcp-lab's modes, started by the bench.
    Mode(Mode),
    /// `--against HOST:PORT`.
    Against(SocketAddr),
}

impl Subject {
    fn start(self) -> Result<Target> {
        match self {
            Subject::Mode(mode) => Target::start(mode),
            Subject::Against(addr) => Ok(Target::against(addr)),
        }
    }

    fn name(self) -> String {
        match self {
            Subject::Mode(mode) => mode.name().to_string(),
            Subject::Against(addr) => addr.to_string(),
        }
    }
}

/// `tcp-lab bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    raise_open_files_limit(&args.conns, &args.idle)?;
    let subjects = match args.against.as_deref() {
        Some(text) => {
            let addr = resolve(text)?;
            target::check_reachable(addr)?;
            vec![Subject::Against(addr)]
        }
        None => args.modes.0.iter().map(|&m| Subject::Mode(m)).collect(),
    };
    let plans = plans(args);
    announce(args, &subjects, &plans);

    let progress = progress_bar((subjects.len() * plans.len()) as u64);
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    'all: for &subject in &subjects {
        for &plan in &plans {
            progress.set_message(format!(
                "{}, {}, {} idle",
                subject.name(),
                count(plan.conns, "connection"),
                plan.idle
            ));
            let mut target = subject.start()?;
            let row = measure(&mut target, plan, &mut problems)?;
            drop(target); // stopped and reaped before the next one starts
            if interrupted() {
                break 'all;
            }
            if args.format == Format::Json {
                progress.suspend(|| println!("{}", row.to_json()));
            }
            rows.push(row);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();

    if args.format == Format::Text && !rows.is_empty() {
        print!("{}", report::table(&rows));
    }
    for problem in &problems {
        eprintln!("tcp-lab bench: {problem}");
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &rows, args.size)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("tcp-lab bench: the chart is in {}", path.display());
    }
    if interrupted() {
        bail!("interrupted (Ctrl-C): the servers it started are stopped; the runs above finished");
    }
    Ok(())
}

/// One plan per connection count and idle count, in that order.
fn plans(args: &BenchArgs) -> Vec<Plan> {
    let mut plans = Vec::new();
    for &conns in &args.conns {
        for &idle in &args.idle {
            let (size, secs) = (args.size, args.secs);
            plans.push(Plan {
                conns,
                idle,
                size,
                secs,
            });
        }
    }
    plans
}

/// Say on stderr what is about to run and about how long it takes.
fn announce(args: &BenchArgs, subjects: &[Subject], plans: &[Plan]) {
    let against = matches!(subjects.first(), Some(Subject::Against(_)));
    let seconds: f64 = subjects
        .iter()
        .flat_map(|&s| plans.iter().map(move |p| expected_seconds(s, p)))
        .sum();
    eprintln!(
        "tcp-lab bench: {} of {} s ({} × {} × {}), about {} s in all; Ctrl-C stops it",
        count(subjects.len() * plans.len(), "run"),
        args.secs,
        count(subjects.len(), if against { "server" } else { "mode" }),
        count(args.conns.len(), "connection count"),
        count(args.idle.len(), "idle count"),
        seconds.round()
    );
}

/// One run against `target`: connect, warm up, measure, close. Anything that went wrong
/// but still gave figures is added to `problems`.
fn measure(target: &mut Target, plan: Plan, problems: &mut Vec<String>) -> Result<Row> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut load = Load::connect(target.addr, plan.conns, plan.idle, plan.size, deadline)
        .context("the load generator failed")?;
    let stop = || interrupted();

    // Warm up until everyone who will be served has been. Progress is a connection served
    // for the first time, or the server growing (accepting, starting a thread or a process
    // per connection, perhaps for the idle ones first); none for WARMUP_QUIET ends it.
    let started = Instant::now();
    let progress = |load: &Load| (load.served(), target.size());
    let (mut seen, mut last_new) = (progress(&load), Instant::now());
    while load.waiting() > 0 && !interrupted() {
        let now = Instant::now();
        let warm = now - started;
        if warm >= WARMUP_MAX || (warm >= WARMUP_MIN && now - last_new >= WARMUP_QUIET) {
            break;
        }
        load.run_until(now + Duration::from_millis(50), &stop)?;
        let now_seen = progress(&load);
        if now_seen != seen {
            seen = now_seen;
            last_new = Instant::now();
        }
    }

    // The measured window.
    let before = target.usage();
    load.record(true);
    let window = Instant::now();
    let msgs = load.run_until(window + Duration::from_secs_f64(plan.secs), &stop)?;
    let secs = window.elapsed().as_secs_f64();
    load.record(false);
    let after = target.usage();

    let row = Row::new(target, plan, secs, msgs, &load, before, after);
    if msgs == 0 && plan.conns > 0 && !interrupted() {
        let why = if target.name == "blocking" && plan.idle > 0 {
            " (a blocking server stays with one connection, and an idle one came first)"
        } else {
            ""
        };
        problems.push(format!(
            "{} with {} and {} idle: no echo came back in {secs:.1} s — the server answered \
             none of them{why}",
            target.name,
            count(plan.conns, "connection"),
            plan.idle
        ));
    }
    if !target.alive() {
        problems.push(format!("the {} server exited during the run", target.name));
    }
    if !interrupted() {
        load.drain(Instant::now() + DRAIN_WAIT)?; // Ctrl-C does not wait for it
    }
    load.close(Close::Orderly);
    Ok(row)
}

/// About how long one run takes: its window and warm-up, plus the time to start a process
/// per connection for `process`.
fn expected_seconds(subject: Subject, plan: &Plan) -> f64 {
    let warm = match subject {
        Subject::Mode(Mode::Blocking) => WARMUP_QUIET.as_secs_f64(),
        Subject::Mode(Mode::Process) => 0.2 + 0.005 * (plan.conns + plan.idle) as f64,
        _ => WARMUP_MIN.as_secs_f64(),
    };
    plan.secs + warm + 0.15
}

/// "1 run", "3 runs".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A bar on stderr when it is a terminal; nothing otherwise (a script's log stays clean).
fn progress_bar(runs: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(runs);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {elapsed}  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `--against HOST:PORT` as a socket address.
fn resolve(text: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .map_err(|e| anyhow!("--against {text:?}: {e} — give HOST:PORT, e.g. 127.0.0.1:8000"))?
        .next()
        .ok_or_else(|| anyhow!("--against {text:?} has no address"))
}

/// Every connection is a descriptor here and one in the server (which inherits our limit):
/// raise the soft limit so that the largest run fits, or say why it cannot.
fn raise_open_files_limit(conns: &[usize], idle: &[usize]) -> Result<()> {
    let most = conns.iter().max().unwrap_or(&0) + idle.iter().max().unwrap_or(&0);
    let want = (most + 64) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= want {
        return Ok(());
    }
    if limit.rlim_max < want {
        bail!(
            "{most} connections need {want} descriptors, but the limit is {} (ulimit -Hn)",
            limit.rlim_max
        );
    }
    limit.rlim_cur = want;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}
