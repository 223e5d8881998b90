//! The provider's settings: the checks of [`AzureKeyVaultConfig`] ([`check_config`]), the wrap
//! algorithm, and the resolved values the provider runs with.

use crate::names::valid_key_name;
use heliosdb_tde_core::{AzureKeyVaultConfig, Result, SecurityMode, TdeError};
use std::fmt;
use std::time::Duration;

/// The credential types `kms_config.credential` accepts.
pub(crate) const CREDENTIALS: [&str; 5] = [
    "managed_identity",
    "workload_identity",
    "client_secret",
    "azure_cli",
    "developer_tools",
];

/// RSA sizes Key Vault creates.
const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

/// How TEKs are wrapped in Key Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WrapAlgorithm {
    /// `wrapKey` with RSA-OAEP (SHA-256, MGF1-SHA-256) under an `RSA` / `RSA-HSM` key: the only
    /// choice on a standard vault. The wrapped value is `TEK || SHA-256(associated data)`.
    RsaOaep256,
    /// `wrapKey` with AES key wrap (RFC 3394) under an `oct-HSM` key (Managed HSM). The wrapped
    /// value is `TEK || SHA-256(associated data) || 16 random bytes` (AES key wrap is
    /// deterministic; the salt makes two wraps of one TEK differ).
    A256Kw,
    /// `encrypt` with AES-256-GCM and the associated data under an `oct-HSM` key (Managed HSM):
    /// a native binding.
    A256Gcm,
}

impl WrapAlgorithm {
    /// Every accepted algorithm.
    pub const ALL: [WrapAlgorithm; 3] = [Self::RsaOaep256, Self::A256Kw, Self::A256Gcm];

    /// The algorithm named `s` (`RSA-OAEP-256`, `A256KW`, `A256GCM`, case-insensitive); an
    /// [`TdeError::InvalidConfig`] naming `kms_config.wrap_algorithm` and listing the accepted
    /// values otherwise (`RSA1_5` and `RSA-OAEP` included: they are refused).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                let why = match t.to_ascii_uppercase().as_str() {
                    "RSA1_5" => " (RSA1_5 is PKCS#1 v1.5 padding, open to padding-oracle attacks)",
                    "RSA-OAEP" => " (RSA-OAEP uses SHA-1)",
                    _ => "",
                };
                TdeError::config(
                    "kms_config.wrap_algorithm",
                    format!(
                        "{s:?} is not accepted{why}; use one of RSA-OAEP-256 (standard vaults), A256KW or A256GCM (Managed HSM oct-HSM keys)"
                    ),
                )
            })
    }

    /// The Key Vault name: `RSA-OAEP-256`, `A256KW` or `A256GCM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::A256Kw => "A256KW",
            Self::A256Gcm => "A256GCM",
        }
    }

    /// The algorithm's code in the payload (`docs/formats/wrapped-tek.md`).
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::RsaOaep256 => 1,
            Self::A256Kw => 2,
            Self::A256Gcm => 3,
        }
    }

    /// The algorithm with payload code `code`.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }

    /// Whether the algorithm uses an RSA key (else an `oct-HSM` key).
    pub fn is_rsa(self) -> bool {
        self == Self::RsaOaep256
    }

    /// Whether the algorithm uses `encrypt`/`decrypt` (else `wrapKey`/`unwrapKey`).
    pub(crate) fn uses_encrypt(self) -> bool {
        self == Self::A256Gcm
    }

    /// The key operations an active version needs.
    pub(crate) fn active_ops(self) -> [&'static str; 2] {
        if self.uses_encrypt() {
            ["encrypt", "decrypt"]
        } else {
            ["wrapKey", "unwrapKey"]
        }
    }

    /// The key operation that opens a wrap (all a decrypt-only version keeps).
    pub(crate) fn unwrap_op(self) -> &'static str {
        self.active_ops()[1]
    }
}

impl fmt::Display for WrapAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The configuration, checked and resolved.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) vault_url: String,
    pub(crate) key_name: String,
    pub(crate) algorithm: WrapAlgorithm,
    pub(crate) key_size: u32,
    pub(crate) hsm_protected: bool,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) max_retry: Duration,
    pub(crate) warnings: Vec<String>,
}

impl Settings {
    /// Checks `config` and resolves it.
    pub(crate) fn from_config(config: &AzureKeyVaultConfig, mode: SecurityMode) -> Result<Self> {
        let prod = mode.is_production();
        let mut warnings = Vec::new();
        let url = reqwest::Url::parse(config.vault_url.trim()).map_err(|e| {
            TdeError::config(
                "kms_config.vault_url",
                format!(
                    "{:?} is not a URL ({e}); use the vault's URL, for example https://my-vault.vault.azure.net",
                    config.vault_url
                ),
            )
        })?;
        let host = url.host_str().unwrap_or_default().to_string();
        match url.scheme() {
            "https" => {}
            "http" if !prod => warnings.push(format!(
                "kms_config.vault_url {} is plain HTTP: the Azure SDK refuses to send a token over it (development mode only; production mode refuses it)",
                config.vault_url
            )),
            "http" => {
                return Err(TdeError::config(
                    "kms_config.vault_url",
                    format!(
                        "{} is plain HTTP; production mode requires https:// (Key Vault only speaks HTTPS)",
                        config.vault_url
                    ),
                ));
            }
            other => {
                return Err(TdeError::config(
                    "kms_config.vault_url",
                    format!(
                        "{} has scheme {other:?}; use https://<vault>.vault.azure.net or https://<hsm>.managedhsm.azure.net",
                        config.vault_url
                    ),
                ));
            }
        }
        if host.is_empty()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(TdeError::config(
                "kms_config.vault_url",
                format!(
                    "{} must be a plain vault URL (a host, no user, query or fragment), for example https://my-vault.vault.azure.net",
                    config.vault_url
                ),
            ));
        }
        if !valid_key_name(&config.key_name) {
            return Err(TdeError::config(
                "kms_config.key_name",
                format!(
                    "{:?} is not a Key Vault key name: use 1-127 characters of 0-9, a-z, A-Z and -",
                    config.key_name
                ),
            ));
        }
        let algorithm = WrapAlgorithm::parse(config.effective_wrap_algorithm())?;
        if algorithm.is_rsa() && !RSA_SIZES.contains(&config.key_size) {
            return Err(TdeError::config(
                "kms_config.key_size",
                format!(
                    "{} bits is not an RSA size Key Vault creates; use 2048, 3072 (the default) or 4096",
                    config.key_size
                ),
            ));
        }
        check_credential(config)?;
        if let Some(a) = &config.authority_host {
            let ok = reqwest::Url::parse(a)
                .map(|u| u.scheme() == "https" && u.host_str().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(TdeError::config(
                    "kms_config.authority_host",
                    format!(
                        "{a:?} is not an https:// URL; use the Entra ID authority, for example https://login.microsoftonline.us (the Azure SDK requires HTTPS)"
                    ),
                ));
            }
        }
        if !config.verify_challenge_resource {
            if prod {
                return Err(TdeError::config(
                    "kms_config.verify_challenge_resource",
                    "false is accepted only in development mode: without the check a server that is not the vault can obtain a token for the vault's resource; remove the setting",
                ));
            }
            warnings.push(
                "kms_config.verify_challenge_resource is false: the vault's authentication challenge is not checked against the vault URL (development mode only)".into(),
            );
        }
        if config.timeout_secs == 0 || config.timeout_secs > 600 {
            return Err(TdeError::config(
                "kms_config.timeout_secs",
                format!(
                    "{} is out of range; use 1 to 600 seconds",
                    config.timeout_secs
                ),
            ));
        }
        if config.max_retries > 20 {
            return Err(TdeError::config(
                "kms_config.max_retries",
                format!("{} is out of range; use 0 to 20", config.max_retries),
            ));
        }
        if config.max_retry_secs == 0 || config.max_retry_secs > 3600 {
            return Err(TdeError::config(
                "kms_config.max_retry_secs",
                format!(
                    "{} is out of range; use 1 to 3600 seconds",
                    config.max_retry_secs
                ),
            ));
        }
        Ok(Self {
            vault_url: url.as_str().trim_end_matches('/').to_string(),
            key_name: config.key_name.clone(),
            algorithm,
            key_size: config.key_size,
            hsm_protected: config.hsm_protected,
            timeout: Duration::from_secs(config.timeout_secs),
            max_retries: config.max_retries,
            max_retry: Duration::from_secs(config.max_retry_secs),
            warnings,
        })
    }

    /// The hard ceiling on one provider call: every try's timeout, the retry budget, and one
    /// more request for the credential.
    pub(crate) fn call_deadline(&self) -> Duration {
        self.max_retry + self.timeout * 2
    }
}

/// The tenant id: `kms_config.tenant_id`, else `AZURE_TENANT_ID`.
pub(crate) fn tenant_id(config: &AzureKeyVaultConfig) -> Option<String> {
    config
        .tenant_id
        .clone()
        .or_else(|| std::env::var("AZURE_TENANT_ID").ok())
        .filter(|t| !t.trim().is_empty())
}

/// The client id: `kms_config.client_id`, else `AZURE_CLIENT_ID`.
pub(crate) fn client_id(config: &AzureKeyVaultConfig) -> Option<String> {
    config
        .client_id
        .clone()
        .or_else(|| std::env::var("AZURE_CLIENT_ID").ok())
        .filter(|t| !t.trim().is_empty())
}

fn check_credential(config: &AzureKeyVaultConfig) -> Result<()> {
    let cred = config.credential.as_str();
    if !CREDENTIALS.contains(&cred) {
        return Err(TdeError::config(
            "kms_config.credential",
            format!(
                "{cred:?} is not a credential type; use one of {} (certificate credentials are not offered: use workload_identity or client_secret)",
                CREDENTIALS.join(", ")
            ),
        ));
    }
    if matches!(cred, "client_secret" | "workload_identity") {
        let mut missing = Vec::new();
        if tenant_id(config).is_none() {
            missing.push("kms_config.tenant_id (or AZURE_TENANT_ID)");
        }
        if client_id(config).is_none() {
            missing.push("kms_config.client_id (or AZURE_CLIENT_ID)");
        }
        if !missing.is_empty() {
            return Err(TdeError::config(
                "kms_config.credential",
                format!(
                    "credential {cred} needs {}; set them to the Entra ID tenant and the application (client) id",
                    missing.join(" and ")
                ),
            ));
        }
    }
    if let Some(t) = tenant_id(config)
        && !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(TdeError::config(
            "kms_config.tenant_id",
            format!("{t:?} is not a tenant id; use the directory (tenant) id, a GUID or a domain"),
        ));
    }
    if cred == "client_secret"
        && config.client_secret_file.is_none()
        && config.client_secret_env_var.trim().is_empty()
    {
        return Err(TdeError::config(
            "kms_config.client_secret_env_var",
            "is empty; name the environment variable that holds the client secret (AZURE_CLIENT_SECRET by default), or set kms_config.client_secret_file",
        ));
    }
    Ok(())
}

/// Checks an Azure Key Vault configuration without contacting the vault: the URL (https in
/// production), the key name, the wrap algorithm, the key size, the credential type and the
/// ids it needs (`tenant_id`/`client_id`, or `AZURE_TENANT_ID`/`AZURE_CLIENT_ID`), the authority
/// host, `verify_challenge_resource` (`false` only in development mode), and the timeout and
/// retry limits. Errors are [`TdeError::InvalidConfig`] naming `kms_config.<field>`.
pub fn check_config(config: &AzureKeyVaultConfig, mode: SecurityMode) -> Result<()> {
    Settings::from_config(config, mode).map(|_| ())
}

#[cfg(test)]
#[path = "settings_tests.rs"]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
