//! Transient answers (503, 429) are retried with backoff; past `max_retries` they are
//! `ProviderUnavailable { retryable: true }`. The fault proxy answers in place of the server.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_conformance::fault::{FaultProxy, Response};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, SecurityMode, TdeError};
use heliosdb_tde_vault::VaultMekProvider;
use std::net::SocketAddr;

#[tokio::test]
async fn transient_answers_are_retried_then_reported_retryable() {
    let Some(s) = common::server() else { return };
    let upstream: SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut c = s.config();
    c.address = proxy.url();
    c.timeout_secs = 2;
    c.max_retries = 2;
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    let mek = p
        .generate_mek(&fresh("retry"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    // Two transient answers, then the server: the wrap succeeds on the third attempt.
    proxy.clear_requests();
    proxy.respond_next_to("/encrypt/", 1, Response::service_unavailable());
    proxy.respond_next_to("/encrypt/", 1, Response::too_many_requests(0));
    let w = p.wrap_tek(&mek, &tek("r@v1"), &ctx("r@v1")).await.unwrap();
    assert_eq!(proxy.requests_to("/encrypt/"), 3);
    // More transient answers than retries: retryable unavailability, after 3 attempts.
    proxy.clear_requests();
    proxy.respond_next_to("/decrypt/", 3, Response::service_unavailable());
    let e = p.unwrap_tek(&w, &ctx("r@v1")).await.unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(proxy.requests_to("/decrypt/"), 3);
    // A 400 is not retried.
    proxy.clear_requests();
    proxy.respond_next_to(
        "/decrypt/",
        1,
        Response::new(400).json(r#"{"errors":["cipher: message authentication failed"]}"#),
    );
    let e = p.unwrap_tek(&w, &ctx("r@v1")).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    assert_eq!(proxy.requests_to("/decrypt/"), 1);
    assert!(p.unwrap_tek(&w, &ctx("r@v1")).await.is_ok());
}

/// A key rotation is never repeated by the retry loop (a rotation that timed out may have been
/// applied, and a retry would create a second version): one request, a retryable error, and
/// the next rotation creates exactly one version.
#[tokio::test]
async fn a_failed_rotation_is_not_repeated() {
    let Some(s) = common::server() else { return };
    let upstream: SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut c = s.config();
    c.address = proxy.url();
    c.max_retries = 3;
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    let id = fresh("once");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    proxy.clear_requests();
    proxy.respond_next_to("/rotate", 1, Response::service_unavailable());
    let e = p.rotate_mek(&id).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(proxy.requests_to("/rotate"), 1, "the rotation was repeated");
    assert_eq!(p.mek_info(&id).await.unwrap().versions.len(), 1);
    let v2 = p.rotate_mek(&id).await.unwrap();
    assert_eq!(v2.mek.version.get(), 2);
    assert_eq!(p.mek_info(&id).await.unwrap().versions.len(), 2);
}

#[tokio::test]
async fn health_reads_the_sys_health_status() {
    let Some(s) = common::server() else { return };
    let upstream: SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut c = s.config();
    c.address = proxy.url();
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    assert!(p.health().await.unwrap().healthy);
    for (status, healthy, text) in [
        (429, true, "standby"),
        (473, true, "standby"),
        (503, false, "bao operator unseal"),
        (501, false, "not initialised"),
    ] {
        proxy.respond_next_to("/sys/health", 1, Response::new(status));
        let h = p.health().await.unwrap();
        assert_eq!(h.healthy, healthy, "{status}: {h:?}");
        assert!(h.detail.contains(text), "{status}: {h:?}");
    }
    proxy.cut();
    let h = p.health().await.unwrap();
    assert!(!h.healthy && h.detail.contains(&proxy.url()), "{h:?}");
}
