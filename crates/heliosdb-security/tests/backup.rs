//! Key backups through the facade with the real secure-file provider and redb store: 1,000
//! table keys over 50 tables backed up, lost and restored, every one unwrapping through a
//! cold subsystem; a backup taken in the middle of an MEK rotation (stopped by a fail point
//! after a page commit, and racing it) restored elsewhere and the rotation finished there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{
    self, KeyManager, KeyManagerConfig, RestoreOptions, SecureFileConfig, SecureFileMekProvider,
    SecurityMode, TdeConfig, TdeSubsystem,
};
use heliosdb_tde_keystore::RedbKeyStore;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

const PASS: &str = "a long and sufficiently random passphrase";

fn file_config(root: &Path, pass_file: &Path) -> TdeConfig {
    let mut sf = SecureFileConfig::new(root.join("mek"));
    sf.passphrase_file = Some(pass_file.to_path_buf());
    TdeConfig {
        key_storage_path: root.join("keys"),
        secure_file_config: Some(sf),
        security_mode: Some("production".into()),
        audit_log_path: Some(root.join("audit/audit.log")),
        ..Default::default()
    }
}

fn pass_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("secrets/pass.txt");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, format!("{PASS}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every TEK version of every table, with its bytes, as `km` unwraps them.
async fn all_keys(km: &KeyManager) -> Vec<(String, u32, [u8; 32])> {
    let mut out = Vec::new();
    for meta in km.list_keys(Some(tde::KeyType::Table)).await.unwrap() {
        let tde::KeyId::Table(id) = &meta.key_id else {
            continue;
        };
        let k = km.get_table_key(&id.table, Some(id.version)).await.unwrap();
        out.push((
            id.table.to_string(),
            id.version.get(),
            *k.bytes().expose_secret(),
        ));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_keys_over_fifty_tables_survive_losing_both_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = pass_file(d);
    let config = file_config(d, &pass);
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let km = tde.key_manager();
    let tables: Vec<String> = (0..50).map(|t| format!("app.t{t:02}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    // 950 rotations: 19 more versions of every table.
    for _ in 0..19 {
        for t in &tables {
            km.rotate_table(&t.parse().unwrap()).await.unwrap();
        }
    }
    let before = all_keys(km).await;
    assert_eq!(before.len(), 1000);
    let bundle = d.join("backup.hbk");
    let report = tde.backup(&bundle).await.unwrap();
    // The 1,000 table keys and the audit log's key (the reserved table `_heliosdb.audit`),
    // which backups carry: the manifest counts every record, and the user tables.
    assert_eq!(report.manifest.counts.teks, 1001);
    assert_eq!(report.manifest.counts.tables, 50);
    drop(tde);

    // The bundle holds no TEK and not the passphrase.
    let bytes = std::fs::read(&bundle).unwrap();
    for (_, _, k) in &before {
        assert!(!bytes.windows(32).any(|w| w == k));
    }
    assert!(!bytes.windows(PASS.len()).any(|w| w == PASS.as_bytes()));

    let check = tde::verify_bundle_with_provider(&config, &bundle)
        .await
        .unwrap();
    assert!(check.ok(), "{check:?}");
    assert_eq!(check.unwraps.total, 1001);

    std::fs::remove_dir_all(d.join("keys")).unwrap();
    std::fs::remove_dir_all(d.join("mek")).unwrap();
    let r = tde::restore(&config, &bundle, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(r.teks, 1001, "the table keys and the audit key");
    assert_eq!(r.rotated.len(), 50);
    for p in [d.join("keys"), d.join("mek")] {
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    assert_eq!(mode(&d.join("keys/tek-store.redb")), 0o600);
    for e in std::fs::read_dir(d.join("mek")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "mek") {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    // A cold subsystem unwraps every key that was backed up; each table has one new, active
    // version and the older ones only decrypt.
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let km = tde.key_manager();
    let after = all_keys(km).await;
    assert_eq!(after.len(), 1050);
    for k in &before {
        assert!(after.contains(k), "{} v{} changed or is missing", k.0, k.1);
    }
    for meta in km.list_keys(Some(tde::KeyType::Table)).await.unwrap() {
        let tde::KeyId::Table(id) = &meta.key_id else {
            continue;
        };
        let expect_active = id.version.get() == 21;
        assert_eq!(
            meta.state == tde::KeyState::Active,
            expect_active,
            "{id}: {:?}",
            meta.state
        );
    }
    let log = std::fs::read_to_string(d.join("audit/audit.log")).unwrap();
    for e in ["backup.written", "backup.verified", "backup.restored"] {
        assert!(log.contains(e), "{e} missing from the audit log");
    }
}

/// A key manager over the configuration's own directories, with small rotation pages.
fn manager(config: &TdeConfig) -> KeyManager {
    let provider = SecureFileMekProvider::open(
        config.secure_file_config.as_ref().unwrap(),
        SecurityMode::Production,
    )
    .unwrap();
    let store = RedbKeyStore::open_dir(&config.key_storage_path).unwrap();
    KeyManager::new(
        Arc::new(provider),
        Arc::new(store),
        KeyManagerConfig::new(
            tde::MekId::new(&config.default_mek_id).unwrap(),
            SecurityMode::Production,
        )
        .with_rotation(tde::RotationConfig::default().with_batch_size(20)),
    )
    .unwrap()
}

/// Restores `bundle` into fresh directories under `root` (same passphrase), finishes any
/// rotation in progress there, and checks that every TEK of `expected` unwraps to the same
/// bytes.
async fn restore_elsewhere_and_finish(
    root: &Path,
    pass: &Path,
    bundle: &Path,
    expected: &[(String, u32, [u8; 32])],
) {
    let config = file_config(root, pass);
    tde::restore(&config, bundle, RestoreOptions::new().with_no_rotate(true))
        .await
        .unwrap();
    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    if let Some(st) = km.mek_rotation_status("master_key_001").await.unwrap()
        && !matches!(
            st.phase,
            tde::RotationPhase::DualActive
                | tde::RotationPhase::Verified
                | tde::RotationPhase::OldDeactivated
        )
    {
        km.rotate_mek_with_dual_encryption("master_key_001")
            .await
            .unwrap();
    }
    let st = km
        .mek_rotation_status("master_key_001")
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            st.phase,
            tde::RotationPhase::DualActive | tde::RotationPhase::Verified
        ),
        "{:?}",
        st.phase
    );
    let after = all_keys(km).await;
    for k in expected {
        assert!(
            after.contains(k),
            "{} v{} does not unwrap to its bytes",
            k.0,
            k.1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_in_the_middle_of_an_mek_rotation_restores_and_the_rotation_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = pass_file(d);
    let config = file_config(&d.join("a"), &pass);
    let km = manager(&config);
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..200).map(|t| format!("app.t{t:03}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    let expected = all_keys(&km).await;

    // 1. Stopped by a fail point after the second page commit.
    let scenario = fail::FailScenario::setup();
    fail::cfg("rotation::after_page_commit", "1*off->return").unwrap();
    let e = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    fail::cfg("rotation::after_page_commit", "off").unwrap();
    drop(scenario);
    let st = km
        .mek_rotation_status("master_key_001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.phase, tde::RotationPhase::Rewrapping);
    let bundle = d.join("mid.hbk");
    let m = km.backup(&bundle, false).await.unwrap().manifest;
    assert!(
        m.mek_versions
            .iter()
            .any(|v| v.mek == "master_key_001@v2" && v.teks > 0)
    );
    assert!(
        m.mek_versions
            .iter()
            .any(|v| v.mek == "master_key_001@v1" && v.teks > 0)
    );
    restore_elsewhere_and_finish(&d.join("b"), &pass, &bundle, &expected).await;

    // 2. Racing: the rotation resumes while a backup is taken.
    let raced = d.join("raced.hbk");
    let (rot, bak) = tokio::join!(
        km.rotate_mek_with_dual_encryption("master_key_001"),
        km.backup(&raced, false)
    );
    rot.unwrap();
    bak.unwrap();
    restore_elsewhere_and_finish(&d.join("c"), &pass, &raced, &expected).await;
}
