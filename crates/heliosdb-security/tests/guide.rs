//! The Rust snippets of the key-management guide, as a user copies them.
//!
//! Each snippet is changed only where a struct literal omits fields added since
//! (`..Default::default()`) and where it names a system path (moved to a temporary directory).
//! The snippets that need no server run; the AWS KMS and HSM configurations are compiled, and
//! their start-up is checked to fail with a typed error instead of running.
//!
//! The guide sets the passphrase with `export HELIOSDB_MEK_PASSPHRASE=...`. A test cannot set an
//! environment variable safely in a multi-threaded process, so the tests that need it run in a
//! child process of this test binary that is started with the variable set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{
    AwsKmsConfig, EncryptionAlgorithm, HsmConfig, KeyType, KmsConfig, ProviderKind,
    SecureFileConfig, TdeConfig, TdeError, TdeSubsystem,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The passphrase the guide generates with `openssl rand -base64 32`.
const PASSPHRASE: &str = "q8V1c7mJ0k2Zb4Hn6Pt9Wx3Ry5Ua1Ls0Ee2Dg4Fi6Kh8=";
const CHILD: &str = "HELIOSDB_GUIDE_TEST_DIR";

/// Runs test `name` of this binary in a child with `HELIOSDB_MEK_PASSPHRASE` set (as the guide's
/// shell step does) and a fresh directory, and returns whether this process is that child.
fn in_child_with_passphrase(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CHILD) {
        return Some(PathBuf::from(dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("HELIOSDB_MEK_PASSPHRASE", PASSPHRASE)
        .env(CHILD, dir.path())
        .env_remove("HELIOSDB_SECURITY_MODE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run of {name} failed:\n{stdout}\n{stderr}"
    );
    None
}

fn keys(dir: &Path) -> PathBuf {
    dir.join("var/lib/heliosdb/keys")
}

fn mek(dir: &Path) -> PathBuf {
    dir.join("var/lib/heliosdb/mek")
}

/// "Migration 1: InMemory -> Secure File Provider", steps 2 to 4.
async fn migration_steps(dir: &Path) -> Result<TdeSubsystem, Box<dyn std::error::Error>> {
    // Update configuration
    let config = TdeConfig {
        enabled: true,
        algorithm: EncryptionAlgorithm::Aes256Gcm,
        key_storage_path: keys(dir),
        default_mek_id: "master_key_001".to_string(),
        cache_limit: 1000,
        kms_config: None,
        secure_file_config: Some(SecureFileConfig {
            storage_path: mek(dir),
            passphrase_env_var: Some("HELIOSDB_MEK_PASSPHRASE".to_string()),
            ..Default::default()
        }),
        security_mode: Some("production".to_string()),
        ..Default::default()
    };

    // Generate new MEK
    let tde = TdeSubsystem::new(config).await?;
    let km = tde.key_manager();

    // This will create encrypted MEK file
    km.mek_provider
        .generate_mek("master_key_001", EncryptionAlgorithm::Aes256Gcm)
        .await?;

    // (Tables exist when migrating existing data.)
    km.create_table_key("public.users").await?;
    km.create_table_key("public.orders").await?;

    // Re-encrypt all TEKs (if migrating existing data)
    // List all existing TEKs
    let keys = km.list_keys(Some(KeyType::Table)).await?;

    for key_meta in keys {
        // Re-encrypt with new MEK
        km.rotate_table_key(&key_meta.key_id).await?;
    }
    Ok(tde)
}

#[tokio::test]
async fn migration_to_the_secure_file_provider_runs() {
    let Some(dir) = in_child_with_passphrase("migration_to_the_secure_file_provider_runs") else {
        return;
    };
    let tde = migration_steps(&dir).await.unwrap();

    // Verify: the MEK file exists with mode 600 in a 700 directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&mek(&dir)), 0o700);
    let files: Vec<_> = std::fs::read_dir(mek(&dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mek"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);

    // The MEK was generated once: the guide's generate_mek call found it and created nothing.
    let km = tde.key_manager();
    assert_eq!(km.mek_info().await.unwrap().versions.len(), 1);
    // Both tables were re-keyed: version 2 is active, version 1 decrypt-only.
    let teks = km.list_keys(Some(KeyType::Table)).await.unwrap();
    assert_eq!(teks.len(), 4, "{teks:?}");
    assert!(teks.iter().any(|k| k.key_id.to_string().ends_with("@v2")));
}

/// "Development/Testing Configuration".
#[tokio::test]
async fn development_configuration_runs() {
    assert!(std::env::var_os("HELIOSDB_SECURITY_MODE").is_none());
    let tmp = tempfile::tempdir().unwrap();
    let run = async {
        // ONLY FOR DEVELOPMENT - Will be rejected in production mode
        let config = TdeConfig {
            enabled: true,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            key_storage_path: tmp.path().join("tmp/heliosdb/keys"),
            default_mek_id: "test_mek".to_string(),
            cache_limit: 100,
            kms_config: None,
            secure_file_config: None,
            security_mode: Some("development".to_string()), // Explicitly allow insecure
            ..Default::default()
        };

        // Uses InMemoryMekProvider by default
        let tde = TdeSubsystem::new(config).await?;
        Ok::<_, TdeError>(tde)
    };
    let tde = run.await.unwrap();
    assert_eq!(
        tde.key_manager().mek_provider.kind(),
        ProviderKind::InMemory
    );
    assert!(
        !tde.warnings().is_empty(),
        "development mode says it is insecure"
    );
}

/// "Production Configuration (Secure File)".
#[tokio::test]
async fn production_secure_file_configuration_runs() {
    let Some(dir) = in_child_with_passphrase("production_secure_file_configuration_runs") else {
        return;
    };
    let run = async {
        let config = TdeConfig {
            enabled: true,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            key_storage_path: keys(&dir),
            default_mek_id: "prod_mek_001".to_string(),
            cache_limit: 10000,
            kms_config: None,
            secure_file_config: Some(SecureFileConfig {
                storage_path: mek(&dir),
                passphrase_env_var: Some("HELIOSDB_MEK_PASSPHRASE".to_string()),
                ..Default::default()
            }),
            security_mode: None, // Auto-detect (will be Production in release builds)
            ..Default::default()
        };

        let tde = TdeSubsystem::new(config).await?;
        Ok::<_, TdeError>(tde)
    };
    let tde = run.await.unwrap();
    assert_eq!(
        tde.key_manager().mek_provider.kind(),
        ProviderKind::SecureFile
    );
    assert_eq!(tde.default_mek_id().as_str(), "prod_mek_001");
}

/// "MEK Rotation": the guide's function, verbatim.
async fn rotate_mek(tde: &TdeSubsystem) -> Result<(), Box<dyn std::error::Error>> {
    let km = tde.key_manager();

    // Perform rotation with dual-encryption period
    let result = km.rotate_mek_with_dual_encryption("current_mek_id").await?;

    println!("MEK Rotation Complete:");
    println!("  Old MEK: {}", result.old_mek_id);
    println!("  New MEK: {}", result.new_mek_id);
    println!("  Keys re-encrypted: {}", result.keys_reencrypted);

    if !result.failed_keys.is_empty() {
        eprintln!(
            "WARNING: {} keys failed to re-encrypt:",
            result.failed_keys.len()
        );
        for (key_id, error) in result.failed_keys {
            eprintln!("  - {}: {}", key_id, error);
        }
    }

    Ok(())
}

#[tokio::test]
async fn mek_rotation_runs() {
    let Some(dir) = in_child_with_passphrase("mek_rotation_runs") else {
        return;
    };
    let config = TdeConfig {
        key_storage_path: keys(&dir),
        default_mek_id: "current_mek_id".into(),
        secure_file_config: Some(SecureFileConfig {
            storage_path: mek(&dir),
            passphrase_env_var: Some("HELIOSDB_MEK_PASSPHRASE".into()),
            ..Default::default()
        }),
        security_mode: Some("production".into()),
        ..Default::default()
    };
    let tde = TdeSubsystem::new(config).await.unwrap();
    for t in ["a", "b", "c"] {
        tde.key_manager().create_table_key(t).await.unwrap();
    }
    rotate_mek(&tde).await.unwrap();
    let info = tde.key_manager().mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.active_version().unwrap().get(), 2);
}

/// "Migration 2: InMemory -> Cloud KMS (AWS KMS)", step 2. With the `aws-kms` feature the
/// guide's configuration is pointed at a closed local port (the test stays offline), and a start
/// that cannot reach KMS fails as a retryable outage; without it, the start-up fails with a
/// typed error that names the feature. Either way nothing is created on disk.
#[tokio::test]
async fn aws_kms_configuration_compiles() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TdeConfig {
        enabled: true,
        algorithm: EncryptionAlgorithm::Aes256Gcm,
        key_storage_path: tmp.path().join("var/lib/heliosdb/keys"),
        default_mek_id: "master_key_001".to_string(),
        cache_limit: 1000,
        kms_config: Some(KmsConfig::Aws(AwsKmsConfig {
            region: "us-east-1".to_string(),
            key_id: "arn:aws:kms:us-east-1:123456789:key/abc-def-123".to_string(),
            endpoint: None,
            ..Default::default()
        })),
        security_mode: Some("production".to_string()),
        ..Default::default()
    };
    let mut config = config;
    if cfg!(feature = "aws-kms") {
        // Production mode refuses http://, so the closed port is given as https://.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        if let Some(KmsConfig::Aws(a)) = config.kms_config.as_mut() {
            a.endpoint = Some(format!("https://127.0.0.1:{port}"));
            a.max_attempts = Some(1);
        }
        config.provider_startup_wait_secs = 0;
    }
    let e = TdeSubsystem::new(config).await.unwrap_err();
    if !cfg!(feature = "aws-kms") {
        assert!(matches!(e, TdeError::Unsupported { .. }), "{e}");
    } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
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
    } else {
        // No credentials in this environment: the SDK stops before connecting.
        assert!(!matches!(e, TdeError::Unsupported { .. }), "{e:?}");
    }
    assert!(
        !tmp.path().join("var").exists(),
        "a failed start created files"
    );
}

/// "Production Configuration (AWS KMS)": compiled only (it reads the process environment).
#[allow(dead_code)]
async fn production_aws_kms_configuration() -> Result<(), TdeError> {
    let config = TdeConfig {
        enabled: true,
        algorithm: EncryptionAlgorithm::Aes256Gcm,
        key_storage_path: PathBuf::from("/var/lib/heliosdb/keys"),
        default_mek_id: "prod_mek_001".to_string(),
        cache_limit: 10000,
        kms_config: Some(KmsConfig::Aws(AwsKmsConfig {
            region: std::env::var("AWS_REGION").unwrap_or("us-east-1".to_string()),
            key_id: std::env::var("HELIOSDB_KMS_KEY_ID").expect("HELIOSDB_KMS_KEY_ID must be set"),
            endpoint: None,
            ..Default::default()
        })),
        security_mode: Some("production".to_string()),
        ..Default::default()
    };

    let _tde = TdeSubsystem::new(config).await?;
    Ok(())
}

/// "Migration 3: InMemory -> HSM (PKCS#11)", steps 2 and 4: compiled only (it needs a token;
/// the HSM tests run the same start-up against SoftHSM2).
#[allow(dead_code)]
async fn hsm_configuration() -> Result<(), TdeError> {
    let config = TdeConfig {
        enabled: true,
        algorithm: EncryptionAlgorithm::Aes256Gcm,
        key_storage_path: PathBuf::from("/var/lib/heliosdb/keys"),
        default_mek_id: "master_key_001".to_string(),
        cache_limit: 1000,
        kms_config: None,
        hsm_config: Some(HsmConfig {
            pkcs11_library_path: "/usr/lib/softhsm/libsofthsm2.so".to_string(),
            slot_id: 0,
            pin: "654321".to_string(), // In production, use env var
            token_label: Some("heliosdb".to_string()),
            timeout_secs: 30,
            enable_logging: true,
            ..Default::default()
        }),
        security_mode: Some("production".to_string()),
        ..Default::default()
    };

    let _tde = TdeSubsystem::new(config).await?;
    // MEK is generated directly in HSM, never exposed to application
    Ok(())
}
