//! MEK versions and states as the vault itself records and enforces them: versions tagged
//! 1..3 across rotations, a version made outside HeliosDB reported `DecryptOnly` and adopted by
//! the next rotation, `DecryptOnly` versions refused `wrapKey` by the server (operations list),
//! deactivated versions disabled in the server, reactivation, duplicate version tags reported,
//! purge protection read from `recoveryLevel`, `Destroyed` refused.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use azure_security_keyvault_keys::models::{
    CreateKeyParameters, EncryptionAlgorithm as KvAlg, KeyClientEncryptOptions,
    KeyClientWrapKeyOptions, KeyOperation, KeyOperationParameters, KeyType,
};
use common::{Payload, content, ctx, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, KeyState, MekProvider, TdeError};
use std::collections::HashMap;

const MEK_ID: &str = "heliosdb-mek-id";
const MEK_VERSION: &str = "heliosdb-mek-version";
const STATE: &str = "heliosdb-state";

fn tag<'a>(v: &'a common::VersionView, name: &str) -> Option<&'a str> {
    v.tags.get(name).map(String::as_str)
}

#[tokio::test]
async fn versions_are_tagged_1_to_3_across_rotations() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("tags");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    assert_eq!(p.rotate_mek(&id).await.unwrap().mek.version.get(), 2);
    assert_eq!(p.rotate_mek(&id).await.unwrap().mek.version.get(), 3);
    let name = p.key_name_for(&id);
    assert!(name.starts_with("heliosdb-tags-"), "{name}");
    let versions = f.vault.versions(&name).await;
    assert_eq!(versions.len(), 3, "{versions:?}");
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(tag(v, MEK_ID), Some(id.as_str()), "{v:?}");
        assert_eq!(tag(v, MEK_VERSION), Some((i + 1).to_string().as_str()));
    }
    assert_eq!(tag(&versions[0], STATE), Some("DecryptOnly"));
    assert_eq!(tag(&versions[1], STATE), Some("DecryptOnly"));
    assert_eq!(tag(&versions[2], STATE), Some("Active"));
    // The same type, size and operations as the first version: new wraps only on the active one.
    assert_eq!(
        versions[2].ops,
        vec!["wrapKey", "unwrapKey"],
        "{versions:?}"
    );
    assert_eq!(versions[0].ops, vec!["unwrapKey"], "{versions:?}");

    // mek_info names each version's Key Vault id.
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 3);
    for (v, server) in info.versions.iter().zip(&versions) {
        let loc = v.key_location.as_deref().expect("a key location");
        assert!(
            loc.ends_with(&format!("/keys/{name}/{}", server.version)),
            "{loc}"
        );
    }
    assert_eq!(info.active_version().map(|v| v.get()), Some(3));
}

#[tokio::test]
async fn an_untagged_version_is_decrypt_only_and_adopted_by_the_next_rotation() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("adopt");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let name = p.key_name_for(&id);
    // A version made outside HeliosDB (the portal, a rotation policy): no tags.
    let outside = f.vault.create_rsa(&name, 2048).await;
    let outside_version = common::version_of(&outside);
    let info = p.mek_info(&id).await.unwrap();
    let untagged = info
        .versions
        .iter()
        .find(|v| {
            v.key_location
                .as_deref()
                .is_some_and(|l| l.ends_with(&outside_version))
        })
        .unwrap_or_else(|| panic!("the untagged version is not reported: {info:?}"));
    assert_eq!(untagged.state, KeyState::DecryptOnly, "{info:?}");
    // Nothing wraps under it: the active version is still v1.
    assert_eq!(info.active_version(), Some(v1.version), "{info:?}");
    let w = p.wrap_tek(&v1, &tek("a@v1"), &ctx("a@v1")).await.unwrap();
    assert_ne!(Payload::parse(&w.payload).version_id, outside_version);

    // The next rotation adopts it instead of creating another version.
    let before = f.vault.versions(&name).await.len();
    let v2 = p.rotate_mek(&id).await.unwrap();
    assert_eq!(v2.mek.version.get(), 2);
    assert_eq!(v2.state, KeyState::Active);
    let versions = f.vault.versions(&name).await;
    assert_eq!(
        versions.len(),
        before,
        "a version was created: {versions:?}"
    );
    let adopted = versions
        .iter()
        .find(|v| v.version == outside_version)
        .unwrap();
    assert_eq!(tag(adopted, MEK_VERSION), Some("2"), "{adopted:?}");
    assert_eq!(tag(adopted, MEK_ID), Some(id.as_str()), "{adopted:?}");
    assert_eq!(tag(adopted, STATE), Some("Active"), "{adopted:?}");
    let w2 = p
        .wrap_tek(&v2.mek, &tek("a@v1"), &ctx("a@v1"))
        .await
        .unwrap();
    assert_eq!(Payload::parse(&w2.payload).version_id, outside_version);
    p.unwrap_tek(&w2, &ctx("a@v1")).await.unwrap();
    p.unwrap_tek(&w, &ctx("a@v1")).await.unwrap();
}

/// A `DecryptOnly` version's operations are cut to unwrapKey (decrypt): the server itself
/// refuses a wrap under it, whoever asks.
async fn decrypt_only_refused_by_the_server(algorithm: &str) {
    let Some(s) = common::server() else { return };
    let f = s.fixture(algorithm);
    let p = f.open().await;
    let id = common::fresh("donly");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    p.rotate_mek(&id).await.unwrap();
    let name = p.key_name_for(&id);
    let versions = f.vault.versions(&name).await;
    let v1 = &versions[0];
    let kc = f.vault.key_client().await;
    let e = if algorithm == common::GCM {
        assert_eq!(v1.ops, vec!["decrypt"], "{v1:?}");
        let params = KeyOperationParameters {
            algorithm: Some(KvAlg::A256Gcm),
            value: Some(vec![1; 32]),
            ..Default::default()
        };
        kc.encrypt(
            &name,
            content(params),
            Some(KeyClientEncryptOptions {
                key_version: Some(v1.version.clone()),
                ..Default::default()
            }),
        )
        .await
        .expect_err("the server encrypted under a DecryptOnly version")
    } else {
        assert_eq!(v1.ops, vec!["unwrapKey"], "{v1:?}");
        let alg = if algorithm == common::RSA {
            KvAlg::RsaOaep256
        } else {
            KvAlg::A256Kw
        };
        let params = KeyOperationParameters {
            algorithm: Some(alg),
            value: Some(vec![1; 64]),
            ..Default::default()
        };
        kc.wrap_key(
            &name,
            content(params),
            Some(KeyClientWrapKeyOptions {
                key_version: Some(v1.version.clone()),
                ..Default::default()
            }),
        )
        .await
        .expect_err("the server wrapped under a DecryptOnly version")
    };
    assert_eq!(e.http_status().map(u16::from), Some(403), "{e:?}");
}

#[tokio::test]
async fn decrypt_only_rsa_refused_wrap_key_by_the_server() {
    decrypt_only_refused_by_the_server(common::RSA).await;
}

#[tokio::test]
async fn decrypt_only_a256kw_refused_wrap_key_by_the_server() {
    decrypt_only_refused_by_the_server(common::KW).await;
}

#[tokio::test]
async fn decrypt_only_a256gcm_refused_encrypt_by_the_server() {
    decrypt_only_refused_by_the_server(common::GCM).await;
}

#[tokio::test]
async fn deactivation_disables_the_version_in_the_server_and_reactivation_enables_it() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("deact");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let c = ctx("d@v1");
    let w = p.wrap_tek(&v1, &tek("d@v1"), &c).await.unwrap();
    p.rotate_mek(&id).await.unwrap();
    let name = p.key_name_for(&id);
    p.set_mek_state(&v1, KeyState::Deactivated).await.unwrap();
    let versions = f.vault.versions(&name).await;
    assert!(!versions[0].enabled, "{versions:?}");
    assert_eq!(tag(&versions[0], STATE), Some("Deactivated"));
    assert!(versions[1].enabled);
    let e = p.unwrap_tek(&w, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e:?}");

    // The server refuses the disabled version to anyone (403), not only to HeliosDB.
    let kc = f.vault.key_client().await;
    let payload = Payload::parse(&w.payload);
    let params = KeyOperationParameters {
        algorithm: Some(KvAlg::RsaOaep256),
        value: Some(payload.ciphertext.clone()),
        ..Default::default()
    };
    let e = kc
        .unwrap_key(&name, &payload.version_id, content(params), None)
        .await
        .expect_err("the server unwrapped under a disabled version");
    assert_eq!(e.http_status().map(u16::from), Some(403), "{e:?}");

    // Reactivation: DecryptOnly, enabled, unwrap only.
    p.set_mek_state(&v1, KeyState::DecryptOnly).await.unwrap();
    let versions = f.vault.versions(&name).await;
    assert!(versions[0].enabled, "{versions:?}");
    assert_eq!(tag(&versions[0], STATE), Some("DecryptOnly"));
    assert_eq!(versions[0].ops, vec!["unwrapKey"]);
    p.unwrap_tek(&w, &c).await.unwrap();
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
}

#[tokio::test]
async fn compromised_unwraps_only_and_destroyed_is_unsupported() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("comp");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let c = ctx("c@v1");
    let w = p.wrap_tek(&v1, &tek("c@v1"), &c).await.unwrap();
    p.rotate_mek(&id).await.unwrap();
    p.set_mek_state(&v1, KeyState::Compromised).await.unwrap();
    let versions = f.vault.versions(&p.key_name_for(&id)).await;
    assert_eq!(tag(&versions[0], STATE), Some("Compromised"));
    assert_eq!(versions[0].ops, vec!["unwrapKey"]);
    assert!(versions[0].enabled);
    p.unwrap_tek(&w, &c).await.unwrap();
    assert!(p.wrap_tek(&v1, &tek("c@v1"), &c).await.is_err());

    let writes = f.vault.writes().await.len();
    let e = p.set_mek_state(&v1, KeyState::Destroyed).await.unwrap_err();
    assert!(matches!(e, TdeError::Unsupported { .. }), "{e:?}");
    assert_eq!(f.vault.writes().await.len(), writes, "state changed");
    p.unwrap_tek(&w, &c).await.unwrap();
}

#[tokio::test]
async fn two_versions_with_the_same_tag_are_reported() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("dup");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let name = p.key_name_for(&id);
    // Two rotations at once, as seen afterwards: another version also tagged 1.
    let other = f
        .vault
        .create_key(
            &name,
            CreateKeyParameters {
                kty: Some(KeyType::Rsa),
                key_size: Some(2048),
                key_ops: Some(vec![KeyOperation::WrapKey, KeyOperation::UnwrapKey]),
                tags: Some(HashMap::from([
                    (MEK_ID.to_string(), id.to_string()),
                    (MEK_VERSION.to_string(), "1".to_string()),
                    (STATE.to_string(), "Active".to_string()),
                ])),
                ..Default::default()
            },
        )
        .await;
    let other_version = common::version_of(&other);
    let first_version = f.vault.versions(&name).await[0].version.clone();
    // The tag cache lives at most 10 s: a fresh provider reads the versions now.
    let p = f.open().await;
    let e = p.mek_info(&id).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&other_version) && text.contains(&first_version),
        "the error names both versions: {text}"
    );
    let e = p.rotate_mek(&id).await.unwrap_err();
    assert!(e.to_string().contains(&other_version), "{e}");
}

#[tokio::test]
async fn purge_protection_is_read_from_the_recovery_level() {
    let Some(s) = common::server() else { return };
    // Off: the default level of a vault without purge protection.
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("purge");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let d = p
        .mek_info(&id)
        .await
        .unwrap()
        .deletion_protection
        .expect("Key Vault reports deletion protection");
    assert!(!d.protected, "{d:?}");
    assert!(
        d.detail.contains("Recoverable+Purgeable"),
        "names the level: {d:?}"
    );
    assert!(
        d.detail.contains("az keyvault update")
            && d.detail.contains("--enable-purge-protection true"),
        "says how to turn it on: {d:?}"
    );

    // On: purge protection enabled.
    for level in ["Recoverable", "CustomizedRecoverable"] {
        let f = s.fixture(common::RSA);
        f.vault.set(Some(level), None).await;
        let p = f.open().await;
        let id = common::fresh("purge");
        p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap();
        let d = p.mek_info(&id).await.unwrap().deletion_protection.unwrap();
        assert!(d.protected, "{level}: {d:?}");
        assert!(d.detail.contains(level), "{d:?}");
    }
}

#[tokio::test]
async fn versions_are_read_across_pages() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::KW);
    // Two versions per page: four versions take two pages and a nextLink.
    f.vault.set(None, Some(2)).await;
    let p = f.open().await;
    let id = common::fresh("pages");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&v1, &tek("p@v1"), &ctx("p@v1")).await.unwrap();
    for n in 2..=4 {
        assert_eq!(p.rotate_mek(&id).await.unwrap().mek.version.get(), n);
    }
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 4, "{info:?}");
    assert_eq!(info.active_version().map(|v| v.get()), Some(4));
    p.unwrap_tek(&w, &ctx("p@v1")).await.unwrap();
    let second_pages = f
        .vault
        .requests()
        .await
        .iter()
        .filter(|r| r.path.ends_with("/versions") && r.query.contains("skiptoken"))
        .count();
    assert!(
        second_pages > 0,
        "the versions were never read past page one"
    );
}
