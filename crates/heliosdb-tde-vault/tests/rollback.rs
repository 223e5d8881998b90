//! Rollback of an MEK rotation through the key manager: the provider's view of the versions
//! matches the lifecycle record in KV and the minimum versions on the Transit key.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{KeyState, KeyStore, MekProvider, SecurityMode};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
use heliosdb_tde_vault::VaultMekProvider;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_through_the_manager_matches_the_record() {
    let Some(s) = common::server() else { return };
    let config = s.config();
    let p: Arc<dyn MekProvider> = Arc::new(
        VaultMekProvider::open(&config, SecurityMode::Development)
            .await
            .unwrap(),
    );
    let mek = common::fresh("rollback");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        p.clone(),
        store,
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development)
            .with_rotation(RotationConfig::default().with_grace_period(Duration::ZERO)),
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    km.create_table_keys(&["rb_a", "rb_b", "rb_c"])
        .await
        .unwrap();
    let before = *km
        .get_table_key("rb_a", None)
        .await
        .unwrap()
        .bytes()
        .expose_secret();
    km.rotate_mek_with_dual_encryption(mek.as_str())
        .await
        .unwrap();
    km.rollback_mek_rotation(mek.as_str(), None).await.unwrap();

    // A fresh provider (no cache) reads the record.
    let view = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let info = view.mek_info(&mek).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.versions[0].state, KeyState::Active, "{info:?}");
    assert_ne!(info.versions[1].state, KeyState::Active, "{info:?}");
    // The record in KV, read by the operator, says the same.
    let record = s
        .bao(&[
            "kv",
            "get",
            "-format=json",
            &format!("secret/{}/{mek}", config.state_path),
        ])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&record).unwrap();
    let versions = &v["data"]["data"]["versions"];
    for vi in &info.versions {
        let state = versions[vi.mek.version.get().to_string()]["state"]
            .as_str()
            .unwrap();
        assert_eq!(serde_json::to_value(vi.state).unwrap(), state, "{record}");
    }
    // Vault enforces what it can express: v1 encrypts again.
    assert_eq!(s.key_field(mek.as_str(), "min_encryption_version"), "1");
    assert_eq!(s.key_field(mek.as_str(), "min_decryption_version"), "1");
    let after = *km
        .get_table_key("rb_a", None)
        .await
        .unwrap()
        .bytes()
        .expose_secret();
    assert_eq!(before, after);
}
