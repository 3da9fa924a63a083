//! `tcp-lab completions SHELL`: each script tried in its real shell. Bash is driven as the
//! shell drives it on TAB (COMP_WORDS, COMP_CWORD, the registered function, COMPREPLY); zsh
//! and fish scripts must at least parse (`zsh -n`, `fish -n`), skipped only where that shell
//! is not installed. No script offers the hidden `serve-child`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

/// The script for `shell`, written to a file of its own (`test` names it: tests run in
/// parallel, each with its own file).
fn script(shell: &str, test: &str) -> PathBuf {
    let output = Command::new(BIN)
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(output.status.success(), "completions {shell} failed");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("serve-child"), "{shell} offers serve-child");
    let path = std::env::temp_dir().join(format!(
        "tcp-lab-completion-{}-{test}-{shell}",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// What bash offers for the words `line` (the last one being completed), as a list.
fn bash_offers(script: &Path, line: &[&str]) -> Vec<String> {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let cword = line.len() - 1;
    let cur = line[cword];
    let prev = line[cword - 1];
    // The function the script registers for tcp-lab, called as bash calls it on TAB.
    let program = format!(
        r#"source '{script}' || exit 3
f=$(complete -p tcp-lab | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$f" ] || exit 4
COMP_WORDS=({words})
COMP_CWORD={cword}
"$f" tcp-lab '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display(),
        words = words.join(" "),
    );
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "bash failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_options_after_the_subcommand() {
    let script = script("bash", "options");
    let offers = bash_offers(&script, &["tcp-lab", "serve", "--mo"]);
    assert_eq!(offers, ["--mode"], "tcp-lab serve --mo<TAB>");

    let modes = bash_offers(&script, &["tcp-lab", "serve", "--mode", ""]);
    for mode in [
        "blocking",
        "threaded",
        "process",
        "nonblocking",
        "select",
        "poll",
    ] {
        assert!(modes.iter().any(|m| m == mode), "{mode} not in {modes:?}");
    }
    let client = bash_offers(&script, &["tcp-lab", "client", "--na"]);
    assert_eq!(client, ["--naive", "--name"]);
    let demos = bash_offers(&script, &["tcp-lab", "demo", "write"]);
    assert_eq!(demos, ["write-after-fin"]);
    let _ = std::fs::remove_file(script);
}

#[test]
fn bash_never_offers_the_hidden_serve_child() {
    let script = script("bash", "hidden");
    let top = bash_offers(&script, &["tcp-lab", "se"]);
    assert_eq!(top, ["serve"], "tcp-lab se<TAB>");
    let all = bash_offers(&script, &["tcp-lab", ""]);
    assert!(all.iter().any(|w| w == "demo"), "{all:?}");
    assert!(!all.iter().any(|w| w.contains("serve-child")), "{all:?}");
    let _ = std::fs::remove_file(script);
}

/// `SHELL -n script`: the script parses. Skipped (with a line saying so) where the shell is
/// not installed, as on a CI image without it.
fn parses_in(shell: &str) {
    let script = script(shell, "parses");
    let status = Command::new(shell).arg("-n").arg(&script).output();
    let _ = std::fs::remove_file(&script);
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: {shell} is not installed");
        }
        Err(e) => panic!("cannot run {shell}: {e}"),
        Ok(output) => assert!(
            output.status.success(),
            "{shell} -n: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[test]
fn zsh_script_parses() {
    parses_in("zsh");
}

#[test]
fn fish_script_parses() {
    parses_in("fish");
}

#[test]
fn every_shell_has_a_script_without_serve_child() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let _ = std::fs::remove_file(script(shell, "every"));
    }
}
