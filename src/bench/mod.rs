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

/// The longest a warm-up lasts, whatever happens (a thousand processes to start take a while).
const WARMUP_MAX: Duration = Duration::from_secs(10);

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

/// `tcp-lab bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    raise_open_files_limit(&args.conns, &args.idle)?;
    let against = args.against.as_deref().map(resolve).transpose()?;
    if let Some(addr) = against {
        target::check_reachable(addr)?;
    }
    let modes: Vec<Mode> = if against.is_some() {
        Vec::new()
    } else {
        args.modes.0.clone()
    };
    let servers = if against.is_some() { 1 } else { modes.len() };
    let plans: Vec<Plan> = args
        .conns
        .iter()
        .flat_map(|&conns| {
            args.idle.iter().map(move |&idle| Plan {
                conns,
                idle,
                size: args.size,
                secs: args.secs,
            })
        })
        .collect();
    let runs = servers * plans.len();
    eprintln!(
        "tcp-lab bench: {runs} runs of {} s ({} × {} connection counts × {} idle counts), \
         about {} s in all; Ctrl-C stops it",
        args.secs,
        if against.is_some() {
            "1 server".to_string()
        } else {
            format!("{servers} modes")
        },
        args.conns.len(),
        args.idle.len(),
        expected_seconds(&modes, &plans, against.is_some()).round()
    );

    let progress = progress_bar(runs as u64);
    let mut rows = Vec::with_capacity(runs);
    let mut problems = Vec::new();
    let mut targets: Vec<Option<Mode>> = modes.iter().copied().map(Some).collect();
    if against.is_some() {
        targets.push(None);
    }
    for mode in targets {
        for &plan in &plans {
            let name = mode.map_or_else(
                || args.against.clone().unwrap_or_default(),
                |m| m.name().to_string(),
            );
            progress.set_message(format!(
                "{name}, {} connections, {} idle",
                plan.conns, plan.idle
            ));
            let mut target = match (mode, against) {
                (Some(mode), _) => Target::start(mode)?,
                (None, Some(addr)) => Target::against(addr),
                (None, None) => unreachable!("no mode and no --against"),
            };
            let row = measure(&mut target, plan, &mut problems)?;
            drop(target); // stopped and reaped before the next one starts
            if interrupted() {
                break;
            }
            if args.format == Format::Json {
                progress.suspend(|| println!("{}", row.to_json()));
            }
            rows.push(row);
            progress.inc(1);
        }
        if interrupted() {
            break;
        }
    }
    progress.finish_and_clear();

    if args.format == Format::Text {
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

/// One run against `target`: connect, warm up, measure, close. Anything that went wrong
/// but still gave figures is added to `problems`.
fn measure(target: &mut Target, plan: Plan, problems: &mut Vec<String>) -> Result<Row> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut load = Load::connect(target.addr, plan.conns, plan.idle, plan.size, deadline)
        .context("the load generator failed")?;
    let stop = || interrupted();

    // Warm up until everyone who will be served has been.
    let started = Instant::now();
    let (mut served, mut last_new) = (0, Instant::now());
    while load.waiting() > 0 && !interrupted() {
        let now = Instant::now();
        let warm = now - started;
        if warm >= WARMUP_MAX || (warm >= WARMUP_MIN && now - last_new >= WARMUP_QUIET) {
            break;
        }
        load.run_until(now + Duration::from_millis(50), &stop)?;
        if load.served() > served {
            served = load.served();
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
            "{} with {} connections and {} idle: no echo came back in {secs:.1} s — the \
             server answered none of them{why}",
            target.name, plan.conns, plan.idle
        ));
    }
    if !target.alive() {
        problems.push(format!("the {} server exited during the run", target.name));
    }
    load.drain(Instant::now() + DRAIN_WAIT)?;
    load.close(Close::Orderly);
    Ok(row)
}

/// About how long the whole bench takes: each run's window and warm-up, plus the time to
/// start a process per connection for `process`.
fn expected_seconds(modes: &[Mode], plans: &[Plan], against: bool) -> f64 {
    let per_run = |mode: Option<Mode>, plan: &Plan| {
        let warm = match mode {
            Some(Mode::Blocking) => WARMUP_QUIET.as_secs_f64(),
            Some(Mode::Process) => 0.3 + 0.002 * (plan.conns + plan.idle) as f64,
            _ => WARMUP_MIN.as_secs_f64(),
        };
        plan.secs + warm + 0.15
    };
    if against {
        return plans.iter().map(|p| per_run(None, p)).sum();
    }
    let mut total = 0.0;
    for &mode in modes {
        total += plans.iter().map(|p| per_run(Some(mode), p)).sum::<f64>();
    }
    total
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
