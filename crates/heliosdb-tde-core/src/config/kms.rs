//! Cloud KMS settings: `kms_config` (AWS KMS, Azure Key Vault, HashiCorp Vault Transit).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Configuration of a cloud KMS MEK provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KmsConfig {
    /// AWS Key Management Service.
    Aws(AwsKmsConfig),
    /// Azure Key Vault.
    Azure(AzureKeyVaultConfig),
    /// HashiCorp Vault (or OpenBao) Transit.
    Vault(VaultTransitConfig),
}

impl KmsConfig {
    /// The facade's cargo feature that provides this backend.
    pub fn feature(&self) -> &'static str {
        match self {
            KmsConfig::Aws(_) => "aws-kms",
            KmsConfig::Azure(_) => "azure-kv",
            KmsConfig::Vault(_) => "vault",
        }
    }

    /// A human-readable name of the backend.
    pub fn name(&self) -> &'static str {
        match self {
            KmsConfig::Aws(_) => "AWS KMS",
            KmsConfig::Azure(_) => "Azure Key Vault",
            KmsConfig::Vault(_) => "HashiCorp Vault Transit",
        }
    }
}

/// AWS KMS settings: `kms_config` with `provider = "aws"`.
///
/// Nothing secret is stored here: credentials come from the AWS SDK's default chain
/// (environment, shared profile including SSO, web identity, container and instance roles) or
/// from `profile`. Every field but `region` and `key_id` has a default:
///
/// ```
/// use heliosdb_tde_core::{AwsKmsConfig, KmsConfig};
///
/// // The user's guide's example, the other fields at their defaults.
/// let kms = KmsConfig::Aws(AwsKmsConfig {
///     region: "us-east-1".to_string(),
///     key_id: "arn:aws:kms:us-east-1:123456789:key/abc-123".to_string(),
///     endpoint: None,
///     ..Default::default()
/// });
/// let KmsConfig::Aws(aws) = &kms else { unreachable!() };
/// assert_eq!(aws.alias_prefix, "alias/heliosdb");
/// assert!(aws.create_keys);
/// assert_eq!(AwsKmsConfig::new("us-east-1", "alias/db-mek").timeout_secs, 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// The AWS region, for example `us-east-1`; `AWS_REGION` overrides it.
    pub region: String,
    /// The KMS key (key id, key ARN or alias) that is version 1 of the default MEK;
    /// `HELIOSDB_KMS_KEY_ID` overrides it.
    pub key_id: String,
    /// A custom endpoint URL (a VPC endpoint, or a local test server); `None` for AWS's own.
    /// Production mode refuses an `http://` endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The AWS profile to take credentials and settings from; the SDK's default chain when
    /// `None`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Where the provider keeps one alias per MEK version: `<alias_prefix>/<mek id>/v<N>`;
    /// `alias/heliosdb` by default.
    #[serde(default = "default_aws_alias_prefix")]
    pub alias_prefix: String,
    /// Whether rotation and `mek generate` may call `CreateKey`; `true` by default. When
    /// `false`, the operator creates the key and alias of the next version and the provider
    /// adopts them.
    #[serde(default = "default_true")]
    pub create_keys: bool,
    /// Turn on KMS automatic rotation of key material on the keys the provider creates;
    /// `false` by default.
    #[serde(default)]
    pub enable_key_rotation: bool,
    /// The KMS rotation period, in days (90 to 2560), for those keys; KMS's default (365)
    /// when `None`.
    #[serde(default)]
    pub rotation_period_days: Option<u32>,
    /// Seconds before a whole KMS operation (every attempt included) is abandoned; 10 by
    /// default.
    #[serde(default = "default_aws_timeout")]
    pub timeout_secs: u64,
    /// Milliseconds before a connection attempt is abandoned; 3000 by default.
    #[serde(default = "default_aws_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Attempts per KMS call made by the SDK; `AWS_MAX_ATTEMPTS` applies when `None`, else 3.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The SDK's retry mode, `standard` or `adaptive` (client-side rate limiting);
    /// `AWS_RETRY_MODE` applies when `None`, else `standard`.
    #[serde(default)]
    pub retry_mode: Option<String>,
}

fn default_aws_alias_prefix() -> String {
    "alias/heliosdb".into()
}

fn default_true() -> bool {
    true
}

fn default_aws_timeout() -> u64 {
    10
}

fn default_aws_connect_timeout() -> u64 {
    3000
}

impl AwsKmsConfig {
    /// The settings for `key_id` in `region`, every other field at its default.
    pub fn new(region: impl Into<String>, key_id: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            key_id: key_id.into(),
            ..Self::default()
        }
    }
}

impl Default for AwsKmsConfig {
    /// Empty `region` and `key_id` (which validation refuses), every other field at its
    /// default.
    fn default() -> Self {
        Self {
            region: String::new(),
            key_id: String::new(),
            endpoint: None,
            profile: None,
            alias_prefix: default_aws_alias_prefix(),
            create_keys: true,
            enable_key_rotation: false,
            rotation_period_days: None,
            timeout_secs: default_aws_timeout(),
            connect_timeout_ms: default_aws_connect_timeout(),
            max_attempts: None,
            retry_mode: None,
        }
    }
}

/// Azure Key Vault / Managed HSM settings: `kms_config` with `provider = "azure"`.
///
/// Nothing secret is stored here: the client secret (credential `client_secret`) is read at
/// run time from the variable `client_secret_env_var` names or from `client_secret_file`.
/// Every field but `vault_url` and `key_name` has a default; build one in code with
/// [`AzureKeyVaultConfig::new`]:
///
/// ```
/// use heliosdb_tde_core::AzureKeyVaultConfig;
///
/// let azure = AzureKeyVaultConfig::new("https://my-vault.vault.azure.net", "heliosdb-mek");
/// assert_eq!(azure.key_size, 3072);
/// assert_eq!(azure.credential, "managed_identity");
/// assert!(azure.verify_challenge_resource);
/// assert_eq!(azure.effective_wrap_algorithm(), "RSA-OAEP-256");
/// let hsm = AzureKeyVaultConfig::new("https://my-hsm.managedhsm.azure.net", "heliosdb-mek");
/// assert_eq!(hsm.effective_wrap_algorithm(), "A256GCM");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKeyVaultConfig {
    /// The vault or Managed HSM URL, for example `https://my-vault.vault.azure.net`;
    /// `AZURE_KEYVAULT_URL` overrides it. Production mode refuses `http://`.
    pub vault_url: String,
    /// The key that holds the default MEK. Other MEK ids get derived key names.
    pub key_name: String,
    /// How TEKs are wrapped: `RSA-OAEP-256`, `A256KW` or `A256GCM`. When `None`,
    /// `RSA-OAEP-256` for a standard vault and `A256GCM` for a Managed HSM
    /// (`*.managedhsm.azure.net`).
    #[serde(default)]
    pub wrap_algorithm: Option<String>,
    /// RSA modulus size, in bits, of the keys the provider creates; 3072 by default. Existing
    /// keys under 2048 bits are refused.
    #[serde(default = "default_azure_key_size")]
    pub key_size: u32,
    /// Create `RSA-HSM` keys (premium vaults) instead of software `RSA` keys; `false` by
    /// default.
    #[serde(default)]
    pub hsm_protected: bool,
    /// How the provider signs in: `managed_identity` (the default), `workload_identity`,
    /// `client_secret`, `azure_cli` or `developer_tools`.
    #[serde(default = "default_azure_credential")]
    pub credential: String,
    /// The Entra ID tenant, for `client_secret` and `workload_identity`; `AZURE_TENANT_ID`
    /// applies when `None`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The application (client) id, for `client_secret`, `workload_identity` and a
    /// user-assigned managed identity; `AZURE_CLIENT_ID` applies when `None`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The environment variable the client secret is read from; `AZURE_CLIENT_SECRET` by
    /// default.
    #[serde(default = "default_azure_secret_env_var")]
    pub client_secret_env_var: String,
    /// A file holding the client secret instead (mode 0600 in production).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The Entra ID authority host (sovereign clouds, a test server); the public cloud's
    /// when `None`.
    #[serde(default)]
    pub authority_host: Option<String>,
    /// An extra CA certificate (PEM) trusted for the vault and the authority.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Check that the vault's authentication challenge names a resource the vault URL
    /// belongs to; `true` by default, and `false` is accepted only in development mode.
    #[serde(default = "default_true")]
    pub verify_challenge_resource: bool,
    /// Seconds before one request is abandoned; 10 by default.
    #[serde(default = "default_azure_timeout")]
    pub timeout_secs: u64,
    /// Retries of a throttled (429), failed (5xx) or unreachable call, with exponential
    /// backoff honouring `Retry-After`; 3 by default.
    #[serde(default = "default_azure_max_retries")]
    pub max_retries: u32,
    /// Ceiling, in seconds, on the time spent retrying one call; 30 by default.
    #[serde(default = "default_azure_max_retry_secs")]
    pub max_retry_secs: u64,
}

fn default_azure_key_size() -> u32 {
    3072
}

fn default_azure_credential() -> String {
    "managed_identity".into()
}

fn default_azure_secret_env_var() -> String {
    "AZURE_CLIENT_SECRET".into()
}

fn default_azure_timeout() -> u64 {
    10
}

fn default_azure_max_retries() -> u32 {
    3
}

fn default_azure_max_retry_secs() -> u64 {
    30
}

impl AzureKeyVaultConfig {
    /// The settings for `key_name` in the vault at `vault_url`, every other field at its
    /// default.
    pub fn new(vault_url: impl Into<String>, key_name: impl Into<String>) -> Self {
        Self {
            vault_url: vault_url.into(),
            key_name: key_name.into(),
            ..Self::default()
        }
    }

    /// Whether `vault_url` names an Azure Managed HSM (`*.managedhsm.azure.net`, or another
    /// cloud's `managedhsm` domain).
    pub fn is_managed_hsm(&self) -> bool {
        let host = self
            .vault_url
            .split("://")
            .nth(1)
            .unwrap_or(&self.vault_url)
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        host.split('.').nth(1) == Some("managedhsm")
    }

    /// The wrap algorithm in use: `wrap_algorithm`, or the default for the kind of vault.
    pub fn effective_wrap_algorithm(&self) -> &str {
        match &self.wrap_algorithm {
            Some(alg) => alg,
            None if self.is_managed_hsm() => "A256GCM",
            None => "RSA-OAEP-256",
        }
    }
}

impl Default for AzureKeyVaultConfig {
    /// Empty `vault_url` and `key_name` (which validation refuses), every other field at its
    /// default.
    fn default() -> Self {
        Self {
            vault_url: String::new(),
            key_name: String::new(),
            wrap_algorithm: None,
            key_size: default_azure_key_size(),
            hsm_protected: false,
            credential: default_azure_credential(),
            tenant_id: None,
            client_id: None,
            client_secret_env_var: default_azure_secret_env_var(),
            client_secret_file: None,
            authority_host: None,
            ca_cert: None,
            verify_challenge_resource: true,
            timeout_secs: default_azure_timeout(),
            max_retries: default_azure_max_retries(),
            max_retry_secs: default_azure_max_retry_secs(),
        }
    }
}

/// HashiCorp Vault / OpenBao Transit settings: `kms_config` with `provider = "vault"`.
///
/// Nothing secret is stored here: the token is read at run time from the variable
/// `token_env_var` names (`VAULT_TOKEN` by default) or from `token_file`. Every field but
/// `address` has a default; build one in code with [`VaultTransitConfig::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTransitConfig {
    /// The server address, for example `https://vault.example.com:8200`; `VAULT_ADDR`
    /// overrides it.
    pub address: String,
    /// The Transit mount path; `transit` by default.
    #[serde(default)]
    pub mount: Option<String>,
    /// The environment variable holding the token; `VAULT_TOKEN` by default.
    #[serde(default)]
    pub token_env_var: Option<String>,
    /// A file holding the token (mode 0600 required in production), re-read when it changes,
    /// so that a Vault Agent sink works. Used instead of the variable when set.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The Vault Enterprise / OpenBao namespace; `VAULT_NAMESPACE` overrides it.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A PEM bundle of the CA that signs the server certificate; `VAULT_CACERT` overrides it.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// Prefix of the Transit key names: key name = prefix + MEK id (lets a policy say
    /// `transit/encrypt/heliosdb-*`). None by default.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// The KV version 2 mount holding the MEK lifecycle records; `secret` by default.
    #[serde(default = "default_vault_state_mount")]
    pub state_mount: String,
    /// The path of the records inside `state_mount`; `heliosdb/meks` by default.
    #[serde(default = "default_vault_state_path")]
    pub state_path: String,
    /// Seconds before one request is abandoned; 10 by default.
    #[serde(default = "default_vault_timeout")]
    pub timeout_secs: u64,
    /// Retries of one call on a transient failure (connection error, timeout, HTTP 429 or
    /// 5xx); 3 by default.
    #[serde(default = "default_vault_retries")]
    pub max_retries: u32,
}

fn default_vault_state_mount() -> String {
    "secret".into()
}

fn default_vault_state_path() -> String {
    "heliosdb/meks".into()
}

fn default_vault_timeout() -> u64 {
    10
}

fn default_vault_retries() -> u32 {
    3
}

impl VaultTransitConfig {
    /// The settings for the server at `address`, every other field at its default.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            mount: None,
            token_env_var: None,
            token_file: None,
            namespace: None,
            ca_cert: None,
            key_prefix: None,
            state_mount: default_vault_state_mount(),
            state_path: default_vault_state_path(),
            timeout_secs: default_vault_timeout(),
            max_retries: default_vault_retries(),
        }
    }

    /// The Transit mount path (`mount`, else `transit`).
    pub fn mount_path(&self) -> &str {
        self.mount.as_deref().unwrap_or("transit")
    }

    /// The token variable (`token_env_var`, else `VAULT_TOKEN`).
    pub fn token_var(&self) -> &str {
        self.token_env_var.as_deref().unwrap_or("VAULT_TOKEN")
    }
}
