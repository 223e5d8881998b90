//! Plain configuration data for the providers, shared by the facade (which parses it from
//! TOML and the environment whatever backends are compiled in) and the backend crates.
//!
//! Nothing here is secret: passphrases, PINs and tokens are read at run time from the
//! environment or from files named here, never stored in these structs.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A credential written in a configuration file (an HSM PIN, in development only). It never
/// shows in `Debug` output, and serializing a configuration writes `[REDACTED]` in its place.
#[derive(Clone)]
pub struct ConfigSecret(SecretString);

impl ConfigSecret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The credential.
    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigSecret([REDACTED])")
    }
}

impl PartialEq for ConfigSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl Eq for ConfigSecret {}

impl Serialize for ConfigSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for ConfigSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(String::deserialize(d)?))
    }
}

/// The default environment variable holding the secure file provider's passphrase.
pub const DEFAULT_PASSPHRASE_ENV: &str = "HELIOSDB_MEK_PASSPHRASE";

/// Argon2id cost parameters for deriving a key from a passphrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism.
    pub p_cost: u32,
}

impl KdfParams {
    /// OWASP's recommended minimum for Argon2id (Password Storage Cheat Sheet): 19 MiB of
    /// memory, 2 iterations, parallelism 1. Production mode refuses anything weaker.
    pub const OWASP_MINIMUM: KdfParams = KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// Whether these parameters are at least [`KdfParams::OWASP_MINIMUM`] in memory and
    /// passes (a higher memory cost may trade for fewer passes: 46 MiB with 1 pass is OWASP's
    /// other option).
    pub fn meets_owasp_minimum(&self) -> bool {
        let m = self.m_cost_kib;
        (m >= 19 * 1024 && self.t_cost >= 2) || (m >= 46 * 1024 && self.t_cost >= 1)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::OWASP_MINIMUM
    }
}

/// Configuration of the secure file MEK provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureFileConfig {
    /// The directory holding one `<mek_id>.v<version>.mek` file per MEK version. Created with
    /// mode 0700.
    pub storage_path: PathBuf,
    /// The environment variable holding the passphrase; `None` means
    /// [`DEFAULT_PASSPHRASE_ENV`].
    #[serde(default)]
    pub passphrase_env_var: Option<String>,
    /// A file holding the passphrase (mode 0600), used instead of the environment variable.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Argon2id parameters for newly written files; `None` means the secure-file provider's
    /// default (`heliosdb_tde_file::DEFAULT_KDF`: RFC 9106's second recommended option, 64 MiB,
    /// t = 3, p = 4).
    #[serde(default)]
    pub kdf: Option<KdfParams>,
}

impl SecureFileConfig {
    /// A configuration with the defaults for everything but the directory.
    pub fn new(storage_path: impl Into<PathBuf>) -> Self {
        Self {
            storage_path: storage_path.into(),
            passphrase_env_var: None,
            passphrase_file: None,
            kdf: None,
        }
    }

    /// The name of the passphrase variable in effect.
    pub fn passphrase_var(&self) -> &str {
        self.passphrase_env_var
            .as_deref()
            .unwrap_or(DEFAULT_PASSPHRASE_ENV)
    }
}

impl Default for SecureFileConfig {
    fn default() -> Self {
        Self::new("/var/lib/heliosdb/mek")
    }
}

/// PKCS#11 HSM settings (`HsmConfig`: `pkcs11_library_path`, `slot_id`, `pin`, `token_label`,
/// `timeout_secs`, `enable_logging`, plus `pin_file`, `session_pool_size` and
/// `state_refresh_secs`).
///
/// `Debug` and serialization never show the PIN: they write `[REDACTED]` in its place.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the vendor's PKCS#11 module, for example `/usr/lib/softhsm/libsofthsm2.so`.
    pub pkcs11_library_path: String,
    /// The slot id; ignored when `token_label` is set (slot ids change after initialisation).
    #[serde(default)]
    pub slot_id: u64,
    /// The token label to find the token by.
    #[serde(default)]
    pub token_label: Option<String>,
    /// Seconds before an HSM operation is abandoned.
    #[serde(default = "default_hsm_timeout")]
    pub timeout_secs: u64,
    /// Log each HSM operation (never key material or the PIN).
    #[serde(default)]
    pub enable_logging: bool,
    /// The user PIN written in the configuration; empty for none. Allowed in development mode
    /// only (production mode refuses it); prefer `HELIOSDB_HSM_PIN` or `pin_file`. The
    /// subsystem copies it into a zeroizing secret at start-up and wipes its own copy of the
    /// configuration.
    #[serde(
        default,
        serialize_with = "serialize_redacted",
        skip_serializing_if = "String::is_empty"
    )]
    pub pin: String,
    /// A file (mode 0600) holding the user PIN.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Sessions kept open for concurrent operations; 4 by default.
    #[serde(default)]
    pub session_pool_size: Option<usize>,
    /// Seconds an MEK version's key handle and lifecycle state, once read from the token, are
    /// used before the provider reads them again; 10 by default, 0 to read them on every
    /// operation. Changes made by this process take effect at once; a state change made by
    /// another process (another node, `heliosdb-cli` run elsewhere) is seen within this time.
    #[serde(default = "default_hsm_state_refresh")]
    pub state_refresh_secs: u64,
}

/// The environment variable holding the HSM user PIN.
pub const HSM_PIN_ENV: &str = "HELIOSDB_HSM_PIN";

fn default_hsm_timeout() -> u64 {
    30
}

fn default_hsm_state_refresh() -> u64 {
    10
}

fn serialize_redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[REDACTED]")
}

impl Default for HsmConfig {
    /// No module and no PIN (both must be configured), slot 0, a 30-second timeout, no
    /// operation logging, the default session pool, a 10-second state refresh.
    fn default() -> Self {
        Self {
            pkcs11_library_path: String::new(),
            slot_id: 0,
            token_label: None,
            timeout_secs: default_hsm_timeout(),
            enable_logging: false,
            pin: String::new(),
            pin_file: None,
            session_pool_size: None,
            state_refresh_secs: default_hsm_state_refresh(),
        }
    }
}

impl fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmConfig")
            .field("pkcs11_library_path", &self.pkcs11_library_path)
            .field("slot_id", &self.slot_id)
            .field("token_label", &self.token_label)
            .field("timeout_secs", &self.timeout_secs)
            .field("enable_logging", &self.enable_logging)
            .field(
                "pin",
                &if self.pin.is_empty() {
                    "<none>"
                } else {
                    "[REDACTED]"
                },
            )
            .field("pin_file", &self.pin_file)
            .field("session_pool_size", &self.session_pool_size)
            .field("state_refresh_secs", &self.state_refresh_secs)
            .finish()
    }
}

mod kms;
pub use kms::{AwsKmsConfig, AzureKeyVaultConfig, KmsConfig, VaultTransitConfig};

#[cfg(test)]
mod tests;
