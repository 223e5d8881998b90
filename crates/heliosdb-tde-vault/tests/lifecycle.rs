//! Lifecycle records: adoption and refusal of keys created with the `bao` CLI, versions Vault
//! created outside HeliosDB, check-and-set between two providers, Destroyed.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekProvider, MekRef, MekVersion, SecurityMode, TdeError,
};
use heliosdb_tde_vault::VaultMekProvider;

#[tokio::test]
async fn a_derived_key_made_with_the_cli_is_adopted() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let id = fresh("adopt");
    s.bao(&[
        "write",
        "-f",
        &format!("transit/keys/{id}"),
        "type=aes256-gcm96",
        "derived=true",
    ])
    .unwrap();
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].state, KeyState::Active);
    let protection = info
        .deletion_protection
        .expect("Vault reports deletion protection");
    assert!(protection.protected, "{protection:?}");
    // Once the operator allows deletion, the provider reports the key as unprotected.
    s.bao(&[
        "write",
        &format!("transit/keys/{id}/config"),
        "deletion_allowed=true",
    ])
    .unwrap();
    let p2 = s.provider().await;
    let protection = p2.mek_info(&id).await.unwrap().deletion_protection.unwrap();
    assert!(!protection.protected, "{protection:?}");
    assert!(protection.detail.contains("deletion_allowed=false"));
    assert!(
        p.list_meks().await.unwrap().contains(&id),
        "a record was written"
    );
    let mek = info.versions[0].mek.clone();
    let w = p.wrap_tek(&mek, &tek("a@v1"), &ctx("a@v1")).await.unwrap();
    assert!(p.unwrap_tek(&w, &ctx("a@v1")).await.is_ok());
    let e = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
}

#[tokio::test]
async fn unfit_keys_are_refused_with_the_fix() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let plain = fresh("nonderived");
    s.bao(&[
        "write",
        "-f",
        &format!("transit/keys/{plain}"),
        "type=aes256-gcm96",
    ])
    .unwrap();
    let e = p.mek_info(&plain).await.unwrap_err().to_string();
    assert!(e.contains("derived=false") && e.contains("migrate"), "{e}");
    let conv = fresh("convergent");
    s.bao(&[
        "write",
        "-f",
        &format!("transit/keys/{conv}"),
        "type=aes256-gcm96",
        "derived=true",
        "convergent_encryption=true",
    ])
    .unwrap();
    let e = p.mek_info(&conv).await.unwrap_err().to_string();
    assert!(e.contains("convergent_encryption"), "{e}");
    // Exportable: refused in production, a warning in development.
    let exp = fresh("exportable");
    s.bao(&[
        "write",
        "-f",
        &format!("transit/keys/{exp}"),
        "type=aes256-gcm96",
        "derived=true",
        "exportable=true",
    ])
    .unwrap();
    assert!(p.mek_info(&exp).await.is_ok());
    assert!(p.warnings().iter().any(|w| w.contains("exportable=true")));
    // Production mode refuses it: tested over TLS in tls.rs, and as a rule in transit.rs.
}

#[tokio::test]
async fn versions_made_outside_heliosdb_are_decrypt_only_then_adopted_by_rotate() {
    let Some(s) = common::server() else { return };
    let config = s.config();
    let p = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("extrot");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    s.bao(&["write", "-f", &format!("transit/keys/{id}/rotate")])
        .unwrap();
    // A fresh provider (no cache) sees v2 as DecryptOnly; v1 stays active.
    let p2 = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let info = p2.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.versions[0].state, KeyState::Active);
    assert_eq!(info.versions[1].state, KeyState::DecryptOnly);
    let v2 = MekRef::new(id.clone(), MekVersion::new(2).unwrap());
    let e = p2
        .wrap_tek(&v2, &tek("x@v1"), &ctx("x@v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    // rotate_mek adopts v2 instead of creating v3.
    let r = p2.rotate_mek(&id).await.unwrap();
    assert_eq!(r.mek, v2);
    assert_eq!(s.key_field(id.as_str(), "latest_version"), "2");
    let info = p2.mek_info(&id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
    assert_eq!(info.versions[1].state, KeyState::Active);
    assert!(p2.wrap_tek(&v2, &tek("x@v1"), &ctx("x@v1")).await.is_ok());
    let _ = v1;
}

#[tokio::test]
async fn two_providers_changing_one_record_leave_it_consistent() {
    let Some(s) = common::server() else { return };
    let config = s.config();
    let a = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let b = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("cas");
    a.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let v2 = a.rotate_mek(&id).await.unwrap().mek;
    let v1 = MekRef::new(id.clone(), MekVersion::FIRST);
    // b has not cached this MEK: both change states concurrently.
    let (ra, rb) = tokio::join!(
        a.set_mek_state(&v1, KeyState::Deactivated),
        b.set_mek_state(&v2, KeyState::DecryptOnly),
    );
    ra.unwrap();
    rb.unwrap();
    let fresh_view = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let info = fresh_view.mek_info(&id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated, "{info:?}");
    assert_eq!(info.versions[1].state, KeyState::DecryptOnly, "{info:?}");
}

#[tokio::test]
async fn destroyed_is_unsupported() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let id = fresh("destroy");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let e = p.set_mek_state(&v1, KeyState::Destroyed).await.unwrap_err();
    assert!(matches!(e, TdeError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("trim"), "{e}");
    assert_eq!(
        p.mek_info(&id).await.unwrap().versions[0].state,
        KeyState::Active
    );
}

#[tokio::test]
async fn a_wrong_key_prefix_finds_no_key_and_creates_none() {
    let Some(s) = common::server() else { return };
    let config = s.config();
    let a = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("prefix");
    a.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let mut wrong = config.clone();
    wrong.key_prefix = Some("other-".into());
    let b = VaultMekProvider::open(&wrong, SecurityMode::Development)
        .await
        .unwrap();
    let e = b.mek_info(&id).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("kms_config.key_prefix"), "{e}");
    // The record says the MEK exists: generating it under the wrong prefix is refused.
    let e = b
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no Transit key"), "{e}");
    assert!(
        s.bao(&["read", &format!("transit/keys/other-{id}")])
            .is_err(),
        "a Transit key was created"
    );
}
