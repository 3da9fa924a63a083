//! What a bench run measures: a server it started itself, or one it was pointed at, and that
//! server's cost as the kernel counts it (/proc).
//!
//! A server the bench starts is its child (`tcp-lab serve --quiet --port 0 --mode M`): its
//! port comes from its `listen` event, and it is stopped and reaped when the [`Target`] is
//! dropped, however the run ends (an error, a Ctrl-C). It runs in a process group of its
//! own, so a Ctrl-C typed at the terminal reaches only the bench, which then stops it; and
//! it dies with the bench if the bench is killed outright.
//!
//! Its cost counts the whole process tree (the process model's children included): CPU time
//! is each thread's time on a CPU, user and system, from /proc/PID/task/TID/schedstat — the
//! same time /proc/PID/stat gives as utime + stime, but in nanoseconds instead of clock
//! ticks (1/100 s, rounded down per process: over a thousand children running microseconds
//! at a time that rounding swamps the figure). Where schedstat is missing, utime + stime it
//! is. Peak memory is the sum of each process's VmHWM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::cli::Mode;

/// How long a server gets to print its `listen` event.
const START_WAIT: Duration = Duration::from_secs(5);

/// How long a server gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The server under test.
pub struct Target {
    /// The mode's name, or the address given with `--against`.
    pub name: String,
    pub addr: SocketAddr,
    /// The server's process, when it is known (always for ours; for `--against`, when it
    /// listens on this machine and /proc says which process holds the socket).
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// A server's cost so far, over its whole process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds since it started.
    pub cpu_s: f64,
    /// The sum of each process's peak resident memory (VmHWM), kB.
    pub peak_rss_kb: u64,
    pub threads: u64,
    pub processes: u64,
}

impl Target {
    /// Start `tcp-lab serve --mode MODE --quiet --port 0` and read its port.
    pub fn start(mode: Mode) -> Result<Target> {
        let exe = std::env::current_exe().context("cannot find the tcp-lab executable")?;
        let mut command = Command::new(exe);
        // A backlog large enough for every connection of a run: a blocking server must be
        // able to leave them all queued, not make their SYNs wait for a retry.
        command
            .args(["serve", "--quiet", "--port", "0", "--backlog", "4096"])
            .args([
                "--mode",
                mode.name(),
                "--format",
                "json",
                "--color",
                "never",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0); // Ctrl-C at the terminal reaches the bench only
        let bench = std::process::id();
        // SAFETY: die_with_parent only calls prctl and getppid, both async-signal-safe.
        unsafe {
            command.pre_exec(move || crate::server::process::die_with_parent(bench));
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the {} server", mode.name()))?;
        let listen = first_line_then_drain(child.stdout.take().expect("piped"));
        let stderr = keep_text(child.stderr.take().expect("piped"));
        let pid = child.id();
        let mut target = Target {
            name: mode.name().to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: Some(pid),
            child: Some(child),
        };
        let line = listen.recv_timeout(START_WAIT).map_err(|_| {
            target.stop();
            let said = stderr
                .recv_timeout(Duration::from_secs(1))
                .unwrap_or_default();
            anyhow!(
                "the {} server did not start within {} s: {}",
                mode.name(),
                START_WAIT.as_secs(),
                said.trim().trim_start_matches("tcp-lab: error: ")
            )
        })?;
        let event: Value = serde_json::from_str(&line).context("the server's listen event")?;
        target.addr = event["local"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no address in the server's listen event: {line}"))?;
        Ok(target)
    }

    /// A server somebody else started (`--against HOST:PORT`).
    pub fn against(addr: SocketAddr) -> Target {
        Target {
            name: addr.to_string(),
            addr,
            pid: listener_pid(addr.port()),
            child: None,
        }
    }

    /// False if our server has exited (crashed) during the run.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The server's cost so far, or None if its process is unknown or gone.
    pub fn usage(&self) -> Option<Usage> {
        let mut usage = Usage::default();
        for (pid, stat) in process_tree(self.pid?) {
            usage.processes += 1;
            usage.threads += stat.threads;
            usage.cpu_s += thread_cpu_seconds(pid).unwrap_or(stat.cpu_s);
            usage.peak_rss_kb += status_field(pid, "VmHWM").unwrap_or(0);
        }
        (usage.processes > 0).then_some(usage)
    }

    /// How big the server is now: its processes, threads, and the descriptors of its main
    /// process (one per connection accepted). Cheaper than [`Target::usage`], for watching
    /// it grow while it accepts.
    pub fn size(&self) -> (u64, u64, u64) {
        let Some(pid) = self.pid else {
            return (0, 0, 0);
        };
        let tree = process_tree(pid);
        let threads = tree.iter().map(|(_, stat)| stat.threads).sum();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        (tree.len() as u64, threads, fds as u64)
    }

    /// SIGTERM (tcp-lab's clean stop), then SIGKILL if it is still there after STOP_GRACE;
    /// reaped either way. A server we did not start is left alone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first line of `pipe`, sent once; the rest is read and dropped, so a chatty server
/// never blocks on a full pipe.
fn first_line_then_drain(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(pipe).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines.map_while(Result::ok) {}
    });
    rx
}

/// All of `pipe`'s text, sent when it closes (the server's one-line error, if it failed).
fn keep_text(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(pipe).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// What /proc/PID/stat says about a process.
struct Stat {
    parent: u32,
    threads: u64,
    /// utime + stime, in seconds (clock ticks: the fallback when schedstat is missing).
    cpu_s: f64,
}

/// `pid` and all its descendants, each with its stat, from /proc/*/stat (each names its
/// parent).
fn process_tree(pid: u32) -> Vec<(u32, Stat)> {
    let mut all: HashMap<u32, Stat> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(p) {
            all.insert(p, stat);
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&p, stat) in &all {
        children.entry(stat.parent).or_default().push(p);
    }
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children.get(&pids[i]).into_iter().flatten());
        i += 1;
    }
    pids.into_iter()
        .filter_map(|p| Some((p, all.remove(&p)?)))
        .collect()
}

/// /proc/PID/stat, fields 4 (parent), 14 and 15 (utime, stime) and 20 (threads).
fn read_stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or parentheses.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Stat {
        parent: number(1)? as u32,
        threads: number(17)?,
        cpu_s: (number(11)? + number(12)?) as f64 / ticks_per_second,
    })
}

/// The CPU time of every thread of `pid`, from /proc/PID/task/TID/schedstat (its first
/// field: nanoseconds on a CPU). None where the kernel has no schedstat.
fn thread_cpu_seconds(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// A number from /proc/PID/status (`VmHWM` in kB, `Threads`).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process listening on `port` on this machine: the socket's inode from
/// /proc/net/tcp{,6} (state 0A is LISTEN), then the process holding `socket:[inode]`.
fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                (local_port == port && *f.get(3)? == "0A")
                    .then(|| f.get(9).map(|s| s.to_string()))?
            })
        })?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
        for fd in fds.into_iter().flatten().flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&wanted)) {
                return Some(pid);
            }
        }
    }
    None
}

/// Check that the address given with `--against` answers at all, for a clear error.
pub fn check_reachable(addr: SocketAddr) -> Result<()> {
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            bail!("connection refused by {addr} — is an echo server listening there?")
        }
        Err(e) => bail!("cannot connect to {addr}: {e}"),
    }
}
