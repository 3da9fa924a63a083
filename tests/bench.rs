//! `tcp-lab bench`: the real binary measuring real servers on 127.0.0.1 for about a second.
//! What is asserted is what a learner is promised: every field of the JSON, each sane and
//! consistent with the others (never a speed), blocking serving one connection of N, the
//! process model's children counted, `--against` any echo server (a Python one, in the
//! seeds' style), the chart a well-formed SVG with its titles, and Ctrl-C leaving no server
//! behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// DESIGN's field names, in DESIGN's order.
const FIELDS: [&str; 17] = [
    "mode",
    "conns",
    "idle",
    "size",
    "secs",
    "served",
    "msgs",
    "msgs_per_s",
    "p50_us",
    "p99_us",
    "max_us",
    "cpu_s",
    "cpu_us_per_msg",
    "peak_rss_kb",
    "threads",
    "processes",
    "errors",
];

/// `tcp-lab bench ARGS`, run to the end (bounded), its exit checked by the caller.
fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcp-lab bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcp-lab bench {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("its output")
}

/// `tcp-lab bench ARGS --format json`: it must succeed; its rows.
fn bench_json(args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let output = bench(&all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench {args:?} failed: {stderr}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn u(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {row}"))
}

fn f(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {row}"))
}

/// What holds in every row of a run that got echoes.
fn assert_consistent(row: &Value) {
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, FIELDS, "{row}");
    let (conns, served, msgs) = (u(row, "conns"), u(row, "served"), u(row, "msgs"));
    assert!(served <= conns, "{row}");
    assert!(msgs > 0, "{row}");
    let secs = f(row, "secs");
    assert!(secs > 0.0, "{row}");
    let rate = f(row, "msgs_per_s");
    assert!(
        (rate - msgs as f64 / secs).abs() <= 0.01 * rate + 1.0,
        "{row}"
    );
    let (p50, p99, max) = (u(row, "p50_us"), u(row, "p99_us"), u(row, "max_us"));
    assert!(1 <= p50 && p50 <= p99 && p99 <= max, "{row}");
    // No latency can be longer than the whole run's bound (warm-up and window).
    assert!(max < 20_000_000, "{row}");
    let cpu = f(row, "cpu_s");
    assert!(cpu >= 0.0, "{row}");
    let per_msg = f(row, "cpu_us_per_msg");
    assert!(
        (per_msg - cpu * 1e6 / msgs as f64).abs() <= 0.01 + per_msg * 0.01,
        "{row}"
    );
    assert!(u(row, "peak_rss_kb") > 0, "{row}");
    assert!(u(row, "threads") >= u(row, "processes"), "{row}");
    assert!(u(row, "processes") >= 1, "{row}");
    assert_eq!(u(row, "size"), 64, "{row}");
}

#[test]
fn json_has_every_field_sane_and_consistent_for_each_run() {
    let rows = bench_json(&["--modes", "poll", "--conns", "1,8", "--secs", "1"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, conns) in rows.iter().zip([1, 8]) {
        assert_consistent(row);
        assert_eq!(row["mode"], "poll");
        assert_eq!(u(row, "conns"), conns);
        assert_eq!(u(row, "idle"), 0);
        assert_eq!(u(row, "served"), conns, "poll serves everyone: {row}");
        assert_eq!(u(row, "errors"), 0, "{row}");
        assert_eq!(u(row, "processes"), 1, "{row}");
        let secs = f(row, "secs");
        assert!((0.9..3.0).contains(&secs), "measured ~1 s: {row}");
    }
}

#[test]
fn blocking_serves_one_connection_of_n() {
    let rows = bench_json(&["--modes", "blocking", "--conns", "6", "--secs", "0.5"]);
    let row = &rows[0];
    assert_consistent(row);
    assert_eq!((u(row, "conns"), u(row, "served")), (6, 1), "{row}");
    // The other five are connected and waiting in the kernel's queue: not errors.
    assert_eq!(u(row, "errors"), 0, "{row}");
}

#[test]
fn process_mode_counts_its_children() {
    let rows = bench_json(&["--modes", "process", "--conns", "4", "--secs", "0.5"]);
    let row = &rows[0];
    assert_consistent(row);
    assert_eq!(u(row, "served"), 4, "{row}");
    // The parent and a child per connection, each with its threads and its own memory.
    assert_eq!(u(row, "processes"), 5, "{row}");
    assert!(u(row, "threads") >= 5, "{row}");
}

#[test]
fn idle_connections_are_opened_beside_the_active_ones() {
    let rows = bench_json(&[
        "--modes", "select", "--conns", "3", "--idle", "0,20", "--secs", "0.5",
    ]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, idle) in rows.iter().zip([0, 20]) {
        assert_consistent(row);
        assert_eq!(u(row, "idle"), idle, "{row}");
        assert_eq!(u(row, "served"), 3, "{row}");
        assert_eq!(u(row, "errors"), 0, "{row}");
    }
}

/// A threaded echo server in the seeds' style (seed 001's thread per client), on port 0; it
/// prints its port first.
const PYTHON_ECHO: &str = r#"
from socket import *
from threading import Thread
def deal_with_client(sock):
    while True:
        data = sock.recv(1024)
        if not data:
            break
        sock.sendall(data)
    sock.close()
server = socket(AF_INET, SOCK_STREAM)
server.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(128)
print(server.getsockname()[1], flush=True)
while True:
    sock, addr = server.accept()
    Thread(target=deal_with_client, args=(sock,), daemon=True).start()
"#;

/// The Python server, stopped when dropped.
struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_echo_server() -> (Python, u16) {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_ECHO])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the Python server's port");
    let port = line.trim().parse().expect("a port");
    (Python(child), port)
}

#[test]
fn against_measures_any_echo_server_here_a_python_one() {
    let (python, port) = python_echo_server();
    let addr = format!("127.0.0.1:{port}");
    let rows = bench_json(&["--against", &addr, "--conns", "1,4", "--secs", "0.5"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, conns) in rows.iter().zip([1, 4]) {
        assert_consistent(row);
        assert_eq!(row["mode"], addr.as_str());
        assert_eq!(u(row, "served"), conns, "{row}");
        assert_eq!(u(row, "errors"), 0, "{row}");
        // Found through /proc: the process that holds the listening socket.
        assert_eq!(u(row, "processes"), 1, "{row}");
        assert!(u(row, "threads") > conns, "a thread per client: {row}");
    }
    drop(python);
}

#[test]
fn against_a_port_nobody_listens_on_is_one_clear_error() {
    let (_reserved, port) = unused_port();
    let output = bench(&["--against", &format!("127.0.0.1:{port}"), "--secs", "0.2"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.starts_with("tcp-lab: error: ") && error.contains("connection refused"),
        "{stderr}"
    );
}

#[test]
fn the_table_has_a_row_per_run_and_stderr_no_progress_bar_when_not_a_terminal() {
    let output = bench(&["--modes", "threaded,poll", "--conns", "2", "--secs", "0.3"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let header = stdout.lines().next().unwrap();
    for column in [
        "mode",
        "served",
        "msgs/s",
        "p99 µs",
        "µs CPU/msg",
        "peak RSS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    for mode in ["threaded", "poll"] {
        let row = stdout.lines().find(|l| l.starts_with(mode)).expect(mode);
        assert!(row.contains("2/2"), "{row}");
    }
    // It says how long it will take, and draws no bar into a pipe.
    assert!(
        stderr.contains("2 runs") && stderr.contains("about"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}

#[test]
fn plot_writes_a_well_formed_svg_with_titles_axes_and_legend() {
    let dir = std::env::temp_dir().join(format!("tcp-lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.svg");
    let output = bench(&[
        "--modes",
        "blocking,poll",
        "--conns",
        "1,4",
        "--idle",
        "0,5",
        "--secs",
        "0.2",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let svg = std::fs::read_to_string(&path).expect("the SVG");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    for wanted in [
        "Throughput: messages per second (higher is better)",
        "Cost: server CPU time per message (lower is better)",
        "messages per second",
        "µs of server CPU per message (log scale)",
        "connections, each with one message in flight (log scale)",
        "poll",
        "poll, 5 idle",
        "blocking",
    ] {
        assert!(texts.iter().any(|t| t == wanted), "{wanted:?} in {texts:?}");
    }
    // Lines were drawn: one polyline per server and idle count, in each panel.
    let polylines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(polylines >= 4, "{polylines} polylines");
    std::fs::remove_dir_all(&dir).ok();
}

/// The bench's children, from /proc (each process's parent).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        if after_name.split_whitespace().nth(1) == Some(&pid.to_string()) {
            children.push(p);
        }
    }
    children
}

#[test]
fn ctrl_c_stops_the_run_and_its_server_before_it_exits() {
    let mut bench = Command::new(BIN)
        .args([
            "bench", "--modes", "threaded", "--conns", "3", "--secs", "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its server to be there (a child of the bench), bounded.
    let deadline = Instant::now() + WAIT;
    let server = loop {
        if let Some(&pid) = children_of(bench.id()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the bench started no server");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(bench.id() as libc::pid_t, libc::SIGINT) };
    let started = Instant::now();
    let output = loop {
        if bench.try_wait().unwrap().is_some() {
            break bench.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < WAIT, "the bench ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Stopped and reaped by the bench itself before it exited: no such process any more.
    assert!(
        !std::path::Path::new(&format!("/proc/{server}")).exists(),
        "the server {server} outlived the bench"
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
}
