//! The PKCS#11 provider against a real SoftHSM2 token.
//!
//! `cargo xtask test` installs SoftHSM2 if needed, initialises a private token and exports
//! `SOFTHSM2_CONF`, `HELIOSDB_TEST_PKCS11_MODULE`, `HELIOSDB_TEST_PKCS11_TOKEN` and
//! `HELIOSDB_TEST_PKCS11_PIN`. With `HELIOSDB_REQUIRE_SERVICES=1` (as in CI), a missing token
//! fails every test here; nothing in this file can pass without touching SoftHSM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, TableKey, TdeError, WrapContext};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{pin, settings};

/// The provider on the test token, or a loud skip / failure per the service policy.
async fn hsm() -> Option<Arc<dyn MekProvider>> {
    common::provider()
        .await
        .map(|p| Arc::new(p) as Arc<dyn MekProvider>)
}

#[tokio::test]
async fn conformance_round_trip() {
    let Some(p) = hsm().await else { return };
    provider::round_trip(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_aad_binding() {
    let Some(p) = hsm().await else { return };
    provider::aad_binding(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_versions() {
    let Some(p) = hsm().await else { return };
    provider::versions(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_errors() {
    let Some(p) = hsm().await else { return };
    provider::errors(p.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_concurrency_through_the_pool() {
    let Some(p) = hsm().await else { return };
    provider::concurrency(p).await;
}

#[tokio::test]
async fn conformance_secrecy() {
    let Some(p) = hsm().await else { return };
    provider::secrecy(p.as_ref()).await;
    let text = format!("{p:?}");
    assert!(!text.contains(&pin()), "the PIN leaked into Debug: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mek_rotation_through_the_key_manager_with_dual_encryption() {
    let Some(p) = hsm().await else { return };
    provider::rotation_with_manager(p).await;
}

#[tokio::test]
async fn the_mek_never_leaves_the_token() {
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_attr");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    // Read the attributes with an independent session: sensitive, not extractable, value
    // unreadable.
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType};
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
    // Never finalise the module while this process's providers still use it.
    let ctx = std::mem::ManuallyDrop::new(ctx);
    let session = ctx.open_ro_session(slot).unwrap();
    // The process may already be logged in through the provider's sessions.
    match session.login(UserType::User, Some(&SecretString::from(pin()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let found = session.find_objects(&[Attribute::Label(label)]).unwrap();
    assert_eq!(found.len(), 1);
    let attrs = session
        .get_attributes(
            found[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::Private,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Private(true)), "{attrs:?}");
    let value = session
        .get_attributes(found[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        value.iter().all(|a| !matches!(a, Attribute::Value(_))),
        "the key value was readable"
    );
}

#[tokio::test]
async fn the_timeout_is_honoured() {
    if hsm().await.is_none() {
        return;
    }
    let p = Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
    let mut s = settings(&pin());
    s.timeout = Duration::from_nanos(1);
    let slow = Pkcs11MekProvider::open(s).await;
    // Opening runs outside the timeout; the first operation does not.
    let slow = slow.unwrap();
    let e = slow.list_meks().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("hsm_config.timeout_secs"), "{e}");
    assert!(p.list_meks().await.is_ok());
}

#[tokio::test]
async fn an_unknown_label_is_named() {
    if hsm().await.is_none() {
        return;
    }
    let mut s = settings(&pin());
    s.token_label = Some("no-such-token".into());
    let e = Pkcs11MekProvider::open(s).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("no-such-token"), "{e}");
}

#[tokio::test]
async fn a_missing_or_bogus_library_is_a_clear_error() {
    if hsm().await.is_none() {
        return;
    }
    let mut s = settings(&pin());
    s.library_path = "/nonexistent/libpkcs11.so".into();
    let e = Pkcs11MekProvider::open(s.clone()).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    s.library_path = "/etc/hostname".into();
    let e = Pkcs11MekProvider::open(s).await.unwrap_err();
    assert!(e.to_string().contains("is not a PKCS#11 module"), "{e}");
}

#[tokio::test]
async fn a_tampered_wrap_is_an_authentication_error() {
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_tag");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let mut w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    let last = w.payload.len() - 1;
    w.payload[last] ^= 1;
    let e = p.unwrap_tek(&w, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
}
