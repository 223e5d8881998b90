//! The PKCS#11 provider against a real SoftHSM2 token.
//!
//! `cargo xtask test` installs SoftHSM2 if needed, initialises a private token and exports
//! `SOFTHSM2_CONF`, `HELIOSDB_TEST_PKCS11_MODULE`, `HELIOSDB_TEST_PKCS11_TOKEN` and
//! `HELIOSDB_TEST_PKCS11_PIN`. With `HELIOSDB_REQUIRE_SERVICES=1` (as in CI), a missing token
//! fails every test here; nothing in this file can pass without touching SoftHSM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{
    EncryptionAlgorithm, MekProvider, MekRef, MekVersion, ProviderKind, TableKey, TdeError,
    WrapContext, WrappedTek,
};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{pin, plant, settings};

/// The provider on the test token, or a loud skip / failure per the service policy.
async fn hsm() -> Option<Arc<dyn MekProvider>> {
    common::provider()
        .await
        .map(|p| Arc::new(p) as Arc<dyn MekProvider>)
}

#[tokio::test]
async fn conformance_round_trip() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::round_trip(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_aad_binding() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::aad_binding(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_versions() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::versions(p.as_ref()).await;
}

#[tokio::test]
async fn conformance_errors() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::errors(p.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_concurrency_through_the_pool() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::concurrency(p).await;
}

#[tokio::test]
async fn conformance_secrecy() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    provider::secrecy(p.as_ref()).await;
    let text = format!("{p:?}");
    assert!(!text.contains(&pin()), "the PIN leaked into Debug: {text}");
}

#[tokio::test]
async fn the_mek_never_leaves_the_token() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_attr");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    // Read the attributes with an independent session: every attribute of the template set
    // explicitly, sensitive, never extractable, value unreadable.
    let session = common::independent_session();
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let found = session
        .find_objects(&[Attribute::Label(label.clone())])
        .unwrap();
    assert_eq!(found.len(), 1);
    let attrs = session
        .get_attributes(
            found[0],
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::AlwaysSensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Derive,
                AttributeType::Modifiable,
                AttributeType::Copyable,
                AttributeType::Id,
            ],
        )
        .unwrap();
    for want in [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::AlwaysSensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Id(label),
    ] {
        assert!(attrs.contains(&want), "{want:?} missing from {attrs:?}");
    }
    let value = session
        .get_attributes(found[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        value.iter().all(|a| !matches!(a, Attribute::Value(_))),
        "the key value was readable"
    );
}

#[tokio::test]
async fn a_planted_key_next_to_the_mek_is_refused_naming_both_handles() {
    let _serial = common::serial().await;
    // Reading the token on every operation: the planted key is seen at the next call.
    let Some(p) = common::provider_with_refresh(Duration::ZERO).await else {
        return;
    };
    let p: Arc<dyn MekProvider> = Arc::new(p);
    let id = provider::fresh_mek_id("hsm_plant");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let session = common::independent_session();
    let real = session
        .find_objects(&[Attribute::Label(label.clone())])
        .unwrap()[0];

    // Same label and id, extractable; then same label only; then same id only.
    for (l, i) in [
        (Some(&label[..]), Some(&label[..])),
        (Some(&label[..]), None),
        (None, Some(&label[..])),
    ] {
        let planted = plant(&session, l, i);
        for e in [
            p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err(),
            p.unwrap_tek(&w, &ctx).await.unwrap_err(),
        ] {
            assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
            let text = e.to_string();
            assert!(text.contains("planted"), "{text}");
            assert!(
                text.contains(&format!("handles {real} and {planted}"))
                    || text.contains(&format!("handles {planted} and {real}")),
                "{text}"
            );
        }
        session.destroy_object(planted).unwrap();
        // With the planted key gone, the MEK works again.
        let back = p.unwrap_tek(&w, &ctx).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    }

    // The listing refuses two keys with one MEK label too.
    let planted = plant(&session, Some(&label), None);
    let e = p.list_meks().await.unwrap_err();
    assert!(e.to_string().contains("planted"), "{e}");
    session.destroy_object(planted).unwrap();
    p.list_meks().await.unwrap();
}

#[tokio::test]
async fn a_planted_extractable_key_is_refused_on_first_use() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_plant_only");
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let session = common::independent_session();
    let planted = plant(&session, Some(&label), Some(&label));
    // The provider sees an MEK by that name (the label says so), but refuses to use it.
    let mek = MekRef::new(id.clone(), MekVersion::FIRST);
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let e = p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("handle {planted}")), "{text}");
    assert!(text.contains("Extractable(true)"), "{text}");
    assert!(text.contains("Sensitive(false)"), "{text}");
    // A fresh provider (as in a new process) checks again on its first use.
    let fresh = Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
    let w = WrappedTek::new(
        EncryptionAlgorithm::Aes256Gcm,
        ProviderKind::Pkcs11,
        mek.clone(),
        vec![0; heliosdb_tde_pkcs11::PAYLOAD_LEN],
    );
    let e = fresh.unwrap_tek(&w, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    // Generating that MEK id is refused rather than adding a second key next to it.
    assert!(
        p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
            .await
            .is_err()
    );
    session.destroy_object(planted).unwrap();
}

#[tokio::test]
async fn a_key_from_release_0_1_keeps_working() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    // Release 0.1 generated MEKs with this template: the token chose CKA_WRAP, CKA_UNWRAP,
    // CKA_DERIVE, CKA_MODIFIABLE and CKA_COPYABLE.
    let id = provider::fresh_mek_id("hsm_old");
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let session = common::independent_session();
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.clone()),
                Attribute::Id(label),
            ],
        )
        .unwrap();
    let mek = p.mek_info(&id).await.unwrap().versions[0].mek.clone();
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    // Rotating gives a version with the full template.
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let v2_label = format!("heliosdb-mek:{id}:v2").into_bytes();
    let v2_handle = session.find_objects(&[Attribute::Label(v2_label)]).unwrap()[0];
    let attrs = session
        .get_attributes(v2_handle, &[AttributeType::Wrap, AttributeType::Copyable])
        .unwrap();
    assert!(attrs.contains(&Attribute::Wrap(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Copyable(false)), "{attrs:?}");
    let w2 = p.rewrap_tek(&w, &ctx, &v2).await.unwrap();
    assert_eq!(
        p.unwrap_tek(&w2, &ctx)
            .await
            .unwrap()
            .bytes()
            .expose_secret(),
        tek.bytes().expose_secret()
    );
}

#[tokio::test]
async fn the_iv_the_token_wrote_is_the_iv_stored() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_iv");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    // The fail point acts for this MEK only, so other tests are not affected.
    fail::cfg("pkcs11-token-writes-iv", &format!("return({id})")).unwrap();
    let w = p.wrap_tek(&mek, &tek, &ctx).await;
    fail::remove("pkcs11-token-writes-iv");
    let w = w.unwrap();
    assert_eq!(
        &w.payload[..12],
        &[0xA5; 12],
        "the stored IV is not the token's"
    );
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
}

#[tokio::test]
async fn a_wrap_that_does_not_unwrap_is_refused_and_nothing_is_returned() {
    let _serial = common::serial().await;
    let Some(p) = hsm().await else { return };
    let id = provider::fresh_mek_id("hsm_check");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w1 = p.wrap_tek(&v1, &tek, &ctx).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    fail::cfg("pkcs11-corrupt-wrap", &format!("return({id})")).unwrap();
    // A new wrap (TEK creation and rotation) and a re-wrap (MEK rotation, rollback).
    let created = p.wrap_tek(&v2, &tek, &ctx).await;
    let rewrapped = p.rewrap_tek(&w1, &ctx, &v2).await;
    fail::remove("pkcs11-corrupt-wrap");
    for r in [created, rewrapped] {
        let e = r.unwrap_err();
        assert!(matches!(e, TdeError::Provider { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("does not unwrap to the same key"), "{text}");
        assert!(text.contains("nothing was stored"), "{text}");
        assert!(!e.is_retryable(), "{e}");
    }
    // Without the fault the same calls succeed.
    let w2 = p.rewrap_tek(&w1, &ctx, &v2).await.unwrap();
    assert_eq!(
        p.unwrap_tek(&w2, &ctx)
            .await
            .unwrap()
            .bytes()
            .expose_secret(),
        tek.bytes().expose_secret()
    );
}

#[tokio::test]
async fn an_unknown_label_is_named() {
    let _serial = common::serial().await;
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
    let _serial = common::serial().await;
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
    let _serial = common::serial().await;
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
