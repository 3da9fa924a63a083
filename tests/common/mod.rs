//! Test harness: run the real `tcp-lab` binary, read its events as JSON lines, and wait for
//! them with a bound. Nothing here sleeps to synchronise: a test waits for the event that
//! proves what it needs.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `in_modes!([blocking, poll] test_a, test_b)` makes `mod test_a { fn blocking() fn poll() }`
/// and so on: a test per mode, so a failure names its mode and the modes run in parallel.
/// Each test is a function `fn test_a(mode: &str)` beside the macro call.
#[macro_export]
macro_rules! in_modes {
    ($modes:tt $($test:ident),* $(,)?) => {$(
        in_modes!(@one $test $modes);
    )*};
    (@one $test:ident [$($mode:ident),*]) => {
        mod $test {
            $(
                #[test]
                fn $mode() {
                    super::$test(stringify!($mode))
                }
            )*
        }
    };
}

pub const BIN: &str = env!("CARGO_BIN_EXE_tcp-lab");

/// The bound on any single wait. Generous: CI is a loaded 2-core machine. A passing test
/// never waits this long; a failing one fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

pub const MODES: [&str; 5] = ["blocking", "threaded", "process", "nonblocking", "poll"];

/// A running tcp-lab process and the events it has printed.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    stdin: Option<ChildStdin>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
    /// How far `expect` has looked in `seen`: each expectation starts after the last match.
    cursor: usize,
    name: String,
}

impl Proc {
    /// Start `tcp-lab ARGS --format json` with piped stdin, stdout and stderr.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).args(["--format", "json"]);
        Proc::spawn_command(cmd, &args.join(" "))
    }

    /// Like [`Proc::spawn_command`], with stdin from a file instead of a pipe.
    pub fn spawn_with_stdin(mut cmd: Command, stdin: std::fs::File, name: &str) -> Proc {
        cmd.stdin(stdin);
        Proc::start(cmd, name, false)
    }

    /// Start a prepared command (extra environment, limits) with the same plumbing.
    pub fn spawn_command(cmd: Command, name: &str) -> Proc {
        Proc::start(cmd, name, true)
    }

    fn start(mut cmd: Command, name: &str, pipe_stdin: bool) -> Proc {
        if pipe_stdin {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcp-lab");
        let lines = pipe_lines(child.stdout.take().unwrap());
        let stderr = pipe_lines(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        Proc {
            child,
            lines,
            stderr,
            stdin,
            seen: Vec::new(),
            cursor: 0,
            name: name.to_string(),
        }
    }

    /// The next event, or None if the process printed nothing more within `timeout`
    /// (or exited).
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{}: not a JSON event ({e}): {line}", self.name));
                self.seen.push(event.clone());
                Some(event)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next raw line of stdout (for text output), or None within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Wait for the next event of `kind` that also satisfies `matches`, looking first at
    /// events already read (after the previous match), then at new ones.
    pub fn expect_where(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let is_it = |e: &Value| e["kind"] == kind && matches(e);
        if let Some(i) = self.seen[self.cursor..].iter().position(is_it) {
            self.cursor += i + 1;
            return self.seen[self.cursor - 1].clone();
        }
        self.cursor = self.seen.len();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(e) if is_it(&e) => {
                    self.cursor = self.seen.len();
                    return e;
                }
                Some(_) => continue,
                None => panic!(
                    "{}: no `{kind}` event within {WAIT:?}; events so far:\n{}\nstderr: {}",
                    self.name,
                    self.history(),
                    self.stderr_text()
                ),
            }
        }
    }

    pub fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(kind, |_| true)
    }

    /// Wait for `kind` on connection `conn`.
    pub fn expect_conn(&mut self, kind: &str, conn: u64) -> Value {
        self.expect_where(kind, |e| e["conn"] == conn)
    }

    /// Kinds seen so far, in order, optionally for one connection.
    pub fn kinds(&self, conn: Option<u64>) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| conn.is_none_or(|c| e["conn"] == c))
            .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Position of the first seen event of `kind` (on `conn`, if given).
    pub fn position(&self, kind: &str, conn: Option<u64>) -> Option<usize> {
        self.seen
            .iter()
            .position(|e| e["kind"] == kind && conn.is_none_or(|c| e["conn"] == c))
    }

    pub fn history(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait for the process to exit, reading every event it printed. Panics after WAIT.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(WAIT)
    }

    pub fn wait_exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while self.next_event(Duration::from_secs(2)).is_some() {}
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{}: still running after {limit:?}; events:\n{}",
                    self.name,
                    self.history()
                );
            }
            // Drain output while waiting, so the child never blocks on a full pipe.
            let _ = self.next_event(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr so far (after it exited: all of it).
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to child stdin");
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe_lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The `serve` options that choose MODE: `--mode MODE`, or for `poll_TRIGGER`
/// `--mode poll --trigger TRIGGER` (the one-body-per-mode lists run `poll_level` and
/// `poll_oneshot` beside `poll`, whose default trigger is edge; a test's name cannot hold
/// a dash).
pub fn mode_args(mode: &str) -> Vec<&str> {
    match mode.split_once('_') {
        Some(("poll", trigger)) => vec!["--mode", "poll", "--trigger", trigger],
        _ => vec!["--mode", mode],
    }
}

/// The concurrency model MODE runs: `poll_level` is `poll`.
pub fn model(mode: &str) -> &str {
    mode.split('_').next().unwrap_or(mode)
}

/// Start `tcp-lab serve --mode MODE --port 0 EXTRA…` and wait for its `listen` event.
pub fn server(mode: &str, extra: &[&str]) -> (Proc, u16) {
    let mut args = vec!["serve"];
    args.extend(mode_args(mode));
    args.extend_from_slice(&["--port", "0"]);
    args.extend_from_slice(extra);
    let mut server = Proc::spawn(&args);
    let listen = server.expect("listen");
    let port = port_of(&listen["local"]);
    (server, port)
}

pub fn port_of(addr: &Value) -> u16 {
    let addr = addr.as_str().expect("an ip:port string");
    addr.rsplit(':').next().unwrap().parse().expect("a port")
}

/// Start `tcp-lab client --port PORT EXTRA…`.
pub fn client(port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["client", "--port", port.as_str()];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// A raw peer on 127.0.0.1: a plain socket with a read timeout, for bytes no client sends.
pub fn raw_peer(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Read exactly `n` bytes (bounded by the socket's read timeout).
pub fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    stream
        .read_exact(&mut got)
        .expect("echo within the timeout");
    got
}

/// A port nobody listens on: a socket bound to it but not listening, kept open by the
/// caller so no one else can take the port. A SYN to it is answered by an RST.
pub fn unused_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// Raise this test process's open-files soft limit to its hard limit, for tests that hold
/// many sockets at once (a default soft limit of 1024 is easily reached by parallel tests).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A server whose open-files limit (soft and hard) is `limit`, set in the child before exec.
pub fn server_with_fd_limit(mode: &str, limit: u64, extra: &[&str]) -> (Proc, u16) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(mode_args(mode));
    cmd.args(["--port", "0", "--format", "json"]);
    cmd.args(extra);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Proc::spawn_command(cmd, &format!("serve --mode {mode} ({limit} fds)"));
    let port = port_of(&server.expect("listen")["local"]);
    (server, port)
}

/// How many descriptors a process has open, from /proc/PID/fd.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, …).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User plus system CPU time of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A peer that sends and never reads (`while 1: s.sendall(b'x' * 65536)`), on its own
/// thread until the connection dies or the returned flag is set. The join handle gives the
/// bytes it sent and the error that ended it (None: stopped by the flag).
pub fn flood(
    stream: TcpStream,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread::JoinHandle<(u64, Option<std::io::Error>)>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stop_seen = std::sync::Arc::clone(&stop);
    let handle = thread::spawn(move || {
        let mut stream = stream;
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let chunk = vec![b'x'; 65536];
        let mut sent = 0u64;
        while !stop_seen.load(Ordering::Relaxed) {
            match stream.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return (sent, Some(e)),
            }
        }
        (sent, None)
    });
    (stop, handle)
}

/// A TcpExt counter of /proc/net/netstat (this network namespace), e.g. `TCPAbortOnClose`:
/// how many times a close() with unread data made the kernel send an RST.
pub fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Read until the end of the stream: Ok(bytes) after the peer's FIN, or the error that
/// ended it (ECONNRESET after an RST), with the bytes read before it.
pub fn read_to_end_or_error(stream: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Stop a process (SIGSTOP) until the guard is dropped (SIGCONT): connections made meanwhile
/// wait in the kernel's accept queue, with whatever they sent, as under a busy server.
pub struct Paused(pub u32);

impl Paused {
    pub fn new(pid: u32) -> Paused {
        // SAFETY: kill(2) on a child of this test.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// Can this process capture packets (root, or CAP_NET_RAW)? `--wire` needs it; a test that
/// needs a capture skips without it only when the env var CI is unset (CI runs as root).
pub fn can_capture() -> bool {
    // SAFETY: socket(2) and close(2) on a descriptor we own; protocol 0 receives nothing.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return false;
        }
        libc::close(fd);
    }
    true
}

/// Wait until every byte written on `stream` is acknowledged by the peer's kernel (Send-Q,
/// SIOCOUTQ, is empty): they sit in its receive buffer, read or not. An event to await,
/// not a sleep.
pub fn wait_acked(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `unacked`.
        unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        if unacked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unacked} bytes never acknowledged"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// What a note says the kernel sent: FIN or RST (None if it names neither). Shared by the
/// tests that check notes against the peer's reads (chat.rs) and against the wire (wire.rs).
pub fn kernel_sends(note: &str) -> Option<&'static str> {
    // "answered with an RST" (what later bytes would meet) is not what the close sends.
    const RST: [&str; 6] = [
        "sends an RST",
        "RST instead of a FIN",
        "RST, not a FIN",
        "sends RST",
        "an RST goes out",
        "sent an RST",
    ];
    const FIN: [&str; 7] = [
        "sends our FIN",
        "sends a FIN",
        "with a FIN",
        "sent the FIN",
        "sends the FIN",
        "FIN goes out",
        "sent a FIN",
    ];
    let rst = RST.iter().any(|p| note.contains(p));
    let fin = FIN.iter().any(|p| note.contains(p));
    match (rst, fin) {
        (true, false) => Some("RST"),
        (false, true) => Some("FIN"),
        _ if note.contains("RST") && !note.contains("FIN") => Some("RST"),
        _ if note.contains("FIN") && !note.contains("RST") => Some("FIN"),
        _ => None,
    }
}
