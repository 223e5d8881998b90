//! The first start against a vault where the operator acted before HeliosDB: an existing
//! `key_name` adopted as MEK version 1 (no new key version, its current version tagged), a
//! disabled serving version refused at open, `hsm_protected` creating `RSA-HSM` keys, and an
//! exportable key refused in production and warned about in development.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use azure_security_keyvault_keys::models::{
    CreateKeyParameters, Key, KeyAttributes, KeyClientGetKeyOptions, KeyOperation,
    KeyReleasePolicy, KeyType, UpdateKeyPropertiesParameters,
};
use common::{Logged, Payload, ctx, is_write, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, KeyState, MekProvider, SecurityMode, TdeError};

const MEK_ID: &str = "heliosdb-mek-id";
const MEK_VERSION: &str = "heliosdb-mek-version";
const STATE: &str = "heliosdb-state";

fn tag<'a>(v: &'a common::VersionView, name: &str) -> Option<&'a str> {
    v.tags.get(name).map(String::as_str)
}

/// The vault's request log once `pred` holds for it. The server appends an entry after it has
/// sent the answer, so a client can see an answer before its entry: wait for the entry (a
/// generous deadline, never a fixed delay).
async fn log_once(
    vault: &common::Vault,
    what: &str,
    pred: impl Fn(&[Logged]) -> bool,
) -> Vec<Logged> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let log = vault.requests().await;
        if pred(&log) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request log never showed {what}: {log:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether `r` is an answered (not challenged) write of `method` whose path ends with `end`.
fn answered(r: &Logged, method: &str, end: &str) -> bool {
    r.status == 200 && r.method == method && r.path.ends_with(end)
}

/// The log's length once the operator's `count`-th answered write of `method` on a path ending
/// with `end` is in it: requests after it are the provider's.
async fn mark(vault: &common::Vault, method: &str, end: &str, count: usize) -> usize {
    log_once(vault, &format!("{count} x {method} ...{end}"), |l| {
        l.iter().filter(|r| answered(r, method, end)).count() >= count
    })
    .await
    .len()
}

/// The answered writes logged from index `from` on.
fn writes_from(log: &[Logged], from: usize) -> Vec<Logged> {
    log[from..]
        .iter()
        .filter(|r| r.status != 401 && is_write(r))
        .cloned()
        .collect()
}

/// One version of `name` as the operator's SDK reads it.
async fn get_key(vault: &common::Vault, name: &str, version: &str) -> Key {
    vault
        .key_client()
        .await
        .get_key(
            name,
            Some(KeyClientGetKeyOptions {
                key_version: Some(version.to_string()),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("get_key({name}/{version}): {e:?}"))
        .into_model()
        .unwrap()
}

/// An exportable RSA-HSM key with wrapKey and unwrapKey (and a release policy, as Key Vault
/// asks for the first version of an exportable key), created as an operator would.
async fn create_exportable(vault: &common::Vault, name: &str) -> Key {
    let key = vault
        .create_key(
            name,
            CreateKeyParameters {
                kty: Some(KeyType::RsaHsm),
                key_size: Some(2048),
                key_ops: Some(vec![KeyOperation::WrapKey, KeyOperation::UnwrapKey]),
                key_attributes: Some(KeyAttributes {
                    exportable: Some(true),
                    ..Default::default()
                }),
                release_policy: Some(KeyReleasePolicy {
                    content_type: Some("application/json; charset=utf-8".into()),
                    encoded_policy: Some(
                        br#"{"version":"1.0.0","anyOf":[{"authority":"https://attest.example","allOf":[{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}]}]}"#
                            .to_vec(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        key.attributes.as_ref().and_then(|a| a.exportable),
        Some(true),
        "the server did not record the key as exportable: {:?}",
        key.attributes
    );
    key
}

#[tokio::test]
async fn an_existing_key_is_adopted_as_version_1() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    // The operator made the key before HeliosDB's first start: RSA 2048, wrapKey + unwrapKey,
    // no tags.
    let made = f.vault.create_rsa(&f.key_name, 2048).await;
    let version = common::version_of(&made);
    let kid = made.key.as_ref().and_then(|k| k.kid.clone()).unwrap();
    assert!(made.tags.as_ref().is_none_or(|t| t.is_empty()), "{made:?}");
    let from = mark(&f.vault, "POST", "/create", 1).await;

    let p = f.open().await;
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    let info = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    assert_eq!(info.mek.version.get(), 1, "{info:?}");
    assert_eq!(info.state, KeyState::Active, "{info:?}");
    assert_eq!(info.key_location.as_deref(), Some(kid.as_str()), "{info:?}");

    // No key version was created: one version, no create in the log, one update (the tags).
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].version, version);
    // The provider's requests: its update of the adopted version is in the log once answered.
    let log = log_once(&f.vault, "the adoption's update", |l| {
        l[from..].iter().any(|r| answered(r, "PATCH", &version))
    })
    .await;
    let writes = writes_from(&log, from);
    assert!(
        writes
            .iter()
            .all(|r| r.method == "PATCH" && r.path.ends_with(&version)),
        "only the adopted version is updated, nothing created: {writes:?}"
    );
    let v = &versions[0];
    assert_eq!(tag(v, MEK_ID), Some(f.default_mek.as_str()), "{v:?}");
    assert_eq!(tag(v, MEK_VERSION), Some("1"), "{v:?}");
    assert_eq!(tag(v, STATE), Some("Active"), "{v:?}");
    assert!(v.enabled, "{v:?}");
    assert_eq!(v.ops, vec!["wrapKey", "unwrapKey"], "{v:?}");

    let mi = p.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(mi.versions.len(), 1, "{mi:?}");
    assert_eq!(mi.versions[0].mek.version.get(), 1, "{mi:?}");
    assert_eq!(mi.versions[0].state, KeyState::Active, "{mi:?}");
    assert_eq!(
        mi.versions[0].key_location.as_deref(),
        Some(kid.as_str()),
        "{mi:?}"
    );
    assert_eq!(mi.active_version().map(|v| v.get()), Some(1));

    // A TEK wraps under the adopted version and unwraps.
    let t = tek("adopted@v1");
    let w = p.wrap_tek(&info.mek, &t, &ctx("adopted@v1")).await.unwrap();
    assert_eq!(Payload::parse(&w.payload).version_id, version);
    let back = p.unwrap_tek(&w, &ctx("adopted@v1")).await.unwrap();
    assert_eq!(
        back.bytes().expose_secret(),
        t.bytes().expose_secret(),
        "the unwrapped TEK differs"
    );
}

#[tokio::test]
async fn a_disabled_serving_version_is_refused_at_open() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let info = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    drop(p);
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    let active = versions[0].version.clone();
    assert!(
        info.key_location.as_deref().unwrap().ends_with(&active),
        "{info:?}"
    );
    // The operator disables the active version.
    f.vault
        .update(
            &f.key_name,
            &active,
            UpdateKeyPropertiesParameters {
                key_attributes: Some(KeyAttributes {
                    enabled: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let from = mark(&f.vault, "PATCH", &active, 1).await;

    // open() sees the disabled flag in the version listing, before any `get` (which the vault
    // refuses for a disabled version), so the error names the version and the exact fix.
    let e = f
        .try_open()
        .await
        .expect_err("a disabled active version was accepted at open");
    let text = e.to_string();
    assert!(
        matches!(
            e,
            TdeError::InvalidKeyState {
                state: KeyState::Deactivated,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(text.contains(&f.key_name), "names the key: {text}");
    assert!(
        text.contains("az keyvault key set-attributes") && text.contains("--enabled true"),
        "gives the fix: {text}"
    );
    assert!(
        text.contains(&format!("--version {active}")) && text.contains("serve new wraps"),
        "names the version that serves new wraps: {text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    // Nothing written: the version stays disabled and tagged as it was.
    let writes = writes_from(&f.vault.requests().await, from);
    assert!(writes.is_empty(), "open wrote: {writes:?}");
    let after = f.vault.versions(&f.key_name).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after[0].enabled, "{after:?}");
    assert_eq!(tag(&after[0], STATE), Some("Active"), "{after:?}");
}

#[tokio::test]
async fn hsm_protected_creates_rsa_hsm_keys() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let mut c = f.config.clone();
    c.hsm_protected = true;
    let p = f.open_with(&c).await;
    let info = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    // Another MEK id gets its own key, also RSA-HSM.
    let other = common::fresh("hsmp");
    let other_info = p
        .generate_mek(&other, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    for (name, info) in [
        (f.key_name.clone(), &info),
        (p.key_name_for(&other), &other_info),
    ] {
        let versions = f.vault.versions(&name).await;
        assert_eq!(versions.len(), 1, "{versions:?}");
        let key = get_key(&f.vault, &name, &versions[0].version).await;
        let jwk = key.key.as_ref().expect("a JWK");
        assert_eq!(jwk.kty, Some(KeyType::RsaHsm), "{name}: {jwk:?}");
        assert_ne!(
            key.attributes.as_ref().and_then(|a| a.exportable),
            Some(true),
            "{name} is exportable: {:?}",
            key.attributes
        );
        assert_eq!(info.key_location.as_deref(), jwk.kid.as_deref(), "{info:?}");
        // A TEK wraps and unwraps under it.
        let t = tek("hsm@v1");
        let w = p.wrap_tek(&info.mek, &t, &ctx("hsm@v1")).await.unwrap();
        let back = p.unwrap_tek(&w, &ctx("hsm@v1")).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), t.bytes().expose_secret());
    }
    // A rotation keeps the type.
    let v2 = p.rotate_mek(&f.default_mek).await.unwrap();
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    let key = get_key(&f.vault, &f.key_name, &versions[1].version).await;
    assert_eq!(
        key.key.as_ref().and_then(|k| k.kty.clone()),
        Some(KeyType::RsaHsm),
        "{v2:?}"
    );
}

#[tokio::test]
async fn an_exportable_key_is_refused_in_production_and_warned_about_in_development() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let made = create_exportable(&f.vault, &f.key_name).await;
    let version = common::version_of(&made);
    let from = mark(&f.vault, "POST", "/create", 1).await;

    // Production: refused at open, naming the key; nothing written.
    let e = f
        .try_open_with(&f.config, SecurityMode::Production)
        .await
        .expect_err("an exportable key was accepted in production");
    let text = e.to_string();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    assert!(text.contains(&f.key_name), "names the key: {text}");
    assert!(text.contains("exportable"), "says why: {text}");
    assert!(
        text.contains("kms_config.key_name"),
        "names the setting: {text}"
    );
    let writes = writes_from(&f.vault.requests().await, from);
    assert!(writes.is_empty(), "production open wrote: {writes:?}");
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].tags.is_empty(), "{versions:?}");

    // Production, opened before the operator made the key (another key name): generate_mek of
    // the default id refuses it too, and writes nothing.
    let late = f.vault.fixture(common::RSA);
    let p = late
        .try_open_with(&late.config, SecurityMode::Production)
        .await
        .unwrap_or_else(|e| panic!("production open of a missing key: {e}"));
    create_exportable(&late.vault, &late.key_name).await;
    // The same vault: the operator's second create.
    let from = mark(&late.vault, "POST", "/create", 2).await;
    let e = p
        .generate_mek(&late.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .expect_err("an exportable key was adopted in production");
    let text = e.to_string();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    assert!(text.contains(&late.key_name), "names the key: {text}");
    assert!(text.contains("exportable"), "says why: {text}");
    let writes = writes_from(&late.vault.requests().await, from);
    assert!(
        writes.is_empty(),
        "production generate_mek wrote: {writes:?}"
    );
    let versions = late.vault.versions(&late.key_name).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].tags.is_empty(), "{versions:?}");

    // Development: adopted, with a warning naming the key.
    let p = f.open().await;
    let warnings = p.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&f.key_name) && w.contains("exportable")),
        "no warning about the exportable key: {warnings:?}"
    );
    let info = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    assert_eq!(info.mek.version.get(), 1, "{info:?}");
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 1, "a version was created: {versions:?}");
    assert_eq!(versions[0].version, version);
    assert_eq!(tag(&versions[0], MEK_VERSION), Some("1"), "{versions:?}");
    assert_eq!(tag(&versions[0], STATE), Some("Active"), "{versions:?}");
    let t = tek("exp@v1");
    let w = p.wrap_tek(&info.mek, &t, &ctx("exp@v1")).await.unwrap();
    let back = p.unwrap_tek(&w, &ctx("exp@v1")).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), t.bytes().expose_secret());
}
