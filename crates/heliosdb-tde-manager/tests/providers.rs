//! MEK rotation with dual encryption through the key manager, over the in-memory, secure file
//! and PKCS#11 (SoftHSM2) providers: the shared check
//! `heliosdb_tde_conformance::manager::rotation_with_manager` (feature `manager`, kept apart
//! from the provider suite, which stays free of the manager).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::manager::rotation_with_manager;
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

#[tokio::test]
async fn rotation_with_manager_over_the_in_memory_provider() {
    rotation_with_manager(Arc::new(InMemoryMekProvider::new())).await;
}

#[tokio::test]
async fn rotation_with_manager_over_the_secure_file_provider() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::secure_file_provider(&dir.path().join("mek"));
    rotation_with_manager(Arc::new(p)).await;
}

/// Over the SoftHSM2 test token (skipped loudly without one, a failure when services are
/// required, as in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_manager_over_the_pkcs11_provider() {
    use heliosdb_tde_conformance::{services, softhsm};
    if softhsm::token_present().is_none() {
        return;
    }
    let settings = heliosdb_tde_pkcs11::Pkcs11Settings::from_config(
        &softhsm::hsm_config(),
        secrecy::SecretString::from(softhsm::pin()),
    );
    let opened = heliosdb_tde_pkcs11::Pkcs11MekProvider::open(settings).await;
    let Some(p) = services::require(softhsm::SERVICE, opened.map_err(|e| e.to_string())) else {
        return;
    };
    rotation_with_manager(Arc::new(p)).await;
}
