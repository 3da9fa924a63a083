//! Keeps the lessons true.
//!
//! The convention for code blocks in `lessons/*.md`:
//!
//! - ```` ```console ```` blocks are **run**: each `$ tcp-lab …` line is a command, the lines
//!   after it (up to the next `$ `) are what it prints, stdout then stderr. In the expected
//!   text `[..]` matches any text within a line and a line `...` matches any number of lines
//!   (as in trycmd). Times at the start of a line and the port in `127.0.0.1:PORT` are
//!   normalised on both sides, so a lesson can show realistic numbers. A command that ends
//!   with `tcp-lab: error: …` must exit non-zero; any other must exit 0. Only one-terminal
//!   commands that end by themselves belong here (demos, `lesson`, `--help`, a refused client).
//! - ```` ```sh ```` blocks are commands to type, and ```` ```text ```` blocks are transcripts
//!   from two terminals (`$ ` before a command). They are not run, but every `tcp-lab …`
//!   command in them must parse with the current command line.
//!
//! Every demo a lesson names must exist.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use common::BIN;
use tcp_lab::cli::Cli;
use tcp_lab::lesson::{render, render_lines, LESSONS};

/// The bound on one console command (demos included). A passing run is far below it.
const COMMAND_WAIT: Duration = Duration::from_secs(90);

/// A fenced code block of a lesson.
struct Block {
    /// `06-close.md:42`, for messages.
    place: String,
    info: String,
    lines: Vec<String>,
}

fn blocks() -> Vec<Block> {
    let mut found = Vec::new();
    for lesson in LESSONS {
        let mut open: Option<Block> = None;
        for (i, line) in lesson.text.lines().enumerate() {
            match (line.strip_prefix("```"), open.take()) {
                (Some(info), None) => {
                    open = Some(Block {
                        place: format!("{}:{}", lesson.file_name(), i + 1),
                        info: info.trim().to_string(),
                        lines: Vec::new(),
                    })
                }
                (Some(_), Some(block)) => found.push(block),
                (None, Some(mut block)) => {
                    block.lines.push(line.to_string());
                    open = Some(block);
                }
                (None, None) => {}
            }
        }
        assert!(
            open.is_none(),
            "{}: a code block is never closed",
            lesson.file_name()
        );
    }
    found
}

/// Split a shell line into commands (at `|`, `&&`, `;`, `&`) of words, honouring quotes and
/// backslashes, dropping redirections and a trailing `# comment`.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut redirect = false; // the next word is a redirection target
    let mut chars = line.chars().peekable();
    let end_word =
        |word: &mut Option<String>, commands: &mut Vec<Vec<String>>, redirect: &mut bool| {
            if let Some(w) = word.take() {
                if *redirect {
                    *redirect = false;
                } else {
                    commands.last_mut().unwrap().push(w);
                }
            }
        };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        q => w.push(q),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '#' if word.is_none() => break,
            '|' | '&' | ';' => {
                end_word(&mut word, &mut commands, &mut redirect);
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                commands.push(Vec::new());
            }
            '>' | '<' => {
                // `2>&1` and `2>` keep their fd digit in the word: drop it.
                if word
                    .as_deref()
                    .is_some_and(|w| w.chars().all(|d| d.is_ascii_digit()))
                {
                    word = None;
                }
                end_word(&mut word, &mut commands, &mut redirect);
                if chars.peek() == Some(&'&') {
                    chars.next();
                    chars.next();
                } else {
                    redirect = true;
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut commands, &mut redirect),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut word, &mut commands, &mut redirect);
    commands.retain(|c| !c.is_empty());
    commands
}

/// Every `tcp-lab …` command in a block, with the line it came from.
fn tcp_lab_commands(block: &Block) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for line in &block.lines {
        let command_line = match block.info.as_str() {
            "sh" => line.trim().strip_prefix("$ ").unwrap_or(line.trim()),
            _ => match line.strip_prefix("$ ") {
                Some(command) => command,
                None => continue,
            },
        };
        for words in shell_commands(command_line) {
            // `time tcp-lab …`, `do tcp-lab …` and `strace -e x tcp-lab …` run tcp-lab;
            // `ps -C tcp-lab` only names it (an option's value).
            let start = words
                .iter()
                .enumerate()
                .position(|(i, w)| w == "tcp-lab" && (i == 0 || !words[i - 1].starts_with('-')));
            if let Some(start) = start {
                found.push((line.clone(), words[start..].to_vec()));
            }
        }
    }
    found
}

/// The demos the lessons may name.
fn demo_names() -> BTreeSet<String> {
    let output = Command::new(BIN)
        .args(["demo", "--list"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run tcp-lab demo --list");
    assert!(output.status.success(), "tcp-lab demo --list failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| word.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(String::from)
        .collect()
}

#[test]
fn every_tcp_lab_command_in_a_lesson_parses() {
    let mut checked = 0;
    for block in blocks() {
        for (line, words) in tcp_lab_commands(&block) {
            checked += 1;
            if let Err(error) = Cli::try_parse_from(&words) {
                use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
                assert!(
                    matches!(error.kind(), DisplayHelp | DisplayVersion),
                    "{}: `{line}` does not parse:\n{error}",
                    block.place
                );
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} tcp-lab commands found in the lessons"
    );
}

#[test]
fn every_demo_a_lesson_names_exists_and_every_lesson_names_one() {
    let names = demo_names();
    for lesson in LESSONS {
        let named: Vec<&str> = lesson
            .text
            .match_indices("tcp-lab demo ")
            .map(|(at, m)| {
                let rest = &lesson.text[at + m.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|name| !name.is_empty() && !name.starts_with('-'))
            .collect();
        for name in &named {
            assert!(
                names.contains(*name),
                "{} names `tcp-lab demo {name}`, which does not exist (demos: {names:?})",
                lesson.file_name()
            );
        }
        if lesson.number > 0 {
            assert!(
                !named.is_empty(),
                "{} names no demo to run",
                lesson.file_name()
            );
        }
    }
}

#[test]
fn every_console_block_prints_what_the_lesson_shows() {
    let mut ran = 0;
    for block in blocks().iter().filter(|b| b.info == "console") {
        for (command, expected) in console_steps(block) {
            let words = shell_commands(&command);
            assert!(
                words.len() == 1 && words[0][0] == "tcp-lab" && !command.contains('>'),
                "{}: console blocks run one plain `tcp-lab …` command per `$ ` line; \
                 put `{command}` in a ```sh or ```text block",
                block.place
            );
            // `--wire` needs root or CAP_NET_RAW: without it, and outside CI, skip the step.
            let wire = words[0].iter().any(|w| w == "--wire");
            if wire && !common::can_capture() && std::env::var_os("CI").is_none() {
                eprintln!(
                    "{}: `$ {command}` skipped: no packet capture here",
                    block.place
                );
                continue;
            }
            let output = run(&words[0][1..]);
            let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
            printed.push_str(&String::from_utf8_lossy(&output.stderr));
            let actual: Vec<String> = printed.lines().map(normalise).collect();
            let wanted: Vec<String> = expected.iter().map(|l| normalise(l)).collect();
            assert!(
                lines_match(&wanted, &actual),
                "{}: `$ {command}` printed something else.\n--- the lesson shows:\n{}\n--- it printed:\n{}",
                block.place,
                expected.join("\n"),
                printed
            );
            let wants_error = expected.iter().any(|l| l.starts_with("tcp-lab: error:"));
            assert_eq!(
                !output.status.success(),
                wants_error,
                "{}: `$ {command}` exited with {}",
                block.place,
                output.status
            );
            ran += 1;
        }
    }
    assert!(ran >= 5, "only {ran} console commands in the lessons");
}

/// `$ command` lines and the expected output under each.
fn console_steps(block: &Block) -> Vec<(String, Vec<String>)> {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in &block.lines {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_string(), Vec::new())),
            None => match steps.last_mut() {
                Some((_, expected)) => expected.push(line.clone()),
                None => panic!("{}: console output before any `$ ` command", block.place),
            },
        }
    }
    steps
}

/// Run tcp-lab as a learner would in a terminal without colour, bounded in time.
fn run(args: &[String]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("TCP_LAB_EPOCH_NS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcp-lab");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_WAIT) {
        Ok(output) => output.expect("wait for tcp-lab"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!(
                "`tcp-lab {}` did not end within {COMMAND_WAIT:?}",
                args.join(" ")
            );
        }
    }
}

/// Times at the start of a line become `T`, ports after 127.0.0.1 become `PORT`, and
/// trailing spaces go.
fn normalise(line: &str) -> String {
    let trimmed = line.trim_start();
    let time_len = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let time = &trimmed[..time_len];
    let line = if time.contains('.') && time.len() > 2 && !time.ends_with('.') {
        format!("T{}", &trimmed[time_len..])
    } else {
        line.to_string()
    };
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while let Some(at) = rest.find("127.0.0.1:") {
        let after = &rest[at + "127.0.0.1:".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        out.push_str(&rest[..at]);
        out.push_str("127.0.0.1:");
        out.push_str(if digits > 0 { "PORT" } else { "" });
        rest = &after[digits..];
    }
    out.push_str(rest);
    out.trim_end().to_string()
}

/// trycmd's rules: a `...` line matches any lines, `[..]` any text within a line.
fn lines_match(wanted: &[String], actual: &[String]) -> bool {
    match wanted.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => match actual.split_first() {
            Some((line, actual_rest)) => {
                line_matches(first, line) && lines_match(rest, actual_rest)
            }
            None => false,
        },
    }
}

fn line_matches(wanted: &str, actual: &str) -> bool {
    let mut parts = wanted.split("[..]");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn the_matcher_follows_trycmd() {
    let s = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(lines_match(
        &s(&["a", "...", "d"]),
        &s(&["a", "b", "c", "d"])
    ));
    assert!(lines_match(&s(&["a", "..."]), &s(&["a"])));
    assert!(!lines_match(&s(&["a", "d"]), &s(&["a", "b", "d"])));
    assert!(line_matches("took [..] ms", "took 12 ms"));
    assert!(!line_matches("took [..] ms", "took 12 s"));
    assert!(line_matches("[..]", "anything"));
    assert!(!line_matches("exact", "exactly"));
    assert_eq!(
        normalise("  12.345 server #1  accept      from 127.0.0.1:41770  [ESTABLISHED]  "),
        "T server #1  accept      from 127.0.0.1:PORT  [ESTABLISHED]"
    );
    assert_eq!(
        normalise("messages=3  bytes echoed=20"),
        "messages=3  bytes echoed=20"
    );
}

#[test]
fn shell_lines_split_like_a_shell() {
    assert_eq!(
        shell_commands("tcp-lab client --send 'a b' | tee x > y  # note"),
        vec![vec!["tcp-lab", "client", "--send", "a b"], vec!["tee", "x"]]
    );
    assert_eq!(
        shell_commands("printf 'hi' | nc 127.0.0.1 7788 2>&1 && tcp-lab lesson 6"),
        vec![
            vec!["printf", "hi"],
            vec!["nc", "127.0.0.1", "7788"],
            vec!["tcp-lab", "lesson", "6"]
        ]
    );
}

#[test]
fn a_lesson_piped_is_drawn_at_80_columns_without_colour() {
    colored::control::set_override(false);
    for lesson in LESSONS {
        let by_number = run(&["lesson".into(), lesson.number.to_string()]);
        assert!(by_number.status.success());
        let shown = String::from_utf8_lossy(&by_number.stdout);
        assert_eq!(shown, render(lesson.text, 80), "{}", lesson.file_name());
        assert!(
            !shown.contains("\x1b["),
            "{}: colour in a pipe",
            lesson.file_name()
        );
        assert!(
            !shown.contains("```"),
            "{}: a code fence",
            lesson.file_name()
        );
    }
    let by_name = run(&[
        "lesson".into(),
        "close".into(),
        "--color".into(),
        "always".into(),
    ]);
    let shown = String::from_utf8_lossy(&by_name.stdout);
    assert!(
        shown.contains("\x1b["),
        "a coloured lesson has no formatting"
    );
    assert!(
        !shown.contains("```"),
        "code fences should be drawn, not printed"
    );
}

/// Every lesson drawn at 80 columns: no line of prose, list or table wider than 80 (code
/// blocks are kept as written; the lessons keep them within 80 where a command allows).
#[test]
fn every_lesson_drawn_at_80_columns_fits_except_code() {
    colored::control::set_override(false);
    let mut code_too_wide = Vec::new();
    for lesson in LESSONS {
        for line in render_lines(lesson.text, 80) {
            let width = textwrap::core::display_width(&line.text);
            if line.code {
                if width > 80 {
                    code_too_wide.push(format!("{}: {width}", lesson.file_name()));
                }
                continue;
            }
            assert!(
                width <= 80,
                "{}: a line of {width} columns at width 80:\n{}",
                lesson.file_name(),
                line.text
            );
        }
    }
    // What is left wider than 80 is commands that cannot be split and long error lines:
    // few, and counted so that it does not grow unnoticed.
    assert!(
        code_too_wide.len() <= 30,
        "{} code lines wider than 80: {code_too_wide:?}",
        code_too_wide.len()
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completions".into(), shell.into()]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("tcp-lab") && script.contains("lesson"),
            "{shell}: {script}"
        );
    }
    let output = run(&["completions".into(), "cmd.exe".into()]);
    assert_eq!(output.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// Claims that need two terminals (a server and a client), so no console block can run them:
// each test runs the lesson's own commands and checks what the lesson says about them.

/// Lesson 7, part 3: `serve --reset-after 1` and `client --count 3`. The first call after the
/// RST fails ECONNRESET, whether it is a read or a write: usually the write of `message 2`
/// (the RST came right behind the echo), now and then the read after it (the write won the
/// race). Never EPIPE on that first call.
#[test]
fn lesson_07_the_first_call_after_an_rst_fails_econnreset_read_or_write() {
    use common::{client, server};
    let (_server, port) = server("poll", &["--reset-after", "1"]);
    let mut client = client(port, &["--count", "3"]);
    let echo = client.expect("recv");
    assert_eq!(echo["data"], "message 1\\n");
    let reset = client.expect("reset");
    assert_eq!(reset["errno"], "ECONNRESET", "{}", client.history());
    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", client.history());
    let sent_second = client
        .seen
        .iter()
        .any(|e| e["kind"] == "send" && e["data"] == "message 2\\n");
    match reset["detail"].as_str() {
        Some("write() failed") => assert!(!sent_second, "{}", client.history()),
        Some("read() failed") => assert!(sent_second, "{}", client.history()),
        other => panic!("reset during {other:?}: {}", client.history()),
    }
    assert!(
        client.position("broken_pipe", None).is_none(),
        "EPIPE before ECONNRESET: {}",
        client.history()
    );
}

/// Lesson 7, "The RST": the error is reported once. After an RST, the first write fails
/// ECONNRESET, the next EPIPE, and a read returns 0.
#[test]
fn lesson_07_an_rst_is_reported_once_then_writes_fail_epipe_and_reads_return_0() {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (theirs, _) = listener.accept().unwrap();
    let theirs = socket2::Socket::from(theirs);
    theirs.set_linger(Some(Duration::ZERO)).unwrap();
    drop(theirs); // close() with SO_LINGER 0: an RST
                  // Wait (bounded) until the RST has arrived: the socket reports an error condition.
    let mut fds = libc::pollfd {
        fd: ours.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, on a socket we own, for the duration of the call.
    let ready = unsafe { libc::poll(&mut fds, 1, 10_000) };
    assert_eq!(ready, 1, "no RST within 10 s");
    assert_ne!(fds.revents & libc::POLLERR, 0);

    let first = ours.write(b"message 2\n").unwrap_err();
    assert_eq!(first.raw_os_error(), Some(libc::ECONNRESET), "{first}");
    let second = ours.write(b"message 3\n").unwrap_err();
    assert_eq!(second.kind(), ErrorKind::BrokenPipe, "{second}");
    assert_eq!(ours.read(&mut [0; 16]).unwrap(), 0);
}

/// The server's end of the connection from `peer_port` to `server_port` in the kernel's table
/// (/proc/net/tcp, what `ss` reads): its state (hex, `01` is ESTABLISHED) and its Recv-Q.
fn server_side(server_port: u16, peer_port: u16) -> Option<(String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = (
        format!("0100007F:{server_port:04X}"),
        format!("0100007F:{peer_port:04X}"),
    );
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if (fields.get(1)?, fields.get(2)?) != (&wanted.0.as_str(), &wanted.1.as_str()) {
            return None;
        }
        let rx_queue = fields.get(4)?.split(':').nth(1)?;
        Some((
            fields.get(3)?.to_string(),
            u64::from_str_radix(rx_queue, 16).ok()?,
        ))
    })
}

/// Wait (bounded) until the server's end of a queued connection is ESTABLISHED with
/// `unread` bytes in its receive queue.
fn await_queued(server_port: u16, peer_port: u16, unread: u64) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while server_side(server_port, peer_port) != Some(("01".into(), unread)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server's end of :{peer_port} never held {unread} unread bytes: {:?}",
            server_side(server_port, peer_port)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Lesson 6, "Stopping with clients still queued" (lesson 1's question): Ctrl-C on the
/// blocking server while B (which sent a line) and C (silent) are queued. B gets an RST (the
/// server closed it with B's line unread), C and the served A get a FIN.
#[test]
fn lesson_06_a_stopped_server_resets_a_queued_client_that_sent_data_and_fins_a_silent_one() {
    use std::io::{Read, Write};
    let (mut server, port) = common::server("blocking", &[]);
    let mut a = common::raw_peer(port);
    a.write_all(b"A\n").unwrap();
    assert_eq!(common::read_exactly(&mut a, 2), b"A\n"); // A is being served
    server.expect_conn("send", 1);
    let mut b = common::raw_peer(port);
    b.write_all(b"B\n").unwrap();
    let mut c = common::raw_peer(port);
    await_queued(port, b.local_addr().unwrap().port(), 2);
    await_queued(port, c.local_addr().unwrap().port(), 0);

    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success(), "{}", server.history());
    let mut buf = [0u8; 16];
    assert_eq!(a.read(&mut buf).unwrap(), 0, "A: a FIN");
    let b_read = b.read(&mut buf);
    assert_eq!(
        b_read.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::ECONNRESET)),
        "B, queued with 2 bytes unread: an RST"
    );
    assert_eq!(c.read(&mut buf).unwrap(), 0, "C, queued and silent: a FIN");
}

/// Lesson 0: `client --count 2 --bye` against the blocking server. The state beside `send
/// "Bye\n"` is read after the call: ESTABLISHED, or already CLOSE_WAIT when the server's FIN
/// came first; the `eof` is CLOSE_WAIT; the server closes on the bye word without echoing it.
#[test]
fn lesson_00_the_state_beside_send_bye_is_read_after_the_call() {
    let (mut server, port) = common::server("blocking", &[]);
    for conn in 1..=3u64 {
        let mut client = common::client(port, &["--count", "2", "--bye"]);
        let bye = client.expect_where("send", |e| e["data"] == "Bye\\n");
        assert!(
            ["ESTABLISHED", "CLOSE_WAIT"].contains(&bye["tcp_state"].as_str().unwrap_or("")),
            "{bye}"
        );
        let eof = client.expect("eof");
        assert_eq!(eof["tcp_state"], "CLOSE_WAIT");
        client.expect("close");
        assert!(client.wait_exit().success(), "{}", client.history());
        server.expect_where("recv", |e| e["conn"] == conn && e["data"] == "Bye\\n");
        server.expect_conn("close", conn);
        let echoed_bye = server
            .seen
            .iter()
            .any(|e| e["kind"] == "send" && e["conn"] == conn && e["data"] == "Bye\\n");
        assert!(!echoed_bye, "the bye word was echoed: {}", server.history());
    }
}

/// Lesson 8: `client --send hello --send world --half-close` against `serve --delay 1000`.
/// The shutdown's state is FIN_WAIT1, or (a race) FIN_WAIT2 or CLOSE when the server's answer
/// came before tcp-lab looked; every byte comes back, in one read or two; then EOF.
#[test]
fn lesson_08_a_half_closed_client_still_reads_every_echo_then_eof() {
    let (_server, port) = common::server("poll", &["--delay", "1000"]);
    let mut client = common::client(
        port,
        &["--send", "hello", "--send", "world", "--half-close"],
    );
    let shutdown = client.expect("shutdown");
    assert!(
        ["FIN_WAIT1", "FIN_WAIT2", "CLOSE"].contains(&shutdown["tcp_state"].as_str().unwrap_or("")),
        "{shutdown}"
    );
    client.expect("eof");
    assert!(client.wait_exit().success(), "{}", client.history());
    let echoed: String = client
        .seen
        .iter()
        .filter(|e| e["kind"] == "recv")
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(echoed, "hello\\nworld\\n");
    let after_shutdown = client.position("shutdown", None).unwrap();
    assert!(client.position("recv", None).unwrap() > after_shutdown);
}

/// Lesson 0, "Things to try": a second server on a port in use says so in one line and exits 1.
#[test]
fn lesson_00_a_second_server_on_a_port_in_use_exits_1_with_one_line() {
    let (_first, port) = common::server("poll", &[]);
    let output = Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run a second server");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "tcp-lab: error: 127.0.0.1:{port} is already in use — is another server running? \
try --port 0\n"
        )
    );
}

/// Lessons 0 and 7: a client with nobody listening is refused at once, exit 1, and the hint
/// names a port a normal user can serve on (the same one).
#[test]
fn lesson_00_a_client_with_no_server_is_refused_at_once() {
    let (_held, port) = common::unused_port();
    let mut client = common::client(port, &[]);
    let refused = client.expect("refused");
    assert_eq!(refused["errno"], "ECONNREFUSED");
    assert_eq!(client.wait_exit().code(), Some(1));
    assert!(client.stderr_text().contains(&format!(
        "is the server running? start one with `tcp-lab serve --port {port}`"
    )));
}

/// Lessons 0–5 point strace, pstree and /proc at the server by the pid in its `listen` line:
/// JSON `pid`, text `pid N`, in every mode, and it is the server's own process.
#[test]
fn lesson_00_the_listen_event_gives_the_servers_own_pid() {
    for mode in common::MODES {
        let (server, _port) = common::server(mode, &[]);
        let listen = &server.seen[0];
        assert_eq!(listen["kind"], "listen");
        assert_eq!(listen["pid"], server.child.id(), "{mode}: {listen}");
    }
    let mut text = Command::new(BIN)
        .args(["serve", "--port", "0", "--color", "never", "--no-explain"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a text server");
    let pid = text.id();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(text.stdout.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let _ = text.kill();
    let _ = text.wait();
    assert!(
        first_line.contains("listen") && first_line.contains(&format!("  pid {pid}  [LISTEN]")),
        "{first_line}"
    );
}

/// Lesson 10: the bye word is matched per read. `xx`, then (after its echo) `Bye\n` closes the
/// connection; `xxBye\n` in one write is echoed.
#[test]
fn lesson_10_the_bye_word_is_matched_per_read() {
    let (_server, port) = common::server("poll", &[]);
    let port = port.to_string();
    let mut split = common::Proc::spawn(&["client", "--port", &port]);
    split.expect("connect");
    split.write_stdin(b"xx");
    split.expect_where("recv", |e| e["data"] == "xx"); // its own read, echoed
    split.write_stdin(b"Bye\n");
    split.expect("eof"); // the server closed on a read that was `Bye\n`
    assert!(split.wait_exit().success(), "{}", split.history());

    let mut whole = common::Proc::spawn(&["client", "--port", &port]);
    whole.expect("connect");
    whole.write_stdin(b"xxBye\n");
    whole.expect_where("recv", |e| e["data"] == "xxBye\\n"); // one line, `xxBye`: echoed
    whole.close_stdin();
    whole.expect("close");
    assert!(whole.wait_exit().success(), "{}", whole.history());
    assert!(
        whole.position("eof", None).is_none(),
        "the server closed on `xxBye`: {}",
        whole.history()
    );
}

/// Lesson 10, "Things to try": a 4 KiB read is one line of text at 80 or 100 columns, cut with
/// how many bytes were left out; JSON keeps its preview.
#[test]
fn lesson_10_a_big_read_is_cut_to_the_line_and_says_what_it_left_out() {
    let (_server, port) = common::server("poll", &[]);
    let mut client = Command::new(BIN)
        .args(["client", "--port", &port.to_string(), "--color", "never"])
        .args(["--no-explain"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a text client");
    {
        use std::io::Write;
        let mut stdin = client.stdin.take().unwrap();
        stdin.write_all(&[0u8; 4096]).unwrap();
    } // end of input: the client closes after the echo
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let sends: Vec<&str> = text.lines().filter(|l| l.contains(" send ")).collect();
    assert!(!sends.is_empty(), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "wider than 100: {line}");
    }
    assert!(
        sends[0].contains("4096 bytes  \"\\x00\\x00") && sends[0].contains("more bytes)"),
        "{text}"
    );
}

/// Lesson 2: the process model's summary counts what its children did (their reports come
/// back through a pipe), so every mode's summary has the same fields and the same figures.
#[test]
fn lesson_02_every_modes_summary_counts_messages_bytes_and_resets_children_included() {
    for mode in common::MODES {
        let (mut server, port) = common::server(mode, &["--exit-after", "2"]);
        let mut three = common::client(port, &["--count", "3"]);
        assert!(three.wait_exit().success(), "{mode}: {}", three.history());
        let mut aborting = common::client(port, &["--send", "hello", "--abort"]);
        aborting.expect("recv");
        assert!(
            aborting.wait_exit().success(),
            "{mode}: {}",
            aborting.history()
        );
        let summary = server.expect("summary");
        let stats = &summary["stats"];
        for (name, want) in [
            ("connections", 2),
            ("finished", 2),
            ("messages", 4),
            ("bytes_echoed", 36),
            ("resets", 1),
            ("turned_away", 0),
        ] {
            assert_eq!(stats[name], want, "{mode}: {name} in {summary}");
        }
        assert!(server.wait_exit().success());
    }
}

/// Lesson 2, "What a child inherits": the child holds one socket (the connection, not the
/// listener) and the write end of the report pipe whose two ends the parent keeps.
#[test]
fn lesson_02_a_child_inherits_its_connection_and_the_report_pipe_only() {
    let (mut server, port) = common::server("process", &[]);
    let parent = server.child.id();
    let mut peer = common::raw_peer(port);
    let spawn = server.expect_conn("spawn", 1);
    let child: u32 = spawn["detail"]
        .as_str()
        .and_then(|d| d.strip_prefix("child pid "))
        .and_then(|pid| pid.parse().ok())
        .expect("the spawn event names the child's pid");
    {
        use std::io::Write;
        peer.write_all(b"hi").unwrap();
    }
    assert_eq!(common::read_exactly(&mut peer, 2), b"hi"); // the child is serving
    let targets = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read /proc/PID/fd")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .collect()
    };
    let (in_parent, in_child) = (targets(parent), targets(child));
    let sockets: Vec<&String> = in_child
        .iter()
        .filter(|t| t.starts_with("socket:"))
        .collect();
    assert_eq!(sockets.len(), 1, "the child holds one socket: {in_child:?}");
    assert!(
        !in_parent.contains(sockets[0]),
        "the parent closed its copy of the connection: {in_parent:?}"
    );
    let pipes: Vec<&String> = in_child
        .iter()
        .filter(|t| t.starts_with("pipe:") && in_parent.iter().filter(|p| p == t).count() == 2)
        .collect();
    assert_eq!(
        pipes.len(),
        1,
        "one pipe shared with the parent, which holds both ends: child {in_child:?}, parent {in_parent:?}"
    );
}

/// README and lesson 0 say one thing about macOS: tested on Linux only, macOS untested, and the
/// same table of Linux-only tools with their macOS equivalents.
#[test]
fn readme_and_lesson_00_say_the_same_about_macos() {
    let readme = include_str!("../README.md");
    let lesson = LESSONS[0].text;
    let table = |text: &str| -> Vec<String> {
        let start = text
            .find("| Linux | macOS |")
            .expect("the table of equivalents");
        text[start..]
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(String::from)
            .collect()
    };
    assert_eq!(table(readme), table(lesson));
    assert!(table(lesson).len() >= 6);
    for text in [readme, lesson] {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("tested only on Linux"), "{flat}");
        assert!(flat.contains("macOS is untested"), "{flat}");
    }
}

/// A packet capture on `lo` for one port (tcpdump, as the lessons type it), ready when it
/// returns. None when capturing is not possible here (not root, and not in CI).
struct Capture {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Capture {
    fn start(port: u16) -> Option<Capture> {
        use std::io::BufRead;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && std::env::var_os("CI").is_none() {
            eprintln!("skipped: capturing packets needs root");
            return None;
        }
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-nn", "-l", &format!("tcp port {port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (installed where packets are captured)");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready
            .recv_timeout(common::WAIT)
            .expect("tcpdump never said it was listening");
        Some(Capture { child, lines })
    }

    /// The packets' (source port, flags), `count` of them: from the next FIN on when
    /// `from_fin`, else from the next packet.
    fn packets(&self, count: usize, from_fin: bool) -> Vec<(u16, String)> {
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + common::WAIT;
        while found.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("only these packets of the close were captured: {found:?}");
            };
            // `… IP 127.0.0.1.38338 > 127.0.0.1.7788: Flags [F.], seq 7, …`
            let Some(from) = line.split(" IP ").nth(1).and_then(|r| r.split(' ').next()) else {
                continue;
            };
            let port = from
                .rsplit('.')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let Some(flags) = line
                .split("Flags [")
                .nth(1)
                .and_then(|r| r.split(']').next())
            else {
                continue;
            };
            if from_fin && found.is_empty() && !flags.contains('F') {
                continue; // before the close
            }
            found.push((port, flags.to_string()));
        }
        found
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lesson 6, "Watch the packets: three or four". A peer that waits a second before closing
/// after the server's FIN: four packets (the FIN's ACK goes out alone). `tcp-lab client`, which
/// closes first, against a server that closes at once: the server's FIN acknowledges the
/// client's (three packets; four only if the server took longer than the delayed ACK).
#[test]
fn lesson_06_a_close_is_three_packets_or_four() {
    use std::io::{Read, Write};
    let (_server, port) = common::server("poll", &[]);
    let Some(capture) = Capture::start(port) else {
        return;
    };
    // The slow peer of the lesson: Bye, the server's FIN, a second, then our close.
    let mut slow = common::raw_peer(port);
    let slow_port = slow.local_addr().unwrap().port();
    slow.write_all(b"Bye\n").unwrap();
    assert_eq!(slow.read(&mut [0; 16]).unwrap(), 0, "the server's FIN");
    thread::sleep(Duration::from_secs(1)); // what the lesson's peer does, not a wait for an event
    drop(slow);
    let four = capture.packets(4, true);
    let want = [
        (port, "F."),
        (slow_port, "."),
        (slow_port, "F."),
        (port, "."),
    ];
    let four: Vec<(u16, &str)> = four.iter().map(|(p, f)| (*p, f.as_str())).collect();
    assert_eq!(four, want, "FIN, its ACK alone, FIN, ACK");

    // `tcp-lab client --send hello`: it closes first, the server closes at once.
    let mut client = common::client(port, &["--send", "hello"]);
    assert!(client.wait_exit().success());
    let close = capture.packets(3, true);
    assert_eq!(close[0].1, "F.", "{close:?}");
    let client_port = close[0].0;
    assert_ne!(client_port, port);
    match close[1] {
        // Three packets: the server's FIN carries the ACK of the client's.
        (from, ref flags) if from == port && flags == "F." => {
            assert_eq!(close[2], (client_port, ".".to_string()), "{close:?}")
        }
        // Four: the server's delayed ACK ran out before it closed.
        (from, ref flags) if from == port && flags == "." => {
            let last = capture.packets(1, false);
            assert_eq!(close[2], (port, "F.".to_string()), "{close:?}");
            assert_eq!(last, [(client_port, ".".to_string())], "{close:?} {last:?}");
        }
        _ => panic!("not a close: {close:?}"),
    }
}

/// Lesson 9: against `serve --crash-after 2`, the interactive client reports the server's FIN
/// at once, with nothing typed, and exits 0: no write into a dead connection, no RST.
#[test]
fn lesson_09_the_interactive_client_sees_the_fin_while_nobody_types() {
    let (_server, port) = common::server("poll", &["--crash-after", "2"]);
    let mut client = common::Proc::spawn(&["client", "--port", &port.to_string()]);
    client.expect("connect");
    client.write_stdin(b"one\n");
    client.expect_where("recv", |e| e["data"] == "one\\n");
    client.write_stdin(b"two\n");
    client.expect_where("recv", |e| e["data"] == "two\\n");
    let eof = client.expect("eof"); // stdin still open: nothing more was typed
    assert_eq!(eof["tcp_state"], "CLOSE_WAIT");
    assert!(client.wait_exit().success(), "{}", client.history());
    for kind in ["reset", "broken_pipe"] {
        assert!(
            client.position(kind, None).is_none(),
            "{}",
            client.history()
        );
    }
}

/// Lesson 3: `serve --mode threaded --crash-after 1` and `client --count 2`. The thread's
/// panic ends its connection only: the client reads the FIN (exit 0) or, when `message 2` was
/// left unread, gets the RST (exit 1); the server serves the next client all the same.
#[test]
fn lesson_03_a_panicking_thread_ends_one_connection_with_a_fin_or_an_rst() {
    let (mut server, port) = common::server("threaded", &["--crash-after", "1"]);
    for conn in 1..=3u64 {
        let mut client = common::client(port, &["--count", "2"]);
        let status = client.wait_exit();
        let ended_by_fin = client.position("eof", None).is_some();
        let reset = client.seen.iter().find(|e| e["kind"] == "reset").cloned();
        match (ended_by_fin, reset) {
            (true, None) => assert!(status.success(), "{}", client.history()),
            (false, Some(reset)) => {
                assert_eq!(reset["errno"], "ECONNRESET");
                assert_eq!(status.code(), Some(1));
            }
            _ => panic!("neither a FIN nor an RST: {}", client.history()),
        }
        let exit = server.expect_where("exit", |e| e["conn"] == conn);
        assert!(
            exit["detail"].as_str().unwrap_or("").contains("panicked"),
            "{exit}"
        );
    }
}
