//! How to reach the token: [`Pkcs11Settings`].

use heliosdb_tde_core::HsmConfig;
use secrecy::SecretString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The time allowed for one HSM operation unless set otherwise (as `hsm_config.timeout_secs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The number of pooled sessions unless set otherwise (as `hsm_config.session_pool_size`).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// How long an MEK version's key handle and lifecycle state, once read from the token, are
/// used before they are read again, unless set otherwise (as `hsm_config.state_refresh_secs`):
/// 10 seconds, like the Vault, AWS KMS and Azure Key Vault providers' state caches.
pub const DEFAULT_STATE_REFRESH: Duration = Duration::from_secs(10);

/// How to reach the token.
///
/// Built with [`Pkcs11Settings::new`] (or [`Pkcs11Settings::from_config`]) and the `with_*`
/// setters; the fields stay readable and writable, but new fields may be added, so the struct
/// cannot be written as a literal outside this crate.
///
/// ```
/// use heliosdb_tde_pkcs11::Pkcs11Settings;
/// use secrecy::SecretString;
/// use std::time::Duration;
///
/// let settings = Pkcs11Settings::new(
///     "/usr/lib/softhsm/libsofthsm2.so",
///     SecretString::from("654321"),
/// )
/// .with_token_label("heliosdb")
/// .with_timeout(Duration::from_secs(10));
/// assert_eq!(settings.token_label.as_deref(), Some("heliosdb"));
/// assert_eq!(settings.pool_size, 4);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Pkcs11Settings {
    /// The PKCS#11 module.
    pub library_path: PathBuf,
    /// The token label (preferred: slot ids change after initialisation).
    pub token_label: Option<String>,
    /// The slot id, used when no label is given.
    pub slot_id: u64,
    /// The user PIN.
    pub pin: SecretString,
    /// Time allowed for one HSM operation.
    pub timeout: Duration,
    /// Log each operation (never key material or the PIN).
    pub enable_logging: bool,
    /// Sessions kept for concurrent operations.
    pub pool_size: usize,
    /// How long an MEK version's key handle and lifecycle state, once read from the token, are
    /// used before they are read again. This process's own changes (a new version, a state
    /// change, a destruction, a rotation) take effect at once; another process's state change,
    /// or a key planted next to the MEK, is seen within this interval; a key another process
    /// destroyed is seen at its next use (the token refuses its handle). Zero reads the token
    /// on every operation.
    pub state_refresh: Duration,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("library_path", &self.library_path)
            .field("token_label", &self.token_label)
            .field("slot_id", &self.slot_id)
            .field("pin", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .field("state_refresh", &self.state_refresh)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Settings {
    /// Settings for the module at `library_path`, logging in with `pin`: slot 0 and no token
    /// label, [`DEFAULT_TIMEOUT`], no operation logging, [`DEFAULT_POOL_SIZE`] sessions,
    /// [`DEFAULT_STATE_REFRESH`].
    pub fn new(library_path: impl Into<PathBuf>, pin: SecretString) -> Self {
        Self {
            library_path: library_path.into(),
            token_label: None,
            slot_id: 0,
            pin,
            timeout: DEFAULT_TIMEOUT,
            enable_logging: false,
            pool_size: DEFAULT_POOL_SIZE,
            state_refresh: DEFAULT_STATE_REFRESH,
        }
    }

    /// Settings from an `HsmConfig` (the facade's `hsm_config` section) and a resolved PIN.
    pub fn from_config(config: &HsmConfig, pin: SecretString) -> Self {
        Self {
            library_path: PathBuf::from(&config.pkcs11_library_path),
            token_label: config.token_label.clone(),
            slot_id: config.slot_id,
            pin,
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            enable_logging: config.enable_logging,
            pool_size: config.session_pool_size.unwrap_or(DEFAULT_POOL_SIZE).max(1),
            state_refresh: Duration::from_secs(config.state_refresh_secs),
        }
    }

    /// Finds the token by its label (preferred over the slot id).
    #[must_use]
    pub fn with_token_label(mut self, label: impl Into<String>) -> Self {
        self.token_label = Some(label.into());
        self
    }

    /// Finds the token by slot id; used only when no token label is set.
    #[must_use]
    pub fn with_slot_id(mut self, slot_id: u64) -> Self {
        self.slot_id = slot_id;
        self
    }

    /// The time allowed for one HSM operation.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to log each operation (never key material or the PIN).
    #[must_use]
    pub fn with_logging(mut self, enable: bool) -> Self {
        self.enable_logging = enable;
        self
    }

    /// The number of sessions kept for concurrent operations (at least one).
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long a key handle and lifecycle state read from the token are used before they are
    /// read again ([`Pkcs11Settings::state_refresh`]); zero reads them on every operation.
    #[must_use]
    pub fn with_state_refresh(mut self, refresh: Duration) -> Self {
        self.state_refresh = refresh;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_sets_each_field() {
        let s = Pkcs11Settings::new("/lib/m.so", SecretString::from("1234"))
            .with_token_label("t")
            .with_slot_id(7)
            .with_timeout(Duration::from_secs(3))
            .with_logging(true)
            .with_pool_size(0)
            .with_state_refresh(Duration::ZERO);
        assert_eq!(s.library_path, PathBuf::from("/lib/m.so"));
        assert_eq!(s.token_label.as_deref(), Some("t"));
        assert_eq!(s.slot_id, 7);
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert!(s.enable_logging);
        assert_eq!(s.pool_size, 1, "at least one session");
        assert_eq!(s.state_refresh, Duration::ZERO);
        let d = Pkcs11Settings::new("/lib/m.so", SecretString::from("1234"));
        assert_eq!(d.state_refresh, DEFAULT_STATE_REFRESH);
    }

    #[test]
    fn from_config_keeps_its_defaults() {
        let c = HsmConfig {
            pkcs11_library_path: "/lib/m.so".into(),
            slot_id: 3,
            timeout_secs: 0,
            ..HsmConfig::default()
        };
        let s = Pkcs11Settings::from_config(&c, SecretString::from("1234"));
        assert_eq!(s.timeout, Duration::from_secs(1), "at least one second");
        assert_eq!(s.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(s.slot_id, 3);
        assert_eq!(s.state_refresh, DEFAULT_STATE_REFRESH);
        assert_eq!(
            DEFAULT_STATE_REFRESH,
            Duration::from_secs(HsmConfig::default().state_refresh_secs)
        );
        let zero = HsmConfig {
            state_refresh_secs: 0,
            ..c.clone()
        };
        assert_eq!(
            Pkcs11Settings::from_config(&zero, SecretString::from("1")).state_refresh,
            Duration::ZERO,
            "0 reads the token on every operation"
        );
        let c = HsmConfig {
            session_pool_size: Some(0),
            ..c
        };
        assert_eq!(
            Pkcs11Settings::from_config(&c, SecretString::from("1")).pool_size,
            1
        );
    }

    #[test]
    fn debug_never_shows_the_pin() {
        let s = Pkcs11Settings::new("/lib/m.so", SecretString::from("s3cret-pin"));
        let text = format!("{s:?}");
        assert!(!text.contains("s3cret-pin"), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
    }
}
