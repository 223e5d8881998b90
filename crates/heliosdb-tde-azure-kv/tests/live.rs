//! The conformance suite against a real Azure Key Vault or Managed HSM. Ignored: CI never runs
//! it. To run it, with an identity allowed the data-plane operations listed in
//! `docs/providers/azure-key-vault.md` (get, list, create, update, wrap and unwrap keys;
//! encrypt and decrypt for A256GCM):
//!
//! ```sh
//! AZURE_KEYVAULT_URL=https://my-vault.vault.azure.net \
//!   AZURE_TENANT_ID=... AZURE_CLIENT_ID=... AZURE_CLIENT_SECRET=... \
//!   cargo test -p heliosdb-tde-azure-kv --test live -- --ignored live
//! ```
//!
//! Without `AZURE_CLIENT_SECRET` the test signs in with `HELIOSDB_AZURE_LIVE_CREDENTIAL`
//! (`azure_cli` by default; `managed_identity`, `workload_identity`, `developer_tools`).
//! `HELIOSDB_AZURE_LIVE_ALGORITHM` picks the wrap algorithm (by default RSA-OAEP-256 for a
//! vault, A256GCM for a Managed HSM). The checks create keys named `heliosdb-...`; the test
//! prints the default key's name. Delete (and, without purge protection, purge) them afterwards.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_azure_kv::AzureKvMekProvider;
use heliosdb_tde_conformance::{provider, services};
use heliosdb_tde_core::{AzureKeyVaultConfig, MekProvider, SecurityMode};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "talks to real Azure Key Vault: set AZURE_KEYVAULT_URL and credentials"]
async fn live() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let probe = var("AZURE_KEYVAULT_URL").ok_or("AZURE_KEYVAULT_URL is not set");
    let Some(url) = services::require("Azure Key Vault (live)", probe) else {
        return;
    };
    let mut c = AzureKeyVaultConfig::new(url, format!("heliosdb-live-{}", common::random()));
    c.wrap_algorithm = var("HELIOSDB_AZURE_LIVE_ALGORITHM");
    c.tenant_id = var("AZURE_TENANT_ID");
    c.client_id = var("AZURE_CLIENT_ID");
    c.credential = if var("AZURE_CLIENT_SECRET").is_some() {
        "client_secret".into()
    } else {
        var("HELIOSDB_AZURE_LIVE_CREDENTIAL").unwrap_or_else(|| "azure_cli".into())
    };
    println!(
        "live Azure Key Vault test: {} key {} ({})",
        c.vault_url, c.key_name, c.credential
    );
    let p = AzureKvMekProvider::open(&c, &common::fresh("live"), SecurityMode::Production)
        .await
        .unwrap_or_else(|e| panic!("open against Azure Key Vault failed: {e}"));
    let p: Arc<dyn MekProvider> = Arc::new(p);
    provider::run_all(p).await;
}
