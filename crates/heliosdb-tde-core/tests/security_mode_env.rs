//! The security mode read from the real process environment.
//!
//! Setting environment variables inside a running test process is racy (and `unsafe` in Rust
//! 2024), so each case re-runs this test binary as a child with the variable set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{ModeSource, SECURITY_MODE_ENV, SecurityMode};
use std::process::Command;

const CHILD: &str = "HELIOSDB_TEST_MODE_CHILD";

fn run_child(env: Option<&str>, case: &str) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, case);
    match env {
        Some(v) => cmd.env(SECURITY_MODE_ENV, v),
        None => cmd.env_remove(SECURITY_MODE_ENV),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "case {case}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child must really have run the case, not filtered itself out.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "case {case} did not run"
    );
}

#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return; // Only meaningful as a child of `each_path_through_the_environment`.
    };
    let configured = Some("development");
    match case.as_str() {
        "env-production" => {
            assert_eq!(
                SecurityMode::resolve(configured).unwrap(),
                (SecurityMode::Production, ModeSource::Environment)
            );
        }
        "env-development" => {
            assert_eq!(
                SecurityMode::resolve(Some("production")).unwrap(),
                (SecurityMode::Development, ModeSource::Environment)
            );
        }
        "env-invalid" => {
            let e = SecurityMode::resolve(configured).unwrap_err().to_string();
            assert!(e.contains(SECURITY_MODE_ENV), "{e}");
            assert!(e.contains("production") && e.contains("development"), "{e}");
        }
        "config" => {
            assert_eq!(
                SecurityMode::resolve(configured).unwrap(),
                (SecurityMode::Development, ModeSource::Config)
            );
        }
        "build" => {
            let expected = if cfg!(debug_assertions) {
                SecurityMode::Development
            } else {
                SecurityMode::Production
            };
            assert_eq!(
                SecurityMode::resolve(None).unwrap(),
                (expected, ModeSource::BuildType)
            );
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn each_path_through_the_environment() {
    run_child(Some("production"), "env-production");
    run_child(Some("development"), "env-development");
    run_child(Some("staging"), "env-invalid");
    run_child(None, "config");
    run_child(None, "build");
}
