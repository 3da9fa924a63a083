//! Ping-pong benchmark: tcp-lab's poll server against a minimal tokio echo server.
//!
//! `cargo bench --bench pingpong`               50 and 5,000 connections, each with one
//!                                              64-byte message in flight; messages/second
//! `cargo bench --bench pingpong -- --c10k`     10,000 connections open at once on the poll
//!                                              server, each served; its peak memory (VmHWM)
//! `cargo bench --bench pingpong -- --idle`     nonblocking against poll, idle for a second:
//!                                              loop turns, wasted tries, CPU time
//!
//! Both servers are separate processes: the release `tcp-lab serve --mode poll --quiet`, and
//! this binary re-executed as a tokio current-thread server. The load generator is the same
//! for both, and the same as `tcp-lab bench`'s: `tcp_lab::bench::load::Load`, one thread of
//! this process in its own level-triggered poller, one read() and one write() per message. On two cores it runs on CPU 0 and the servers on CPU 1; the
//! servers are compared in pairs of runs back to back (see `pingpong`). The servers' CPU use
//! is printed beside each figure: a server at ~100 % of a core is the bottleneck.
//! Results: docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tcp_lab::bench::load::{Close, Load};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-lab");
/// Bytes per message.
const SIZE: usize = 64;
/// How long all the connections of a run get to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(1);
const ROUNDS: usize = 11;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--serve-tokio") {
        return tokio_server::run();
    }
    raise_nofile_limit();
    if args.iter().any(|a| a == "--c10k") {
        c10k(10_000);
    } else if args.iter().any(|a| a == "--idle") {
        idle();
    } else if let Some(n) = value_of(&args, "--conns") {
        pingpong(&[n]);
    } else {
        pingpong(&[50, 5_000]);
    }
}

/// `--name N` on the command line.
fn value_of(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// Messages/second for each server and size, and messages per second of the server's own
/// CPU time (its cost per message). The machine's speed drifts from one second to the next
/// (it is a shared VM), so the servers are compared in *pairs* of runs back to back, the order
/// swapped every round, and the ratio is the median of the ROUNDS pairs' ratios; the
/// spread of those ratios is printed beside it.
fn pingpong(sizes: &[usize]) {
    let pinned = pin_generator();
    let mut poll = Server::start("poll", poll_command());
    let mut tokio = Server::start("tokio", tokio_command());
    if pinned {
        pin_server(&poll);
        pin_server(&tokio);
    }
    println!(
        "ping-pong, 64-byte messages, one in flight per connection; {ROUNDS} pairs of {MEASURE:?} runs{}",
        if pinned { "; generator on CPU 0, servers on CPU 1" } else { "" }
    );
    for &conns in sizes {
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let server = if i == 0 { &mut poll } else { &mut tokio };
                runs[i].push(measure(server, conns));
            }
        }
        // Each pair's poll/tokio ratio, lowest first.
        let pair_ratio = |f: fn(&Run) -> f64| -> Vec<f64> {
            let ratios = runs[0].iter().zip(&runs[1]).map(|(p, t)| f(p) / f(t));
            sorted(ratios.collect())
        };
        let rate_ratios = pair_ratio(|r| r.rate);
        let cost_ratios = pair_ratio(|r| r.per_cpu());
        println!("{conns:>6} connections   msg/s  server CPU  msg per server CPU-second  load generator CPU");
        for (name, runs) in [("poll", &runs[0]), ("tokio", &runs[1])] {
            println!(
                "  {name:<10} {:>9.0}      {:>4.0} %  {:>9.0}                  {:>4.0} %",
                median(runs.iter().map(|r| r.rate).collect()),
                median(runs.iter().map(|r| r.server_cpu).collect()) * 100.0,
                median(runs.iter().map(Run::per_cpu).collect()),
                median(runs.iter().map(|r| r.load_cpu).collect()) * 100.0,
            );
        }
        println!(
            "  poll/tokio   {:>9.2}             {:>9.2}      (median of the {ROUNDS} pairs' ratios)",
            rate_ratios[ROUNDS / 2],
            cost_ratios[ROUNDS / 2],
        );
        println!(
            "  pairs        {:.2}–{:.2}             {:.2}–{:.2}  (lowest–highest)",
            rate_ratios[0],
            rate_ratios[ROUNDS - 1],
            cost_ratios[0],
            cost_ratios[ROUNDS - 1],
        );
    }
    for server in [&poll, &tokio] {
        println!(
            "{:>5} peak memory (VmHWM): {} kB",
            server.name,
            status_kb(server.child.id(), "VmHWM")
        );
    }
    println!("poll summary: {}", poll.stop());
    tokio.stop();
}

/// One run's figures.
struct Run {
    /// Echoes completed per second.
    rate: f64,
    /// The server's CPU use, in cores.
    server_cpu: f64,
    /// The load generator's CPU use (this thread), in cores.
    load_cpu: f64,
}

impl Run {
    /// Messages per second of the server's own CPU time: its cost per message, inverted.
    fn per_cpu(&self) -> f64 {
        self.rate / self.server_cpu.max(0.01)
    }
}

/// One run: connect, warm up, count round trips over MEASURE.
fn measure(server: &mut Server, conns: usize) -> Run {
    let mut load = connect(server.port, conns);
    run_for(&mut load, WARMUP);
    let cpu_before = cpu_seconds(server.child.id());
    let load_before = thread_cpu_seconds();
    let started = Instant::now();
    let messages = run_for(&mut load, MEASURE);
    let secs = started.elapsed().as_secs_f64();
    let run = Run {
        rate: messages as f64 / secs,
        server_cpu: (cpu_seconds(server.child.id()) - cpu_before) / secs,
        load_cpu: (thread_cpu_seconds() - load_before) / secs,
    };
    load.close(Close::Abort); // no TIME_WAIT left between runs
    run
}

/// On two cores or more: the load generator (this thread) on CPU 0, each server on CPU 1,
/// so that neither migrates and both servers meet the same placement. False if not done.
fn pin_generator() -> bool {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    online >= 2 && set_cpu(0, 0)
}

fn pin_server(server: &Server) {
    // Every thread of the server: tokio's runtime thread, tcp-lab's loop and Ctrl-C thread.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id()));
    for task in tasks.into_iter().flatten().flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            set_cpu(tid, 1);
        }
    }
}

/// sched_setaffinity(tid, {cpu}); tid 0 is the calling thread.
fn set_cpu(tid: libc::pid_t, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// CPU time of the calling thread (the load generator), from getrusage(RUSAGE_THREAD).
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn median(values: Vec<f64>) -> f64 {
    let values = sorted(values);
    values[values.len() / 2]
}

/// N connections open at once on the poll server, each one served (one echo), then the
/// server's peak resident memory.
fn c10k(conns: usize) {
    let mut poll = Server::start("poll", poll_command());
    let started = Instant::now();
    let mut load = connect(poll.port, conns);
    let connected = started.elapsed();
    let echoed = one_round(&mut load);
    let served = started.elapsed();
    let pid = poll.child.id();
    let threads = status_kb(pid, "Threads");
    let (rss, hwm) = (status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"));
    println!("{conns} connections open at once on `tcp-lab serve --mode poll --quiet`");
    println!(
        "  connected in {connected:.2?}; every one echoed ({echoed} echoes) after {served:.2?}"
    );
    println!(
        "  server: {threads} thread(s), VmRSS {rss} kB, peak VmHWM {hwm} kB ({:.1} MB)",
        hwm as f64 / 1024.0
    );
    assert_eq!(echoed, conns, "every connection must be served");
    load.close(Close::Abort); // no TIME_WAIT left between runs
    let summary = poll.stop();
    println!("  summary: {summary}");
}

/// The cost of waiting: each loop server idle for about a second, with no connection and
/// then with ten idle ones, and its summary.
fn idle() {
    for open in [0, 10] {
        for mode in ["nonblocking", "poll"] {
            let mut cmd = Command::new(BIN);
            cmd.args(["serve", "--mode", mode, "--port", "0", "--quiet"]);
            let mut server = Server::start(mode, cmd);
            let started = Instant::now();
            let conns: Vec<TcpStream> = (0..open)
                .map(|_| TcpStream::connect(("127.0.0.1", server.port)).expect("connect"))
                .collect();
            std::thread::sleep(Duration::from_secs(1));
            let summary = server.stop();
            drop(conns);
            println!(
                "{mode:>11}, {open:>2} idle connections, {:.2?}: {summary}",
                started.elapsed()
            );
        }
    }
}

fn poll_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--mode",
        "poll",
        "--port",
        "0",
        "--quiet",
        "--backlog",
        "1024",
    ]);
    cmd
}

fn tokio_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("this benchmark's path"));
    cmd.arg("--serve-tokio");
    cmd
}

/// A server process and the port it listens on.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    /// Reads the server's output as it comes (a full pipe would stall the server) and
    /// keeps its last line.
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Start it with JSON events and read its port: tcp-lab's `listen` event, or the tokio
    /// server's `{"port": N}` line.
    fn start(name: &'static str, mut cmd: Command) -> Server {
        cmd.args(["--format", "json"]).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the server's first line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let port = match &event["local"] {
            serde_json::Value::String(addr) => addr.rsplit(':').next().unwrap().parse().unwrap(),
            _ => event["port"].as_u64().expect("a port") as u16,
        };
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in stdout.lines().map_while(Result::ok) {
                last = line;
            }
            last
        });
        Server {
            name,
            child,
            port,
            reader: Some(reader),
        }
    }

    /// SIGTERM, then its last line (tcp-lab's summary). Not SIGINT: a shell ignores SIGINT
    /// in background jobs, and the tokio server would inherit that.
    fn stop(&mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let last = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(&last) {
            Ok(event) => event["stats"].to_string(),
            Err(_) => last.trim().to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N connections to the server on `port`, each to carry one SIZE-byte message at a time.
fn connect(port: u16, conns: usize) -> Load {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let load = Load::connect(addr, conns, 0, SIZE, Instant::now() + CONNECT_WAIT)
        .expect("the load generator");
    assert_eq!(load.failed(), 0, "every connection must connect");
    load
}

/// Exchange messages for `duration`; the echoes completed. The messages in flight at the
/// end stay in flight.
fn run_for(load: &mut Load, duration: Duration) -> u64 {
    let echoes = load
        .run_until(Instant::now() + duration, &|| false)
        .expect("the load generator");
    assert_eq!(load.failed(), 0, "a connection failed");
    echoes
}

/// Run until every connection has had its first echo (at most two minutes); how many had.
fn one_round(load: &mut Load) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.waiting() > 0 && Instant::now() < deadline {
        run_for(load, Duration::from_millis(100));
    }
    load.served()
}

/// A minimal tokio echo server: a current-thread runtime, a task per connection, the
/// textbook read/write_all loop.
mod tokio_server {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    pub fn run() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = socket.listen(1024).unwrap();
            println!("{{\"port\": {}}}", listener.local_addr().unwrap().port());
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// Many connections need many descriptors: raise the soft limit to the hard one (the
/// servers, our children, inherit it).
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A field of /proc/PID/status (kB, or a count).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
