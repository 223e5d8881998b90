//! The conformance checks that drive the provider through the key manager: rotation with
//! dual encryption, single flight on a cold cache, and outages behind the fault proxy.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::manager;
use heliosdb_tde_core::{MekProvider, SecurityMode};
use heliosdb_tde_vault::VaultMekProvider;
use std::net::SocketAddr;
use std::sync::Arc;

/// A provider reaching the shared server through a fresh fault proxy, with a short timeout
/// and one retry so that a cut call returns in seconds.
async fn behind_proxy(s: &common::Server) -> (Arc<dyn MekProvider>, FaultProxy) {
    let upstream: SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let mut c = s.config();
    c.address = proxy.url();
    c.timeout_secs = 2;
    c.max_retries = 1;
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    (Arc::new(p), proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_with_manager() {
    let Some(s) = common::server() else { return };
    manager::rotation_with_manager(Arc::new(s.provider().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_cold_cache() {
    let Some(s) = common::server() else { return };
    manager::single_flight_cold_cache(Arc::new(s.provider().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_and_recovery() {
    let Some(s) = common::server() else { return };
    let (p, proxy) = behind_proxy(&s).await;
    manager::outage_and_recovery(p, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_survives_outage() {
    let Some(s) = common::server() else { return };
    let (p, proxy) = behind_proxy(&s).await;
    manager::rotation_survives_outage(p, &proxy).await;
}
