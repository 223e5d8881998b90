//! The workspace's automation, behind `cargo xtask` (an alias in `.cargo/config.toml`).
//!
//! The commands are declared once, in [`cli::Command`]: `cargo xtask --help` and
//! `cargo xtask <command> --help` print them from that declaration, and the tests in
//! [`cli`] check that every `cargo xtask ...` line in the README, RELEASING.md, fuzz/README.md
//! and `.ci/run` is a valid command line, and that `.ci/run` runs exactly [`ci::CI_STEPS`].
//! Each command lives in its own module:
//!
//! | command | module |
//! | --- | --- |
//! | `test` | [`mod@test`] (provisioning in [`services`], Python-packaged peers in [`peers`]) |
//! | `ci` | [`ci`] |
//! | `lint` | [`lint`] |
//! | `tidy` | [`tidy`] |
//! | `package` | [`package`] |
//! | `deny` | [`deny`] |
//! | `fuzz` | [`fuzz`] |
//! | `bench` | [`mod@bench`] |

#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod bench;
pub mod ci;
pub mod cli;
pub mod deny;
pub mod fuzz;
pub mod lint;
pub mod package;
pub mod peers;
pub mod services;
pub mod test;
pub mod tidy;

use cli::Command as Cmd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The result type of xtask steps: errors are messages for the terminal.
pub type Result<T = ()> = std::result::Result<T, String>;

/// Runs one xtask command.
pub fn run(command: Cmd) -> Result {
    let root = workspace_root();
    match command {
        Cmd::Test { args } => test::run(&args),
        Cmd::Ci => ci::run(),
        Cmd::Lint => lint::run(&root),
        Cmd::Tidy => tidy::run(&root),
        Cmd::Package => package::run(&root),
        Cmd::Deny => deny::run(&root),
        Cmd::Fuzz(args) => fuzz::run(&root, &args),
        Cmd::Bench { report, filter } => bench::run(&root, report, &filter),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `cargo` command (the cargo that runs xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs a command, echoing it, and fails with its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result {
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed with {status}", describe(cmd)))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Whether `tool --version` runs.
pub fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
