//! Retries, counted rather than timed: throttling (429 with `Retry-After: 1`) and server
//! errors injected by the test server are absorbed up to `max_retries` and reported as
//! `ProviderUnavailable { retryable: true }` beyond; an unreachable vault (a refused port, a
//! port that drops every connection) fails with the same retryable error after exactly
//! `1 + max_retries` attempts, not after the SDK's default budget.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, TdeError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn assert_retryable<T: std::fmt::Debug>(r: Result<T, TdeError>, what: &str) -> TdeError {
    match r {
        Err(
            e @ TdeError::ProviderUnavailable {
                retryable: true, ..
            },
        ) => e,
        other => {
            panic!("{what}: expected ProviderUnavailable {{ retryable: true }}, got {other:?}")
        }
    }
}

/// The answers the server gave to `op` requests (`wrapkey`, `unwrapkey`...), in order, with
/// the challenge (401) left out.
async fn statuses(v: &common::Vault, op: &str) -> Vec<u16> {
    v.requests()
        .await
        .into_iter()
        .filter(|r| r.path.ends_with(&format!("/{op}")) && r.status != 401)
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn three_throttled_answers_are_absorbed() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    f.config.max_retries = 3;
    f.config.max_retry_secs = 30;
    let p = f.open().await;
    let mek = p
        .generate_mek(&common::fresh("thr"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    f.vault.inject("wrapkey", 3, 429, Some(1)).await;
    let w = p
        .wrap_tek(&mek, &tek("t@v1"), &ctx("t@v1"))
        .await
        .unwrap_or_else(|e| panic!("three 429s were not absorbed: {e}"));
    assert_eq!(
        statuses(&f.vault, "wrapkey").await,
        vec![429, 429, 429, 200]
    );
    f.vault.inject("unwrapkey", 3, 503, Some(1)).await;
    p.unwrap_tek(&w, &ctx("t@v1"))
        .await
        .unwrap_or_else(|e| panic!("three 503s were not absorbed: {e}"));
    assert_eq!(
        statuses(&f.vault, "unwrapkey").await,
        vec![503, 503, 503, 200]
    );
}

#[tokio::test]
async fn more_failures_than_max_retries_are_retryable_errors() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    f.config.max_retries = 2;
    f.config.max_retry_secs = 30;
    let p = f.open().await;
    let mek = p
        .generate_mek(&common::fresh("many"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek("m@v1"), &ctx("m@v1")).await.unwrap();

    f.vault.inject("wrapkey", 10, 429, Some(1)).await;
    let e = assert_retryable(
        p.wrap_tek(&mek, &tek("m@v1"), &ctx("m@v1")).await,
        "wrap throttled beyond max_retries",
    );
    // One attempt and two retries, then the error: the rest of the injection is still queued.
    assert_eq!(
        statuses(&f.vault, "wrapkey").await,
        vec![200, 429, 429, 429],
        "{e}"
    );

    f.vault.inject("unwrapkey", 10, 500, None).await;
    assert_retryable(
        p.unwrap_tek(&w, &ctx("m@v1")).await,
        "unwrap failing with 500 beyond max_retries",
    );
    assert_eq!(statuses(&f.vault, "unwrapkey").await, vec![500, 500, 500]);
}

/// A free loopback port with nothing listening.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_refused_port_is_a_retryable_error_naming_the_url() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    f.config.vault_url = f.vault.url_at(refused_port());
    f.config.max_retries = 2;
    f.config.max_retry_secs = 10;
    f.config.timeout_secs = 5;
    let r = match f.try_open().await {
        Err(e) => Err(e),
        Ok(p) => p.mek_info(&f.default_mek).await.map(|_| ()),
    };
    let e = assert_retryable(r, "a refused port");
    assert!(e.to_string().contains(&f.config.vault_url), "{e}");
}

/// A listener that accepts connections and drops them at once (before TLS), counting them.
async fn dropping_listener() -> (u16, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, count)
}

#[tokio::test]
async fn an_unreachable_vault_is_tried_exactly_one_plus_max_retries_times() {
    let Some(s) = common::server() else { return };
    for max_retries in [0u32, 2] {
        let (port, attempts) = dropping_listener().await;
        let mut f = s.fixture(common::RSA);
        f.config.vault_url = f.vault.url_at(port);
        f.config.max_retries = max_retries;
        f.config.max_retry_secs = 30;
        f.config.timeout_secs = 5;
        let r = match f.try_open().await {
            Err(e) => Err(e),
            Ok(p) => p.mek_info(&f.default_mek).await.map(|_| ()),
        };
        let e = assert_retryable(r, "a vault that drops every connection");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            u64::from(1 + max_retries),
            "max_retries = {max_retries}: {e}"
        );
    }
}

/// A `Retry-After` of an hour is not waited out: `max_retry_secs` caps the time spent retrying
/// one call, so the call returns the retryable error (the deadline below only catches a
/// provider that waits the hour; it measures nothing).
#[tokio::test]
async fn a_huge_retry_after_is_capped_by_max_retry_secs() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    f.config.max_retries = 3;
    f.config.max_retry_secs = 2;
    let p = f.open().await;
    let mek = p
        .generate_mek(&common::fresh("cap"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    f.vault.inject("wrapkey", 10, 429, Some(3600)).await;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        p.wrap_tek(&mek, &tek("c@v1"), &ctx("c@v1")),
    )
    .await
    .expect("the provider waited out a Retry-After of an hour");
    assert_retryable(r, "wrap throttled with Retry-After: 3600");
    let served = statuses(&f.vault, "wrapkey").await;
    assert!(
        !served.is_empty() && served.len() <= 4 && served.iter().all(|s| *s == 429),
        "{served:?}"
    );
}
