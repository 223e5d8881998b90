//! The workspace's automation, behind `cargo xtask` (an alias in `.cargo/config.toml`).
//!
//! * `cargo xtask test [ARGS...]`: the README's test command. Provisions what the tests need
//!   (packages, servers on loopback), sets `HELIOSDB_REQUIRE_SERVICES=1`, runs `cargo test`
//!   with `ARGS` passed through (default: the whole workspace), and stops the servers.
//! * `cargo xtask ci`: everything CI checks: formatting, clippy with `-D warnings`, the tests
//!   (as `test`), rustdoc with warnings denied, each cipher backend alone, and cargo-deny.
//! * `cargo xtask lint`: the `ci` steps without the tests.
//! * `cargo xtask tidy`: the workspace rules (also run as a test).

#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod bench;
pub mod services;
pub mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The result type of xtask steps: errors are messages for the terminal.
pub type Result<T = ()> = std::result::Result<T, String>;

const HELP: &str = "\
cargo xtask <command>

commands:
  test [ARGS...]   provision services, then `cargo test` (ARGS pass through, e.g. -p CRATE)
  ci               fmt check, clippy -D warnings, tests, rustdoc -D warnings, backend
                   feature checks, cargo-deny
  lint             the ci steps except the tests
  tidy             check the workspace rules (layering, metadata, unsafe)
  fuzz [--smoke] [--seconds N] [TARGET...]
                   run the cargo-fuzz targets (installs cargo-fuzz if missing); --smoke
                   runs each for 15 s, the default is 300 s each
  bench [--report] [FILTER]
                   run the criterion benchmarks (provisioning SoftHSM2) and write
                   docs/benchmarks.md; --report only rewrites the file from the last
                   results; FILTER runs only matching benchmarks
  help             this text
";

/// Runs one xtask command.
pub fn run(args: &[String]) -> Result {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    match cmd {
        "test" => test(rest),
        "ci" => {
            lint()?;
            test(&[])
        }
        "lint" => lint(),
        "fuzz" => fuzz(rest),
        "bench" => {
            let filter: Vec<String> = rest.iter().filter(|a| *a != "--report").cloned().collect();
            bench::run(
                &workspace_root(),
                rest.iter().any(|a| a == "--report"),
                &filter,
            )
        }
        "tidy" => {
            let problems = tidy::check_workspace(&workspace_root())?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                Err(format!("tidy found problems:\n  {}", problems.join("\n  ")))
            }
        }
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{HELP}")),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
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

/// `cargo xtask test`: provision, run `cargo test`, tear down.
fn test(args: &[String]) -> Result {
    let selects_packages = args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a == "--workspace");
    let mut cargo_args: Vec<String> = vec!["test".into()];
    if !selects_packages {
        cargo_args.push("--workspace".into());
    }
    cargo_args.extend(args.iter().cloned());

    let env = services::provision(&workspace_root(), args)?;
    let mut cmd = cargo();
    // The tests choose their security mode explicitly; an operator's override must not leak in.
    cmd.args(&cargo_args)
        .env("HELIOSDB_REQUIRE_SERVICES", "1")
        .env_remove("HELIOSDB_SECURITY_MODE");
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    let result = run_cmd(&mut cmd);
    // `env` stops every server it started when dropped, pass or fail.
    drop(env);
    result
}

/// Formatting, clippy, rustdoc, backend feature checks and cargo-deny.
fn lint() -> Result {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Each cipher backend must build on its own.
    for backend in ["aws-lc", "ring", "rustcrypto"] {
        run_cmd(cargo().args([
            "check",
            "-p",
            "heliosdb-tde-cipher",
            "--no-default-features",
            "--features",
            backend,
        ]))?;
    }
    // The facade must build without any backend feature, with each one alone, and with all.
    run_cmd(cargo().args(["check", "-p", "heliosdb-security", "--no-default-features"]))?;
    for feature in ["secure-file", "pkcs11-hsm", "secure-file,pkcs11-hsm"] {
        run_cmd(cargo().args([
            "check",
            "-p",
            "heliosdb-security",
            "--no-default-features",
            "--features",
            feature,
        ]))?;
    }
    let problems = tidy::check_workspace(&workspace_root())?;
    if !problems.is_empty() {
        return Err(format!("tidy found problems:\n  {}", problems.join("\n  ")));
    }
    // Every crate packages and builds from what would be uploaded.
    clear_package_overlays()?;
    run_cmd(cargo().args(["package", "--workspace", "--allow-dirty"]))?;
    cargo_deny()
}

/// The fuzz targets, in `fuzz/Cargo.toml`.
pub const FUZZ_TARGETS: &[&str] = &[
    "envelope",
    "page_open",
    "mek_file",
    "keystore_record",
    "config_toml",
    "audit_log",
];

/// `cargo package --workspace` verifies each crate against the other workspace crates through a
/// local registry overlay whose unpacked sources land in `$CARGO_HOME/registry/src/-<hash>/`,
/// keyed by name and version only. A crate changed since the last packaging run on this machine,
/// with the same version, would be verified against the stale copy; remove those directories so
/// every run unpacks what it just packaged.
fn clear_package_overlays() -> Result {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('-') {
            std::fs::remove_dir_all(e.path())
                .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `cargo xtask fuzz`: each target for a while, from the committed seed corpus.
fn fuzz(args: &[String]) -> Result {
    let mut seconds = 300u64;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => seconds = 15,
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            t if FUZZ_TARGETS.contains(&t) => targets.push(t.to_string()),
            other => {
                return Err(format!(
                    "unknown fuzz target {other:?}; targets: {}",
                    FUZZ_TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.iter().map(|t| t.to_string()).collect();
    }
    if !installed("cargo-fuzz") {
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    // The machine has one stable toolchain; cargo-fuzz's sanitizer flags are unstable.
    run_cmd(
        cargo()
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "build"]),
    )?;
    for t in &targets {
        // New inputs go to an ignored working corpus; the committed seeds are read only.
        let work = fuzz_dir.join("target").join("corpus").join(t);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        run_cmd(
            cargo()
                .current_dir(&fuzz_dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", t])
                .arg(&work)
                .arg(fuzz_dir.join("corpus").join(t))
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    "-rss_limit_mb=2048",
                    "-timeout=10",
                    "-print_final_stats=1",
                ]),
        )
        .map_err(|e| {
            format!(
                "{e}\nfuzz target {t} found a failure; the input is in fuzz/artifacts/{t}/. Fix \
                 it and add the input to fuzz/regressions/{t}/ (replayed by cargo test)"
            )
        })?;
    }
    eprintln!(
        "xtask: fuzzed {} target(s) for {seconds} s each: no failure",
        targets.len()
    );
    Ok(())
}

fn cargo_deny() -> Result {
    let have = Command::new("cargo-deny")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        run_cmd(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    // The RustSec advisory database is a git repository. Where it cannot be fetched (a
    // machine that reaches package registries only), the other checks still run and the
    // omission is reported loudly rather than passed over.
    let fetched = cargo()
        .args(["deny", "fetch", "db"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if fetched {
        run_cmd(cargo().args(["deny", "--all-features", "check"]))
    } else {
        eprintln!(
            "\nxtask: WARNING: the RustSec advisory database could not be fetched; \
             cargo-deny checks licenses, bans and sources only. Advisories were NOT checked.\n"
        );
        run_cmd(cargo().args([
            "deny",
            "--all-features",
            "check",
            "licenses",
            "bans",
            "sources",
        ]))
    }
}
