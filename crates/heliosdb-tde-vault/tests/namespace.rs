//! A namespace: every request carries it, and the keys and records live inside it.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, SecurityMode};
use heliosdb_tde_vault::VaultMekProvider;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn keys_and_records_live_in_the_namespace() {
    let Some(s) = common::server() else { return };
    let ns = fresh("ns").to_string();
    s.bao(&["namespace", "create", &ns]).unwrap();
    s.bao(&["secrets", "enable", &format!("-ns={ns}"), "transit"])
        .unwrap();
    s.bao(&[
        "secrets",
        "enable",
        &format!("-ns={ns}"),
        "-path=secret",
        "-version=2",
        "kv",
    ])
    .unwrap();
    // A new KV v2 mount upgrades itself first; wait (deadline 60 s) until it takes writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .bao(&["kv", "put", &format!("-ns={ns}"), "secret/ready", "ok=1"])
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the KV mount did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, &s.root).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = s.config();
    c.token_file = Some(path.to_string_lossy().into_owned());
    c.namespace = Some(ns.clone());
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    assert!(format!("{p:?}").contains(&ns));
    let id = fresh("nsmek");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek("n@v1"), &ctx("n@v1")).await.unwrap();
    assert!(p.unwrap_tek(&w, &ctx("n@v1")).await.is_ok());
    assert!(
        s.bao(&["read", &format!("-ns={ns}"), &format!("transit/keys/{id}")])
            .is_ok()
    );
    assert!(
        s.bao(&["read", &format!("transit/keys/{id}")]).is_err(),
        "the key was created outside the namespace"
    );
}
