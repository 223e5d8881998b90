//! Replays the fuzz seed corpora and every saved fuzz failure (`fuzz/regressions/<target>/`)
//! through the fuzz targets' own checks, on every `cargo test`. The checks live in
//! `fuzz/src/checks.rs`, shared with the fuzz targets: the fuzz workspace stays separate (this
//! crate never builds libfuzzer-sys), so the file is included here rather than depended on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub)]
#[path = "../../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every input of `target`: seeds and regressions.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no seed inputs for fuzz target {target}");
    out
}

/// Runs `check` over every input of `target`, naming the input (in the test's captured
/// output, shown on failure) before each; returns how many it accepted.
fn replay(target: &str, mut check: impl FnMut(&[u8]) -> bool) -> usize {
    let mut accepted = 0;
    for (p, data) in inputs(target) {
        eprintln!("fuzz_corpus: {target}: {}", p.display());
        if check(&data) {
            accepted += 1;
        }
    }
    accepted
}

#[test]
fn envelope() {
    replay("envelope", checks::envelope);
}

#[test]
fn page_open() {
    let check = checks::PageOpen::new();
    replay("page_open", |d| {
        check.check(d);
        true
    });
}

#[test]
fn mek_file() {
    replay("mek_file", checks::mek_file);
}

#[test]
fn keystore_record() {
    let decoded = replay("keystore_record", checks::keystore_record);
    assert!(
        decoded >= 1,
        "the seed record must decode: the documented layout drifted"
    );
}

#[test]
fn config_toml() {
    let parsed = replay("config_toml", checks::config_toml);
    assert!(parsed >= 3, "the seed configurations must parse");
}

#[test]
fn audit_log() {
    replay("audit_log", |d| {
        checks::audit_log(d);
        true
    });
}
