//! `cargo xtask`: the workspace's automation. Run `cargo xtask --help`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = xtask::cli::Cli::parse();
    match xtask::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
