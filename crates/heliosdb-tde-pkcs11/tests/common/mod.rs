//! The SoftHSM2 test token, as `cargo xtask test` provisions it.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use heliosdb_tde_conformance::{services, softhsm};
use heliosdb_tde_pkcs11::{Pkcs11MekProvider, Pkcs11Settings};
use secrecy::SecretString;

pub use softhsm::{pin, token_present};

/// The provider settings of the test token (`softhsm::hsm_config`), logging in with `pin`.
pub fn settings(pin: &str) -> Pkcs11Settings {
    Pkcs11Settings::from_config(&softhsm::hsm_config(), SecretString::from(pin.to_string()))
}

/// A provider on the test token, under the same policy.
pub async fn provider() -> Option<Pkcs11MekProvider> {
    token_present()?;
    let p = Pkcs11MekProvider::open(settings(&pin())).await;
    services::require(softhsm::SERVICE, p.map_err(|e| e.to_string()))
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
