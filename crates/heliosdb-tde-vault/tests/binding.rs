//! The binding of a wrapped TEK, checked by an independent client (the `bao` CLI), and
//! server-side rewrap.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ctx, fresh, tek};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_core::{EncryptionAlgorithm, KeyState, MekProvider, SecurityMode, TdeError};
use heliosdb_tde_vault::VaultMekProvider;
use std::net::SocketAddr;

#[tokio::test]
async fn bao_cli_decrypts_a_wrap_only_with_its_context() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let id = fresh("bind");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("users@v3");
    let c = ctx("users@v3");
    let w = p.wrap_tek(&mek, &key, &c).await.unwrap();
    let ciphertext = String::from_utf8(w.payload.clone()).unwrap();
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    let context = B64.encode(c.derivation_context(&id));
    let plain = s
        .bao(&[
            "write",
            "-field=plaintext",
            &format!("transit/decrypt/{id}"),
            &format!("ciphertext={ciphertext}"),
            &format!("context={context}"),
        ])
        .unwrap();
    assert_eq!(B64.decode(plain).unwrap(), key.bytes().expose_secret());
    // Another table's context: Vault itself refuses.
    let other = B64.encode(ctx("orders@v3").derivation_context(&id));
    let e = s
        .bao(&[
            "write",
            "-field=plaintext",
            &format!("transit/decrypt/{id}"),
            &format!("ciphertext={ciphertext}"),
            &format!("context={other}"),
        ])
        .unwrap_err();
    assert!(e.contains("message authentication failed"), "{e}");
    // A payload edited to claim v2 (the key has v2 after a rotation): AuthenticationFailed.
    p.rotate_mek(&id).await.unwrap();
    let mut edited = w.clone();
    edited.payload = ciphertext
        .replacen("vault:v1:", "vault:v2:", 1)
        .into_bytes();
    let e = p.unwrap_tek(&edited, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let mut relabelled = edited.clone();
    relabelled.mek =
        heliosdb_tde_core::MekRef::new(id.clone(), heliosdb_tde_core::MekVersion::new(2).unwrap());
    let e = p.unwrap_tek(&relabelled, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
}

#[tokio::test]
async fn rotation_rewraps_on_the_server_and_min_decryption_version_follows() {
    let Some(s) = common::server() else { return };
    let upstream: SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut config = s.config();
    config.address = proxy.url();
    let p = VaultMekProvider::open(&config, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("rewrap");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let mut wraps = Vec::new();
    for i in 0..200u32 {
        let name = format!("t{i}@v1");
        let key = tek(&name);
        let w = p.wrap_tek(&v1, &key, &ctx(&name)).await.unwrap();
        wraps.push((name, key, w));
    }
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    proxy.clear_requests();
    let mut rewrapped = Vec::new();
    for (name, _, w) in &wraps {
        rewrapped.push(p.rewrap_tek(w, &ctx(name), &v2).await.unwrap());
    }
    assert_eq!(proxy.requests_to("/rewrap/"), 200);
    assert_eq!(proxy.requests_to("/decrypt/"), 0, "a TEK left Vault");
    assert_eq!(
        proxy.requests_to("/encrypt/"),
        0,
        "a TEK entered Vault again"
    );
    for ((name, key, _), w) in wraps.iter().zip(&rewrapped) {
        assert_eq!(w.mek, v2);
        assert!(w.payload.starts_with(b"vault:v2:"));
        let back = p.unwrap_tek(w, &ctx(name)).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
    }
    p.deactivate_mek_version(&v1).await.unwrap();
    assert_eq!(s.key_field(id.as_str(), "min_decryption_version"), "2");
    assert_eq!(s.key_field(id.as_str(), "min_encryption_version"), "2");
    // Vault itself refuses the old ciphertext now, even to the root token.
    let (name, _, old) = &wraps[0];
    let e = s
        .bao(&[
            "write",
            &format!("transit/decrypt/{id}"),
            &format!(
                "ciphertext={}",
                String::from_utf8(old.payload.clone()).unwrap()
            ),
            &format!("context={}", B64.encode(ctx(name).derivation_context(&id))),
        ])
        .unwrap_err();
    assert!(e.contains("too old"), "{e}");
    // Reactivation lowers it again.
    p.set_mek_state(&v1, KeyState::DecryptOnly).await.unwrap();
    assert_eq!(s.key_field(id.as_str(), "min_decryption_version"), "1");
    assert!(p.unwrap_tek(old, &ctx(name)).await.is_ok());
}
