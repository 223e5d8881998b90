//! The workspace obeys its own rules (see `xtask/src/tidy.rs` and ARCHITECTURE.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn workspace_follows_the_rules() {
    let problems = xtask::tidy::check_workspace(&xtask::workspace_root()).unwrap();
    assert!(
        problems.is_empty(),
        "tidy found problems:\n  {}",
        problems.join("\n  ")
    );
}
