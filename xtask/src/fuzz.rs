//! `cargo xtask fuzz`: each cargo-fuzz target for a while, from the committed seed corpus.

use crate::cli::FuzzArgs;
use crate::{Result, cargo, installed, run_cmd};
use std::path::Path;

/// The fuzz targets, in `fuzz/Cargo.toml`.
pub const FUZZ_TARGETS: &[&str] = &[
    "envelope",
    "page_open",
    "mek_file",
    "keystore_record",
    "config_toml",
    "audit_log",
    "backup_bundle",
];

/// Builds the fuzz workspace and runs the selected targets (all by default).
pub fn run(root: &Path, args: &FuzzArgs) -> Result {
    let seconds = args.seconds();
    let targets: Vec<String> = if args.targets.is_empty() {
        FUZZ_TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    if !installed("cargo-fuzz") {
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
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
        let artifacts = fuzz_dir.join("artifacts").join(t);
        let before = count_files(&artifacts);
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
            if count_files(&artifacts) > before {
                format!(
                    "{e}\nfuzz target {t} found a failure; the input is in \
                     fuzz/artifacts/{t}/. Fix it and add the input to fuzz/regressions/{t}/ \
                     (replayed by cargo test)"
                )
            } else {
                format!("{e}\nfuzz target {t} did not build or run (see the output above)")
            }
        })?;
    }
    eprintln!(
        "xtask: fuzzed {} target(s) for {seconds} s each: no failure",
        targets.len()
    );
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_declared_in_the_fuzz_manifest() {
        let manifest = std::fs::read_to_string(crate::workspace_root().join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
        for t in FUZZ_TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "fuzz target {t} is not a [[bin]] of fuzz/Cargo.toml"
            );
        }
    }

    #[test]
    fn every_target_has_seeds_a_check_and_a_readme_row() {
        let fuzz = crate::workspace_root().join("fuzz");
        let checks = std::fs::read_to_string(fuzz.join("src/checks.rs")).expect("checks.rs");
        let readme = std::fs::read_to_string(fuzz.join("README.md")).expect("fuzz/README.md");
        for t in FUZZ_TARGETS {
            assert!(
                count_files(&fuzz.join("corpus").join(t)) > 0,
                "fuzz target {t} has no seeds in fuzz/corpus/{t}/"
            );
            assert!(
                checks.contains(&format!("/// `{t}`: ")),
                "fuzz target {t} has no documented check in fuzz/src/checks.rs"
            );
            assert!(
                readme.contains(&format!("| `{t}` |")),
                "fuzz target {t} is not listed in fuzz/README.md"
            );
        }
    }
}
