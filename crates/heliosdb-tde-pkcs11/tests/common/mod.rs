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

/// A provider on the test token that reads key handles and states again after `refresh`
/// (`Pkcs11Settings::state_refresh`), under the same policy.
pub async fn provider_with_refresh(refresh: std::time::Duration) -> Option<Pkcs11MekProvider> {
    token_present()?;
    let p = Pkcs11MekProvider::open(settings(&pin()).with_state_refresh(refresh)).await;
    services::require(softhsm::SERVICE, p.map_err(|e| e.to_string()))
}

/// Polls `attempt` until it returns `Some`, at most [`WAIT`]: for a change that becomes
/// visible within an interval, without assuming how fast the machine is.
pub async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The generous deadline of [`wait_for`].
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates, through an independent session, an AES key that anyone holding the PIN could
/// create: extractable and readable, with the given label and id.
pub fn plant(
    session: &cryptoki::session::Session,
    label: Option<&[u8]>,
    id: Option<&[u8]>,
) -> cryptoki::object::ObjectHandle {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    if let Some(l) = label {
        template.push(Attribute::Label(l.to_vec()));
    }
    if let Some(i) = id {
        template.push(Attribute::Id(i.to_vec()));
    }
    session
        .generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
        .unwrap()
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
