//! The audit log through the facade: every start records `security.validated`, the audit key
//! is created once and handed to the log, the whole chain verifies with the key store's audit
//! keys after MEK and emergency rotations, no secret ever reaches the log, and a log whose key
//! is missing is refused. (The checklist item under failed writes is in `audit_failpoint.rs`:
//! fail points are process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use heliosdb_security::tde::{self, TdeConfig, TdeSubsystem};
use std::path::Path;

/// Every file of the log's set, concatenated.
fn log_text(log: &Path) -> String {
    let dir = log.parent().unwrap();
    let base = log.file_name().unwrap().to_str().unwrap().to_string();
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_str().unwrap().starts_with(&base)
            && !e.file_name().to_str().unwrap().ends_with(".lock")
        {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()));
        }
    }
    text
}

/// Every encoding of `bytes` a log could leak it in.
fn encodings(bytes: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        format!("{bytes:?}"),
    ]
}

/// Runs the scenario every provider shares: tables created, keys read through cold caches,
/// a table rotation, an MEK rotation, an emergency rotation, a backup; returns every TEK and
/// audit-key version's bytes seen on the way.
async fn scenario(config: &TdeConfig, backup_dir: &Path) -> Vec<Vec<u8>> {
    let mut secrets = Vec::new();
    {
        let tde = TdeSubsystem::new(config.clone()).await.unwrap();
        let km = tde.key_manager();
        km.create_table_keys(&["public.users", "public.orders", "sales"])
            .await
            .unwrap();
        km.rotate_table(&"sales".parse().unwrap()).await.unwrap();
        km.rotate_mek_with_dual_encryption(tde.default_mek_id())
            .await
            .unwrap();
        km.emergency_rotate_mek(tde.default_mek_id(), None)
            .await
            .unwrap();
        std::fs::create_dir_all(backup_dir).unwrap();
        tde.backup_to_dir(backup_dir).await.unwrap();
    }
    // A fresh start: every read below is a cache miss that reaches the provider.
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let km = tde.key_manager();
    for table in ["public.users", "public.orders", "sales"] {
        let mut v = 1;
        while let Ok(k) = km
            .get_table_key(table, Some(tde::TekVersion::new(v).unwrap()))
            .await
        {
            secrets.push(k.bytes().expose_secret().to_vec());
            v += 1;
        }
        assert!(v > 1, "{table} has keys");
    }
    for k in km.audit_key_versions().await.unwrap() {
        secrets.push(k.bytes().expose_secret().to_vec());
    }
    // The whole chain verifies with the store's audit keys and checkpoint.
    let v = tde::verify_audit(&tde, None, false).await.unwrap();
    assert!(v.macs_checked > 10, "{v:?}");
    secrets
}

fn assert_no_secret(log: &Path, secrets: &[Vec<u8>], words: &[&str]) {
    let text = log_text(log);
    assert!(
        text.contains("tek.unwrapped"),
        "the scenario reached the provider"
    );
    for s in secrets {
        for e in encodings(s) {
            assert!(
                !text.contains(&e),
                "a key's bytes ({} chars) are in the log",
                e.len()
            );
        }
    }
    for w in words {
        assert!(!text.contains(w), "a secret word is in the log");
    }
}

#[tokio::test]
async fn a_full_scenario_leaves_no_key_or_passphrase_in_the_log_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::audited_config(dir.path());
    let backups = dir.path().join("backups");
    let secrets = scenario(&config, &backups).await;
    assert!(secrets.len() >= 8, "{}", secrets.len());
    let log = config.audit_log_path.clone().unwrap();
    assert_no_secret(
        &log,
        &secrets,
        &["a long and sufficiently random passphrase"],
    );

    // Every start recorded security.validated with its mode, source and provider.
    let recs = common::audit_records(&log);
    let validated: Vec<_> = recs
        .iter()
        .filter(|r| r["action"] == "security.validated")
        .collect();
    assert_eq!(validated.len(), 2, "{validated:#?}");
    for r in &validated {
        assert_eq!(r["outcome"], "success");
        assert_eq!(r["provider"], "secure-file");
        assert_eq!(r["mode"], "development");
        let d = r["detail"].as_str().unwrap();
        assert!(
            d.contains("mode=development") && d.contains("source="),
            "{d}"
        );
    }
    // The emergency rotation gave the audit key a new version: akv moved from 1 to 2.
    let akvs: std::collections::BTreeSet<u64> =
        recs.iter().filter_map(|r| r["akv"].as_u64()).collect();
    assert_eq!(akvs.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    // The reserved table is nobody's user table.
    {
        let tde = TdeSubsystem::open_read_only(config.clone()).await.unwrap();
        let listed = tde.key_manager().list_keys(None).await.unwrap();
        assert!(
            listed
                .iter()
                .all(|k| !k.key_id.to_string().contains("_heliosdb")),
            "{listed:?}"
        );
    }
    let e = TdeSubsystem::new(config.clone())
        .await
        .unwrap()
        .key_manager()
        .create_table_key("_heliosdb.mine")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}

#[cfg(feature = "pkcs11-hsm")]
#[tokio::test]
async fn a_full_scenario_on_the_hsm_leaves_no_key_or_pin_in_the_log() {
    use heliosdb_tde_conformance::softhsm;
    if softhsm::token_present().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pin = softhsm::pin();
    let config = TdeConfig {
        key_storage_path: dir.path().join("keys"),
        default_mek_id: format!("audit_{}", std::process::id()),
        hsm_config: Some(tde::HsmConfig {
            pin: pin.clone(),
            ..softhsm::hsm_config()
        }),
        security_mode: Some("development".into()),
        audit_log_path: Some(dir.path().join("audit.log")),
        ..Default::default()
    };
    let secrets = scenario(&config, &dir.path().join("backups")).await;
    let log = config.audit_log_path.clone().unwrap();
    assert_no_secret(
        &log,
        &secrets,
        &[&format!("\"{pin}\""), &format!("pin={pin}")],
    );
    assert!(
        common::audit_records(&log)
            .iter()
            .any(|r| r["provider"] == "pkcs11-hsm" && r["action"] == "tek.unwrapped"),
        "unwraps through the token are recorded"
    );
}

#[tokio::test]
async fn a_log_with_authenticated_records_and_no_audit_key_in_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::audited_config(dir.path());
    TdeSubsystem::new(config.clone()).await.unwrap();
    // The key store and the MEKs are replaced by new ones (a first start elsewhere), but the
    // log stays: a new audit key would leave every earlier record unverifiable.
    let other = dir.path().join("other");
    let replaced = TdeConfig {
        audit_log_path: config.audit_log_path.clone(),
        ..common::file_config(&other, "development")
    };
    let log = config.audit_log_path.clone().unwrap();
    let before = std::fs::read(&log).unwrap();
    let e = TdeSubsystem::new(replaced).await.unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("audit key") && m.contains("no new key was created"),
        "{m}"
    );
    // Only the refusal itself was appended.
    let after = std::fs::read(&log).unwrap();
    assert!(after.starts_with(&before));
    let last = common::audit_records(&log).pop().unwrap();
    assert_eq!(last["action"], "security.validated");
    assert_eq!(last["outcome"], "failure");
    assert_eq!(last["error_kind"], "key_not_found");
}

#[tokio::test]
async fn a_production_refusal_is_recorded_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let config = TdeConfig {
        key_storage_path: dir.path().join("keys"),
        security_mode: Some("production".into()),
        audit_log_path: Some(log.clone()),
        ..Default::default()
    };
    let e = TdeSubsystem::new(config).await.unwrap_err();
    assert!(matches!(e, tde::TdeError::InsecureProvider { .. }), "{e}");
    assert!(
        !dir.path().join("keys").exists(),
        "no key store was created"
    );
    let recs = common::audit_records(&log);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["action"], "security.validated");
    assert_eq!(recs[0]["outcome"], "failure");
    assert_eq!(recs[0]["error_kind"], "insecure_provider");
    assert_eq!(recs[0]["provider"], "in-memory");
    assert_eq!(recs[0]["mode"], "production");
}
