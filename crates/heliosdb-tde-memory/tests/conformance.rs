//! The in-memory provider runs the provider conformance suite, plus its own specifics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::MekProvider;
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

fn p() -> Arc<dyn MekProvider> {
    Arc::new(InMemoryMekProvider::new())
}

#[tokio::test]
async fn round_trip() {
    provider::round_trip(p().as_ref()).await;
}

#[tokio::test]
async fn aad_binding() {
    provider::aad_binding(p().as_ref()).await;
}

#[tokio::test]
async fn versions() {
    provider::versions(p().as_ref()).await;
}

#[tokio::test]
async fn errors() {
    provider::errors(p().as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency() {
    provider::concurrency(p()).await;
}

#[tokio::test]
async fn secrecy() {
    provider::secrecy(p().as_ref()).await;
}

#[test]
fn insecure_and_says_so() {
    let p = InMemoryMekProvider::new();
    assert!(!p.is_secure());
    assert_eq!(p.description(), "In-Memory (INSECURE - testing only)");
    assert_eq!(p.kind(), heliosdb_tde_core::ProviderKind::InMemory);
}
