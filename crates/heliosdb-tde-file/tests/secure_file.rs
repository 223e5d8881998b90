//! Secure-file specifics: passphrase sources, permissions, wrong passphrase, tampering,
//! passphrase changes (including interrupted ones), destroy, stale temporary files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS_A, PASS_B, open, secret, snapshot};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekProvider, SecureFileConfig, SecurityMode, TableKey,
    TdeError, WrapContext,
};
use heliosdb_tde_file::SecureFileMekProvider;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const PROD: SecurityMode = SecurityMode::Production;
const DEV: SecurityMode = SecurityMode::Development;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn with_mek(dir: &Path) -> SecureFileMekProvider {
    let p = open(dir, PASS_A, PROD).unwrap();
    p.generate_mek(
        &MekId::new("master_key_001").unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
    )
    .await
    .unwrap();
    p
}

#[tokio::test]
async fn files_and_directory_are_private_and_named_by_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    p.rotate_mek(&MekId::new("master_key_001").unwrap())
        .await
        .unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    let names: Vec<String> = snapshot(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["master_key_001.v1.mek", "master_key_001.v2.mek"]);
    for n in &names {
        assert_eq!(mode_of(&dir.join(n)), 0o600, "{n}");
    }
}

#[tokio::test]
async fn group_or_world_access_is_refused_in_production_and_warned_in_development() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);
    let file = dir.join("master_key_001.v1.mek");

    chmod(&file, 0o644);
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("chmod 600 {}", file.display())),
        "{text}"
    );
    let p = open(&dir, PASS_A, DEV).unwrap();
    assert!(
        p.warnings().iter().any(|w| w.contains("chmod 600")),
        "{:?}",
        p.warnings()
    );
    chmod(&file, 0o600);

    chmod(&dir, 0o755);
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("chmod 700 {}", dir.display())),
        "{e}"
    );
    let p = open(&dir, PASS_A, DEV).unwrap();
    assert_eq!(p.warnings().len(), 1, "{:?}", p.warnings());
    chmod(&dir, 0o700);
    assert!(open(&dir, PASS_A, PROD).unwrap().warnings().is_empty());
}

#[tokio::test]
async fn wrong_passphrase_is_clear_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);
    let before = snapshot(&dir);
    let e = open(&dir, PASS_B, PROD).unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("master_key_001.v1.mek"), "{text}");
    assert!(text.contains("wrong passphrase"), "{text}");
    assert_eq!(snapshot(&dir), before, "a failed open wrote something");
}

#[tokio::test]
async fn short_passphrases_are_refused_in_production_only() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path(), "only-twenty-chars-xx", PROD).unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    assert!(e.to_string().contains("at least 25"), "{e}");
    let p = open(tmp.path(), "only-twenty-chars-xx", DEV).unwrap();
    assert!(
        p.warnings()[0].contains("20 characters"),
        "{:?}",
        p.warnings()
    );
}

#[tokio::test]
async fn weak_kdf_parameters_are_refused_in_production() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = SecureFileConfig::new(tmp.path());
    cfg.kdf = Some(heliosdb_tde_core::KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    });
    let e = SecureFileMekProvider::open_with_passphrase(&cfg, PROD, secret(PASS_A), vec![])
        .unwrap_err();
    assert!(e.to_string().contains("OWASP"), "{e}");
}

#[tokio::test]
async fn tampered_or_renamed_files_do_not_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);
    let file = dir.join("master_key_001.v1.mek");
    let good = std::fs::read(&file).unwrap();
    // Every single-byte change anywhere in the file is caught.
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&file, &bad).unwrap();
        assert!(
            open(&dir, PASS_A, PROD).is_err(),
            "flip at byte {i} was accepted"
        );
    }
    // Truncated files name the file.
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("master_key_001.v1.mek"), "{e}");
    // A file renamed to claim another version is refused.
    std::fs::write(&file, &good).unwrap();
    std::fs::rename(&file, dir.join("master_key_001.v7.mek")).unwrap();
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(e.to_string().contains("file name says"), "{e}");
}

#[tokio::test]
async fn keys_survive_reopen_and_wrapped_teks_unwrap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    let mek = p
        .mek_info(&MekId::new("master_key_001").unwrap())
        .await
        .unwrap()
        .versions[0]
        .mek
        .clone();
    let tek =
        TableKey::generate("users@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let wrapped = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    drop(p);
    let p = open(&dir, PASS_A, PROD).unwrap();
    let back = p.unwrap_tek(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
}

#[tokio::test]
async fn passphrase_change_re_encrypts_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    for id in ["second", "third"] {
        p.generate_mek(&MekId::new(id).unwrap(), EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap();
    }
    let report = p.change_passphrase(secret(PASS_B)).unwrap();
    assert_eq!(
        (
            report.rewritten,
            report.already_converted,
            report.generation
        ),
        (3, 0, 2)
    );
    // The open provider keeps working and writes new files under the new passphrase.
    p.rotate_mek(&MekId::new("second").unwrap()).await.unwrap();
    drop(p);
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let p = open(&dir, PASS_B, PROD).unwrap();
    assert_eq!(p.list_meks().await.unwrap().len(), 3);
}

#[tokio::test]
async fn an_interrupted_passphrase_change_says_which_passphrase_and_can_be_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    for id in ["second", "third"] {
        p.generate_mek(&MekId::new(id).unwrap(), EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap();
    }
    drop(p);
    // Simulate a crash after two of three files were converted: convert all, then put one
    // file's old image back (each file is replaced atomically, so this is a reachable state).
    let old_third = std::fs::read(dir.join("third.v1.mek")).unwrap();
    let cfg = SecureFileConfig::new(&dir);
    SecureFileMekProvider::change_passphrase_in(&cfg, PROD, &secret(PASS_A), &secret(PASS_B))
        .unwrap();
    std::fs::write(dir.join("third.v1.mek"), &old_third).unwrap();

    let e = open(&dir, PASS_B, PROD).unwrap_err().to_string();
    assert!(
        e.contains("third.v1.mek") && e.contains("PREVIOUS passphrase"),
        "{e}"
    );
    let e = open(&dir, PASS_A, PROD).unwrap_err().to_string();
    assert!(e.contains("NEW passphrase"), "{e}");

    // Wrong passphrases while finishing change nothing.
    let before = snapshot(&dir);
    let wrong = "not the old passphrase at all, no sir";
    let e =
        SecureFileMekProvider::change_passphrase_in(&cfg, PROD, &secret(wrong), &secret(PASS_B))
            .unwrap_err();
    assert!(e.to_string().contains("wrong old passphrase"), "{e}");
    assert_eq!(snapshot(&dir), before);

    let r =
        SecureFileMekProvider::change_passphrase_in(&cfg, PROD, &secret(PASS_A), &secret(PASS_B))
            .unwrap();
    assert_eq!((r.rewritten, r.already_converted, r.generation), (1, 2, 2));
    assert_eq!(
        open(&dir, PASS_B, PROD)
            .unwrap()
            .list_meks()
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn destroy_leaves_a_tombstone_and_the_version_is_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    let id = MekId::new("master_key_001").unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let v1: heliosdb_tde_core::MekRef = "master_key_001@v1".parse().unwrap();
    assert!(
        p.set_mek_state(&v1, KeyState::Destroyed).await.is_err(),
        "must deactivate first"
    );
    p.deactivate_mek_version(&v1).await.unwrap();
    p.set_mek_state(&v1, KeyState::Destroyed).await.unwrap();
    assert!(
        !dir.join("master_key_001.v1.mek").exists(),
        "key material still on disk"
    );
    assert!(dir.join("master_key_001.v1.destroyed").exists());
    drop(p);
    let p = open(&dir, PASS_A, PROD).unwrap();
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Destroyed);
    assert_eq!(info.active_version(), Some(v2.version));
    assert!(p.set_mek_state(&v1, KeyState::DecryptOnly).await.is_err());
    let v3 = p.rotate_mek(&id).await.unwrap();
    assert_eq!(v3.mek.version.get(), 3);
}

#[tokio::test]
async fn stale_temporary_files_are_removed_and_two_active_versions_resolve_to_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    let id = MekId::new("master_key_001").unwrap();
    let v1_active = std::fs::read(dir.join("master_key_001.v1.mek")).unwrap();
    p.rotate_mek(&id).await.unwrap();
    drop(p);
    // A crash between writing v2 and demoting v1 leaves v1 marked active on disk.
    std::fs::write(dir.join("master_key_001.v1.mek"), &v1_active).unwrap();
    std::fs::write(dir.join(".tmp-master_key_001.v3.mek-1-2"), b"half a file").unwrap();
    let p = open(&dir, PASS_A, PROD).unwrap();
    assert!(!dir.join(".tmp-master_key_001.v3.mek-1-2").exists());
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
    assert_eq!(info.versions[1].state, KeyState::Active);
}

/// The passphrase read from the environment and from a file, in a child process so that the
/// test never mutates its own environment.
#[test]
fn passphrase_sources() {
    if let Ok(case) = std::env::var("HELIOSDB_FILE_TEST_CASE") {
        let dir = std::path::PathBuf::from(std::env::var("HELIOSDB_FILE_TEST_DIR").unwrap());
        let mut cfg = SecureFileConfig::new(dir.join("mek"));
        match case.as_str() {
            "missing" => {
                let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
                assert_eq!(
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap()
                        .split(". Set it")
                        .next()
                        .unwrap(),
                    "MEK provider error: Passphrase environment variable HELIOSDB_MEK_PASSPHRASE not found"
                );
                cfg.passphrase_env_var = Some("CUSTOM_PASS_VAR".into());
                let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
                assert!(e.to_string().contains("CUSTOM_PASS_VAR not found"), "{e}");
            }
            "env" => {
                SecureFileMekProvider::open(&cfg, PROD).unwrap();
            }
            "file" => {
                let pf = dir.join("mek-passphrase.txt");
                std::fs::write(&pf, format!("{PASS_A}\n")).unwrap();
                chmod(&pf, 0o600);
                cfg.passphrase_file = Some(pf.clone());
                SecureFileMekProvider::open(&cfg, PROD).unwrap();
                chmod(&pf, 0o640);
                let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
                assert!(e.to_string().contains("chmod 600"), "{e}");
                std::fs::write(&pf, "\n").unwrap();
                chmod(&pf, 0o600);
                let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
                assert!(e.to_string().contains("passphrase_file"), "{e}");
            }
            other => panic!("unknown case {other}"),
        }
        println!("CASE-OK");
        return;
    }
    for (case, env) in [("missing", None), ("env", Some(PASS_A)), ("file", None)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "passphrase_sources", "--nocapture"])
            .env("HELIOSDB_FILE_TEST_CASE", case)
            .env("HELIOSDB_FILE_TEST_DIR", tmp.path())
            .env_remove("HELIOSDB_MEK_PASSPHRASE")
            .env_remove("CUSTOM_PASS_VAR");
        if let Some(v) = env {
            cmd.env("HELIOSDB_MEK_PASSPHRASE", v);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CASE-OK"),
            "case {case}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
