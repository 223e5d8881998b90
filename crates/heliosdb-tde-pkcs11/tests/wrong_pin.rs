//! A wrong PIN gives the guide's error. Its own test binary: PKCS#11 login state belongs to
//! the whole process, so once any provider in a process has logged in, another login (right or
//! wrong PIN) is answered with CKR_USER_ALREADY_LOGGED_IN and cannot be checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::services;
use heliosdb_tde_pkcs11::{Pkcs11MekProvider, Pkcs11Settings};
use secrecy::SecretString;
use std::time::Duration;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn settings(pin: &str) -> Pkcs11Settings {
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
        pool_size: 2,
    }
}

#[tokio::test]
async fn a_wrong_pin_gives_the_guides_error() {
    let probe = match std::env::var("SOFTHSM2_CONF") {
        Ok(c) if std::path::Path::new(&c).exists() => Ok(()),
        _ => Err("SOFTHSM2_CONF is not set (run `cargo xtask test`)"),
    };
    if services::require("SoftHSM2 token", probe).is_none() {
        return;
    }
    let e = Pkcs11MekProvider::open(settings("000000-wrong"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("HSM error: CKR_PIN_INCORRECT"), "{text}");
    assert!(text.contains("softhsm2-util --show-slots"), "{text}");
    // And the right PIN still works afterwards.
    Pkcs11MekProvider::open(settings(&env("HELIOSDB_TEST_PKCS11_PIN", "654321")))
        .await
        .unwrap();
}
