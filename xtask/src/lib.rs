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
        Cmd::Test { args } => {
            let result = test::run(&args);
            report_disk("cargo xtask test");
            result
        }
        Cmd::Ci => ci::run(),
        Cmd::Lint => {
            let result = lint::run(&root);
            report_disk("cargo xtask lint");
            result
        }
        Cmd::Tidy => tidy::run(&root),
        Cmd::Package => package::run(&root),
        Cmd::Deny => deny::run(&root),
        Cmd::Fuzz(args) => {
            let result = fuzz::run(&root, &args);
            report_disk("cargo xtask fuzz");
            result
        }
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
///
/// Under CI (`CI` set) incremental compilation is off unless `CARGO_INCREMENTAL` says otherwise:
/// a fresh clone builds once, and the incremental caches would only take disk (over 2 GB).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        && std::env::var_os("CARGO_INCREMENTAL").is_none()
    {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Prints the size of `target/` and the free space on its file system (for CI logs: a full
/// disk shows up as a linker crash, so the log should say how close the build came).
pub fn report_disk(step: &str) {
    let target = workspace_root().join("target");
    let du = Command::new("du").arg("-sh").arg(&target).output();
    let df = Command::new("df")
        .arg("-h")
        .arg("--output=avail")
        .arg(&target)
        .output();
    let text = |o: std::io::Result<std::process::Output>| {
        o.ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .last()
                    .unwrap_or("?")
                    .to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    let used = du
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "xtask: after {step}: target/ holds {used}, {} free",
        text(df)
    );
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
