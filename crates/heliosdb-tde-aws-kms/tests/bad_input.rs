//! Bad input, each a clear typed error and no state change (no alias appears under the test's
//! prefix): keys that do not exist, keys of the wrong kind or region, keys an operator disabled
//! or scheduled for deletion, no credentials, endpoints that are unreachable or not KMS, plain
//! HTTP in production, a `v1` alias pointing elsewhere, damaged payloads, bad fields.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use common::{Payload, ctx, fresh, mek_ref, tek};
use heliosdb_tde_aws_kms::{AwsKmsMekProvider, check_config};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_core::{
    AwsKmsConfig, EncryptionAlgorithm, MekId, MekProvider, SecurityMode, TdeError,
};
use std::process::Command;

async fn open_err(c: &AwsKmsConfig, mek: &MekId, mode: SecurityMode) -> TdeError {
    match AwsKmsMekProvider::open(c, mek, mode).await {
        Ok(p) => panic!("open succeeded: {p:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_key_that_does_not_exist_is_key_not_found() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let missing_alias = format!("alias/heliosdb-test-missing-{}", common::random());
    let missing_arn = format!(
        "arn:aws:kms:{}:123456789012:key/00000000-0000-4000-8000-{}",
        m.region,
        common::random()
    );
    for key_id in [missing_alias, missing_arn] {
        let mut c = f.config.clone();
        c.key_id = key_id.clone();
        let e = open_err(&c, &f.default_mek, SecurityMode::Development).await;
        assert!(matches!(e, TdeError::KeyNotFound { .. }), "{key_id}: {e:?}");
        let text = e.to_string();
        assert!(text.contains(&key_id), "{text}");
        assert!(text.contains(&m.region), "{text}");
    }
    assert!(f.aliases().await.is_empty());
}

#[tokio::test]
async fn a_key_that_cannot_encrypt_is_refused() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    for (spec, usage) in [
        (KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt),
        (KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac),
        (KeySpec::EccNistP256, KeyUsageType::SignVerify),
    ] {
        let key = m.create_key_with(spec.clone(), usage.clone()).await;
        let mut c = f.config.clone();
        c.key_id = key.arn.clone();
        let e = open_err(&c, &f.default_mek, SecurityMode::Development).await;
        assert!(
            matches!(e, TdeError::InvalidConfig { .. }),
            "{spec:?}/{usage:?}: {e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("SYMMETRIC_DEFAULT"), "{text}");
        assert!(text.contains("ENCRYPT_DECRYPT"), "{text}");
        assert!(text.contains("kms_config.key_id"), "{text}");
    }
    assert!(f.aliases().await.is_empty());
}

#[tokio::test]
async fn a_key_in_another_region_is_refused() {
    let Some(m) = common::moto() else { return };
    let other = if m.region == "eu-west-1" {
        "us-west-2"
    } else {
        "eu-west-1"
    };
    let key = common::create_key(
        &m.client_in(other),
        KeySpec::SymmetricDefault,
        KeyUsageType::EncryptDecrypt,
    )
    .await;
    assert!(key.arn.contains(other), "{}", key.arn);
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.key_id = key.arn.clone();
    let e = open_err(&c, &f.default_mek, SecurityMode::Development).await;
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(other) && text.contains(&m.region), "{text}");
    assert!(f.aliases().await.is_empty());
}

/// The active key disabled, or scheduled for deletion, by an operator: `open()` fails and
/// `health()` of a running provider reports it, each with the state and the fix.
#[tokio::test]
async fn an_active_key_disabled_or_pending_deletion() {
    let Some(m) = common::moto() else { return };
    for (state, fix) in [
        ("Disabled", "enable-key"),
        ("PendingDeletion", "cancel-key-deletion"),
    ] {
        let f = m.fixture().await;
        let p = f.open().await;
        p.generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap();
        assert!(p.health().await.unwrap().healthy);
        let aliases = f.aliases().await;
        if state == "Disabled" {
            m.client()
                .disable_key()
                .key_id(&f.key.id)
                .send()
                .await
                .unwrap();
        } else {
            m.client()
                .schedule_key_deletion()
                .key_id(&f.key.id)
                .pending_window_in_days(7)
                .send()
                .await
                .unwrap();
        }
        assert_eq!(m.key_state(&f.key.id).await, state);

        let e = open_err(&f.config, &f.default_mek, SecurityMode::Development).await;
        let text = e.to_string();
        assert!(text.contains(state), "{state}: {text}");
        assert!(text.contains(fix), "{state}: {text}");

        match p.health().await {
            Ok(h) => {
                assert!(!h.healthy, "{state}: {h:?}");
                assert!(h.detail.contains(state), "{state}: {h:?}");
            }
            Err(e) => assert!(e.to_string().contains(state), "{state}: {e}"),
        }
        assert_eq!(f.aliases().await, aliases, "{state}: the aliases changed");
    }
}

const CHILD_ENV: &str = "HELIOSDB_AWS_TEST_NO_CREDENTIALS_KEY";

/// No credentials anywhere: run in a child process of this test binary whose environment has
/// no AWS variables, empty AWS config files and no instance metadata; the error lists where the
/// SDK looked.
#[tokio::test]
async fn no_credentials_anywhere() {
    if let Ok(key) = std::env::var(CHILD_ENV) {
        // The child.
        let endpoint = std::env::var(common::ENDPOINT_ENV).unwrap();
        let mut c = AwsKmsConfig::new("us-east-1", key);
        c.endpoint = Some(endpoint);
        c.alias_prefix = format!("alias/heliosdb-test-{}", common::random());
        c.max_attempts = Some(1);
        let e = open_err(&c, &fresh("nocred"), SecurityMode::Development).await;
        let text = e.to_string();
        println!("child error: {text}");
        assert!(!matches!(e, TdeError::ProviderUnavailable { .. }), "{e:?}");
        for place in ["AWS_ACCESS_KEY_ID", "profile", "instance metadata"] {
            assert!(text.contains(place), "{place} missing from: {text}");
        }
        return;
    }
    let Some(m) = common::moto() else { return };
    let key = m.create_key().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let credentials = dir.path().join("credentials");
    std::fs::write(&config, "").unwrap();
    std::fs::write(&credentials, "").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "no_credentials_anywhere",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env(CHILD_ENV, &key.arn)
        .env(common::ENDPOINT_ENV, &m.endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed") && stdout.contains("child error:"),
        "the child run failed:\n{stdout}\n{stderr}"
    );
}

/// A closed loopback port: retryable unavailability naming the endpoint.
#[tokio::test]
async fn an_unreachable_endpoint_is_retryable() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = f.config.clone();
    c.endpoint = Some(format!("http://127.0.0.1:{port}"));
    c.max_attempts = Some(2);
    let e = open_err(&c, &f.default_mek, SecurityMode::Development).await;
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
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// A server that is not KMS (a web server answering 404 with HTML): a clear error naming
/// `kms_config.endpoint`, no panic.
#[tokio::test]
async fn an_endpoint_that_is_not_kms() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let body = "<html><body><h1>404 Not Found</h1></body></html>";
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    let mut targets = vec![format!("http://{addr}")];
    if let Ok(vault) = std::env::var("HELIOSDB_TEST_VAULT_ADDR") {
        targets.push(vault);
    }
    for endpoint in targets {
        let mut c = f.config.clone();
        c.endpoint = Some(endpoint.clone());
        c.max_attempts = Some(1);
        let e = open_err(&c, &f.default_mek, SecurityMode::Development).await;
        assert!(matches!(e, TdeError::Provider { .. }), "{endpoint}: {e:?}");
        let text = e.to_string();
        assert!(text.contains("kms_config.endpoint"), "{endpoint}: {text}");
    }
    assert!(f.aliases().await.is_empty());
}

/// Plain HTTP in production mode is refused before any request, naming the field;
/// development mode allows it with a warning.
#[tokio::test]
async fn plain_http_in_production_is_refused() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.endpoint = Some(proxy.url());
    let e = open_err(&c, &f.default_mek, SecurityMode::Production).await;
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    assert!(e.to_string().contains("kms_config.endpoint"), "{e}");
    assert!(
        proxy.requests().is_empty(),
        "a request was sent: {:?}",
        proxy.requests()
    );
    assert!(check_config(&c, SecurityMode::Production).is_err());
    let p = AwsKmsMekProvider::open(&c, &f.default_mek, SecurityMode::Development)
        .await
        .unwrap();
    let warnings = p.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("http://")),
        "{warnings:?}"
    );
    assert_eq!(p.endpoint(), Some(proxy.url().as_str()));
}

/// A `v1` alias that already points at another key than `key_id`: refused, naming both ARNs,
/// and the alias is left alone.
#[tokio::test]
async fn a_v1_alias_pointing_elsewhere_is_refused() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let other = m.create_key().await;
    let p = f.open().await;
    let v1_alias = p.alias_name(&mek_ref(&f.default_mek, 1));
    m.create_alias(&v1_alias, &other.id).await;
    let e =
        match AwsKmsMekProvider::open(&f.config, &f.default_mek, SecurityMode::Development).await {
            Err(e) => e,
            Ok(p) => p
                .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
                .await
                .unwrap_err(),
        };
    let text = e.to_string();
    assert!(text.contains(&f.key.arn), "{text}");
    assert!(text.contains(&other.arn), "{text}");
    let aliases = f.aliases().await;
    assert_eq!(aliases.len(), 1, "{aliases:?}");
    assert_eq!(aliases.get(&v1_alias), Some(&other.id));
    assert!(!m.tags(&other.id).await.contains_key("heliosdb:mek_id"));
}

/// Damaged payloads: truncated or of another format is `Corrupt`; the ARN of another version
/// is `AuthenticationFailed` without a call to KMS.
#[tokio::test]
async fn damaged_payloads() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 1).await;
    let id = fresh("damaged");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("dm@v1");
    let c = ctx("dm@v1");
    let w1 = p.wrap_tek(&v1, &key, &c).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let w2 = p.wrap_tek(&v2, &key, &c).await.unwrap();
    proxy.clear_requests();

    let mut truncated = w1.clone();
    truncated.payload.truncate(w1.payload.len() - 5);
    let e = p.unwrap_tek(&truncated, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "truncated: {e:?}");
    let mut empty = w1.clone();
    empty.payload.clear();
    let e = p.unwrap_tek(&empty, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "empty: {e:?}");
    let mut format = w1.clone();
    format.payload[0] = 9;
    let e = p.unwrap_tek(&format, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "format byte: {e:?}");
    // v1's envelope carrying v2's ARN and blob: a relabelled payload.
    let mut other_arn = w1.clone();
    other_arn.payload = Payload::parse(&w2.payload).encode();
    let e = p.unwrap_tek(&other_arn, &c).await.unwrap_err();
    assert!(
        matches!(e, TdeError::AuthenticationFailed { .. }),
        "other ARN: {e:?}"
    );
    // v1's blob with v2's ARN in the payload.
    let mut swapped = Payload::parse(&w1.payload);
    swapped.arn = Payload::parse(&w2.payload).arn;
    let mut other_arn = w1.clone();
    other_arn.payload = swapped.encode();
    let e = p.unwrap_tek(&other_arn, &c).await.unwrap_err();
    assert!(
        matches!(e, TdeError::AuthenticationFailed { .. }),
        "swapped ARN: {e:?}"
    );
    assert_eq!(
        proxy.requests_for_target("Decrypt"),
        0,
        "a damaged payload reached KMS"
    );
    // The genuine envelopes still unwrap.
    assert!(p.unwrap_tek(&w1, &c).await.is_ok());
    assert!(p.unwrap_tek(&w2, &c).await.is_ok());
}

/// Bad fields: `InvalidConfig` naming the field, from `check_config` and from `open` alike,
/// before any request.
#[tokio::test]
async fn bad_fields_are_named() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    type Change = Box<dyn Fn(&mut AwsKmsConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.region = String::new()), "kms_config.region"),
        (Box::new(|c| c.timeout_secs = 0), "kms_config.timeout_secs"),
        (
            Box::new(|c| c.retry_mode = Some("fast".into())),
            "kms_config.retry_mode",
        ),
        (Box::new(|c| c.key_id = String::new()), "kms_config.key_id"),
        (
            Box::new(|c| c.alias_prefix = "heliosdb".into()),
            "kms_config.alias_prefix",
        ),
        (
            Box::new(|c| c.max_attempts = Some(0)),
            "kms_config.max_attempts",
        ),
        (
            Box::new(|c| c.rotation_period_days = Some(10)),
            "kms_config.rotation_period_days",
        ),
    ];
    for (change, field) in cases {
        let mut c = f.config.clone();
        c.endpoint = Some(proxy.url());
        change(&mut c);
        for e in [
            check_config(&c, SecurityMode::Development).unwrap_err(),
            open_err(&c, &f.default_mek, SecurityMode::Development).await,
        ] {
            match &e {
                TdeError::InvalidConfig { field: named, .. } => assert_eq!(named, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
            assert!(e.to_string().contains(field), "{e}");
        }
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    assert!(f.aliases().await.is_empty());
}

/// KMS's error answers (given by the fault proxy where moto never gives them) become typed
/// errors that say what to do: access denied names the action, bad credentials mention the
/// clock, a disabled key names the fix, a missing key names the key and the region.
#[tokio::test]
async fn kms_error_answers_are_typed() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 3).await;
    let id = fresh("answers");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let c = ctx("ans@v1");
    let w = p.wrap_tek(&mek, &tek("ans@v1"), &c).await.unwrap();
    let answer = |code: &str| {
        heliosdb_tde_conformance::fault::Response::aws_error(400, code, "(fault proxy)")
    };

    proxy.clear_requests();
    proxy.respond_next_for_target("Decrypt", 1, answer("AccessDeniedException"));
    let e = p.unwrap_tek(&w, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::Provider { .. }), "{e:?}");
    assert!(e.to_string().contains("kms:Decrypt"), "{e}");
    assert_eq!(proxy.requests_for_target("Decrypt"), 1, "not retried");

    proxy.respond_next_for_target("Encrypt", 1, answer("ExpiredTokenException"));
    let e = p.wrap_tek(&mek, &tek("ans@v1"), &c).await.unwrap_err();
    assert!(matches!(e, TdeError::Provider { .. }), "{e:?}");
    assert!(e.to_string().contains("clock"), "{e}");

    proxy.respond_next_for_target("Decrypt", 1, answer("DisabledException"));
    let e = p.unwrap_tek(&w, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e:?}");
    assert!(e.to_string().contains("enable-key"), "{e}");

    proxy.respond_next_for_target("Decrypt", 1, answer("IncorrectKeyException"));
    let e = p.unwrap_tek(&w, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");

    proxy.respond_next_for_target("Encrypt", 1, answer("NotFoundException"));
    let e = p.wrap_tek(&mek, &tek("ans@v1"), &c).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains(&m.region), "{e}");

    // Nothing was left queued, and the provider works.
    let back = p.unwrap_tek(&w, &c).await.unwrap();
    assert_eq!(back.id().to_string(), "ans@v1");
}

/// After a rotation the active key is v2's, not the configured one: an operator disabling it
/// is caught at `open()` and by `health()` just the same.
#[tokio::test]
async fn a_rotated_active_key_disabled_by_an_operator() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    p.generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    p.rotate_mek(&f.default_mek).await.unwrap();
    let v2_arn = p.mek_info(&f.default_mek).await.unwrap().versions[1]
        .key_location
        .clone()
        .unwrap();
    let v2_id = v2_arn.rsplit('/').next().unwrap().to_string();
    m.client()
        .disable_key()
        .key_id(&v2_id)
        .send()
        .await
        .unwrap();
    assert_eq!(m.key_state(&v2_id).await, "Disabled");
    let e = open_err(&f.config, &f.default_mek, SecurityMode::Development).await;
    let text = e.to_string();
    assert!(
        text.contains("Disabled") && text.contains("enable-key"),
        "{text}"
    );
    assert!(text.contains(&v2_arn), "{text}");
    match p.health().await {
        Ok(h) => {
            assert!(!h.healthy, "{h:?}");
            assert!(h.detail.contains("Disabled"), "{h:?}");
        }
        Err(e) => assert!(e.to_string().contains("Disabled"), "{e}"),
    }
}
