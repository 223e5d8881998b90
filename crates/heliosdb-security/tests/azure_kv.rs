//! The facade over the HTTPS Key Vault test server that `cargo xtask test` provisions:
//! configuration from TOML with every Azure field, the field checks, the Security Checklist's
//! purge-protection item, start-up while the vault is cut, the wait for it to come back, and a
//! key backup of references only (key ids), verified and restored into another key store
//! directory.
//!
//! The facade cannot take a DNS resolver, so these tests use the server's shared vault by IP
//! (`https://127.0.0.1:<port>`) with `verify_challenge_resource = false` in development mode,
//! and a key name of their own.

#![cfg(feature = "azure-kv")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::backup::{Expected, backup_verify_and_restore, three_table_keys};
use heliosdb_security::tde::{
    AzureKeyVaultConfig, CheckStatus, KmsConfig, ProviderKind, TdeConfig, TdeError, TdeSubsystem,
    sealed_tek_version, security_checklist,
};
use heliosdb_tde_conformance::azure::{self, AzureTestEnv, fresh_label};
use heliosdb_tde_conformance::fault::FaultProxy;
use secrecy::ExposeSecret;
use std::path::Path;
use std::time::{Duration, Instant};

/// A development configuration for the shared vault at `vault_url` (the server, or a proxy in
/// front of it), signing in with the test client secret from a 0600 file; `extra` lines go
/// into `[kms_config]`.
fn config(
    dir: &Path,
    env: &AzureTestEnv,
    vault_url: &str,
    key: &str,
    mek: &str,
    extra: &str,
) -> TdeConfig {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("azure-secret");
    std::fs::write(&secret, env.client_secret().expose_secret()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "{mek}"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "azure"
            vault_url = "{vault_url}"
            key_name = "{key}"
            key_size = 2048
            credential = "client_secret"
            tenant_id = "{tenant}"
            client_id = "{client}"
            client_secret_file = "{secret}"
            authority_host = "{authority}"
            ca_cert = "{ca}"
            verify_challenge_resource = false
            {extra}
        "#,
        keys = dir.join("keys").display(),
        tenant = env.tenant(),
        client = env.client_id(),
        secret = secret.display(),
        authority = env.authority_url(),
        ca = env.ca_path().display(),
    );
    TdeConfig::from_toml_str(&text).unwrap()
}

fn azure_of(c: &TdeConfig) -> &AzureKeyVaultConfig {
    match &c.kms_config {
        Some(KmsConfig::Azure(a)) => a,
        other => panic!("not an Azure configuration: {other:?}"),
    }
}

/// Requests to the shared vault that name `key`.
fn requests_for(env: &AzureTestEnv, key: &str) -> Vec<(String, String, u16)> {
    env.requests("default")
        .into_iter()
        .filter(|(_, path, _)| {
            path.to_ascii_lowercase()
                .contains(&key.to_ascii_lowercase())
        })
        .collect()
}

#[tokio::test]
async fn an_azure_configuration_from_toml_protects_pages_and_reports_purge_protection() {
    let Some(env) = azure::azure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = format!("facade-{}", fresh_label());
    let config = config(
        dir.path(),
        &env,
        &env.ip_url(),
        &key,
        "facade_azure",
        r#"
            wrap_algorithm = "RSA-OAEP-256"
            hsm_protected = false
            timeout_secs = 20
            max_retries = 2
            max_retry_secs = 15
        "#,
    );
    let a = azure_of(&config);
    assert_eq!(a.vault_url, env.ip_url());
    assert_eq!(a.key_name, key);
    assert_eq!(a.wrap_algorithm.as_deref(), Some("RSA-OAEP-256"));
    assert_eq!((a.key_size, a.hsm_protected), (2048, false));
    assert_eq!(a.credential, "client_secret");
    assert_eq!(a.tenant_id.as_deref(), Some(env.tenant()));
    assert_eq!(a.client_id.as_deref(), Some(env.client_id()));
    assert_eq!(
        a.authority_host.as_deref(),
        Some(env.authority_url().as_str())
    );
    assert_eq!(a.ca_cert.as_deref(), Some(env.ca_path()));
    assert!(!a.verify_challenge_resource);
    assert_eq!(
        (a.timeout_secs, a.max_retries, a.max_retry_secs),
        (20, 2, 15)
    );
    config.validate().unwrap();

    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    assert_eq!(km.mek_provider.kind(), ProviderKind::AzureKeyVault);
    let description = km.mek_provider.description();
    assert!(description.contains(&key), "{description}");
    assert!(description.contains("RSA-OAEP-256"), "{description}");
    assert!(
        !description.contains(env.client_secret().expose_secret()),
        "the description shows the client secret"
    );
    assert!(
        tde.warnings()
            .iter()
            .any(|w| w.contains("verify_challenge_resource")),
        "{:?}",
        tde.warnings()
    );
    // The first start created the key as version 1 of the default MEK.
    let info = km.mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 1);
    let kid = info.versions[0].key_location.clone().unwrap();
    assert!(kid.contains(&format!("/keys/{key}/")), "{kid}");
    assert!(
        requests_for(&env, &key)
            .iter()
            .any(|(m, p, s)| m == "POST" && p.ends_with("/create") && *s == 200),
        "no key was created"
    );

    km.create_table_key("public.users").await.unwrap();
    let sealer = tde.page_sealer("public.users").await.unwrap();
    let sealed = sealer.seal(b"page 1", b"row data").await.unwrap();
    let version = sealed_tek_version(&sealed).unwrap();
    let opener = tde.page_opener("public.users", version).await.unwrap();
    assert_eq!(opener.open(b"page 1", &sealed).unwrap(), b"row data");
    let health = km.mek_provider.health().await.unwrap();
    assert!(health.healthy, "{}", health.detail);

    // The shared vault keeps the server's default recovery level: soft delete without purge
    // protection. The provider reports it, and the checklist's backup item fails with the fix.
    let protection = info.deletion_protection.expect("Key Vault reports it");
    assert!(!protection.protected, "{protection:?}");
    assert!(
        protection.detail.contains("--enable-purge-protection"),
        "{}",
        protection.detail
    );
    let checklist = security_checklist(&tde).await;
    let backup = checklist
        .iter()
        .find(|c| c.item == "MEK backup procedure established")
        .unwrap();
    assert_eq!(backup.status, CheckStatus::Fail, "{}", backup.reason);
    assert!(
        backup.reason.contains("--enable-purge-protection"),
        "{}",
        backup.reason
    );
}

/// Every Azure field survives writing the configuration as TOML and reading it back.
#[test]
fn an_azure_configuration_survives_a_toml_round_trip() {
    let a = AzureKeyVaultConfig {
        vault_url: "https://prod-hsm.managedhsm.azure.net".into(),
        key_name: "heliosdb-mek".into(),
        wrap_algorithm: Some("A256KW".into()),
        key_size: 4096,
        hsm_protected: true,
        credential: "workload_identity".into(),
        tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
        client_id: Some("0e2b9c1c-5a7a-4d4e-9c55-0e1a8a8f2d11".into()),
        client_secret_env_var: "HELIOSDB_AZURE_SECRET".into(),
        client_secret_file: Some("/etc/heliosdb/azure-secret".into()),
        authority_host: Some("https://login.microsoftonline.us".into()),
        ca_cert: Some("/etc/ssl/private-ca.pem".into()),
        verify_challenge_resource: true,
        timeout_secs: 30,
        max_retries: 5,
        max_retry_secs: 60,
    };
    let config = TdeConfig {
        default_mek_id: "prod_mek_001".into(),
        kms_config: Some(KmsConfig::Azure(a)),
        security_mode: Some("production".into()),
        ..Default::default()
    };
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("provider = \"azure\""), "{text}");
    assert!(text.contains("wrap_algorithm = \"A256KW\""), "{text}");
    assert_eq!(TdeConfig::from_toml_str(&text).unwrap(), config, "{text}");
}

/// The field checks through `TdeConfig::validate`: each bad value names its field.
#[test]
fn bad_azure_fields_are_refused_naming_the_field() {
    let base = || AzureKeyVaultConfig::new("https://v.vault.azure.net", "heliosdb-mek");
    type Change = Box<dyn Fn(&mut AzureKeyVaultConfig)>;
    let rows: Vec<(&str, &str, Change)> = vec![
        (
            "development",
            "kms_config.vault_url",
            Box::new(|a| a.vault_url = String::new()),
        ),
        (
            "development",
            "kms_config.vault_url",
            Box::new(|a| a.vault_url = "my vault".into()),
        ),
        (
            "production",
            "kms_config.vault_url",
            Box::new(|a| a.vault_url = "http://v.vault.azure.net".into()),
        ),
        (
            "development",
            "kms_config.key_name",
            Box::new(|a| a.key_name = "a_b".into()),
        ),
        (
            "development",
            "kms_config.wrap_algorithm",
            Box::new(|a| a.wrap_algorithm = Some("RSA1_5".into())),
        ),
        (
            "development",
            "kms_config.wrap_algorithm",
            Box::new(|a| a.wrap_algorithm = Some("ROT13".into())),
        ),
        (
            "development",
            "kms_config.credential",
            Box::new(|a| a.credential = "password".into()),
        ),
        (
            "production",
            "kms_config.verify_challenge_resource",
            Box::new(|a| a.verify_challenge_resource = false),
        ),
        (
            "development",
            "kms_config.timeout_secs",
            Box::new(|a| a.timeout_secs = 0),
        ),
    ];
    let with = |a: AzureKeyVaultConfig, mode: &str| TdeConfig {
        kms_config: Some(KmsConfig::Azure(a)),
        security_mode: Some(mode.into()),
        ..Default::default()
    };
    for (mode, field, change) in rows {
        let mut a = base();
        change(&mut a);
        let shown = format!("{a:?}");
        match with(a, mode).validate() {
            Err(TdeError::InvalidConfig { field: f, reason }) => {
                assert_eq!(f, field, "{shown}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{shown}: expected InvalidConfig naming {field}, got {other:?}"),
        }
    }
    // A client secret credential without its tenant and client ids names them.
    let mut a = base();
    a.credential = "client_secret".into();
    match with(a, "development").validate() {
        Err(TdeError::InvalidConfig { field, reason }) => {
            let text = format!("{field}: {reason}");
            assert!(text.contains("tenant_id"), "{text}");
            assert!(text.contains("client_id"), "{text}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // What production accepts passes.
    with(base(), "production").validate().unwrap();
}

#[tokio::test]
async fn production_refuses_plain_http_and_no_challenge_check_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    for (change, field) in [
        (
            Box::new(|a: &mut AzureKeyVaultConfig| a.vault_url = "http://127.0.0.1:1".into())
                as Box<dyn Fn(&mut AzureKeyVaultConfig)>,
            "kms_config.vault_url",
        ),
        (
            Box::new(|a: &mut AzureKeyVaultConfig| a.verify_challenge_resource = false),
            "kms_config.verify_challenge_resource",
        ),
    ] {
        let mut a = AzureKeyVaultConfig::new("https://127.0.0.1:1", "heliosdb-mek");
        change(&mut a);
        let config = TdeConfig {
            key_storage_path: dir.path().join("keys"),
            kms_config: Some(KmsConfig::Azure(a)),
            security_mode: Some("production".into()),
            ..Default::default()
        };
        let e = TdeSubsystem::new(config).await.unwrap_err();
        assert!(
            matches!(&e, TdeError::InvalidConfig { field: f, .. } if f == field),
            "{e:?}"
        );
        assert!(!dir.path().join("keys").exists());
    }
}

#[tokio::test]
async fn a_first_start_with_the_vault_cut_creates_nothing() {
    let Some(env) = azure::azure() else { return };
    let upstream = format!("127.0.0.1:{}", env.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let key = format!("facade-cut-{}", fresh_label());
    let url = format!("https://127.0.0.1:{}", proxy.addr().port());
    let e = TdeSubsystem::new(config(dir.path(), &env, &url, &key, "facade_cut", ""))
        .await
        .unwrap_err();
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
    let text = e.to_string();
    assert!(text.contains("provider_startup_wait_secs"), "{text}");
    assert!(
        !dir.path().join("keys").exists(),
        "a start that could not reach the vault created the key store directory"
    );
    assert!(
        requests_for(&env, &key).is_empty(),
        "the vault saw requests for the key while it was cut"
    );
}

#[tokio::test]
async fn a_start_waits_for_the_vault_to_come_back() {
    let Some(env) = azure::azure() else { return };
    let upstream = format!("127.0.0.1:{}", env.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    // The first connection is refused and the vault cut from then on.
    proxy.cut_after_requests(0);
    let dir = tempfile::tempdir().unwrap();
    let key = format!("facade-wait-{}", fresh_label());
    let url = format!("https://127.0.0.1:{}", proxy.addr().port());
    let mut config = config(
        dir.path(),
        &env,
        &url,
        &key,
        "facade_wait",
        "max_retries = 0",
    );
    // Far longer than the test needs: the start succeeds as soon as the proxy is restored.
    config.provider_startup_wait_secs = 300;
    let restore = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !proxy.is_cut() {
            assert!(
                Instant::now() < deadline,
                "the start never tried to reach the vault"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.restore();
    };
    let (tde, ()) = tokio::join!(TdeSubsystem::new(config), restore);
    let tde = tde.unwrap();
    tde.key_manager().create_table_key("t").await.unwrap();
    assert!(dir.path().join("keys").exists());
    assert!(proxy.connections() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_holds_key_ids_only_and_restores_into_a_new_key_store() {
    let Some(env) = azure::azure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = format!("backup-{}", fresh_label());
    let mek = "backup_azure";
    let config = config(dir.path(), &env, &env.ip_url(), &key, mek, "");
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let teks = three_table_keys(&tde).await;
    // Version 1 of the MEK is one version of the Key Vault key: its key id.
    let info = tde.key_manager().mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 1);
    let kid = info.versions[0].key_location.clone().unwrap();
    let key_version = kid
        .split_once(&format!("/keys/{key}/"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{kid} does not name /keys/{key}/<version>"));
    assert!(!key_version.is_empty(), "{kid}");

    let expected = Expected {
        provider: "azure_kv",
        mek,
        // The reference is the key id: the key's name and its Key Vault version.
        reference: &[kid.clone(), format!("/keys/{key}/{key_version}")],
        secrets: &[(
            "client secret",
            env.client_secret().expose_secret().to_string(),
        )],
    };
    backup_verify_and_restore(&tde, &config, dir.path(), "azure.hbk", &expected, &teks).await;
}
