//! The provider conformance suite against the shared OpenBao server, one check per test.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::MekProvider;
use std::sync::Arc;

#[tokio::test]
async fn round_trip() {
    let Some(s) = common::server() else { return };
    provider::round_trip(&s.provider().await).await;
}

#[tokio::test]
async fn aad_binding() {
    let Some(s) = common::server() else { return };
    provider::aad_binding(&s.provider().await).await;
}

#[tokio::test]
async fn versions() {
    let Some(s) = common::server() else { return };
    provider::versions(&s.provider().await).await;
}

#[tokio::test]
async fn errors() {
    let Some(s) = common::server() else { return };
    provider::errors(&s.provider().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency() {
    let Some(s) = common::server() else { return };
    let p: Arc<dyn MekProvider> = Arc::new(s.provider().await);
    provider::concurrency(p).await;
}

#[tokio::test]
async fn secrecy() {
    let Some(s) = common::server() else { return };
    provider::secrecy(&s.provider().await).await;
}
