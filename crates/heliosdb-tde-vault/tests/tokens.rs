//! Tokens: from a file (replaced while running), revoked, and renewed before their TTL ends.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, SecurityMode, TdeError};
use heliosdb_tde_vault::VaultMekProvider;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn write_token(path: &Path, token: &str, mode: u32) {
    // Replace the file as a Vault Agent sink does: write aside, rename over.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_replaced_token_file_is_used_without_a_restart() {
    let Some(s) = common::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let first = s.token(&["heliosdb"], &[]);
    write_token(&path, &first, 0o644);
    let mut c = s.config();
    c.token_file = Some(path.to_string_lossy().into_owned());
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    assert!(
        p.warnings().iter().any(|w| w.contains("0644")),
        "{:?}",
        p.warnings()
    );
    let mek = p
        .generate_mek(&fresh("tokfile"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek("f@v1"), &ctx("f@v1")).await.unwrap();
    // The agent writes a new token and the old one is revoked.
    let second = s.token(&["heliosdb"], &[]);
    write_token(&path, &second, 0o600);
    s.bao(&["token", "revoke", &first]).unwrap();
    assert!(p.unwrap_tek(&w, &ctx("f@v1")).await.is_ok());
    assert!(!format!("{p:?}").contains(&second), "Debug shows the token");
}

#[tokio::test]
async fn a_revoked_token_gives_the_invalid_token_error() {
    let Some(s) = common::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let token = s.token(&["heliosdb"], &[]);
    write_token(&path, &token, 0o600);
    let mut c = s.config();
    c.token_file = Some(path.to_string_lossy().into_owned());
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("revoked");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    s.bao(&["token", "revoke", &token]).unwrap();
    let e = p.rotate_mek(&id).await.unwrap_err();
    assert!(matches!(e, TdeError::Provider { .. }), "{e}");
    assert!(e.to_string().contains("token is invalid or expired"), "{e}");
    assert!(!e.to_string().contains(&token));
    let e = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token is invalid or expired"), "{e}");
}

#[tokio::test]
async fn a_token_with_a_20_s_ttl_keeps_working_for_60_s() {
    let Some(s) = common::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let token = s.token(&["heliosdb"], &["-ttl=20s"]);
    write_token(&path, &token, 0o600);
    let mut c = s.config();
    c.token_file = Some(path.to_string_lossy().into_owned());
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    let mek = p
        .generate_mek(&fresh("ttl"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let id = format!("r{calls}@v1");
        p.wrap_tek(&mek, &tek(&id), &ctx(&id))
            .await
            .unwrap_or_else(|e| panic!("after {:?}: {e}", start.elapsed()));
        calls += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(calls >= 20);
}
