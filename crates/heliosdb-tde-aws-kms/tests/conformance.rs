//! The provider conformance suite and the checks through the key manager, against the shared
//! moto server, one check per test. Each test builds its own provider (with a fresh key, alias
//! prefix and MEK ids) inside its own runtime.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::{manager, provider};
use heliosdb_tde_core::MekProvider;
use std::sync::Arc;

#[tokio::test]
async fn round_trip() {
    let Some(m) = common::moto() else { return };
    provider::round_trip(&m.fixture().await.open().await).await;
}

#[tokio::test]
async fn aad_binding() {
    let Some(m) = common::moto() else { return };
    provider::aad_binding(&m.fixture().await.open().await).await;
}

#[tokio::test]
async fn versions() {
    let Some(m) = common::moto() else { return };
    provider::versions(&m.fixture().await.open().await).await;
}

#[tokio::test]
async fn errors() {
    let Some(m) = common::moto() else { return };
    provider::errors(&m.fixture().await.open().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency() {
    let Some(m) = common::moto() else { return };
    let p: Arc<dyn MekProvider> = Arc::new(m.fixture().await.open().await);
    provider::concurrency(p).await;
}

#[tokio::test]
async fn secrecy() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    provider::secrecy(&p).await;
    // The provider's Debug names where it talks to, never the credentials.
    let debug = format!("{p:?}");
    assert!(debug.contains(&m.region), "{debug}");
    assert!(debug.contains(&m.endpoint), "{debug}");
    assert!(debug.contains(&f.config.alias_prefix), "{debug}");
    assert!(!debug.contains(&m.access_key), "{debug}");
    assert!(!debug.contains(&m.secret_key), "{debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_with_manager() {
    let Some(m) = common::moto() else { return };
    manager::rotation_with_manager(Arc::new(m.fixture().await.open().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_cold_cache() {
    let Some(m) = common::moto() else { return };
    manager::single_flight_cold_cache(Arc::new(m.fixture().await.open().await)).await;
}

/// A provider reaching moto through a fresh fault proxy, with short timeouts and two SDK
/// attempts per call, so that a cut call returns in seconds.
async fn behind_proxy(m: &common::Moto) -> (Arc<dyn MekProvider>, FaultProxy) {
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let p = m.fixture().await.open_at(&proxy.url(), 2).await;
    (Arc::new(p), proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_and_recovery() {
    let Some(m) = common::moto() else { return };
    let (p, proxy) = behind_proxy(&m).await;
    manager::outage_and_recovery(p, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_survives_outage() {
    let Some(m) = common::moto() else { return };
    let (p, proxy) = behind_proxy(&m).await;
    manager::rotation_survives_outage(p, &proxy).await;
}
