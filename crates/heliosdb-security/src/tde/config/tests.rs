//! Tests of the config module.
use super::*;
use crate::tde::MigrationSourceConfig;
use std::collections::HashMap;

#[test]
fn toml_round_trip_with_the_guides_fields() {
    let text = r#"
        enabled = true
        algorithm = "Aes256Gcm"
        key_storage_path = "/var/lib/heliosdb/keys"
        default_mek_id = "prod_mek_001"
        cache_limit = 10000
        security_mode = "production"
        backup_dir = "/mnt/backup/heliosdb-keys"
        backup_max_age_days = 2
        mek_rotation_days = 90

        [secure_file_config]
        storage_path = "/var/lib/heliosdb/mek"
        passphrase_env_var = "HELIOSDB_MEK_PASSPHRASE"
    "#;
    let c = TdeConfig::from_toml_str(text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.default_mek_id, "prod_mek_001");
    assert_eq!(c.cache_limit, 10000);
    assert_eq!(
        c.backup_dir,
        Some(PathBuf::from("/mnt/backup/heliosdb-keys"))
    );
    assert_eq!(c.backup_max_age_days, 2);
    assert_eq!(c.mek_rotation_days, 90);
    let f = c.secure_file_config.as_ref().unwrap();
    assert_eq!(f.storage_path, PathBuf::from("/var/lib/heliosdb/mek"));
    let back = TdeConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn kms_and_hsm_sections_parse() {
    let c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"aws\"\nregion = \"us-east-1\"\nkey_id = \"alias/x\"\n",
    )
    .unwrap();
    assert!(matches!(c.kms_config, Some(KmsConfig::Aws(_))));
    let c = TdeConfig::from_toml_str(
        "[hsm_config]\npkcs11_library_path = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
         token_label = \"heliosdb\"\n",
    )
    .unwrap();
    assert_eq!(c.hsm_config.unwrap().timeout_secs, 30);
}

#[test]
fn errors_name_the_field() {
    let e = TdeConfig::from_toml_str("cache_limt = 5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache_limt"), "{e}");
    let e = TdeConfig::from_toml_str("cache_limit = \"lots\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache_limit"), "{e}");
    let e = TdeConfig::from_toml_str("algorithm = \"des\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("algorithm") || e.contains("des"), "{e}");
    // A rotation schedule of zero days is refused where every configuration is checked.
    let zero = TdeConfig {
        mek_rotation_days: 0,
        ..Default::default()
    };
    let e = zero.checked().unwrap_err().to_string();
    assert!(e.contains("mek_rotation_days"), "{e}");
    for (c, field) in [
        (
            TdeConfig {
                cache_limit: 0,
                ..Default::default()
            },
            "cache_limit",
        ),
        (
            TdeConfig {
                default_mek_id: "a b".into(),
                ..Default::default()
            },
            "default_mek_id",
        ),
        (
            TdeConfig {
                key_storage_path: "".into(),
                ..Default::default()
            },
            "key_storage_path",
        ),
        (
            TdeConfig {
                security_mode: Some("prod".into()),
                ..Default::default()
            },
            "security_mode",
        ),
        (
            TdeConfig {
                secure_file_config: Some(SecureFileConfig::new("")),
                ..Default::default()
            },
            "secure_file_config.storage_path",
        ),
    ] {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let two = TdeConfig {
        secure_file_config: Some(SecureFileConfig::new("/x")),
        hsm_config: Some(HsmConfig {
            pkcs11_library_path: "/lib.so".into(),
            slot_id: 0,
            token_label: None,
            timeout_secs: 30,
            enable_logging: false,
            pin: String::new(),
            pin_file: None,
            session_pool_size: None,
            state_refresh_secs: 10,
        }),
        ..Default::default()
    };
    assert!(
        two.validate()
            .unwrap_err()
            .to_string()
            .contains("exactly one")
    );
}

/// Issue 9, item 21: a TOML error is one line naming the file, line, column and the field
/// as the parser knows it (never a stray `"`, `=` or `-1`), then the parser's detail.
#[test]
fn toml_errors_are_one_line_with_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tde.toml");
    let cases: [(&str, &str, &str, &str); 6] = [
        // A stray quote: the string never ends.
        (
            "cache_limit = 5\nkey_storage_path = \"/var/lib/keys\n",
            "2:34",
            "key_storage_path",
            "invalid basic string",
        ),
        // A stray quote after a value.
        (
            "cache_limit = 5\"\n",
            "1:15",
            "cache_limit",
            "missing opening quote",
        ),
        // A missing `=`: the parser read no key-value pair, so no field is named.
        (
            "enabled = true\ncache_limit 5\n",
            "2:13",
            "",
            "key with no value, expected `=`",
        ),
        // A value out of range.
        (
            "enabled = true\ncache_limit = -1\n",
            "2:15",
            "cache_limit",
            "invalid value: integer `-1`, expected usize",
        ),
        // An unknown field in a section.
        (
            "[secure_file_config]\nstorage_pat = \"/x\"\n",
            "2:1",
            "secure_file_config.storage_pat",
            "unknown field `storage_pat`",
        ),
        // A wrong type in a section.
        (
            "[hsm_config]\npkcs11_library_path = \"/l.so\"\ntimeout_secs = \"soon\"\n",
            "3:16",
            "hsm_config.timeout_secs",
            "invalid type",
        ),
    ];
    // (document, line:column, field as the parser knows it or "", the parser's detail)
    for (text, at, field, detail) in cases {
        let field_part = if field.is_empty() {
            String::new()
        } else {
            format!("{field}: ")
        };
        std::fs::write(&file, text).unwrap();
        let e = TdeConfig::from_toml_file(&file).unwrap_err();
        let TdeError::InvalidConfig { field: got, .. } = &e else {
            panic!("{text:?}: {e:?}");
        };
        let message = e.to_string();
        assert!(
            !message.contains('\n'),
            "{text:?}: more than one line: {message}"
        );
        let prefix = format!(
            "invalid configuration: {}:{at}: {field_part}{detail}",
            file.display()
        );
        assert!(
            message.starts_with(&prefix),
            "{text:?}: {message}\nexpected it to start with {prefix}"
        );
        assert_eq!(
            got,
            format!("{}:{at}: {field_part}", file.display()).trim_end_matches([':', ' '])
        );
        // Without a file, the location is the line and column.
        let e = TdeConfig::from_toml_str(text).unwrap_err().to_string();
        let (line, column) = at.split_once(':').unwrap();
        assert!(
            e.starts_with(&format!(
                "invalid configuration: line {line}, column {column}: {field_part}{detail}"
            )),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn line_columns_count_characters() {
    assert_eq!(line_column("", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 3), (2, 1));
    assert_eq!(line_column("é = 1", 3), (1, 3));
    // Past the end, and inside a character: no panic.
    assert_eq!(line_column("ab", 5), (1, 6));
    assert_eq!(line_column("é", 1), (1, 1));
}

#[test]
fn environment_overrides() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("HELIOSDB_TDE_CACHE_LIMIT", "42"),
        ("HELIOSDB_TDE_KEY_STORAGE_PATH", "/tmp/k"),
        ("HELIOSDB_TDE_DEFAULT_MEK_ID", "env_mek"),
        ("HELIOSDB_TDE_MEK_STORAGE_PATH", "/tmp/m"),
        ("HELIOSDB_TDE_PASSPHRASE_FILE", "/tmp/p"),
        ("HELIOSDB_TDE_ENABLED", "false"),
        ("HELIOSDB_TDE_PROVIDER_STARTUP_WAIT_SECS", "5"),
        ("HELIOSDB_TDE_BACKUP_DIR", "/tmp/b"),
        ("HELIOSDB_TDE_BACKUP_MAX_AGE_DAYS", "3"),
        ("HELIOSDB_TDE_MEK_ROTATION_DAYS", "90"),
    ]);
    let d = TdeConfig::default();
    assert_eq!(d.provider_startup_wait_secs, 30);
    assert_eq!(d.backup_dir, None);
    assert_eq!(d.backup_max_age_days, 7);
    assert_eq!(d.mek_rotation_days, 365);
    let mut c = TdeConfig::default();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert_eq!(c.cache_limit, 42);
    assert_eq!(c.key_storage_path, PathBuf::from("/tmp/k"));
    assert_eq!(c.default_mek_id, "env_mek");
    assert!(!c.enabled);
    assert_eq!(c.provider_startup_wait_secs, 5);
    assert_eq!(c.backup_dir, Some(PathBuf::from("/tmp/b")));
    assert_eq!(c.backup_max_age_days, 3);
    assert_eq!(c.mek_rotation_days, 90);
    let f = c.secure_file_config.unwrap();
    assert_eq!(f.storage_path, PathBuf::from("/tmp/m"));
    assert_eq!(f.passphrase_file, Some(PathBuf::from("/tmp/p")));

    let mut c = TdeConfig::default();
    let e = c
        .apply_env_with(|k| (k == "HELIOSDB_TDE_CACHE_LIMIT").then(|| "many".to_string()))
        .unwrap_err();
    assert!(e.to_string().contains("HELIOSDB_TDE_CACHE_LIMIT"), "{e}");
    for var in [
        "HELIOSDB_TDE_BACKUP_MAX_AGE_DAYS",
        "HELIOSDB_TDE_MEK_ROTATION_DAYS",
    ] {
        let e = TdeConfig::default()
            .apply_env_with(|k| (k == var).then(|| "weekly".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains(var), "{e}");
        assert!(e.to_string().contains("whole number of days"), "{e}");
    }

    let mut c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"aws\"\nregion = \"us-east-1\"\nkey_id = \"k\"\n",
    )
    .unwrap();
    c.apply_env_with(|k| match k {
        "HELIOSDB_KMS_KEY_ID" => Some("arn:aws:kms:eu-west-1:1:key/x".into()),
        "AWS_REGION" => Some("eu-west-1".into()),
        _ => None,
    })
    .unwrap();
    let Some(KmsConfig::Aws(aws)) = c.kms_config else {
        panic!()
    };
    assert_eq!(aws.region, "eu-west-1");
    assert_eq!(aws.key_id, "arn:aws:kms:eu-west-1:1:key/x");
}

#[test]
fn schedule_fields_are_checked_and_named() {
    TdeConfig::default().check_schedules().unwrap();
    let e = TdeConfig {
        mek_rotation_days: 0,
        ..Default::default()
    }
    .check_schedules()
    .unwrap_err();
    assert!(matches!(&e, TdeError::InvalidConfig { field, .. } if field == "mek_rotation_days"));
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = TdeConfig {
        backup_dir: Some(PathBuf::new()),
        ..Default::default()
    }
    .check_schedules()
    .unwrap_err();
    assert!(e.to_string().contains("backup_dir"), "{e}");
    // The TOML names of the new fields are fixed.
    let c = TdeConfig::from_toml_str(
        "mek_rotation_days = 0
",
    )
    .unwrap();
    assert!(c.check_schedules().is_err());
    let e = TdeConfig::from_toml_str("mek_rotation_days = \"yearly\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("mek_rotation_days"), "{e}");
}

#[test]
fn vault_fields_are_checked_and_named() {
    let vault = |edit: &dyn Fn(&mut heliosdb_tde_core::VaultTransitConfig)| {
        let mut v = heliosdb_tde_core::VaultTransitConfig::new("https://vault.example.com:8200");
        edit(&mut v);
        TdeConfig {
            kms_config: Some(KmsConfig::Vault(v)),
            ..Default::default()
        }
    };
    vault(&|_| {}).validate().unwrap();
    vault(&|v| v.address = "http://127.0.0.1:8200".into())
        .validate()
        .unwrap();
    type Edit = fn(&mut heliosdb_tde_core::VaultTransitConfig);
    let cases: [(Edit, &str); 9] = [
        (|v| v.address = String::new(), "kms_config.address"),
        (
            |v| v.address = "vault.example.com".into(),
            "kms_config.address",
        ),
        (|v| v.address = "https://".into(), "kms_config.address"),
        (|v| v.timeout_secs = 0, "kms_config.timeout_secs"),
        (|v| v.max_retries = 1000, "kms_config.max_retries"),
        (|v| v.mount = Some("/transit".into()), "kms_config.mount"),
        (|v| v.state_path = String::new(), "kms_config.state_path"),
        (
            |v| v.key_prefix = Some("a/b".into()),
            "kms_config.key_prefix",
        ),
        (
            |v| v.token_file = Some(String::new()),
            "kms_config.token_file",
        ),
    ];
    for (edit, field) in cases {
        let e = vault(&edit).validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn vault_environment_overrides() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("VAULT_ADDR", "https://other:8200"),
        ("VAULT_NAMESPACE", "team-a"),
        ("VAULT_CACERT", "/etc/ssl/vault-ca.pem"),
    ]);
    let mut c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"vault\"\naddress = \"https://vault:8200\"\n",
    )
    .unwrap();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    let Some(KmsConfig::Vault(v)) = &c.kms_config else {
        panic!()
    };
    assert_eq!(v.address, "https://other:8200");
    assert_eq!(v.namespace.as_deref(), Some("team-a"));
    assert_eq!(v.ca_cert.as_deref(), Some("/etc/ssl/vault-ca.pem"));
    // Other providers ignore the Vault variables.
    let mut c = TdeConfig::default();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert_eq!(c.kms_config, None);
}

#[test]
fn azure_environment_overrides() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("AZURE_KEYVAULT_URL", "https://other.vault.azure.net"),
        ("AZURE_TENANT_ID", "tenant-a"),
        ("AZURE_CLIENT_ID", "client-a"),
    ]);
    let mut c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"azure\"\nvault_url = \"https://v.vault.azure.net\"\n\
         key_name = \"mek\"\ncredential = \"client_secret\"\n",
    )
    .unwrap();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    let Some(KmsConfig::Azure(a)) = &c.kms_config else {
        panic!("not an Azure configuration")
    };
    assert_eq!(a.vault_url, "https://other.vault.azure.net");
    assert_eq!(a.tenant_id.as_deref(), Some("tenant-a"));
    assert_eq!(a.client_id.as_deref(), Some("client-a"));
    assert_eq!(a.key_name, "mek");
    // A configured tenant or client id wins over the variables.
    let mut c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"azure\"\nvault_url = \"https://v.vault.azure.net\"\n\
         key_name = \"mek\"\ntenant_id = \"configured-t\"\nclient_id = \"configured-c\"\n",
    )
    .unwrap();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    let Some(KmsConfig::Azure(a)) = &c.kms_config else {
        panic!("not an Azure configuration")
    };
    assert_eq!(a.tenant_id.as_deref(), Some("configured-t"));
    assert_eq!(a.client_id.as_deref(), Some("configured-c"));
    assert_eq!(a.vault_url, "https://other.vault.azure.net");
    // Other providers ignore the Azure variables.
    let mut c = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"vault\"\naddress = \"https://vault:8200\"\n",
    )
    .unwrap();
    let before = c.kms_config.clone();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert_eq!(c.kms_config, before);
}

#[test]
fn audit_fields_have_defaults_environment_variables_and_checks() {
    let d = TdeConfig::default();
    assert_eq!(d.audit_max_file_bytes, 64 * 1024 * 1024);
    assert_eq!(d.audit_fsync, "batched");
    let env: HashMap<&str, &str> = HashMap::from([
        ("HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES", "1048576"),
        ("HELIOSDB_TDE_AUDIT_FSYNC", "always"),
    ]);
    let mut c = TdeConfig::default();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert_eq!(c.audit_max_file_bytes, 1 << 20);
    assert_eq!(c.audit_fsync, "always");
    c.check_schedules().unwrap();
    let e = TdeConfig::default()
        .apply_env_with(|k| (k == "HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES").then(|| "64M".into()))
        .unwrap_err();
    assert!(
        e.to_string().contains("HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES"),
        "{e}"
    );
    for (toml, field) in [
        ("audit_max_file_bytes = 100\n", "audit_max_file_bytes"),
        ("audit_fsync = \"sometimes\"\n", "audit_fsync"),
    ] {
        let e = TdeConfig::from_toml_str(toml)
            .unwrap()
            .check_schedules()
            .unwrap_err();
        assert!(
            matches!(&e, TdeError::InvalidConfig { field: f, .. } if f == field),
            "{e}"
        );
    }
    let c = TdeConfig::from_toml_str("audit_fsync = \"always\"\naudit_max_file_bytes = 8192\n")
        .unwrap();
    c.check_schedules().unwrap();
}

#[test]
fn a_migration_source_parses_from_toml_and_round_trips() {
    let text = r#"
        default_mek_id = "master_key_002"
        [secure_file_config]
        storage_path = "/var/lib/heliosdb/mek-new"

        [migration_source]
        default_mek_id = "master_key_001"
        [migration_source.secure_file_config]
        storage_path = "/var/lib/heliosdb/mek"
        passphrase_env_var = "OLD_PASSPHRASE"
    "#;
    let c = TdeConfig::from_toml_str(text).unwrap();
    c.validate().unwrap();
    let src = c.migration_source.as_ref().unwrap();
    assert_eq!(src.default_mek_id, "master_key_001");
    assert_eq!(
        src.secure_file_config.as_ref().unwrap().storage_path,
        PathBuf::from("/var/lib/heliosdb/mek")
    );
    assert!(src.kms_config.is_none() && src.hsm_config.is_none());
    let back = TdeConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    // A KMS source, the default MEK id left out (the main configuration's default).
    let c = TdeConfig::from_toml_str(
        "default_mek_id = \"m2\"\n[secure_file_config]\nstorage_path = \"/m\"\n\
         [migration_source.kms_config]\nprovider = \"vault\"\naddress = \"https://v:8200\"\n",
    )
    .unwrap();
    let src = c.migration_source.as_ref().unwrap();
    assert_eq!(src.default_mek_id, "master_key_001");
    assert!(matches!(src.kms_config, Some(KmsConfig::Vault(_))));
    // Unknown fields inside the section are errors naming the path.
    let e = TdeConfig::from_toml_str("[migration_source]\ndefault_mek = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("migration_source"), "{e}");
}

#[test]
fn a_migration_source_is_built_in_rust() {
    let src = MigrationSourceConfig::new("old_mek")
        .with_hsm(HsmConfig::default())
        .with_secure_file(SecureFileConfig::new("/old"));
    assert!(src.hsm_config.is_none(), "one section at a time");
    let c = TdeConfig {
        default_mek_id: "new_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/new")),
        migration_source: Some(src.clone()),
        ..Default::default()
    };
    c.validate().unwrap();
    let from = MigrationSourceConfig::from_config(&TdeConfig {
        default_mek_id: "old_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/old")),
        ..Default::default()
    });
    assert_eq!(from, src);
    assert!(TdeConfig::default().migration_source.is_none());
}

#[test]
fn a_migration_source_is_checked_like_the_main_sections() {
    let base = |src: MigrationSourceConfig| TdeConfig {
        default_mek_id: "new_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/new")),
        migration_source: Some(src),
        ..Default::default()
    };
    let err = |c: TdeConfig| c.validate().unwrap_err().to_string();
    // Two sections.
    let mut two = MigrationSourceConfig::new("old").with_secure_file(SecureFileConfig::new("/o"));
    two.hsm_config = Some(HsmConfig::default());
    let e = err(base(two));
    assert!(
        e.contains("migration_source.kms_config / migration_source.secure_file_config"),
        "{e}"
    );
    // A bad MEK id, a bad field.
    let e = err(base(MigrationSourceConfig::new("no spaces allowed")));
    assert!(e.contains("migration_source.default_mek_id"), "{e}");
    let e = err(base(
        MigrationSourceConfig::new("old").with_secure_file(SecureFileConfig::new("")),
    ));
    assert!(
        e.contains("migration_source.secure_file_config.storage_path"),
        "{e}"
    );
    // The same provider and MEK as the target.
    let e = err(base(
        MigrationSourceConfig::new("new_mek").with_secure_file(SecureFileConfig::new("/new")),
    ));
    assert!(e.contains("same provider") && e.contains("same MEK"), "{e}");
    // Another provider with the same MEK id.
    let e = err(base(
        MigrationSourceConfig::new("new_mek").with_secure_file(SecureFileConfig::new("/old")),
    ));
    assert!(e.contains("both use the MEK id new_mek"), "{e}");
    // The same secure-file directory with another MEK: that is a rotation.
    let e = err(base(
        MigrationSourceConfig::new("old").with_secure_file(SecureFileConfig::new("/new")),
    ));
    assert!(e.contains("rotate the MEK"), "{e}");
}

#[test]
fn production_refuses_an_in_memory_source_or_target_of_a_migration() {
    let e = TdeConfig {
        default_mek_id: "new_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/new")),
        security_mode: Some("production".into()),
        migration_source: Some(MigrationSourceConfig::new("old")),
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("in-memory is allowed as a migration source only in development mode"),
        "{e}"
    );
    let e = TdeConfig {
        default_mek_id: "new_mek".into(),
        security_mode: Some("production".into()),
        migration_source: Some(
            MigrationSourceConfig::new("old").with_secure_file(SecureFileConfig::new("/old")),
        ),
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("to the in-memory provider is refused"), "{e}");
    // Development mode accepts an in-memory source.
    TdeConfig {
        default_mek_id: "new_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/new")),
        security_mode: Some("development".into()),
        migration_source: Some(MigrationSourceConfig::new("old")),
        ..Default::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn a_migration_sources_pin_never_reaches_debug_or_serialization() {
    let hsm = HsmConfig {
        pin: "migration-source-pin-4711".into(),
        ..Default::default()
    };
    let c = TdeConfig {
        default_mek_id: "new_mek".into(),
        secure_file_config: Some(SecureFileConfig::new("/new")),
        migration_source: Some(MigrationSourceConfig::new("old_mek").with_hsm(hsm)),
        ..Default::default()
    };
    let debug = format!("{c:?}");
    assert!(debug.contains("old_mek"), "{debug}");
    assert!(!debug.contains("4711"), "{debug}");
    let toml = toml::to_string(&c).unwrap();
    assert!(!toml.contains("4711"), "{toml}");
}

#[test]
fn memory_protection_from_toml_and_the_environment() {
    let d = TdeConfig::default().memory_protection;
    assert!(d.lock_keys && d.exclude_from_core_dumps);
    assert_eq!(d.disable_core_dumps, None, "by mode unless set");

    let c = TdeConfig::from_toml_str(
        "[memory_protection]\nlock_keys = false\nexclude_from_core_dumps = false\n\
         disable_core_dumps = true\n",
    )
    .unwrap();
    assert!(!c.memory_protection.lock_keys);
    assert!(!c.memory_protection.exclude_from_core_dumps);
    assert_eq!(c.memory_protection.disable_core_dumps, Some(true));

    let e = TdeConfig::from_toml_str("[memory_protection]\nlock_key = false\n").unwrap_err();
    assert!(e.to_string().contains("lock_key"), "{e}");

    let env: HashMap<&str, &str> = HashMap::from([
        ("HELIOSDB_TDE_LOCK_KEYS", "false"),
        ("HELIOSDB_TDE_DISABLE_CORE_DUMPS", "off"),
    ]);
    let mut c = TdeConfig::default();
    c.apply_env_with(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert!(!c.memory_protection.lock_keys);
    assert_eq!(c.memory_protection.disable_core_dumps, Some(false));
    let e = TdeConfig::default()
        .apply_env_with(|k| (k == "HELIOSDB_TDE_LOCK_KEYS").then(|| "maybe".to_string()))
        .unwrap_err();
    assert!(e.to_string().contains("HELIOSDB_TDE_LOCK_KEYS"), "{e}");
    assert!(e.to_string().contains("true or false"), "{e}");
}
