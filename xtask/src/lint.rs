//! `cargo xtask lint`: every CI check except the tests and the fuzzing.

use crate::{Result, cargo, run_cmd};
use std::path::Path;

/// Formatting, clippy, rustdoc, backend feature checks, the workspace rules, packaging and
/// cargo-deny.
pub fn run(root: &Path) -> Result {
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
    crate::tidy::run(root)?;
    crate::package::run(root)?;
    crate::deny::run(root)
}
