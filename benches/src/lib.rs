//! Shared fixtures for the criterion benchmarks in `benches/benches/`.
//!
//! Every benchmark measures its baseline in the same run (the machines are noisy), so results
//! are read as ratios: `cargo xtask bench` writes them to `docs/benchmarks.md`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod extra;

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

/// The Key Vault test server `cargo xtask bench` provisions (`HELIOSDB_TEST_AZURE_*`), or
/// `None` when it was not provisioned.
#[derive(Clone, Debug)]
pub struct AzureTestServer {
    /// The TLS port.
    pub port: u16,
    /// The server's CA (PEM file).
    pub ca: std::path::PathBuf,
    /// `https://127.0.0.1:<port>`: the Entra ID token endpoint's authority.
    pub authority: String,
    /// The test identity.
    pub tenant: String,
    /// The test identity.
    pub client_id: String,
}

/// The provisioned Key Vault test server, or `None`.
pub fn azure() -> Option<AzureTestServer> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let url = var("HELIOSDB_TEST_AZURE_URL")?;
    let port = url.trim_end_matches('/').rsplit(':').next()?.parse().ok()?;
    var("HELIOSDB_TEST_AZURE_CLIENT_SECRET")?;
    Some(AzureTestServer {
        port,
        ca: var("HELIOSDB_TEST_AZURE_CA")?.into(),
        authority: url.trim_end_matches('/').to_string(),
        tenant: var("HELIOSDB_TEST_AZURE_TENANT")?,
        client_id: var("HELIOSDB_TEST_AZURE_CLIENT_ID")?,
    })
}

/// Resolves `*.localhost` to 127.0.0.1, so the vault URL can be `https://<label>.kv.localhost`
/// and the SDK's challenge check stays on, as against Azure.
#[derive(Debug)]
pub struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ok = name.as_str().ends_with(".localhost");
        Box::pin(async move {
            if !ok {
                return Err("not a test host".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(std::net::SocketAddr::from(
                ([127, 0, 0, 1], 0),
            )));
            Ok(addrs)
        })
    }
}

impl AzureTestServer {
    /// A vault of its own for this process: `https://bench-<tag>-<pid>.kv.localhost:<port>`.
    pub fn vault_url(&self, tag: &str) -> String {
        format!(
            "https://bench-{tag}-{}.kv.localhost:{}",
            std::process::id(),
            self.port
        )
    }

    /// The provider's settings: RSA-OAEP-256 with the default 3072-bit keys, `client_secret`
    /// against the server's token endpoint, its CA, the challenge check on, default timeouts
    /// and retries.
    pub fn config(
        &self,
        vault_url: &str,
        key_name: &str,
    ) -> heliosdb_tde_core::AzureKeyVaultConfig {
        let mut c = heliosdb_tde_core::AzureKeyVaultConfig::new(vault_url, key_name);
        c.wrap_algorithm = Some("RSA-OAEP-256".into());
        c.credential = "client_secret".into();
        c.tenant_id = Some(self.tenant.clone());
        c.client_id = Some(self.client_id.clone());
        c.client_secret_env_var = "HELIOSDB_TEST_AZURE_CLIENT_SECRET".into();
        c.authority_host = Some(self.authority.clone());
        c.ca_cert = Some(self.ca.clone());
        c
    }

    /// The Azure provider on the test server. Build it inside the runtime that uses it.
    pub fn provider(
        &self,
        rt: &tokio::runtime::Runtime,
        config: &heliosdb_tde_core::AzureKeyVaultConfig,
        default_mek: &str,
    ) -> Arc<heliosdb_tde_azure_kv::AzureKvMekProvider> {
        let p = rt
            .block_on(
                heliosdb_tde_azure_kv::AzureKvMekProvider::builder(
                    config,
                    &MekId::new(default_mek).unwrap(),
                    SecurityMode::Development,
                )
                .dns_resolver(Arc::new(LoopbackResolver))
                .open(),
            )
            .unwrap();
        Arc::new(p)
    }

    /// A raw SDK `KeyClient` for `vault_url`: the baseline of the Azure row. The same HTTP
    /// stack as the provider's (reqwest with the CA, the provider's default timeout, no
    /// redirects, the loopback resolver), the same credential type (`ClientSecretCredential`
    /// against the server's token endpoint), the challenge check on, 3 retries.
    pub fn raw_key_client(
        &self,
        config: &heliosdb_tde_core::AzureKeyVaultConfig,
    ) -> azure_security_keyvault_keys::KeyClient {
        use azure_core::http::{ClientOptions, RetryOptions, Transport};
        let pem = std::fs::read(&self.ca).unwrap();
        let timeout = std::time::Duration::from_secs(config.timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .dns_resolver(Arc::new(LoopbackResolver))
            .build()
            .unwrap();
        let transport = Transport::new(Arc::new(http));
        let retry = RetryOptions::exponential(azure_core::http::ExponentialRetryOptions {
            max_retries: config.max_retries,
            ..Default::default()
        });
        let mut cloud = azure_core::cloud::CustomConfiguration::default();
        cloud.authority_host = self.authority.clone();
        let secret = std::env::var("HELIOSDB_TEST_AZURE_CLIENT_SECRET").unwrap();
        let credential = azure_identity::ClientSecretCredential::new(
            &self.tenant,
            self.client_id.clone(),
            azure_core::credentials::Secret::new(secret),
            Some(azure_identity::ClientSecretCredentialOptions {
                client_options: ClientOptions {
                    transport: Some(transport.clone()),
                    retry: retry.clone(),
                    cloud: Some(Arc::new(cloud.into())),
                    ..Default::default()
                },
            }),
        )
        .unwrap();
        azure_security_keyvault_keys::KeyClient::new(
            &config.vault_url,
            credential,
            Some(azure_security_keyvault_keys::KeyClientOptions {
                client_options: ClientOptions {
                    transport: Some(transport),
                    retry,
                    ..Default::default()
                },
                verify_challenge_resource: Some(true),
                ..Default::default()
            }),
        )
        .unwrap()
    }
}

/// The provider settings of the PKCS#11 rows: the SoftHSM2 token `cargo xtask bench`
/// provisioned (`module`, `token`), logged in with `pin`, two pooled sessions, no operation
/// logging, and the default `state_refresh`.
pub fn softhsm_settings(
    module: String,
    token: String,
    pin: &str,
    timeout: std::time::Duration,
) -> heliosdb_tde_pkcs11::Pkcs11Settings {
    heliosdb_tde_pkcs11::Pkcs11Settings::new(module, secrecy::SecretString::from(pin.to_owned()))
        .with_token_label(token)
        .with_timeout(timeout)
        .with_logging(false)
        .with_pool_size(2)
}

/// A raw cryptoki session on the SoftHSM2 token that `settings` names, logged in with `pin`: the
/// baseline side of the PKCS#11 rows. The module handle is never finalised (`ManuallyDrop`),
/// because the provider under test shares the process-wide `C_Initialize`.
pub fn raw_softhsm_session(
    settings: &heliosdb_tde_pkcs11::Pkcs11Settings,
    pin: &str,
) -> (
    std::mem::ManuallyDrop<cryptoki::context::Pkcs11>,
    cryptoki::session::Session,
) {
    let module = std::mem::ManuallyDrop::new(
        cryptoki::context::Pkcs11::new(&settings.library_path).unwrap(),
    );
    let slot = module
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            module.get_token_info(*s).unwrap().label().trim()
                == settings.token_label.as_deref().unwrap()
        })
        .unwrap();
    let session = module.open_rw_session(slot).unwrap();
    // Already logged in through another session of the process is fine.
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&secrecy::SecretString::from(pin.to_owned())),
    );
    (module, session)
}
