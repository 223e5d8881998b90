//! The SoftHSM2 test token, as `cargo xtask test` provisions it.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use heliosdb_tde_conformance::services;
use heliosdb_tde_pkcs11::{Pkcs11MekProvider, Pkcs11Settings};
use secrecy::SecretString;
use std::time::Duration;

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn pin() -> String {
    env("HELIOSDB_TEST_PKCS11_PIN", "654321")
}

pub fn settings(pin: &str) -> Pkcs11Settings {
    Pkcs11Settings {
        library_path: env(
            "HELIOSDB_TEST_PKCS11_MODULE",
            "/usr/lib/softhsm/libsofthsm2.so",
        )
        .into(),
        token_label: Some(env("HELIOSDB_TEST_PKCS11_TOKEN", "heliosdb-test")),
        slot_id: 0,
        pin: SecretString::from(pin.to_string()),
        timeout: Duration::from_secs(30),
        enable_logging: true,
        pool_size: 4,
    }
}

/// Whether the token is provisioned: `Some` to run, `None` after a loud skip, or a panic when
/// services are required (`HELIOSDB_REQUIRE_SERVICES=1`, as in CI).
pub fn token_present() -> Option<()> {
    let probe = match std::env::var("SOFTHSM2_CONF") {
        Ok(c) if std::path::Path::new(&c).exists() => Ok(()),
        _ => Err("SOFTHSM2_CONF is not set (run `cargo xtask test`)"),
    };
    services::require("SoftHSM2 token", probe)
}

/// A provider on the test token, under the same policy.
pub async fn provider() -> Option<Pkcs11MekProvider> {
    token_present()?;
    let p = Pkcs11MekProvider::open(settings(&pin())).await;
    services::require("SoftHSM2 token", p.map_err(|e| e.to_string()))
}
