//! The service-or-skip policy for tests that talk to real servers.
//!
//! A provider test needs its real counterpart (SoftHSM2, an OpenBao server, a moto server).
//! `cargo xtask test` provisions them and sets `HELIOSDB_REQUIRE_SERVICES=1`; under that
//! variable a missing service is a test failure, so CI can never go green without touching the
//! real thing. Run bare (`cargo test`), such a test prints a loud `SKIPPED` line and returns.

use std::fmt;

/// The variable that turns a missing service into a failure.
pub const REQUIRE_SERVICES_ENV: &str = "HELIOSDB_REQUIRE_SERVICES";

/// Whether missing services must fail tests (`HELIOSDB_REQUIRE_SERVICES` set to `1`/`true`).
pub fn services_required() -> bool {
    required_from(std::env::var(REQUIRE_SERVICES_ENV).ok().as_deref())
}

fn required_from(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes")
    )
}

/// What a test should do about one service.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision<T> {
    /// The service is there: run against it.
    Run(T),
    /// The service is missing and not required: skip (after saying so).
    Skip(String),
}

/// Decides for `service`, given the result of probing for it.
///
/// # Panics
///
/// When the service is missing and services are required: that is the test failure.
pub fn decide<T, E: fmt::Display>(
    service: &str,
    probe: Result<T, E>,
    required: bool,
) -> Decision<T> {
    match probe {
        Ok(v) => Decision::Run(v),
        Err(e) if required => {
            panic!(
                "{service} is required ({REQUIRE_SERVICES_ENV}=1) but not available: {e}. Run \
                 the tests with `cargo xtask test`, which provisions it"
            )
        }
        Err(e) => {
            let msg = format!(
                "SKIPPED: {service} not available ({e}); this test did not run. Use `cargo \
                 xtask test` to provision it"
            );
            eprintln!("\n!!!!!!!! {msg}\n");
            Decision::Skip(msg)
        }
    }
}

/// Probes for a service under the process's policy: `Some(handle)` to run, `None` after a
/// loud skip, or a panic when the service is required.
pub fn require<T, E: fmt::Display>(service: &str, probe: Result<T, E>) -> Option<T> {
    match decide(service, probe, services_required()) {
        Decision::Run(v) => Some(v),
        Decision::Skip(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_is_parsed_strictly() {
        assert!(required_from(Some("1")));
        assert!(required_from(Some("true")));
        assert!(!required_from(Some("0")));
        assert!(!required_from(Some("")));
        assert!(!required_from(None));
    }

    #[test]
    fn available_services_run() {
        assert_eq!(
            decide::<_, String>("softhsm", Ok(7), true),
            Decision::Run(7)
        );
        assert_eq!(
            decide::<_, String>("softhsm", Ok(7), false),
            Decision::Run(7)
        );
    }

    #[test]
    fn missing_services_skip_loudly_when_not_required() {
        match decide::<(), _>("openbao", Err("connection refused"), false) {
            Decision::Skip(msg) => {
                assert!(msg.starts_with("SKIPPED: openbao"), "{msg}");
                assert!(msg.contains("cargo xtask test"), "{msg}");
            }
            Decision::Run(()) => panic!("ran without the service"),
        }
    }

    #[test]
    #[should_panic(expected = "moto is required (HELIOSDB_REQUIRE_SERVICES=1)")]
    fn missing_services_fail_when_required() {
        let _ = decide::<(), _>("moto", Err("no such file"), true);
    }
}
