//! `cargo xtask ci`: everything CI runs, in the order `.ci/run` runs it (a test in
//! [`crate::cli`] keeps the two equal).

use crate::Result;
use crate::cli::Cli;
use clap::Parser;

/// The steps of CI, each an `cargo xtask` command line: the README's test command, the lint
/// suite, and every fuzz target for a short while.
pub const CI_STEPS: &[&[&str]] = &[&["test"], &["lint"], &["fuzz", "--smoke"]];

/// Runs every step of [`CI_STEPS`], stopping at the first failure.
pub fn run() -> Result {
    for step in CI_STEPS {
        eprintln!("xtask: ci: cargo xtask {}", step.join(" "));
        let cli = Cli::try_parse_from(std::iter::once("cargo xtask").chain(step.iter().copied()))
            .map_err(|e| format!("ci step {step:?} does not parse: {e}"))?;
        crate::run(cli.command)?;
    }
    Ok(())
}
