//! The secure file provider runs the provider conformance suite against a real directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{MekProvider, SecurityMode};
use std::sync::Arc;

fn fresh() -> (tempfile::TempDir, Arc<dyn MekProvider>) {
    let dir = tempfile::tempdir().unwrap();
    let p = common::open(
        &dir.path().join("mek"),
        common::PASS_A,
        SecurityMode::Production,
    )
    .unwrap();
    (dir, Arc::new(p))
}

#[tokio::test]
async fn round_trip() {
    let (_d, p) = fresh();
    provider::round_trip(p.as_ref()).await;
}

#[tokio::test]
async fn aad_binding() {
    let (_d, p) = fresh();
    provider::aad_binding(p.as_ref()).await;
}

#[tokio::test]
async fn versions() {
    let (_d, p) = fresh();
    provider::versions(p.as_ref()).await;
}

#[tokio::test]
async fn errors() {
    let (_d, p) = fresh();
    provider::errors(p.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency() {
    let (_d, p) = fresh();
    provider::concurrency(p).await;
}

#[tokio::test]
async fn secrecy() {
    let (_d, p) = fresh();
    provider::secrecy(p.as_ref()).await;
    let text = format!("{p:?}");
    assert!(
        !text.contains("horse"),
        "the passphrase leaked into Debug: {text}"
    );
}

/// The suite again after a reopen: everything it left behind is still there and consistent.
#[tokio::test]
async fn versions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mek");
    let p = common::open(&path, common::PASS_A, SecurityMode::Production).unwrap();
    provider::versions(&p).await;
    let ids = p.list_meks().await.unwrap();
    let before = p.mek_info(&ids[0]).await.unwrap();
    drop(p);
    let p = common::open(&path, common::PASS_A, SecurityMode::Production).unwrap();
    let after = p.mek_info(&ids[0]).await.unwrap();
    assert_eq!(before.versions.len(), after.versions.len());
    for (b, a) in before.versions.iter().zip(&after.versions) {
        assert_eq!((&b.mek, b.state), (&a.mek, a.state));
    }
}
