//! Ping-pong benchmark: tcp-lab's poll server, under each `--trigger`, against a minimal
//! tokio echo server.
//!
//! `cargo bench --bench pingpong`               50 and 5,000 connections, each with one
//!                                              64-byte message in flight; messages/second
//!                                              and messages per server CPU-second, poll
//!                                              edge / level / oneshot and tokio side by side
//! `cargo bench --bench pingpong -- --rounds N` the same with N paired rounds (default 21)
//! `cargo bench --bench pingpong -- --strace`   system calls per message of each server
//!                                              (`strace -c -f`, 50 connections, a fixed
//!                                              number of messages)
//! `cargo bench --bench pingpong -- --c10k`     10,000 connections open at once on the poll
//!                                              server, each served; its peak memory (VmHWM)
//! `cargo bench --bench pingpong -- --idle`     nonblocking against poll, idle for a second:
//!                                              loop turns, wasted tries, CPU time
//!
//! The servers are separate processes: the release `tcp-lab serve --mode poll --quiet`, and
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

mod common;
use common::{cpu_seconds, raise_nofile_limit, status_kb};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-lab");
/// Bytes per message.
const SIZE: usize = 64;
/// How long all the connections of a run get to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(1);
const ROUNDS: usize = 21;
/// Messages per server for `--strace`.
const STRACE_MESSAGES: u64 = 100_000;

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
    } else if args.iter().any(|a| a == "--strace") {
        syscalls(50, STRACE_MESSAGES);
    } else {
        let rounds = value_of(&args, "--rounds").unwrap_or(ROUNDS).max(1);
        match value_of(&args, "--conns") {
            Some(n) => pingpong(&[n], rounds),
            None => pingpong(&[50, 5_000], rounds),
        }
    }
}

/// `--name N` on the command line.
fn value_of(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// The servers compared: the poll server under each trigger, and tokio (the yardstick, last).
const SERVERS: [&str; 4] = ["edge", "level", "oneshot", "tokio"];
const TOKIO: usize = 3;

/// Messages/second for each server and size, and messages per second of the server's own
/// CPU time (its cost per message). The machine's speed drifts from one second to the next
/// (it is a shared VM), so the servers are compared in *rounds*: each round runs every
/// server once, back to back, in an order that rotates from round to round, and each poll
/// server's ratio to tokio is taken *within* the round. The figure is the median of the
/// rounds' ratios; the lowest and highest and the middle half (quartiles) are printed beside it.
fn pingpong(sizes: &[usize], rounds: usize) {
    let pinned = pin_generator();
    let mut servers: Vec<Server> = SERVERS
        .iter()
        .map(|&name| match name {
            "tokio" => Server::start(name, tokio_command()),
            trigger => Server::start(name, poll_command(trigger)),
        })
        .collect();
    if pinned {
        servers.iter().for_each(pin_server);
    }
    println!(
        "ping-pong, 64-byte messages, one in flight per connection; {rounds} rounds of {MEASURE:?} runs{}",
        if pinned { "; generator on CPU 0, servers on CPU 1" } else { "" }
    );
    for &conns in sizes {
        let mut runs: Vec<Vec<Run>> = SERVERS.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for i in 0..SERVERS.len() {
                let server = (round + i) % SERVERS.len();
                runs[server].push(measure(&mut servers[server], conns));
            }
        }
        println!(
            "{conns:>6} connections  msg/s     server CPU  msg per server CPU-second  \
load generator CPU   /tokio in msg/s [lowest, quartiles, highest]   /tokio per CPU-second"
        );
        for (i, name) in SERVERS.iter().enumerate() {
            let label = match *name {
                "tokio" => "tokio".to_string(),
                trigger => format!("poll {trigger}"),
            };
            let vs_tokio = |f: fn(&Run) -> f64| match i {
                TOKIO => String::new(),
                _ => spread(runs[i].iter().zip(&runs[TOKIO]).map(|(p, t)| f(p) / f(t))),
            };
            println!(
                "  {label:<12} {:>9.0}  {:>5.0} %    {:>9.0}                   {:>4.0} %        {:<40}  {}",
                median(runs[i].iter().map(|r| r.rate).collect()),
                median(runs[i].iter().map(|r| r.server_cpu).collect()) * 100.0,
                median(runs[i].iter().map(Run::per_cpu).collect()),
                median(runs[i].iter().map(|r| r.load_cpu).collect()) * 100.0,
                vs_tokio(|r| r.rate),
                vs_tokio(Run::per_cpu),
            );
        }
    }
    let tokio_hwm = status_kb(servers[TOKIO].child.id(), "VmHWM");
    for server in &servers {
        let hwm = status_kb(server.child.id(), "VmHWM");
        println!(
            "{:>8} peak memory (VmHWM): {hwm:>6} kB  ({:.2} of tokio's)",
            server.name,
            hwm as f64 / tokio_hwm.max(1) as f64
        );
    }
    for server in &mut servers {
        let summary = server.stop();
        if server.name != "tokio" {
            println!("poll {} summary: {summary}", server.name);
        }
    }
}

/// `median (lowest, first quartile–third quartile, highest)` of the ratios.
fn spread(ratios: impl Iterator<Item = f64>) -> String {
    let r = sorted(ratios.collect());
    let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.3} [{:.2}, {:.2}–{:.2}, {:.2}]",
        at(0.5),
        r[0],
        at(0.25),
        at(0.75),
        r[r.len() - 1]
    )
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

/// System calls per message of each server: the server runs under `strace -c -f` (every
/// call of every thread counted), `conns` connections exchange at least `messages`
/// messages, the server is stopped, and strace's table is divided by the messages echoed.
/// Setting up and closing the connections is counted too: with 50 connections it is a few
/// hundred calls out of hundreds of thousands.
fn syscalls(conns: usize, messages: u64) {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("strace is not installed (apt-get install strace): no system-call counts");
        return;
    }
    println!(
        "system calls per message, {conns} connections, at least {messages} messages each \
(strace -c -f; the servers run slower traced, the counts are what matters)"
    );
    for name in SERVERS {
        let table = std::env::temp_dir().join(format!("tcp-lab-strace-{name}.txt"));
        let server = match name {
            "tokio" => tokio_command(),
            trigger => poll_command(trigger),
        };
        let mut cmd = Command::new("strace");
        cmd.args(["-c", "-f", "-o"]).arg(&table).arg("--");
        cmd.arg(server.get_program()).args(server.get_args());
        let mut traced = Server::start(name, cmd);
        let mut load = connect(traced.port, conns);
        let mut echoed = 0;
        while echoed < messages {
            echoed += run_for(&mut load, Duration::from_millis(50));
        }
        // The messages still in flight come back too (one per connection): all are counted.
        load.drain(Instant::now() + Duration::from_secs(10))
            .expect("the load generator");
        load.close(Close::Orderly);
        let echoed = echoed + conns as u64;
        let summary = traced.stop_traced();
        let text = std::fs::read_to_string(&table).unwrap_or_default();
        let mut calls = strace_calls(&text);
        calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let total: u64 = calls.iter().map(|(_, n)| n).sum();
        let label = match name {
            "tokio" => "tokio".to_string(),
            trigger => format!("poll {trigger}"),
        };
        println!(
            "  {label:<12} {:.3} per message ({total} calls, {echoed} messages)",
            total as f64 / echoed as f64
        );
        let per_message: Vec<String> = calls
            .iter()
            .filter(|(_, n)| *n as f64 / echoed as f64 >= 0.0005)
            .map(|(call, n)| format!("{call} {:.3}", *n as f64 / echoed as f64))
            .collect();
        println!("               {}", per_message.join(", "));
        if name != "tokio" {
            println!("               summary: {summary}");
            // The loop counts its own epoll_ctl calls; strace counts every one the process made.
            let traced = calls.iter().find(|(call, _)| call == "epoll_ctl");
            let stats: serde_json::Value = serde_json::from_str(&summary).unwrap_or_default();
            println!(
                "               epoll_ctl: {} counted by strace, {} by the summary",
                traced.map_or(0, |(_, n)| *n),
                stats["epoll_ctl"]
            );
        }
    }
}

/// (system call, calls) from the table `strace -c` writes.
fn strace_calls(table: &str) -> Vec<(String, u64)> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let call = *fields.last()?;
            let count = fields.get(3)?.parse().ok()?;
            (fields.len() >= 5 && call != "total").then(|| (call.to_string(), count))
        })
        .collect()
}

/// N connections open at once on the poll server, each one served (one echo), then the
/// server's peak resident memory.
fn c10k(conns: usize) {
    let mut poll = Server::start("poll", poll_command("edge"));
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

/// `tcp-lab serve --mode poll --trigger TRIGGER --quiet`, as a command.
fn poll_command(trigger: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--mode", "poll", "--trigger", trigger]);
    cmd.args(["--port", "0", "--quiet", "--backlog", "1024"]);
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
        self.last_stats()
    }
}

impl Server {
    /// The server's last line once it has exited: tcp-lab's summary stats.
    fn last_stats(&mut self) -> String {
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

    /// For a server started under strace: SIGTERM to the server itself (strace's child), so
    /// that strace writes its table when the server exits; then the server's last line.
    fn stop_traced(&mut self) -> String {
        let strace = self.child.id();
        let children = format!("/proc/{strace}/task/{strace}/children");
        let server = std::fs::read_to_string(children).unwrap_or_default();
        if let Some(pid) = server
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            // SAFETY: kill(2) on our own grandchild, the traced server.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
        self.last_stats()
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
