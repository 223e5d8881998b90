//! The CLI over the PKCS#11 provider on a real SoftHSM2 token (provisioned by
//! `cargo xtask test`): table keys, a rotation, and the PIN rules (checklist and start-up).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::softhsm;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

/// SoftHSM's file object store is read by every process at start; a CLI process starting while
/// another one writes token objects can miss the token. The tests here run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn token() -> Option<()> {
    softhsm::token_present()
}

fn config(dir: &Path, mode: &str, pin_in_file: bool) -> std::path::PathBuf {
    let cfg = dir.join(format!("hsm-{mode}-{pin_in_file}.toml"));
    let pin = if pin_in_file {
        format!("pin = \"{}\"\n", softhsm::pin())
    } else {
        String::new()
    };
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys-{mode}\"\ndefault_mek_id = \"hsm_cli_{pid}_{mode}\"\n\
             security_mode = \"{mode}\"\naudit_log_path = \"{d}/audit-{mode}.log\"\n\n\
             {hsm}{pin}",
            d = dir.display(),
            pid = std::process::id(),
            hsm = softhsm::hsm_config_toml(),
        ),
    )
    .unwrap();
    cfg
}

fn cli(cfg: &Path, with_env_pin: bool, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("HELIOSDB_SECURITY_MODE");
    if with_env_pin {
        c.env("HELIOSDB_HSM_PIN", softhsm::pin());
    } else {
        c.env_remove("HELIOSDB_HSM_PIN");
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn table_keys_and_rotation_on_the_hsm() {
    let _one = serial();
    if token().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "production", false);
    let out = cli(&cfg, true, &["security", "tek", "create", "public.users"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&cfg, true, &["security", "mek", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        // The table key and the audit log's key.
        text(&out).contains("Keys re-encrypted: 2"),
        "{}",
        text(&out)
    );
    let out = cli(&cfg, true, &["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["provider_kind"], "pkcs11-hsm");
    assert_eq!(status["security_level"], "5/5 (HSM: highest)");
    let pin_item = status["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["item"].as_str().unwrap().contains("passphrase"))
        .unwrap()
        .clone();
    assert_eq!(pin_item["status"], "pass", "{pin_item}");
    assert!(
        pin_item["reason"].as_str().unwrap().contains("environment"),
        "{pin_item}"
    );
}

#[test]
fn a_pin_in_the_config_file_is_refused_in_production() {
    let _one = serial();
    if token().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = config(dir.path(), "development", true);
    let out = cli(&dev, false, &["--format", "json", "security", "status"]);
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let item = |s: &serde_json::Value| {
        s["checklist"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["item"].as_str().unwrap().contains("passphrase"))
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(item(&status), "not-applicable", "allowed in development");
    // Production mode refuses to start at all (the checklist used to be the only guard), and
    // says where the PIN belongs.
    let prod = config(dir.path(), "production", true);
    let out = cli(&prod, false, &["security", "status"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    for name in ["hsm_config.pin", "HELIOSDB_HSM_PIN", "hsm_config.pin_file"] {
        assert!(t.contains(name), "{name} not named: {t}");
    }
}

#[test]
fn a_wrong_pin_is_reported_with_the_guides_code() {
    let _one = serial();
    if token().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "production", false);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["security", "mek-info"])
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env("HELIOSDB_HSM_PIN", "999999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("HSM error: CKR_PIN_INCORRECT"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bundle_holds_token_references_only_and_restores_into_a_new_key_store() {
    let _one = serial();
    if token().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "production", false);
    // An MEK of its own on the shared token.
    let own = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("_production\"", "_backup\"");
    std::fs::write(&cfg, own).unwrap();
    for t in ["public.a", "public.b", "public.c"] {
        let out = cli(&cfg, true, &["security", "tek", "create", t]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let bundle = dir.path().join("hsm.hbk");
    let out = cli(
        &cfg,
        true,
        &["security", "backup", "--out", bundle.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("references only"), "{}", text(&out));
    let bytes = std::fs::read(&bundle).unwrap();
    let pin = softhsm::pin();
    assert!(
        !bytes.windows(pin.len()).any(|w| w == pin.as_bytes()),
        "the PIN is not in the bundle"
    );
    let manifest: serde_json::Value = {
        // The manifest is the first section: tag at byte 12, length at 13..21.
        let len = u64::from_be_bytes(bytes[13..21].try_into().unwrap()) as usize;
        serde_json::from_slice(&bytes[21..21 + len]).unwrap()
    };
    assert_eq!(manifest["provider"]["kind"], "pkcs11", "{manifest}");
    assert_eq!(manifest["counts"]["material"], 0, "{manifest}");
    let reference = manifest["mek_versions"][0]["reference"].as_str().unwrap();
    assert!(reference.contains("heliosdb-mek:"), "{reference}");
    let out = cli(
        &cfg,
        true,
        &[
            "security",
            "backup",
            "verify",
            bundle.to_str().unwrap(),
            "--with-provider",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        // The table keys and the audit log's key.
        text(&out).contains("all 4 table keys unwrap"),
        "{}",
        text(&out)
    );

    // Another key store directory against the same token.
    let moved = dir.path().join("hsm-elsewhere.toml");
    std::fs::write(
        &moved,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("keys-production", "keys-restored"),
    )
    .unwrap();
    let out = cli(
        &moved,
        true,
        &["security", "restore", bundle.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(
        &moved,
        true,
        &["--format", "json", "security", "tek", "list"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Three restored versions and one new active version per table.
    assert_eq!(keys.as_array().unwrap().len(), 6, "{keys}");
    let out = cli(&moved, true, &["security", "status"]);
    assert!(!text(&out).contains("CANNOT BE READ"), "{}", text(&out));
}
