//! The SoftHSM2 test token, as `cargo xtask test` provisions it.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
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

/// A session of this process on the test token, independent of any provider's pool, logged
/// in as the user (the process may be logged in already through a provider). The module is
/// never finalised: providers of this process still use it.
pub fn independent_session() -> cryptoki::session::Session {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::session::UserType;
    let s = settings(&pin());
    let ctx = Pkcs11::new(&s.library_path).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|sl| {
            ctx.get_token_info(*sl).unwrap().label().trim() == s.token_label.as_deref().unwrap()
        })
        .unwrap();
    let ctx = std::mem::ManuallyDrop::new(ctx);
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&SecretString::from(pin()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// Serialises the tests of one test binary that use the token. SoftHSM2's file object store
/// guards its files with process-wide locks, so token objects created from several threads of
/// one process at once can fail with CKR_GENERAL_ERROR; the provider never does that (MEK
/// changes are rare and serialised by the rotation lock), but parallel tests would.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
