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
use tcp_lab::lesson::LESSONS;

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
fn a_lesson_piped_is_printed_exactly_as_written() {
    for lesson in LESSONS {
        let by_number = run(&["lesson".into(), lesson.number.to_string()]);
        assert!(by_number.status.success());
        assert_eq!(String::from_utf8_lossy(&by_number.stdout), lesson.text);
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
