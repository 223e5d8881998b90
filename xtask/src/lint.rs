//! `cargo xtask lint`: every CI check except the tests and the fuzzing.

use crate::{Result, cargo, run_cmd};
use cargo_metadata::MetadataCommand;
use std::path::Path;

/// The facade crate whose feature sets are checked one by one.
pub const FACADE: &str = "heliosdb-security";

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
    // The feature list is read from the facade's manifest, so a new backend is checked as soon
    // as its feature exists. Same target dir and profile as clippy: the dependencies clippy
    // already checked are reused, only feature-set differences are rebuilt.
    for args in facade_feature_checks(&facade_features()?) {
        run_cmd(cargo().args(["check", "-p", FACADE]).args(&args))?;
    }
    crate::tidy::run(root)?;
    crate::package::run(root)?;
    crate::deny::run(root)
}

/// The facade's features (without `default`), sorted, from `cargo metadata`.
pub fn facade_features() -> Result<Vec<String>> {
    let meta = MetadataCommand::new()
        .manifest_path(crate::workspace_root().join("Cargo.toml"))
        .no_deps()
        .exec()
        .map_err(|e| format!("cargo metadata failed: {e}"))?;
    let pkg = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == FACADE)
        .ok_or_else(|| format!("{FACADE} is not a workspace member"))?;
    let mut features: Vec<String> = pkg
        .features
        .keys()
        .filter(|f| *f != "default")
        .cloned()
        .collect();
    features.sort();
    Ok(features)
}

/// The `cargo check` arguments of the facade's feature checks: no feature, each feature
/// alone, all features.
pub fn facade_feature_checks(features: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![vec!["--no-default-features".to_string()]];
    for f in features {
        out.push(vec![
            "--no-default-features".into(),
            "--features".into(),
            f.clone(),
        ]);
    }
    out.push(vec!["--all-features".into()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_facade_feature_alone_and_all_together() {
        let features = facade_features().unwrap();
        for backend in ["secure-file", "pkcs11-hsm", "vault", "aws-kms", "azure-kv"] {
            assert!(features.iter().any(|f| f == backend), "{features:?}");
        }
        // The cloud backends are checked alone and with every other feature.
        let lines: Vec<String> = facade_feature_checks(&features)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        for backend in ["aws-kms", "azure-kv"] {
            assert!(
                lines.contains(&format!("--no-default-features --features {backend}")),
                "{lines:?}"
            );
        }
        assert_eq!(lines.last().map(String::as_str), Some("--all-features"));
        let checks = facade_feature_checks(&["a".into(), "b".into()]);
        let lines: Vec<String> = checks.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "--no-default-features",
                "--no-default-features --features a",
                "--no-default-features --features b",
                "--all-features",
            ]
        );
    }
}
