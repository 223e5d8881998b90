//! MEK rotation through the key manager: a rotation of 200 TEKs is server-side rewraps only
//! (seen in the fault proxy's request log), and after a rollback the provider's view of the
//! versions matches the lifecycle record in KV and the minimum versions on the Transit key.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_rotation_of_200_teks_rewraps_on_the_server() {
    use heliosdb_tde_conformance::fault::FaultProxy;
    let Some(s) = common::server() else { return };
    let upstream: std::net::SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut config = s.config();
    config.address = proxy.url();
    let p: Arc<dyn MekProvider> = Arc::new(
        VaultMekProvider::open(&config, SecurityMode::Development)
            .await
            .unwrap(),
    );
    let mek = common::fresh("mgrrewrap");
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
    let tables: Vec<String> = (0..200).map(|i| format!("mr_t{i:03}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    proxy.clear_requests();
    let r = km
        .rotate_mek_with_dual_encryption(mek.as_str())
        .await
        .unwrap();
    assert_eq!(r.keys_reencrypted, 200);
    let rewraps = proxy.requests_to("/rewrap/");
    let decrypts = proxy.requests_to("/decrypt/");
    let encrypts = proxy.requests_to("/encrypt/");
    assert!(rewraps >= 200, "{rewraps} rewraps");
    assert_eq!(decrypts, 0, "a TEK left Vault during the rotation");
    // At most the key check value is wrapped anew under the new version.
    assert!(encrypts <= 1, "{encrypts} encrypts during the rotation");
}
