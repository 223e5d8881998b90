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

/// The moto server `cargo xtask bench` provisions (`HELIOSDB_TEST_AWS_ENDPOINT`), or `None`
/// when it was not provisioned.
pub fn moto() -> Option<String> {
    std::env::var("HELIOSDB_TEST_AWS_ENDPOINT").ok()
}

/// The region of the moto rows (`AWS_REGION` as provisioned, else `us-east-1`).
pub fn moto_region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// A raw aws-sdk-kms client on the moto server with the provider's default timeouts and
/// retries (connect 3 s, operation 10 s, standard mode, 3 attempts) and the test credentials
/// from the environment: the baseline of the moto rows. Build it inside the runtime that uses
/// it.
pub async fn raw_kms_client(endpoint: &str) -> aws_sdk_kms::Client {
    let defaults = heliosdb_tde_core::AwsKmsConfig::default();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(moto_region()))
        .endpoint_url(endpoint)
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(defaults.max_attempts.unwrap_or(3)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_millis(
                    defaults.connect_timeout_ms,
                ))
                .operation_timeout(std::time::Duration::from_secs(defaults.timeout_secs))
                .build(),
        )
        .load()
        .await;
    aws_sdk_kms::Client::new(&sdk)
}

/// Creates a `SYMMETRIC_DEFAULT` `ENCRYPT_DECRYPT` key on the moto server; returns its ARN.
pub async fn create_kms_key(client: &aws_sdk_kms::Client, description: &str) -> String {
    client
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .description(description)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap()
}

/// An AWS KMS provider on the provisioned moto server whose default MEK `default_mek` has the
/// fresh key `key_arn` as version 1 (adopted by the first `generate_mek`), with its aliases
/// under a prefix private to this process (`tag` and the process id), so runs never meet each
/// other's keys on the shared server.
pub fn moto_provider(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    tag: &str,
    default_mek: &str,
    key_arn: &str,
) -> Arc<heliosdb_tde_aws_kms::AwsKmsMekProvider> {
    let mut config = heliosdb_tde_core::AwsKmsConfig::new(moto_region(), key_arn);
    config.endpoint = Some(endpoint.to_string());
    config.alias_prefix = format!("alias/bench-{tag}-{}", std::process::id());
    let p = rt
        .block_on(heliosdb_tde_aws_kms::AwsKmsMekProvider::open(
            &config,
            &MekId::new(default_mek).unwrap(),
            SecurityMode::Development,
        ))
        .unwrap();
    Arc::new(p)
}
