//! The binding of a wrapped TEK to its identity, for each algorithm: Key Vault's RSA and AES
//! key wrap take no associated data, so the provider wraps `TEK || SHA-256(aad)` and checks the
//! hash half on unwrap; A256GCM binds natively with `aad`. Moving an envelope to another table
//! or relabelling it to another MEK version fails with `AuthenticationFailed`; an RSA wrap with
//! a wrong hash half made with the public key fails; and the documented RSA limitation holds: a
//! wrap planted with the public key and the right hash unwraps.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Payload, ctx, tek};
use heliosdb_tde_core::{
    EncryptionAlgorithm, MekProvider, TdeError, WrapContext, WrapPurpose, WrappedTek,
};

fn auth_failed<T>(r: Result<T, TdeError>, what: &str) {
    match r {
        Err(TdeError::AuthenticationFailed { .. }) => {}
        Err(other) => panic!("{what}: expected AuthenticationFailed, got: {other:?}"),
        Ok(_) => panic!("{what}: a mis-bound envelope unwrapped"),
    }
}

/// Moved to another table, TEK version or purpose, or relabelled to the next MEK version:
/// `AuthenticationFailed` every time, and the genuine context still works.
async fn moved_and_relabelled(algorithm: &str) {
    let Some(s) = common::server() else { return };
    let f = s.fixture(algorithm);
    let p = f.open().await;
    let id = common::fresh("bind");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("users@v1");
    let w = p.wrap_tek(&v1, &key, &ctx("users@v1")).await.unwrap();
    let payload = Payload::parse(&w.payload);
    let expected_alg = match algorithm {
        common::RSA => 1,
        common::KW => 2,
        _ => 3,
    };
    assert_eq!(payload.algorithm, expected_alg, "{payload:?}");

    auth_failed(p.unwrap_tek(&w, &ctx("orders@v1")).await, "another table");
    auth_failed(
        p.unwrap_tek(&w, &ctx("users@v2")).await,
        "another TEK version",
    );
    let mut backup: WrapContext = ctx("users@v1");
    backup.purpose = WrapPurpose::Backup;
    auth_failed(p.unwrap_tek(&w, &backup).await, "another purpose");

    // Relabelled to v2, with the payload naming v2's Key Vault version too: the vault
    // decrypts it (wrong key: the service refuses) or the hash half no longer matches.
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let mut relabelled = w.clone();
    relabelled.mek = v2.clone();
    auth_failed(
        p.unwrap_tek(&relabelled, &ctx("users@v1")).await,
        "relabelled to v2",
    );
    let w2 = p.wrap_tek(&v2, &key, &ctx("users@v1")).await.unwrap();
    let mut v2_label = Payload::parse(&w.payload);
    v2_label.version_id = Payload::parse(&w2.payload).version_id;
    let mut forged = relabelled.clone();
    forged.payload = v2_label.encode();
    auth_failed(
        p.unwrap_tek(&forged, &ctx("users@v1")).await,
        "relabelled to v2 with v2's Key Vault version",
    );
    // And v2's envelope relabelled back to v1, with v1's version id.
    let mut back_label = Payload::parse(&w2.payload);
    back_label.version_id = payload.version_id.clone();
    let mut down = w2.clone();
    down.mek = v1.clone();
    down.payload = back_label.encode();
    auth_failed(
        p.unwrap_tek(&down, &ctx("users@v1")).await,
        "v2's wrap relabelled to v1",
    );

    let back = p.unwrap_tek(&w, &ctx("users@v1")).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
}

#[tokio::test]
async fn rsa_oaep_256_envelopes_are_bound() {
    moved_and_relabelled(common::RSA).await;
}

#[tokio::test]
async fn a256kw_envelopes_are_bound() {
    moved_and_relabelled(common::KW).await;
}

#[tokio::test]
async fn a256gcm_envelopes_are_bound() {
    moved_and_relabelled(common::GCM).await;
}

/// Wraps a TEK with the provider and returns the envelope, its parsed payload and the key
/// name of the MEK.
async fn rsa_envelope(
    p: &heliosdb_tde_azure_kv::AzureKvMekProvider,
    table: &str,
) -> (WrappedTek, Payload, String) {
    let id = common::fresh("plant");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek(table), &ctx(table)).await.unwrap();
    let payload = Payload::parse(&w.payload);
    (w, payload, p.key_name_for(&id))
}

#[tokio::test]
async fn rsa_wrap_with_a_wrong_hash_half_fails() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let (w, payload, name) = rsa_envelope(&p, "users@v1").await;
    let c = ctx("users@v1");

    // TEK || SHA-256 of another table's associated data, made with the public key.
    let mut value = [7u8; 32].to_vec();
    value.extend_from_slice(&common::sha256(&ctx("orders@v1").aad_for(&w)));
    let mut planted = payload.clone();
    planted.ciphertext = f
        .vault
        .rsa_encrypt(&name, &payload.version_id, &value)
        .await;
    let mut forged = w.clone();
    forged.payload = planted.encode();
    auth_failed(p.unwrap_tek(&forged, &c).await, "a wrong hash half");

    // A hash half of zeros.
    let mut value = [7u8; 32].to_vec();
    value.extend_from_slice(&[0u8; 32]);
    let mut planted = payload.clone();
    planted.ciphertext = f
        .vault
        .rsa_encrypt(&name, &payload.version_id, &value)
        .await;
    forged.payload = planted.encode();
    auth_failed(p.unwrap_tek(&forged, &c).await, "a zero hash half");

    // The genuine envelope still unwraps.
    p.unwrap_tek(&w, &c).await.unwrap();
}

/// The documentation's RSA limitation, demonstrated: someone who can read the public key and
/// write the key store can plant a TEK of their choosing. If this test ever fails, the
/// documentation (docs/providers/azure-key-vault.md, `rsa_limitation()`) must change.
#[tokio::test]
async fn rsa_limitation_a_planted_wrap_unwraps() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    assert!(
        p.rsa_limitation().is_some(),
        "RSA-OAEP-256 states its limitation"
    );
    let (w, payload, name) = rsa_envelope(&p, "users@v1").await;
    let c = ctx("users@v1");
    let chosen = [0x42u8; 32];
    let mut value = chosen.to_vec();
    value.extend_from_slice(&common::sha256(&c.aad_for(&w)));
    let mut planted = payload.clone();
    planted.ciphertext = f
        .vault
        .rsa_encrypt(&name, &payload.version_id, &value)
        .await;
    let mut forged = w.clone();
    forged.payload = planted.encode();
    let k = p.unwrap_tek(&forged, &c).await.unwrap();
    assert_eq!(
        k.bytes().expose_secret(),
        &chosen,
        "the planted TEK is what unwraps: RSA wraps prove nothing about who made them"
    );
}

/// The Managed HSM algorithms have no such gap: nobody without the key can make a wrap, so
/// the limitation is not reported.
#[tokio::test]
async fn managed_hsm_algorithms_report_no_rsa_limitation() {
    let Some(s) = common::server() else { return };
    for alg in [common::KW, common::GCM] {
        let p = s.fixture(alg).open().await;
        assert!(p.rsa_limitation().is_none(), "{alg}");
        assert_eq!(p.wrap_algorithm().to_string(), alg);
    }
}
