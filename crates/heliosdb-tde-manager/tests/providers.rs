//! MEK rotation with dual encryption through the key manager, over the in-memory, secure file
//! and PKCS#11 (SoftHSM2) providers (moved here from the provider conformance suite, which
//! stays free of the manager).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::provider::fresh_mek_id;
use heliosdb_tde_core::{KeyState, KeyStore, MekProvider, SecurityMode};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

/// MEK rotation with dual encryption through the key manager: TEKs created under the first
/// version, a rotation re-wraps them all with the provider, both versions unwrap during the dual
/// period, and after verification the old version can be deactivated.
async fn rotation_with_manager(p: Arc<dyn MekProvider>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let mek = fresh_mek_id("conf_rot");
    let c = KeyManagerConfig::new(mek.clone(), SecurityMode::Development)
        .with_rotation(RotationConfig::default().with_grace_period(std::time::Duration::ZERO));
    let km = KeyManager::new(p.clone(), store, c).unwrap();
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..40).map(|i| format!("rot_t{i}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    let before: Vec<[u8; 32]> = {
        let mut v = Vec::new();
        for t in &tables {
            v.push(
                *km.get_table_key(t, None)
                    .await
                    .unwrap()
                    .bytes()
                    .expose_secret(),
            );
        }
        v
    };
    let r = km
        .rotate_mek_with_dual_encryption(mek.as_str())
        .await
        .unwrap();
    assert_eq!(r.keys_reencrypted, 40);
    assert!(r.failed_keys.is_empty(), "{:?}", r.failed_keys);
    assert_eq!(r.new_mek_id.version.get(), 2);
    // A cold manager over the same parts unwraps every TEK under the new version.
    let cold = KeyManager::new(
        p.clone(),
        km.store().clone(),
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development),
    )
    .unwrap();
    for (t, b) in tables.iter().zip(&before) {
        let k = cold.get_table_key(t, None).await.unwrap();
        assert_eq!(k.bytes().expose_secret(), b, "{t}");
    }
    assert_eq!(
        km.verify_mek_rotation(mek.as_str()).await.unwrap().stranded,
        0
    );
    km.deactivate_old_mek(mek.as_str()).await.unwrap();
    let info = p.mek_info(&mek).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);
    let cold = KeyManager::new(
        p,
        km.store().clone(),
        KeyManagerConfig::new(mek, SecurityMode::Development),
    )
    .unwrap();
    for t in &tables {
        cold.get_table_key(t, None).await.unwrap();
    }
}

#[tokio::test]
async fn rotation_with_manager_over_the_in_memory_provider() {
    rotation_with_manager(Arc::new(InMemoryMekProvider::new())).await;
}

#[tokio::test]
async fn rotation_with_manager_over_the_secure_file_provider() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::secure_file_provider(&dir.path().join("mek"));
    rotation_with_manager(Arc::new(p)).await;
}

/// Over the SoftHSM2 test token (skipped loudly without one, a failure when services are
/// required, as in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_manager_over_the_pkcs11_provider() {
    use heliosdb_tde_conformance::{services, softhsm};
    if softhsm::token_present().is_none() {
        return;
    }
    let settings = heliosdb_tde_pkcs11::Pkcs11Settings::from_config(
        &softhsm::hsm_config(),
        secrecy::SecretString::from(softhsm::pin()),
    );
    let opened = heliosdb_tde_pkcs11::Pkcs11MekProvider::open(settings).await;
    let Some(p) = services::require(softhsm::SERVICE, opened.map_err(|e| e.to_string())) else {
        return;
    };
    rotation_with_manager(Arc::new(p)).await;
}
