//! Server-side rewrap: a key-manager rotation of 200 TEKs re-wraps them with `ReEncrypt` inside
//! KMS (the fault proxy's log shows no `Decrypt`), every TEK then unwraps under the new version
//! with the new version's encryption context, and a new-version ciphertext presented with the
//! old version's context fails.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Payload, ctx, mek_ref, tek};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_core::{KeyStore, MekProvider, SecurityMode, TdeError, WrapContext};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
use std::sync::Arc;
use std::time::Duration;

const TEKS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_of_200_teks_reencrypts_in_kms() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p: Arc<dyn MekProvider> = Arc::new(f.open_at(&proxy.url(), 3).await);
    let mek = f.default_mek.clone();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        p.clone(),
        store.clone(),
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development)
            .with_rotation(RotationConfig::default().with_grace_period(Duration::ZERO)),
    )
    .unwrap();
    // The default MEK's version 1 is the configured key.
    let v1 = km.ensure_default_mek().await.unwrap();
    assert_eq!(v1, mek_ref(&mek, 1));
    let tables: Vec<String> = (0..TEKS).map(|i| format!("rw_t{i:03}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    for chunk in refs.chunks(50) {
        km.create_table_keys(chunk).await.unwrap();
    }
    let mut before = Vec::new();
    for t in &tables {
        before.push(
            *km.get_table_key(t, None)
                .await
                .unwrap()
                .bytes()
                .expose_secret(),
        );
    }

    proxy.clear_requests();
    let r = km
        .rotate_mek_with_dual_encryption(mek.as_str())
        .await
        .unwrap();
    assert_eq!(r.keys_reencrypted, TEKS as u64);
    assert!(r.failed_keys.is_empty(), "{:?}", r.failed_keys);
    let v2 = r.new_mek_id.clone();
    assert_eq!(v2, mek_ref(&mek, 2));
    let reencrypts = proxy.requests_for_target("ReEncrypt");
    let decrypts = proxy.requests_for_target("Decrypt");
    let encrypts = proxy.requests_for_target("Encrypt");
    assert!(
        reencrypts >= TEKS,
        "{reencrypts} ReEncrypt calls for {TEKS} TEKs"
    );
    assert_eq!(decrypts, 0, "a TEK left KMS during the rotation");
    // At most the key check value is wrapped anew under the new version.
    assert!(
        encrypts <= 1,
        "{encrypts} Encrypt calls during the rotation"
    );

    // Every TEK record is under v2; its payload names v2's key, and KMS decrypts it with v2's
    // encryption context but not with v1's.
    let v2_arn = p.mek_info(&mek).await.unwrap().versions[1]
        .key_location
        .clone()
        .expect("v2 has a key ARN");
    assert_ne!(v2_arn, f.key.arn);
    let records = store.scan_teks(None, usize::MAX).await.unwrap();
    let teks: Vec<_> = records
        .iter()
        .filter(|r| r.id.to_string().starts_with("rw_t"))
        .collect();
    assert_eq!(teks.len(), TEKS);
    for (i, rec) in teks.iter().enumerate() {
        assert_eq!(rec.wrapped.mek, v2, "{} is not under v2", rec.id);
        let payload = Payload::parse(&rec.wrapped.payload);
        assert_eq!(payload.arn, v2_arn);
        let c = WrapContext::table_key(&rec.id);
        let key = p.unwrap_tek(&rec.wrapped, &c).await.unwrap();
        let name = rec.id.to_string();
        let table = name.split('@').next().unwrap();
        let expected = tables.iter().position(|t| t == table).unwrap();
        assert_eq!(key.bytes().expose_secret(), &before[expected], "{}", rec.id);
        // The direct check against KMS is done for a sample (it costs a call each).
        if i % 20 == 0 {
            let good = m.decrypt(&payload.blob, &v2_arn, &c.context_map(&v2)).await;
            assert_eq!(good.as_deref(), Ok(&before[expected][..]), "{}", rec.id);
            let bad = m.decrypt(&payload.blob, &v2_arn, &c.context_map(&v1)).await;
            assert_eq!(
                bad,
                Err("InvalidCiphertextException".to_string()),
                "{}",
                rec.id
            );
        }
    }
    // Through the provider, a v2 envelope relabelled as v1 (v1's context) fails too.
    let mut relabelled = teks[0].wrapped.clone();
    relabelled.mek = v1.clone();
    let e = p
        .unwrap_tek(&relabelled, &WrapContext::table_key(&teks[0].id))
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");
}

/// `rewrap_tek` on its own: one `ReEncrypt`, no `Decrypt`, no `Encrypt`.
#[tokio::test]
async fn rewrap_tek_is_one_reencrypt() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 3).await;
    let id = common::fresh("rewrap_one");
    let v1 = p
        .generate_mek(&id, heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("one@v3");
    let c = ctx("one@v3");
    let w1 = p.wrap_tek(&v1, &key, &c).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    proxy.clear_requests();
    let w2 = p.rewrap_tek(&w1, &c, &v2).await.unwrap();
    assert_eq!(proxy.requests_for_target("ReEncrypt"), 1);
    assert_eq!(proxy.requests_for_target("Decrypt"), 0);
    assert_eq!(proxy.requests_for_target("Encrypt"), 0);
    assert_eq!(w2.mek, v2);
    let back = p.unwrap_tek(&w2, &c).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
}
