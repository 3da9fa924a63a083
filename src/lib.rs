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
//! | [`server::poll`] | one thread sleeping in epoll/kqueue; oneshot re-arm; backpressure | 05, 11 |
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
pub mod cli;
pub mod client;
pub mod demo;
pub mod event;
pub mod lesson;
pub mod note;
pub mod outcome;
pub mod server;
pub mod tcp_state;

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

/// Write the completion script for `shell` to stdout.
fn print_completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut command(), "tcp-lab", &mut std::io::stdout());
}

/// Run one command. Errors come back as values, for `main` to print as one line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            event::set_color(args.output.color);
            server::run(&args)
        }
        Command::Client(args) => {
            event::set_color(args.output.color);
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
            server::process::run_child(&args)
        }
    }
}
