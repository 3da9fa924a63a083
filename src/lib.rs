//! # tcp-lab: watch TCP servers work
//!
//! A map of the crate, in the order a learner might read it:
//!
//! | file | what it teaches | lesson |
//! |---|---|---|
//! | [`server::blocking`] | one connection at a time; the listen backlog | 01 |
//! | [`server::process`] | a child process per connection; the parent closes its copy | 02 |
//! | [`server::threaded`] | a thread per connection; shared descriptors; a panic is local | 03 |
//! | [`server::echo`] | one connection's life: read, echo, and every way it ends | 01, 06, 07 |
//! | [`server::nonblocking`] | one thread asking every socket: EAGAIN, and a core burnt on it | 04 |
//! | [`server::select`] | one thread in select(2): the fd_set rebuilt each turn, the scan, the FD_SETSIZE wall | 05 |
//! | [`server::poll`] | one thread sleeping in epoll; edge, level and oneshot triggers; backpressure | 05, 11 |
//! | [`chat`] | rooms and protocol with no sockets: lines in, messages out; framing lines over a byte stream | 12 |
//! | [`server::chat_threaded`] | the chat in threads: rooms behind a lock, a bounded queue per member | 12 |
//! | [`server::chat_poll`] | the chat in one loop: no lock, one thread owns everything | 12 |
//! | [`server::talk`] | the operator talks to one client: half-duplex (blocking) vs full-duplex (poll) | 12 |
//! | [`server::event_loop`] | what a connection needs between turns: queued output, deadlines | 04, 05 |
//! | [`client`] | connect, half-close, abort; watching stdin and the socket together | 07–09 |
//! | [`outcome`] | what a socket call's result means: 0 is a FIN, ECONNRESET an RST, … | 06, 07 |
//! | [`note`] | the teaching notes, checked against a packet capture | all |
//! | [`tcp_state`] | the kernel's TCP state of a socket (TCP_INFO) | 06 |
//! | [`event`] | how events are printed (text or JSON) and how peer bytes are escaped | 00 |
//! | [`demo`] | one phenomenon on purpose: real processes, one ladder diagram, checked | all |
//! | [`bench`] | every model measured on this machine: msgs/s, latency, CPU per message | 13 |
//! | [`cli`] | the command line | 00 |
//! | [`lesson`] | the course (lessons/*.md), embedded in the binary | all |
//! | [`wire`] | `--wire`: the packets on `lo`, captured and put on the calls' timeline | 00, 06, 07 |
//!
//! [`server`] holds what every mode shares: options, bind/listen, Ctrl-C and the summary.

// Every model is built on Unix descriptors (the process model hands an accepted socket to its
// child as an inherited descriptor), so say that at once instead of with a hundred errors.
#[cfg(not(unix))]
compile_error!(
    "tcp-lab runs on Unix (Linux; macOS untested): its servers are built on Unix file \
     descriptors, and `--mode process` hands each accepted socket to a child process as an \
     inherited descriptor. On Windows, use WSL."
);

pub mod bench;
pub mod chat;
pub mod cli;
pub mod client;
pub mod demo;
pub mod event;
pub mod lesson;
pub mod note;
pub mod outcome;
pub mod server;
pub mod tcp_state;
pub mod wire;

use anyhow::Result;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};

/// The command line as clap sees it: [`cli`]'s derived commands, plus what only the rest of
/// the crate knows (the demo names, for `--help`, validation and completions). Keeping that
/// here lets `cli.rs` depend on nothing but the printing options.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("demo", |demo| {
        demo.mut_arg("name", |name| name.value_parser(demo_names()))
    })
}

/// Parse the process's arguments against [`command`]; a usage error exits 2, as clap's do.
pub fn parse_args() -> Cli {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(why) = cli.misuse() {
        command()
            .error(clap::error::ErrorKind::ArgumentConflict, why)
            .exit();
    }
    cli
}

/// The scenario names, each with its one-line description, for help and completions.
fn demo_names() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue;
    let names = demo::SCENARIOS
        .iter()
        .map(|s| PossibleValue::new(s.name).help(s.about));
    clap::builder::PossibleValuesParser::new(names)
}

/// The name the shell completes: the installed binary.
const BIN: &str = "tcp-lab";

/// Write the completion script for `shell` to stdout.
fn print_completions(shell: clap_complete::Shell) {
    print!("{}", completion_script(shell));
}

/// The completion script for `shell`, made from [`completion_command`].
pub fn completion_script(shell: clap_complete::Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut completion_command(), BIN, &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => fix_bash_state_names(&script),
        _ => script,
    }
}

/// The command line as completions offer it: [`command`] without its hidden subcommands
/// (`serve-child` is tcp-lab talking to itself, never something to type). clap cannot remove
/// a subcommand, so the top level is rebuilt around the visible ones.
fn completion_command() -> clap::Command {
    let full = command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .subcommands(visible)
}

/// clap_complete's bash script (4.6.11 and 4.6.12) names its states two ways when the
/// binary's name has a dash: the loop that reads the words sets `cmd="tcp__lab__subcmd__demo"`,
/// but the `case` that completes matches `tcp__subcmd__lab__subcmd__demo)`, so nothing after
/// the subcommand ever completed (clap-rs/clap#6421). Spell the labels as the loop does.
fn fix_bash_state_names(script: &str) -> String {
    let loop_name = BIN.replace('-', "__"); // tcp__lab
    let label_name = BIN.replace('-', "__subcmd__"); // tcp__subcmd__lab
    script.replace(
        &format!("{label_name}__subcmd__"),
        &format!("{loop_name}__subcmd__"),
    )
}

/// Run one command. Errors come back as values, for `main` to print as one line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            if let Err(why) = server::app_fits(&args) {
                let usage = clap::error::ErrorKind::ArgumentConflict;
                command().error(usage, why).exit(); // exit 2, as for any usage error
            }
            event::set_color(args.output.color);
            event::set_decode(args.decode);
            server::run(&args)
        }
        Command::Client(args) => {
            event::set_color(args.output.color);
            event::set_decode(args.decode);
            client::run(&args)
        }
        Command::Demo(args) => {
            event::set_color(args.output.color);
            demo::run(&args)
        }
        Command::Lesson(args) => {
            event::set_color(args.color);
            lesson::run(&args)
        }
        Command::Bench(args) => bench::run(&args),
        Command::Completions(args) => {
            print_completions(args.shell);
            Ok(())
        }
        Command::ServeChild(args) => {
            event::set_color(args.serve.output.color);
            event::set_decode(args.serve.decode);
            server::process::run_child(&args)
        }
    }
}
