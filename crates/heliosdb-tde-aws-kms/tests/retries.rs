//! Throttling and transient errors through the fault proxy in front of moto: answers the SDK
//! retries are absorbed while fewer than `max_attempts`; past that they are
//! `ProviderUnavailable { retryable: true }`; a server slower than `timeout_secs` is a timeout
//! error. The proxy's request log counts the attempts.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_conformance::fault::{FaultProxy, Response};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, TdeError};
use std::process::Command;
use std::time::Duration;

fn throttling() -> Response {
    Response::aws_error(400, "ThrottlingException", "Rate exceeded (fault proxy)")
}

fn internal() -> Response {
    Response::aws_error(500, "KMSInternalException", "internal error (fault proxy)")
}

fn assert_retryable(e: &TdeError) {
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "expected ProviderUnavailable {{ retryable: true }}, got: {e:?}"
    );
}

#[tokio::test]
async fn throttling_is_retried_then_reported_retryable() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 3).await;
    let mek = p
        .generate_mek(&fresh("throttle"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("th@v1");

    // Two throttled attempts, then moto: the wrap succeeds on the third attempt.
    proxy.clear_requests();
    proxy.respond_next_for_target("Encrypt", 2, throttling());
    let w = p.wrap_tek(&mek, &key, &ctx("th@v1")).await.unwrap();
    assert_eq!(proxy.requests_for_target("Encrypt"), 3);

    // Three throttled attempts: all of max_attempts spent, a retryable error.
    proxy.clear_requests();
    proxy.respond_next_for_target("Decrypt", 3, throttling());
    let e = p.unwrap_tek(&w, &ctx("th@v1")).await.unwrap_err();
    assert_retryable(&e);
    assert!(e.to_string().contains("ThrottlingException"), "{e}");
    assert_eq!(proxy.requests_for_target("Decrypt"), 3);

    // The server is fine again: the same call works.
    let back = p.unwrap_tek(&w, &ctx("th@v1")).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_retryable() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 2).await;
    let mek = p
        .generate_mek(&fresh("five_hundred"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("fh@v1");

    proxy.clear_requests();
    proxy.respond_next_for_target("Encrypt", 1, internal());
    let w = p.wrap_tek(&mek, &key, &ctx("fh@v1")).await.unwrap();
    assert_eq!(proxy.requests_for_target("Encrypt"), 2);

    proxy.clear_requests();
    proxy.respond_next_for_target("Decrypt", 2, internal());
    let e = p.unwrap_tek(&w, &ctx("fh@v1")).await.unwrap_err();
    assert_retryable(&e);
    assert_eq!(proxy.requests_for_target("Decrypt"), 2);
    // A bare 500 without a KMS error code is transient too.
    proxy.clear_requests();
    proxy.respond_next_for_target("Decrypt", 2, Response::new(500));
    let e = p.unwrap_tek(&w, &ctx("fh@v1")).await.unwrap_err();
    assert_retryable(&e);
    assert_eq!(proxy.requests_for_target("Decrypt"), 2);

    assert!(p.unwrap_tek(&w, &ctx("fh@v1")).await.is_ok());
}

/// An error that is not transient (a bad ciphertext) is not retried.
#[tokio::test]
async fn a_definite_answer_is_not_retried() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let p = f.open_at(&proxy.url(), 3).await;
    let mek = p
        .generate_mek(&fresh("definite"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p
        .wrap_tek(&mek, &tek("df@v1"), &ctx("df@v1"))
        .await
        .unwrap();
    proxy.clear_requests();
    proxy.respond_next_for_target(
        "Decrypt",
        1,
        Response::aws_error(400, "InvalidCiphertextException", "(fault proxy)"),
    );
    let e = p.unwrap_tek(&w, &ctx("df@v1")).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");
    assert_eq!(proxy.requests_for_target("Decrypt"), 1);
}

/// A server slower than `timeout_secs` gives a timeout error (the call returns; its duration
/// is not measured).
#[tokio::test]
async fn a_slow_server_is_a_timeout() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.endpoint = Some(proxy.url());
    c.timeout_secs = 1;
    c.max_attempts = Some(2);
    let p = f.open_with(&c).await;
    let mek = p
        .generate_mek(&fresh("slow"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    proxy.delay(Duration::from_secs(30));
    let e = p
        .wrap_tek(&mek, &tek("sl@v1"), &ctx("sl@v1"))
        .await
        .unwrap_err();
    assert_retryable(&e);
    let text = e.to_string();
    assert!(text.contains("kms_config.timeout_secs"), "{text}");
    assert!(text.contains(&proxy.url()), "{text}");
    proxy.delay(Duration::ZERO);
    assert!(
        p.wrap_tek(&mek, &tek("sl@v1"), &ctx("sl@v1")).await.is_ok(),
        "the provider works again once the server answers in time"
    );
}

/// The adaptive retry mode (client-side rate limiting) absorbs throttling as well. After a
/// throttling answer its rate limiter may hold a retry back for seconds (its fill rate floor is
/// 0.5 tokens per second), which counts against `timeout_secs`: this test gives it 120.
#[tokio::test]
async fn adaptive_mode_absorbs_throttling() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.endpoint = Some(proxy.url());
    c.retry_mode = Some("adaptive".into());
    c.max_attempts = Some(3);
    c.timeout_secs = 120;
    let p = f.open_with(&c).await;
    let mek = p
        .generate_mek(&fresh("adaptive"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    proxy.clear_requests();
    proxy.respond_next_for_target("Encrypt", 1, throttling());
    let w = p
        .wrap_tek(&mek, &tek("ad@v1"), &ctx("ad@v1"))
        .await
        .unwrap();
    assert_eq!(proxy.requests_for_target("Encrypt"), 2);
    assert!(p.unwrap_tek(&w, &ctx("ad@v1")).await.is_ok());
}

const CHILD_ENV: &str = "HELIOSDB_AWS_TEST_RETRY_ENV_CHILD";

/// Without `max_attempts` and `retry_mode` in the configuration, `AWS_MAX_ATTEMPTS` and
/// `AWS_RETRY_MODE` apply (run in a child process of this test binary, since the environment
/// is process-wide).
#[tokio::test]
async fn retry_settings_from_the_environment() {
    let Some(m) = common::moto() else { return };
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("attempts") => {
            let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
            let f = m.fixture().await;
            let mut c = f.config.clone();
            c.endpoint = Some(proxy.url());
            assert_eq!(c.max_attempts, None);
            let p = f.open_with(&c).await;
            let mek = p
                .generate_mek(&fresh("envattempts"), EncryptionAlgorithm::Aes256Gcm)
                .await
                .unwrap()
                .mek;
            proxy.clear_requests();
            proxy.respond_next_for_target("Encrypt", 1, throttling());
            let e = p
                .wrap_tek(&mek, &tek("ea@v1"), &ctx("ea@v1"))
                .await
                .unwrap_err();
            assert_retryable(&e);
            assert_eq!(
                proxy.requests_for_target("Encrypt"),
                1,
                "AWS_MAX_ATTEMPTS=1"
            );
            println!("child checked attempts");
        }
        Ok("mode") => {
            let f = m.fixture().await;
            let e = heliosdb_tde_aws_kms::AwsKmsMekProvider::open(
                &f.config,
                &f.default_mek,
                heliosdb_tde_core::SecurityMode::Development,
            )
            .await
            .unwrap_err();
            assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
            assert!(e.to_string().contains("AWS_RETRY_MODE"), "{e}");
            println!("child checked mode");
        }
        _ => {
            for (which, var, value) in [
                ("attempts", "AWS_MAX_ATTEMPTS", "1"),
                ("mode", "AWS_RETRY_MODE", "fast"),
            ] {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "retry_settings_from_the_environment",
                        "--exact",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_ENV, which)
                    .env(var, value)
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success()
                        && stdout.contains("1 passed")
                        && stdout.contains(&format!("child checked {which}")),
                    "the child run ({var}={value}) failed:\n{stdout}\n{stderr}"
                );
            }
        }
    }
}
