//! The facade over a real moto server (AWS KMS API), provisioned by `cargo xtask test`:
//! configuration from TOML with every AWS field, the field checks, start-up while the endpoint
//! is cut, the wait for it to come back, and a key backup of references only (key ARNs),
//! verified and restored into another key store directory.

#![cfg(feature = "aws-kms")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::backup::{Expected, backup_verify_and_restore, three_table_keys};
use heliosdb_security::tde::{
    AwsKmsConfig, KmsConfig, ProviderKind, TdeConfig, TdeError, TdeSubsystem, sealed_tek_version,
};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::moto::{self, Moto, unique};
use std::path::Path;
use std::time::{Duration, Instant};

/// A development configuration (moto speaks plain HTTP) as TOML, with its own MEK id and alias
/// prefix; `extra` lines go into `[kms_config]`.
fn config(dir: &Path, moto: &Moto, endpoint: &str, key: &str, mek: &str, extra: &str) -> TdeConfig {
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "{mek}"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "aws"
            region = "{region}"
            key_id = "{key}"
            endpoint = "{endpoint}"
            alias_prefix = "alias/{mek}"
            {extra}
        "#,
        keys = dir.join("keys").display(),
        region = moto.region,
    );
    TdeConfig::from_toml_str(&text).unwrap()
}

fn aws(c: &TdeConfig) -> &AwsKmsConfig {
    match &c.kms_config {
        Some(KmsConfig::Aws(a)) => a,
        other => panic!("not an AWS configuration: {other:?}"),
    }
}

#[tokio::test]
async fn an_aws_configuration_from_toml_protects_pages() {
    let Some(moto) = moto::moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("facade_aws");
    let arn = moto.create_key("heliosdb facade test");
    let config = config(
        dir.path(),
        &moto,
        &moto.endpoint,
        &arn,
        &mek,
        r#"
            create_keys = false
            enable_key_rotation = true
            rotation_period_days = 400
            timeout_secs = 20
            connect_timeout_ms = 1500
            max_attempts = 4
            retry_mode = "adaptive"
        "#,
    );
    // Every field arrives as written; the guide's three fields first.
    let a = aws(&config);
    assert_eq!(a.region, moto.region);
    assert_eq!(a.key_id, arn);
    assert_eq!(a.endpoint.as_deref(), Some(moto.endpoint.as_str()));
    assert_eq!(a.profile, None);
    assert_eq!(a.alias_prefix, format!("alias/{mek}"));
    assert!(!a.create_keys);
    assert!(a.enable_key_rotation);
    assert_eq!(a.rotation_period_days, Some(400));
    assert_eq!(a.timeout_secs, 20);
    assert_eq!(a.connect_timeout_ms, 1500);
    assert_eq!(a.max_attempts, Some(4));
    assert_eq!(a.retry_mode.as_deref(), Some("adaptive"));
    config.validate().unwrap();
    // Left out, the fields take their documented defaults.
    let defaults = TdeConfig::from_toml_str(
        "[kms_config]\nprovider = \"aws\"\nregion = \"us-east-1\"\nkey_id = \"alias/x\"\n",
    )
    .unwrap();
    let d = aws(&defaults);
    assert_eq!(
        (
            d.alias_prefix.as_str(),
            d.create_keys,
            d.enable_key_rotation,
            d.timeout_secs,
            d.connect_timeout_ms,
            d.max_attempts,
            d.retry_mode.as_deref(),
            d.rotation_period_days
        ),
        ("alias/heliosdb", true, false, 10, 3000, None, None, None)
    );

    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    assert_eq!(km.mek_provider.kind(), ProviderKind::AwsKms);
    assert!(
        km.mek_provider
            .description()
            .contains(&format!("alias/{mek}")),
        "{}",
        km.mek_provider.description()
    );
    assert!(
        tde.warnings().iter().any(|w| w.contains("plain HTTP")),
        "{:?}",
        tde.warnings()
    );
    // key_id became version 1 of the default MEK, under its alias.
    let info = km.mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].key_location.as_deref(), Some(arn.as_str()));
    assert!(
        moto.alias_target(&format!("alias/{mek}/{mek}/v1"))
            .ends_with(arn.rsplit('/').next().unwrap())
    );

    km.create_table_key("public.users").await.unwrap();
    let sealer = tde.page_sealer("public.users").await.unwrap();
    let sealed = sealer.seal(b"page 1", b"row data").await.unwrap();
    let version = sealed_tek_version(&sealed).unwrap();
    let opener = tde.page_opener("public.users", version).await.unwrap();
    assert_eq!(opener.open(b"page 1", &sealed).unwrap(), b"row data");
    let health = km.mek_provider.health().await.unwrap();
    assert!(health.healthy, "{}", health.detail);
    assert!(health.detail.contains("Enabled"), "{}", health.detail);
}

/// Every AWS field survives writing the configuration as TOML and reading it back.
#[test]
fn an_aws_configuration_survives_a_toml_round_trip() {
    let a = AwsKmsConfig {
        region: "eu-central-1".into(),
        key_id: "arn:aws:kms:eu-central-1:111122223333:key/abc".into(),
        endpoint: Some("https://vpce-0abc.kms.eu-central-1.vpce.amazonaws.com".into()),
        profile: Some("heliosdb".into()),
        alias_prefix: "alias/prod/heliosdb".into(),
        create_keys: false,
        enable_key_rotation: true,
        rotation_period_days: Some(180),
        timeout_secs: 30,
        connect_timeout_ms: 500,
        max_attempts: Some(5),
        retry_mode: Some("adaptive".into()),
    };
    let config = TdeConfig {
        default_mek_id: "prod_mek_001".into(),
        kms_config: Some(KmsConfig::Aws(a)),
        security_mode: Some("production".into()),
        ..Default::default()
    };
    config.validate().unwrap();
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("provider = \"aws\""), "{text}");
    assert!(text.contains("retry_mode = \"adaptive\""), "{text}");
    assert_eq!(TdeConfig::from_toml_str(&text).unwrap(), config, "{text}");
}

/// The field checks through `TdeConfig::validate`: each bad value names its field.
#[test]
fn bad_aws_fields_are_refused_naming_the_field() {
    let base = || AwsKmsConfig::new("us-east-1", "alias/heliosdb-test");
    type Change = Box<dyn Fn(&mut AwsKmsConfig)>;
    let rows: Vec<(&str, Change)> = vec![
        ("kms_config.region", Box::new(|a| a.region = String::new())),
        ("kms_config.key_id", Box::new(|a| a.key_id = String::new())),
        (
            "kms_config.key_id",
            Box::new(|a| a.key_id = "arn:aws:kms:eu-west-1:111122223333:key/x".into()),
        ),
        (
            "kms_config.alias_prefix",
            Box::new(|a| a.alias_prefix = "heliosdb".into()),
        ),
        (
            "kms_config.alias_prefix",
            Box::new(|a| a.alias_prefix = "alias/helios.db".into()),
        ),
        (
            "kms_config.alias_prefix",
            Box::new(|a| a.alias_prefix = "alias/a b".into()),
        ),
        ("kms_config.timeout_secs", Box::new(|a| a.timeout_secs = 0)),
        (
            "kms_config.connect_timeout_ms",
            Box::new(|a| a.connect_timeout_ms = 0),
        ),
        (
            "kms_config.max_attempts",
            Box::new(|a| a.max_attempts = Some(0)),
        ),
        (
            "kms_config.retry_mode",
            Box::new(|a| a.retry_mode = Some("fast".into())),
        ),
        (
            "kms_config.rotation_period_days",
            Box::new(|a| a.rotation_period_days = Some(89)),
        ),
        (
            "kms_config.rotation_period_days",
            Box::new(|a| a.rotation_period_days = Some(2561)),
        ),
        (
            "kms_config.endpoint",
            Box::new(|a| a.endpoint = Some("kms.example.com".into())),
        ),
        (
            "kms_config.endpoint",
            Box::new(|a| a.endpoint = Some("https://".into())),
        ),
    ];
    let with = |a: AwsKmsConfig, mode: &str| TdeConfig {
        kms_config: Some(KmsConfig::Aws(a)),
        security_mode: Some(mode.into()),
        ..Default::default()
    };
    for (field, change) in rows {
        let mut a = base();
        change(&mut a);
        let shown = format!("{a:?}");
        match with(a, "development").validate() {
            Err(TdeError::InvalidConfig { field: f, reason }) => {
                assert_eq!(f, field, "{shown}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{shown}: expected InvalidConfig naming {field}, got {other:?}"),
        }
    }
    // The edges KMS accepts pass.
    for days in [90, 2560] {
        let mut a = base();
        a.rotation_period_days = Some(days);
        with(a, "development").validate().unwrap();
    }
    let mut a = base();
    a.retry_mode = Some("standard".into());
    a.endpoint = Some("https://vpce-0abc.kms.us-east-1.vpce.amazonaws.com".into());
    with(a, "production").validate().unwrap();
}

#[tokio::test]
async fn production_refuses_a_plain_http_endpoint_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = AwsKmsConfig::new("us-east-1", "alias/heliosdb-test");
    a.endpoint = Some("http://127.0.0.1:1".into());
    let config = TdeConfig {
        key_storage_path: dir.path().join("keys"),
        kms_config: Some(KmsConfig::Aws(a)),
        security_mode: Some("production".into()),
        ..Default::default()
    };
    match config.validate() {
        Err(TdeError::InvalidConfig { field, reason }) => {
            assert_eq!(field, "kms_config.endpoint");
            assert!(reason.contains("https://"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let e = TdeSubsystem::new(config).await.unwrap_err();
    assert!(
        matches!(&e, TdeError::InvalidConfig { field, .. } if field == "kms_config.endpoint"),
        "{e:?}"
    );
    assert!(!dir.path().join("keys").exists());
}

#[tokio::test]
async fn a_first_start_with_the_endpoint_cut_creates_nothing() {
    let Some(moto) = moto::moto() else { return };
    let arn = moto.create_key("heliosdb facade cut");
    let proxy = FaultProxy::start_http(moto.upstream()).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("facade_aws_cut");
    let e = TdeSubsystem::new(config(dir.path(), &moto, &proxy.url(), &arn, &mek, ""))
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
    assert!(text.contains(&proxy.url()), "{text}");
    assert!(text.contains("provider_startup_wait_secs"), "{text}");
    assert!(
        !dir.path().join("keys").exists(),
        "a start that could not reach KMS created the key store directory"
    );
    // Nothing was made in KMS either.
    assert_eq!(moto.alias_target(&format!("alias/{mek}/{mek}/v1")), "");
}

#[tokio::test]
async fn a_start_waits_for_the_endpoint_to_come_back() {
    let Some(moto) = moto::moto() else { return };
    let arn = moto.create_key("heliosdb facade wait");
    let proxy = FaultProxy::start_http(moto.upstream()).await.unwrap();
    // The first request is refused and the endpoint cut from then on.
    proxy.cut_after_requests(0);
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("facade_aws_wait");
    // One SDK attempt per call, so the first request failing is the first probe failing.
    let mut config = config(
        dir.path(),
        &moto,
        &proxy.url(),
        &arn,
        &mek,
        "max_attempts = 1",
    );
    // Far longer than the test needs: the start succeeds as soon as the proxy is restored.
    config.provider_startup_wait_secs = 300;
    let restore = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        // Until the first request has been refused (the proxy then stays cut).
        while !proxy.is_cut() || proxy.requests().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the start never tried to reach KMS"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The first probe has failed: its only request was refused.
        let refused = proxy.requests().len();
        proxy.restore();
        refused
    };
    let (tde, refused) = tokio::join!(TdeSubsystem::new(config), restore);
    let tde = tde.unwrap();
    assert_eq!(refused, 1, "requests before the restore");
    assert!(
        proxy.requests().len() > refused,
        "the start did not try again after the restore"
    );
    tde.key_manager().create_table_key("t").await.unwrap();
    assert!(dir.path().join("keys").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_holds_key_arns_only_and_restores_into_a_new_key_store() {
    let Some(moto) = moto::moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("backup_aws");
    let arn = moto.create_key("heliosdb facade backup");
    let config = config(
        dir.path(),
        &moto,
        &moto.endpoint,
        &arn,
        &mek,
        "create_keys = false",
    );
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let teks = three_table_keys(&tde).await;
    let info = tde.key_manager().mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].key_location.as_deref(), Some(arn.as_str()));

    let mut secrets = vec![(
        "secret access key",
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
    )];
    if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
        secrets.push(("session token", token));
    }
    let expected = Expected {
        provider: "aws_kms",
        mek: &mek,
        // The reference names the KMS key by its full ARN.
        reference: std::slice::from_ref(&arn),
        secrets: &secrets,
    };
    backup_verify_and_restore(&tde, &config, dir.path(), "aws.hbk", &expected, &teks).await;
}
