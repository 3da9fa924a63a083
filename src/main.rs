//! tcp-lab's entry point: parse the command line, run, and turn an error into one line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = tcp_lab::parse_args();
    match tcp_lab::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: what happened, with its causes, and what to do.
            eprintln!("tcp-lab: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
