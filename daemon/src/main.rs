//! The `sessiond` binary: parse the command line and run. Everything else is in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    sessiond::startup::run(sessiond::cli::Args::parse())
}
