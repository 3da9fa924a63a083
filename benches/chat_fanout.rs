//! Chat fan-out benchmark: 1,000 users in one room, one of them talking, the others reading.
//!
//! `cargo bench --bench chat_fanout`                     threaded and poll, 1,000 users
//! `cargo bench --bench chat_fanout -- --users N`        another room size
//!
//! For each mode it starts the release `tcp-lab serve --app chat --mode M --quiet`, connects
//! the users one by one (all stay in #lobby), waits until every welcome and every `joined`
//! notice has arrived, then has user 1 send LINES lines while the others read. At most WINDOW
//! lines are in flight (sent, and not yet received by every other member), so no reader falls
//! 64 KiB behind and gets dropped: what is measured is how fast the server copies one line to
//! everyone, not how fast a flooder can make it drop people. Reported: lines delivered per
//! second (lines × (users − 1) / time), the server's CPU time, its peak memory (VmHWM) and its
//! threads. The load generator is one thread of this process with its own epoll loop.
//! Results: docs/benchmarks.md.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};

mod common;
use common::{cpu_seconds, raise_nofile_limit, status_kb};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-lab");
const LINES: usize = 2_000;
const WINDOW: usize = 8;
const ROUNDS: usize = 3;
/// Any one phase that takes longer has failed (a dropped reader, a stuck server).
const PHASE_LIMIT: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let users = args
        .iter()
        .position(|a| a == "--users")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1_000);
    raise_nofile_limit();
    println!("chat fan-out: {users} users in one room, 1 talking, {LINES} lines, window {WINDOW}");
    println!(
        "{:<9} {:>12} {:>8} {:>8} {:>8} {:>12} {:>8}",
        "mode", "lines/s", "secs", "cpu_s", "gen_cpu", "peak_rss_kb", "threads"
    );
    for round in 0..ROUNDS {
        for mode in ["threaded", "poll"] {
            let r = run(mode, users);
            println!(
                "{:<9} {:>12.0} {:>8.3} {:>8.2} {:>8.2} {:>12} {:>8}   (round {})",
                mode,
                r.delivered_per_s,
                r.secs,
                r.cpu_s,
                r.generator_cpu_s,
                r.peak_rss_kb,
                r.threads,
                round + 1
            );
        }
    }
}

struct Result {
    delivered_per_s: f64,
    secs: f64,
    cpu_s: f64,
    /// This process's CPU time: near `secs`, the generator itself is the bottleneck.
    generator_cpu_s: f64,
    peak_rss_kb: u64,
    threads: u64,
}

fn run(mode: &str, users: usize) -> Result {
    let mut server = start(mode);
    let port = port_of(&mut server);
    let pid = server.id();
    let mut room = Room::connect(port, users);
    // Setup: user i gets its welcome and a `joined` for each of the users after it.
    let setup_lines = users + users * (users - 1) / 2;
    room.read_until(|room| room.total() >= setup_lines as u64);
    room.reset_counts();

    let cpu_before = cpu_seconds(pid);
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let line = b"the quick brown fox jumps over the lazy dog\n";
    let mut sent = 0;
    while sent < LINES {
        while sent < LINES && sent - room.min_received() as usize >= WINDOW {
            room.read_some();
        }
        if sent < LINES {
            room.streams[0].write_all(line).expect("the talker's write");
            sent += 1;
        }
        room.poll_now();
    }
    room.read_until(|room| room.min_received() >= LINES as u64);
    let secs = started.elapsed().as_secs_f64();
    let result = Result {
        delivered_per_s: (LINES * (users - 1)) as f64 / secs,
        secs,
        cpu_s: cpu_seconds(pid) - cpu_before,
        generator_cpu_s: cpu_seconds(std::process::id()) - own_before,
        peak_rss_kb: status_kb(pid, "VmHWM"),
        threads: status_kb(pid, "Threads"),
    };
    drop(room);
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// Every user's socket, registered with one poller; lines counted per reader.
struct Room {
    poller: Poller,
    streams: Vec<TcpStream>,
    lines: Vec<u64>,
    events: Events,
    buf: Vec<u8>,
}

impl Room {
    fn connect(port: u16, users: usize) -> Room {
        let poller = Poller::new().unwrap();
        let mut room = Room {
            poller,
            streams: Vec::new(),
            lines: Vec::new(),
            events: Events::new(),
            buf: vec![0; 64 * 1024],
        };
        for i in 0..users {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nonblocking(true).unwrap();
            // A line goes out at once, as typed.
            stream.set_nodelay(true).unwrap();
            // SAFETY: every stream is deleted from the poller in Drop before it is closed.
            unsafe { room.poller.add(&stream, Event::readable(i)) }.unwrap();
            room.streams.push(stream);
            room.lines.push(0);
            room.poll_now(); // read the joins as they come, so nobody falls behind
        }
        room
    }

    fn total(&self) -> u64 {
        self.lines.iter().sum()
    }

    /// The fewest lines any reader (not the talker) has received.
    fn min_received(&self) -> u64 {
        self.lines[1..].iter().copied().min().unwrap_or(0)
    }

    fn reset_counts(&mut self) {
        self.lines.iter_mut().for_each(|n| *n = 0);
    }

    fn read_until(&mut self, done: impl Fn(&Room) -> bool) {
        let deadline = Instant::now() + PHASE_LIMIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "stuck: {} lines so far",
                self.total()
            );
            self.read_some();
        }
    }

    fn poll_now(&mut self) {
        self.wait(Some(Duration::ZERO));
    }

    fn read_some(&mut self) {
        self.wait(Some(Duration::from_secs(1)));
    }

    fn wait(&mut self, timeout: Option<Duration>) {
        self.events.clear();
        self.poller.wait(&mut self.events, timeout).unwrap();
        let ready: Vec<usize> = self.events.iter().map(|e| e.key).collect();
        for key in ready {
            loop {
                match (&self.streams[key]).read(&mut self.buf) {
                    Ok(0) => panic!("user {key} was closed (dropped as a slow reader?)"),
                    Ok(n) => {
                        let newlines = self.buf[..n].iter().filter(|&&b| b == b'\n').count();
                        self.lines[key] += newlines as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("user {key}: {e}"),
                }
            }
            self.poller
                .modify(&self.streams[key], Event::readable(key))
                .unwrap();
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        for stream in &self.streams {
            let _ = self.poller.delete(stream);
        }
    }
}

fn start(mode: &str) -> Child {
    Command::new(BIN)
        .args([
            "serve", "--app", "chat", "--mode", mode, "--port", "0", "--quiet",
        ])
        .args(["--format", "json", "--backlog", "4096"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tcp-lab")
}

/// The port from the server's `listen` event.
fn port_of(server: &mut Child) -> u16 {
    let mut line = String::new();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // The rest (join events) is read and thrown away, so the server never writes to a full
    // or closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let at = line.find("127.0.0.1:").expect("a listen event") + "127.0.0.1:".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}
