//! Validation of a [`TdeConfig`] into the typed values the subsystem runs on.

use super::Result;
use super::config::TdeConfig;
use heliosdb_tde_core::{HsmConfig, KmsConfig, MekId, SecureFileConfig, SecurityMode, TdeError};

impl TdeConfig {
    /// Checks every field; errors name the field and say what is accepted.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(drop)
    }

    /// Checks every field and returns the typed values the subsystem runs on, so that nothing
    /// below this edge parses a string again.
    pub(crate) fn checked(&self) -> Result<CheckedConfig> {
        if self.cache_limit == 0 {
            return Err(TdeError::config(
                "cache_limit",
                "must be at least 1 (the number of table keys kept unwrapped in memory)",
            ));
        }
        let default_mek_id = MekId::new(self.default_mek_id.clone())
            .map_err(|e| TdeError::config("default_mek_id", e.to_string()))?;
        if self.key_storage_path.as_os_str().is_empty() {
            return Err(TdeError::config(
                "key_storage_path",
                "must name the directory of the key store, e.g. /var/lib/heliosdb/keys",
            ));
        }
        if self.tek_usage_soft_limit == 0 || self.tek_usage_soft_limit > 1 << 32 {
            return Err(TdeError::config(
                "tek_usage_soft_limit",
                "must be between 1 and 2^32 (4294967296), the NIST SP 800-38D limit for random \
                 nonces",
            ));
        }
        let security_mode = self
            .security_mode
            .as_deref()
            .map(str::parse::<SecurityMode>)
            .transpose()?;
        let configured = [
            self.kms_config.is_some(),
            self.secure_file_config.is_some(),
            self.hsm_config.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if configured > 1 {
            return Err(TdeError::config(
                "kms_config / secure_file_config / hsm_config",
                "configure exactly one MEK provider",
            ));
        }
        if let Some(f) = &self.secure_file_config {
            if f.storage_path.as_os_str().is_empty() {
                return Err(TdeError::config(
                    "secure_file_config.storage_path",
                    "must name the directory of the MEK files, e.g. /var/lib/heliosdb/mek",
                ));
            }
            if let Some(v) = &f.passphrase_env_var
                && (v.is_empty() || v.contains('=') || v.contains('\0'))
            {
                return Err(TdeError::config(
                    "secure_file_config.passphrase_env_var",
                    format!("{v:?} is not a valid environment variable name"),
                ));
            }
        }
        if let Some(h) = &self.hsm_config {
            if h.pkcs11_library_path.is_empty() {
                return Err(TdeError::config(
                    "hsm_config.pkcs11_library_path",
                    "must name the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so",
                ));
            }
            if h.timeout_secs == 0 {
                return Err(TdeError::config(
                    "hsm_config.timeout_secs",
                    "must be at least 1",
                ));
            }
        }
        let provider = match (&self.kms_config, &self.secure_file_config, &self.hsm_config) {
            (Some(k), _, _) => ConfiguredProvider::Kms(k.clone()),
            (_, Some(f), _) => ConfiguredProvider::SecureFile(f.clone()),
            (_, _, Some(h)) => ConfiguredProvider::Hsm(h.clone()),
            (None, None, None) => ConfiguredProvider::InMemory,
        };
        Ok(CheckedConfig {
            default_mek_id,
            security_mode,
            provider,
        })
    }
}

/// The MEK provider a configuration selects (at most one is allowed).
#[derive(Clone, Debug)]
pub(crate) enum ConfiguredProvider {
    /// None configured: the insecure in-memory provider.
    InMemory,
    /// `secure_file_config`.
    SecureFile(SecureFileConfig),
    /// `kms_config`.
    Kms(KmsConfig),
    /// `hsm_config`.
    Hsm(HsmConfig),
}

impl ConfiguredProvider {
    /// The provider and where it is, for messages about a start that cannot reach it.
    pub(crate) fn label(&self) -> String {
        match self {
            ConfiguredProvider::InMemory => "the in-memory MEK provider".into(),
            ConfiguredProvider::SecureFile(f) => {
                format!("the secure file provider at {}", f.storage_path.display())
            }
            ConfiguredProvider::Hsm(h) => format!("the PKCS#11 HSM ({})", h.pkcs11_library_path),
            ConfiguredProvider::Kms(KmsConfig::Vault(v)) => {
                format!("HashiCorp Vault Transit at {}", v.address)
            }
            ConfiguredProvider::Kms(KmsConfig::Aws(a)) => {
                format!("AWS KMS key {} in {}", a.key_id, a.region)
            }
            ConfiguredProvider::Kms(KmsConfig::Azure(a)) => {
                format!("Azure Key Vault key {} at {}", a.key_name, a.vault_url)
            }
            ConfiguredProvider::Kms(k) => k.name().to_string(),
        }
    }

    /// The HSM settings, when an HSM is configured.
    pub(crate) fn hsm_mut(&mut self) -> Option<&mut HsmConfig> {
        match self {
            ConfiguredProvider::Hsm(h) => Some(h),
            _ => None,
        }
    }
}

/// A [`TdeConfig`] after validation, in the typed values the subsystem uses.
#[derive(Clone, Debug)]
pub(crate) struct CheckedConfig {
    /// `default_mek_id`.
    pub(crate) default_mek_id: MekId,
    /// `security_mode`, parsed (the environment and the build type are applied later).
    pub(crate) security_mode: Option<SecurityMode>,
    /// The one configured provider.
    pub(crate) provider: ConfiguredProvider,
}
