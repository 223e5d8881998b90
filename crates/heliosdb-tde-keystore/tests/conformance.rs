//! The key store conformance suite (`heliosdb_tde_conformance::store`) against the redb store on
//! disk, reopened from the same directory for the durability check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::KeyStore;
use heliosdb_tde_keystore::RedbKeyStore;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redb_store_passes_the_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    heliosdb_tde_conformance::store::run_all(|| -> Arc<dyn KeyStore> {
        Arc::new(RedbKeyStore::open_dir(&path).unwrap())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redb_store_exports_and_imports_as_the_suite_requires() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    heliosdb_tde_conformance::store::export_import(
        Arc::new(RedbKeyStore::open_dir(a.path()).unwrap()),
        Arc::new(RedbKeyStore::open_dir(b.path()).unwrap()),
    )
    .await;
}
