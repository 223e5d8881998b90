//! TdeSubsystem end to end on the embedded default: secure file provider + redb store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::file_config;
use heliosdb_security::tde::{
    AwsKmsConfig, CheckStatus, HsmConfig, KmsConfig, ProviderKind, SecureFileConfig, TdeConfig,
    TdeError, TdeSubsystem, sealed_tek_version, security_checklist,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn no_mode_override() {
    assert!(
        std::env::var_os("HELIOSDB_SECURITY_MODE").is_none(),
        "these tests set the security mode through the configuration; unset \
         HELIOSDB_SECURITY_MODE to run them"
    );
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn production_refuses_in_memory_before_touching_the_disk() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let config = TdeConfig {
        key_storage_path: dir.path().join("keys"),
        security_mode: Some("production".into()),
        ..Default::default()
    };
    let e = TdeSubsystem::new(config).await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "Production mode requires a secure MEK provider. Current provider: In-Memory \
             (INSECURE - testing only) is NOT suitable for production."
        ),
        "{e}"
    );
    assert!(
        !dir.path().join("keys").exists(),
        "a refused start created files"
    );
}

#[tokio::test]
async fn development_falls_back_to_in_memory_and_says_so() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(TdeConfig {
        key_storage_path: dir.path().join("keys"),
        default_mek_id: "test_mek".into(),
        security_mode: Some("development".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        tde.key_manager().mek_provider.kind(),
        ProviderKind::InMemory
    );
    assert!(
        tde.warnings().iter().any(|w| w.contains("INSECURE")),
        "{:?}",
        tde.warnings()
    );
    let checklist = security_checklist(&tde).await;
    assert_eq!(checklist[0].status, CheckStatus::Fail);
    assert_eq!(checklist[1].status, CheckStatus::Fail);
}

#[tokio::test]
async fn secure_file_in_production_end_to_end_and_across_restarts() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "production");
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    assert!(tde.warnings().is_empty(), "{:?}", tde.warnings());
    let km = tde.key_manager();
    assert_eq!(km.mek_info().await.unwrap().versions.len(), 1);
    km.create_table_key("public.users").await.unwrap();
    let sealer = tde.page_sealer("public.users").await.unwrap();
    let sealed = sealer.seal(b"public.users/1", b"alice").await.unwrap();
    km.rotate_table(&"public.users".parse().unwrap())
        .await
        .unwrap();
    assert!(std::fs::metadata(dir.path().join("mek/master_key_001.v1.mek")).is_ok());
    drop(tde);

    let tde = TdeSubsystem::new(config).await.unwrap();
    let v = sealed_tek_version(&sealed).unwrap();
    let old = tde.page_opener("public.users", v).await.unwrap();
    assert_eq!(old.open(b"public.users/1", &sealed).unwrap(), b"alice");
    let current = tde.page_sealer("public.users").await.unwrap();
    let sealed2 = current.seal(b"public.users/2", b"bob").await.unwrap();
    assert_eq!(sealed_tek_version(&sealed2).unwrap().get(), 2);

    let checklist = security_checklist(&tde).await;
    let by_item = |needle: &str| {
        checklist
            .iter()
            .find(|c| c.item.contains(needle))
            .unwrap_or_else(|| panic!("no item {needle}"))
            .clone()
    };
    assert_eq!(by_item("InMemoryMekProvider").status, CheckStatus::Pass);
    assert_eq!(by_item("Production MEK provider").status, CheckStatus::Pass);
    assert_eq!(by_item("passphrase stored").status, CheckStatus::Pass);
    assert_eq!(by_item("File permissions").status, CheckStatus::Pass);
    assert_eq!(by_item("rotation schedule").status, CheckStatus::Pass);
    assert_eq!(by_item("Audit logging").status, CheckStatus::Fail);
    // No backup_dir is configured: the backup item fails and says what to set.
    let backup = by_item("backup");
    assert_eq!(backup.status, CheckStatus::Fail);
    assert!(backup.reason.contains("backup_dir"), "{}", backup.reason);
    assert_eq!(checklist.len(), 10, "every item of the guide's checklist");
}

#[tokio::test]
async fn checklist_flags_loose_permissions_in_development() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "development");
    drop(TdeSubsystem::new(config.clone()).await.unwrap());
    let mek_file = dir.path().join("mek/master_key_001.v1.mek");
    std::fs::set_permissions(&mek_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    assert!(
        tde.warnings().iter().any(|w| w.contains("chmod 600")),
        "{:?}",
        tde.warnings()
    );
    let checklist = security_checklist(&tde).await;
    let perm = checklist
        .iter()
        .find(|c| c.item.contains("File permissions"))
        .unwrap();
    assert_eq!(perm.status, CheckStatus::Fail);
    assert!(perm.reason.contains("chmod 600"), "{}", perm.reason);
    drop(tde);
    // The same files are refused outright in production.
    let mut prod = config;
    prod.security_mode = Some("production".into());
    let e = TdeSubsystem::new(prod).await.unwrap_err();
    assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
}

#[tokio::test]
async fn backends_missing_from_the_build_name_their_feature() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let kms = TdeConfig {
        key_storage_path: dir.path().join("k"),
        kms_config: Some(KmsConfig::Aws(AwsKmsConfig {
            region: "us-east-1".into(),
            key_id: "alias/heliosdb".into(),
            endpoint: None,
            ..Default::default()
        })),
        ..Default::default()
    };
    if cfg!(feature = "aws-kms") {
        // The backend is built in: offline, it is pointed at a closed local port instead, and
        // a start that cannot reach KMS is a retryable outage that creates nothing.
        let mut kms = kms;
        if let Some(KmsConfig::Aws(a)) = kms.kms_config.as_mut() {
            a.endpoint = Some(format!("http://127.0.0.1:{}", closed_port()));
            a.max_attempts = Some(1);
        }
        kms.provider_startup_wait_secs = 0;
        let e = TdeSubsystem::new(kms).await.unwrap_err();
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            assert!(
                matches!(
                    e,
                    TdeError::ProviderUnavailable {
                        retryable: true,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("http://127.0.0.1:"), "{e}");
        } else {
            // No credentials in this environment: the SDK stops before connecting.
            assert!(!matches!(e, TdeError::Unsupported { .. }), "{e:?}");
        }
        assert!(
            !dir.path().join("k").exists(),
            "a failed start created files"
        );
    } else {
        let e = TdeSubsystem::new(kms).await.unwrap_err().to_string();
        assert!(e.contains("`aws-kms`"), "{e}");
    }
    let hsm = TdeConfig {
        key_storage_path: dir.path().join("k"),
        hsm_config: Some(HsmConfig {
            pkcs11_library_path: "/nonexistent/libpkcs11.so".into(),
            slot_id: 0,
            token_label: Some("heliosdb".into()),
            timeout_secs: 30,
            enable_logging: true,
            pin: "1234".into(),
            pin_file: None,
            session_pool_size: None,
            state_refresh_secs: 10,
        }),
        ..Default::default()
    };
    let e = TdeSubsystem::new(hsm).await.unwrap_err().to_string();
    if cfg!(feature = "pkcs11-hsm") {
        // The backend is built in: it reports the missing module instead.
        assert!(e.contains("does not exist"), "{e}");
    } else {
        assert!(e.contains("`pkcs11-hsm`"), "{e}");
    }
}

#[tokio::test]
async fn invalid_and_disabled_configurations_are_refused() {
    let e = TdeSubsystem::new(TdeConfig {
        enabled: false,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("enabled"), "{e}");
    let e = TdeSubsystem::new(TdeConfig {
        cache_limit: 0,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cache_limit"), "{e}");
}

#[tokio::test]
async fn a_missing_passphrase_variable_gives_the_guides_error() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let mut sf = SecureFileConfig::new(dir.path().join("mek"));
    sf.passphrase_env_var = Some("HELIOSDB_TEST_NO_SUCH_PASSPHRASE_VAR".into());
    let e = TdeSubsystem::new(TdeConfig {
        key_storage_path: dir.path().join("keys"),
        secure_file_config: Some(sf),
        security_mode: Some("production".into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string().starts_with(
            "MEK provider error: Passphrase environment variable \
             HELIOSDB_TEST_NO_SUCH_PASSPHRASE_VAR not found"
        ),
        "{e}"
    );
    assert!(!dir.path().join("keys").exists());
}

#[tokio::test]
async fn the_audit_log_records_every_key_operation_and_verifies() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let mut config = file_config(dir.path(), "production");
    let log = dir.path().join("audit").join("audit.log");
    config.audit_log_path = Some(log.clone());
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    tde.key_manager().create_table_key("t").await.unwrap();
    tde.key_manager()
        .rotate_table(&"t".parse().unwrap())
        .await
        .unwrap();
    let checklist = security_checklist(&tde).await;
    let audit = checklist.iter().find(|c| c.item.contains("Audit")).unwrap();
    assert_eq!(audit.status, CheckStatus::Pass, "{}", audit.reason);
    drop(tde);
    let actions = |log: &std::path::Path| -> Vec<String> {
        heliosdb_security::tde::audit_tail(log, usize::MAX, &Default::default())
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.action, r.key.unwrap_or_default()))
            .collect()
    };
    assert_eq!(
        actions(&log),
        [
            "mek.generated mek:master_key_001@v1",
            "tek.created tek:_heliosdb.audit@v1",
            "security.validated ",
            "tek.created tek:t@v1",
            "tek.rotated tek:t@v2",
            "tek.state_changed tek:t@v1",
        ]
    );
    let v = heliosdb_security::tde::verify_audit_log(&log).unwrap();
    assert_eq!(v.lines, 6);
    // A restart extends the same chain: its start, the audit key read back (a cache miss) and
    // the new key.
    let tde = TdeSubsystem::new(config).await.unwrap();
    tde.key_manager().create_table_key("u").await.unwrap();
    let after = actions(&log);
    assert_eq!(
        after[6..],
        [
            "tek.unwrapped tek:_heliosdb.audit@v1",
            "security.validated ",
            "tek.created tek:u@v1",
        ]
    );
    assert_eq!(
        heliosdb_security::tde::verify_audit_log(&log)
            .unwrap()
            .lines,
        9
    );
}

#[tokio::test]
async fn an_interrupted_rotation_is_reported_at_start() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "production");
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let km = tde.key_manager();
    km.create_table_keys(&["a", "b"]).await.unwrap();
    km.rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    drop(tde);
    // Put the journal back into the re-wrapping phase, as a crash mid-pass would leave it.
    {
        use heliosdb_tde_core::{KeyStore, StoreBatch};
        let store =
            heliosdb_tde_keystore::RedbKeyStore::open_dir(&config.key_storage_path).unwrap();
        let name = "mek_rotation/master_key_001";
        let mut st: serde_json::Value =
            serde_json::from_slice(&store.get_journal(name).await.unwrap().unwrap()).unwrap();
        st["phase"] = "rewrapping".into();
        store
            .apply(StoreBatch::new().put_journal(name, serde_json::to_vec(&st).unwrap()))
            .await
            .unwrap();
    }
    let tde = TdeSubsystem::new(config).await.unwrap();
    assert!(
        tde.warnings()
            .iter()
            .any(|w| w.contains("interrupted") && w.contains("mek rotate")),
        "{:?}",
        tde.warnings()
    );
}

/// `km.mek_provider` is the manager's handle: a direct `generate_mek` is counted in the
/// statistics and recorded in the audit log, and generating an existing MEK creates nothing.
#[tokio::test]
async fn direct_provider_calls_are_counted_and_audited() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit").join("tde-audit.log");
    let mut config = file_config(dir.path(), "production");
    config.audit_log_path = Some(log.clone());
    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    let calls = |s: &heliosdb_security::tde::KeyStats| s.provider.calls;
    let before = calls(&km.key_stats().await.unwrap());
    let records = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("mek.generated") && l.contains(needle))
            .count()
    };

    let v = km
        .mek_provider
        .generate_mek(
            "archive_mek",
            heliosdb_security::tde::EncryptionAlgorithm::Aes256Gcm,
        )
        .await
        .unwrap();
    assert_eq!(v.mek.to_string(), "archive_mek@v1");
    assert_eq!(records("archive_mek"), 1, "the generation is audited");
    let after = calls(&km.key_stats().await.unwrap());
    assert!(after > before, "the call is counted ({before} -> {after})");

    // The same id again: the existing version comes back, nothing is generated or audited.
    let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
    let mek_files = files(&dir.path().join("mek"));
    let again = km
        .mek_provider
        .generate_mek(
            "archive_mek",
            heliosdb_security::tde::EncryptionAlgorithm::Aes256Gcm,
        )
        .await
        .unwrap();
    assert_eq!(again.mek, v.mek);
    assert_eq!(records("archive_mek"), 1);
    assert_eq!(files(&dir.path().join("mek")), mek_files);

    // An invalid id is refused at this edge with the id error.
    let e = km
        .mek_provider
        .generate_mek(
            "not valid!",
            heliosdb_security::tde::EncryptionAlgorithm::Aes256Gcm,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("MEK id"), "{e}");
}
