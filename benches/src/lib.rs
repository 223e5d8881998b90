//! Shared fixtures for the criterion benchmarks in `benches/benches/`.
//!
//! Every benchmark measures its baseline in the same run (the machines are noisy), so results
//! are read as ratios: `cargo xtask bench` writes them to `docs/benchmarks.md`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyStore, MekId, MekProvider, SecureFileConfig, SecurityMode,
    TableKey,
};
use heliosdb_tde_file::SecureFileMekProvider;
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
use std::path::Path;
use std::sync::Arc;

/// A table key with fixed bytes, for benchmarks only.
pub fn bench_tek() -> TableKey {
    TableKey::new(
        "bench.table@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&[0x42; 32]).unwrap(),
    )
}

/// A secure-file provider in `dir/mek`, with a fixed benchmark passphrase.
pub fn file_provider(dir: &Path) -> Arc<dyn MekProvider> {
    let pass =
        secrecy::SecretString::from("benchmark passphrase, long enough for production".to_string());
    Arc::new(
        SecureFileMekProvider::open_with_passphrase(
            &SecureFileConfig::new(dir.join("mek")),
            SecurityMode::Production,
            pass,
            vec![],
        )
        .unwrap(),
    )
}

/// A key manager over `provider` and a redb store in `dir/keys`, with `tables` TEKs created.
pub fn manager(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    provider: Arc<dyn MekProvider>,
    cache_limit: usize,
    tables: usize,
    grace_zero: bool,
) -> KeyManager {
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap());
    let mut c = KeyManagerConfig::new(MekId::new("bench_mek").unwrap(), SecurityMode::Development)
        .with_cache_limit(cache_limit);
    if grace_zero {
        c = c.with_rotation(RotationConfig::default().with_grace_period(std::time::Duration::ZERO));
    }
    let km = KeyManager::new(provider, store, c).unwrap();
    rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        let names: Vec<String> = (0..tables).map(|i| format!("t{i:07}")).collect();
        for chunk in names.chunks(5000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            km.create_table_keys(&refs).await.unwrap();
        }
    });
    km
}

/// The OpenBao dev server `cargo xtask bench` provisions: its address and the test token
/// (limited to the documented policy), or `None` when it was not provisioned.
pub fn openbao() -> Option<(String, String)> {
    let addr = std::env::var("HELIOSDB_TEST_VAULT_ADDR").ok()?;
    let token = std::env::var("HELIOSDB_TEST_VAULT_TOKEN").ok()?;
    Some((addr, token))
}

/// A Vault Transit provider on the provisioned OpenBao server, with Transit keys and
/// lifecycle records under names private to this process (`tag` and the process id), so runs
/// never meet each other's keys on the shared server. Returns the provider and its key prefix.
pub fn openbao_provider(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    tag: &str,
) -> (Arc<heliosdb_tde_vault::VaultMekProvider>, String) {
    let prefix = format!("bench-{tag}-{}-", std::process::id());
    let mut config = heliosdb_tde_core::VaultTransitConfig::new(addr);
    config.token_env_var = Some("HELIOSDB_TEST_VAULT_TOKEN".into());
    config.key_prefix = Some(prefix.clone());
    config.state_path = format!("heliosdb/{prefix}meks");
    let p = rt
        .block_on(heliosdb_tde_vault::VaultMekProvider::open(
            &config,
            SecurityMode::Development,
        ))
        .unwrap();
    (Arc::new(p), prefix)
}

/// A raw vaultrs client on the same server with the same token: the baseline of the OpenBao
/// rows. Build it inside the runtime that uses it.
pub fn raw_vault_client(addr: &str, token: &str) -> vaultrs::client::VaultClient {
    vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}
