//! Secure-file specifics: passphrase sources, permissions, ownership and file types, the
//! directory lock (two processes), KDF parameters and their policy, wrong passphrase,
//! tampering, passphrase changes (including interrupted ones), destroy, stale temporary files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests hold the `common::shared`/`exclusive` guard across awaits on purpose: each tokio test
// has its own runtime and thread, so blocking on it only waits for other tests.
#![allow(clippy::await_holding_lock)]

mod common;

use common::{PASS_A, PASS_B, TEST_KDF, config, open, secret, snapshot};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KdfParams, KeyState, MekId, MekProvider, SecureFileConfig, SecurityMode,
    TableKey, TdeError, WrapContext,
};
use heliosdb_tde_file::{DEFAULT_KDF, SecureFileMekProvider, format};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    drop(p); // it holds the directory lock
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
    drop(p);
    chmod(&dir, 0o700);
    assert!(open(&dir, PASS_A, PROD).unwrap().warnings().is_empty());
}

#[tokio::test]
async fn wrong_passphrase_is_clear_and_changes_nothing() {
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let cfg = config(&dir);
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
    let _forks = common::shared();
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
    let _forks = common::shared();
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
    let _forks = common::exclusive();
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

// ---------------------------------------------------------------------------------------------
// Issue 9, item 9: Argon2id parameters.

fn header_kdf(file: &Path) -> KdfParams {
    format::parse(&std::fs::read(file).unwrap(), file)
        .unwrap()
        .header
        .kdf
}

/// New files use RFC 9106's second recommended option when nothing is configured.
#[tokio::test]
async fn the_default_kdf_is_rfc_9106_second_recommended_option() {
    let _forks = common::shared();
    assert_eq!(
        (
            DEFAULT_KDF.m_cost_kib,
            DEFAULT_KDF.t_cost,
            DEFAULT_KDF.p_cost
        ),
        (65536, 3, 4)
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = SecureFileMekProvider::open_with_passphrase(
        &SecureFileConfig::new(&dir),
        PROD,
        secret(PASS_A),
        vec![],
    )
    .unwrap();
    p.generate_mek(
        &MekId::new("master_key_001").unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
    )
    .await
    .unwrap();
    assert_eq!(header_kdf(&dir.join("master_key_001.v1.mek")), DEFAULT_KDF);
}

/// A file written with the old default (OWASP's minimum) stays readable in development mode,
/// is refused in production mode with the command that fixes it (before any derivation), and
/// `change_passphrase_in` rewrites it with the current parameters, after which production
/// opens it.
#[tokio::test]
async fn files_below_the_kdf_policy_are_readable_in_development_refused_in_production_and_rewritten()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await; // written with TEST_KDF = the old default
    let mek: heliosdb_tde_core::MekRef = "master_key_001@v1".parse().unwrap();
    let tek =
        TableKey::generate("users@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let wrapped = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    drop(p);
    let file = dir.join("master_key_001.v1.mek");
    assert_eq!(header_kdf(&file), TEST_KDF);
    let default_cfg = SecureFileConfig::new(&dir);

    let p = SecureFileMekProvider::open_with_passphrase(&default_cfg, DEV, secret(PASS_A), vec![])
        .unwrap();
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("below the parameters in force") && w.contains("change-passphrase")),
        "{:?}",
        p.warnings()
    );
    let back = p.unwrap_tek(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    drop(p);

    let before = snapshot(&dir);
    let e = SecureFileMekProvider::open_with_passphrase(&default_cfg, PROD, secret(PASS_A), vec![])
        .unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("heliosdb-cli security mek change-passphrase")
            && text.contains("master_key_001.v1.mek")
            && text.contains("memory 19456 KiB, 2 passes, 1 lanes")
            && text.contains("memory 65536 KiB, 3 passes, 4 lanes")
            && !text.contains('\n'),
        "{text}"
    );
    assert_eq!(snapshot(&dir), before, "a refused open changed a file");

    // The same passphrase as old and new: only the parameters change.
    let r = SecureFileMekProvider::change_passphrase_in(
        &default_cfg,
        PROD,
        &secret(PASS_A),
        &secret(PASS_A),
    )
    .unwrap();
    assert_eq!(r.rewritten, 1);
    assert_eq!(header_kdf(&file), DEFAULT_KDF);
    let p = SecureFileMekProvider::open_with_passphrase(&default_cfg, PROD, secret(PASS_A), vec![])
        .unwrap();
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    let back = p.unwrap_tek(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
}

/// Writes a syntactically valid MEK file with the given KDF parameters and a junk ciphertext.
fn write_file_with_kdf(dir: &Path, kdf: KdfParams) {
    let h = format::Header {
        kdf,
        salt: vec![7; format::SALT_LEN],
        generation: 1,
        algorithm: EncryptionAlgorithm::Aes256Gcm,
        state: KeyState::Active,
        created_at: heliosdb_tde_core::Timestamp(1),
        state_changed_at: heliosdb_tde_core::Timestamp(1),
        mek: "master_key_001@v1".parse().unwrap(),
    };
    let mut b = h.encode();
    b.extend_from_slice(&[0u8; 12 + 32 + 16]);
    let path = dir.join("master_key_001.v1.mek");
    std::fs::write(&path, b).unwrap();
    chmod(&path, 0o600);
}

/// Parameters that the old parser let through (up to 64 passes and 64 lanes) are refused as
/// corrupt when the directory is opened, before a key is derived with them (a derivation
/// would end in an authentication failure, not in `Corrupt`).
#[tokio::test]
async fn absurd_kdf_parameters_in_a_file_are_refused_before_deriving() {
    let _forks = common::shared();
    for kdf in [
        KdfParams {
            m_cost_kib: 65536,
            t_cost: 20,
            p_cost: 4,
        },
        KdfParams {
            m_cost_kib: 65536,
            t_cost: 3,
            p_cost: 32,
        },
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mek");
        drop(open(&dir, PASS_A, PROD).unwrap());
        write_file_with_kdf(&dir, kdf);
        let e = open(&dir, PASS_A, DEV).unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{kdf:?}: {e}");
        assert!(
            e.to_string().contains("implausible Argon2 parameters"),
            "{e}"
        );
        let e = SecureFileMekProvider::change_passphrase_in(
            &config(&dir),
            DEV,
            &secret(PASS_A),
            &secret(PASS_B),
        )
        .unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{kdf:?}: {e}");
    }
}

/// A configuration asking for parameters that could not be read back is refused.
#[test]
fn configured_kdf_parameters_outside_the_bounds_are_refused() {
    let _forks = common::exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = SecureFileConfig::new(tmp.path().join("mek"));
    cfg.kdf = Some(KdfParams {
        m_cost_kib: 4 * 1024 * 1024,
        t_cost: 3,
        p_cost: 4,
    });
    let e =
        SecureFileMekProvider::open_with_passphrase(&cfg, DEV, secret(PASS_A), vec![]).unwrap_err();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e}");
    assert!(e.to_string().contains("secure_file_config.kdf"), "{e}");
    assert!(
        !tmp.path().join("mek").exists(),
        "a refused open created files"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 9, item 10: owner, file type, O_NOFOLLOW, symbolic links, the passphrase file.

/// Gives `path` to uid/gid 65534 (nobody). Only root can; other users skip the owner checks.
fn chown_to_nobody(path: &Path) -> bool {
    match std::os::unix::fs::chown(path, Some(65534), Some(65534)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping the owner check: chown needs root ({e})");
            false
        }
    }
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

#[tokio::test]
async fn mek_files_and_directories_of_another_user_are_refused_in_production() {
    let _forks = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);
    let file = dir.join("master_key_001.v1.mek");
    if !chown_to_nobody(&file) {
        return;
    }
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("owned by uid 65534")
            && text.contains(&format!("chown 0 {}", file.display())),
        "{text}"
    );
    let p = open(&dir, PASS_A, DEV).unwrap();
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("owned by uid 65534")),
        "{:?}",
        p.warnings()
    );
    drop(p);
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();

    assert!(chown_to_nobody(&dir));
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(
        e.to_string().contains("owned by uid 65534") && e.to_string().contains("directory"),
        "{e}"
    );
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    assert!(open(&dir, PASS_A, PROD).unwrap().warnings().is_empty());
}

/// MEK files are opened with O_NOFOLLOW and checked through the descriptor: a symbolic link
/// in place of a file is refused (even one pointing to a good file), and so is a named pipe
/// (without blocking on it).
#[tokio::test]
async fn a_symbolic_link_or_a_pipe_in_place_of_an_mek_file_is_refused() {
    let _forks = common::exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);
    let file = dir.join("master_key_001.v1.mek");
    let elsewhere = tmp.path().join("elsewhere.mek");
    std::fs::rename(&file, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    for mode in [PROD, DEV] {
        let e = open(&dir, PASS_A, mode).unwrap_err();
        assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
    }
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    chmod(&file, 0o600);
    let e = open(&dir, PASS_A, DEV).unwrap_err();
    assert!(
        e.to_string()
            .contains("is a named pipe, not a regular file"),
        "{e}"
    );
    std::fs::remove_file(&file).unwrap();
    std::fs::rename(&elsewhere, &file).unwrap();
    open(&dir, PASS_A, PROD).unwrap();
}

/// A symbolic link as the MEK directory is followed: the target's owner and mode are checked
/// (errors name the target) and the resolved path is shown.
#[tokio::test]
async fn a_symlinked_mek_directory_is_checked_at_its_target_and_shown_resolved() {
    let _forks = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real-mek");
    drop(with_mek(&real).await);
    let link = tmp.path().join("mek");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let p = open(&link, PASS_A, PROD).unwrap();
    let real = std::fs::canonicalize(&real).unwrap();
    assert_eq!(p.storage_path(), link);
    assert_eq!(p.resolved_storage_path(), real);
    let d = p.description();
    assert!(
        d.contains(&link.display().to_string())
            && d.contains(&format!("a symbolic link to {}", real.display())),
        "{d}"
    );
    let h = p.health().await.unwrap();
    assert!(
        h.detail.contains(&real.display().to_string()),
        "{}",
        h.detail
    );
    drop(p);

    chmod(&real, 0o755);
    let e = open(&link, PASS_A, PROD).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("chmod 700 {}", real.display())),
        "{e}"
    );
    chmod(&real, 0o700);
    if chown_to_nobody(&real) {
        let e = open(&link, PASS_A, PROD).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}

/// `passphrase_file` follows the rule of MEK files: a regular file of the running user, mode
/// 0600, checked through the opened descriptor; a link to it is followed and the target
/// checked.
#[test]
fn the_passphrase_file_must_be_a_private_regular_file_of_the_running_user() {
    let _forks = common::exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let real = secrets.join("pass.txt");
    std::fs::write(&real, format!("{PASS_A}\n")).unwrap();
    chmod(&real, 0o600);
    let link = tmp.path().join("pass-link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut cfg = config(&tmp.path().join("mek"));
    cfg.passphrase_file = Some(link.clone());
    drop(SecureFileMekProvider::open(&cfg, PROD).unwrap());

    chmod(&real, 0o644);
    let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
    assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("chmod 600 {}", real.display())),
        "{e}"
    );
    chmod(&real, 0o600);

    cfg.passphrase_file = Some(secrets.clone());
    let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
    assert!(
        e.to_string().contains("is a directory, not a regular file"),
        "{e}"
    );

    if chown_to_nobody(&real) {
        cfg.passphrase_file = Some(real.clone());
        let e = SecureFileMekProvider::open(&cfg, PROD).unwrap_err();
        assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        let p = SecureFileMekProvider::open(&cfg, DEV).unwrap();
        assert!(
            p.warnings()
                .iter()
                .any(|w| w.contains("owned by uid 65534")),
            "{:?}",
            p.warnings()
        );
    }

    // A named pipe is refused without blocking on it.
    let fifo = tmp.path().join("pass-fifo");
    mkfifo(&fifo);
    chmod(&fifo, 0o600);
    cfg.passphrase_file = Some(fifo);
    let e = SecureFileMekProvider::open(&cfg, DEV).unwrap_err();
    assert!(e.to_string().contains("is a named pipe"), "{e}");
}

const ENV_CASE: &str = "HELIOSDB_FILE_ENV_CASE";

/// The passphrase variables are removed from the process environment once read: by the
/// provider (the default and a configured variable) and by `change_passphrase_from_env`
/// (both the old and the new passphrase). Runs in child processes so that this test process
/// keeps its environment.
#[test]
fn passphrase_variables_are_removed_from_the_environment_once_read() {
    let _forks = common::exclusive();
    if let Ok(case) = std::env::var(ENV_CASE) {
        let dir = std::path::PathBuf::from(std::env::var("HELIOSDB_FILE_TEST_DIR").unwrap());
        let mut cfg = config(&dir.join("mek"));
        let vars: &[&str] = match case.as_str() {
            "open" => {
                SecureFileMekProvider::open(&cfg, PROD).unwrap();
                &["HELIOSDB_MEK_PASSPHRASE"]
            }
            "custom" => {
                cfg.passphrase_env_var = Some("CUSTOM_PASS_VAR".into());
                SecureFileMekProvider::open(&cfg, PROD).unwrap();
                &["CUSTOM_PASS_VAR"]
            }
            "change" => {
                let r = SecureFileMekProvider::change_passphrase_from_env(&cfg, PROD).unwrap();
                assert_eq!(r.rewritten, 1);
                &["HELIOSDB_MEK_PASSPHRASE", "HELIOSDB_MEK_PASSPHRASE_OLD"]
            }
            other => panic!("unknown case {other}"),
        };
        for var in vars {
            assert!(std::env::var_os(var).is_none(), "{var} is still set");
            // Nor does a child process inherit it.
            let out = Command::new("sh")
                .args(["-c", &format!("echo ${{{var}:-unset}}")])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "unset",
                "{var}"
            );
        }
        println!("CASE-OK");
        return;
    }
    for case in ["open", "custom", "change"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "passphrase_variables_are_removed_from_the_environment_once_read",
            "--nocapture",
        ])
        .env(ENV_CASE, case)
        .env("HELIOSDB_FILE_TEST_DIR", tmp.path())
        .env_remove("HELIOSDB_MEK_PASSPHRASE")
        .env_remove("CUSTOM_PASS_VAR");
        match case {
            "custom" => {
                cmd.env("CUSTOM_PASS_VAR", PASS_A);
            }
            "change" => {
                let p = common::open(&tmp.path().join("mek"), PASS_A, PROD).unwrap();
                futures_lite_block_on_generate(&p);
                drop(p);
                cmd.env("HELIOSDB_MEK_PASSPHRASE_OLD", PASS_A)
                    .env("HELIOSDB_MEK_PASSPHRASE", PASS_B);
            }
            _ => {
                cmd.env("HELIOSDB_MEK_PASSPHRASE", PASS_A);
            }
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

/// Generates `master_key_001` from a plain (non-async) test.
fn futures_lite_block_on_generate(p: &SecureFileMekProvider) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(p.generate_mek(
            &MekId::new("master_key_001").unwrap(),
            EncryptionAlgorithm::Aes256Gcm,
        ))
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Issue 9, item 6: one process at a time per MEK directory.

const LOCK_CHILD_ENV: &str = "HELIOSDB_FILE_LOCK_CHILD";

/// The child of the two-process lock test: opens the provider, says so, and holds it until
/// its stdin is closed.
#[test]
fn lock_holder_child() {
    let Ok(dir) = std::env::var(LOCK_CHILD_ENV) else {
        return;
    };
    let p = open(Path::new(&dir), PASS_A, PROD).unwrap();
    println!("LOCKED {}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(p);
}

/// While one process has the provider open, another process can neither open it nor change
/// the passphrase, and the error names the holder; in particular the holder's in-flight
/// temporary files are not removed. Once the holder exits, both work.
#[tokio::test]
async fn a_second_process_cannot_open_or_change_the_passphrase_while_a_provider_runs() {
    let _forks = common::exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    drop(with_mek(&dir).await);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_CHILD_ENV, &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait (no timer) for the child to hold the lock: it prints after opening.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains(&format!("LOCKED {pid}")));
    assert!(ready, "the child exited without opening the provider");
    // The lock is on the directory itself: no lock file exists (so read-only commands change
    // no byte); the holder is found in the kernel's lock table.
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("lock")),
        "a lock file was created"
    );

    // The running provider's in-flight temporary file.
    let in_flight = dir.join(format!(".tmp-master_key_001.v2.mek-{pid}-1"));
    std::fs::write(&in_flight, b"half a file").unwrap();
    let before = snapshot(&dir);

    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("is in use by another process")
            && text.contains(&format!("process {pid} holds its lock"))
            && text.contains(&dir.display().to_string())
            && text.contains("is the HeliosDB server running?")
            && !text.contains('\n'),
        "{text}"
    );
    let e = SecureFileMekProvider::change_passphrase_in(
        &config(&dir),
        PROD,
        &secret(PASS_A),
        &secret(PASS_B),
    )
    .unwrap_err();
    assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("process {pid} holds its lock")),
        "{e}"
    );
    assert!(
        in_flight.exists(),
        "the holder's temporary file was removed"
    );
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused change touched the directory"
    );

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    drop(lines);

    let r = SecureFileMekProvider::change_passphrase_in(
        &config(&dir),
        PROD,
        &secret(PASS_A),
        &secret(PASS_B),
    )
    .unwrap();
    assert_eq!(r.rewritten, 1);
    assert!(!in_flight.exists(), "a stale temporary file survived");
    open(&dir, PASS_B, PROD).unwrap();
}

/// The lock is per open provider, so two providers in one process conflict too (each would
/// otherwise write files the other does not know about).
#[tokio::test]
async fn a_second_provider_in_the_same_process_is_refused_until_the_first_is_dropped() {
    let _forks = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let p = with_mek(&dir).await;
    let e = open(&dir, PASS_A, PROD).unwrap_err();
    assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("process {} holds its lock", std::process::id())),
        "{e}"
    );
    drop(p);
    open(&dir, PASS_A, PROD).unwrap();
}
