//! [`KeyManagerConfig`]: the settings of a [`crate::KeyManager`].

use crate::{RotationConfig, UsagePolicy};
use heliosdb_tde_core::{EncryptionAlgorithm, MekId, SecurityMode};

/// Settings of a [`crate::KeyManager`].
///
/// Built with [`KeyManagerConfig::new`] and the `with_*` methods, so that a new setting is not
/// a breaking change:
///
/// ```
/// # use heliosdb_tde_core::{MekId, SecurityMode};
/// # use heliosdb_tde_manager::{KeyManagerConfig, RotationConfig};
/// let config = KeyManagerConfig::new(MekId::new("master_key_001").unwrap(), SecurityMode::Production)
///     .with_cache_limit(10_000)
///     .with_rotation(RotationConfig::default().with_batch_size(256));
/// assert_eq!(config.cache_limit, 10_000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyManagerConfig {
    /// The MEK that wraps new TEKs.
    pub default_mek_id: MekId,
    /// The most TEKs kept unwrapped in the cache.
    pub cache_limit: usize,
    /// The algorithm of new TEKs.
    pub algorithm: EncryptionAlgorithm,
    /// The resolved security mode.
    pub security_mode: SecurityMode,
    /// MEK rotation tuning and the dual-encryption grace period.
    pub rotation: RotationConfig,
    /// Nonce-budget policy for pages sealed through the manager.
    pub usage: UsagePolicy,
    /// During a provider migration, the MEK of the previous provider (the manager's provider
    /// is then a [`heliosdb_tde_core::ProviderSet`] holding both); `None` otherwise.
    pub migration_source: Option<MekId>,
}

impl KeyManagerConfig {
    /// A configuration with default cache limit (1000), algorithm, rotation and usage policy.
    pub fn new(default_mek_id: MekId, security_mode: SecurityMode) -> Self {
        Self {
            default_mek_id,
            cache_limit: 1000,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            security_mode,
            rotation: RotationConfig::default(),
            usage: UsagePolicy::default(),
            migration_source: None,
        }
    }

    /// Sets [`KeyManagerConfig::cache_limit`], the most TEKs kept unwrapped in the cache.
    #[must_use]
    pub fn with_cache_limit(mut self, cache_limit: usize) -> Self {
        self.cache_limit = cache_limit;
        self
    }

    /// Sets [`KeyManagerConfig::algorithm`], the algorithm of new TEKs.
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: EncryptionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets [`KeyManagerConfig::rotation`], the MEK rotation tuning and grace period.
    #[must_use]
    pub fn with_rotation(mut self, rotation: RotationConfig) -> Self {
        self.rotation = rotation;
        self
    }

    /// Sets [`KeyManagerConfig::migration_source`], the previous provider's MEK during a
    /// provider migration.
    #[must_use]
    pub fn with_migration_source(mut self, source_mek: MekId) -> Self {
        self.migration_source = Some(source_mek);
        self
    }

    /// Sets [`KeyManagerConfig::usage`], the nonce-budget policy of sealed pages.
    #[must_use]
    pub fn with_usage(mut self, usage: UsagePolicy) -> Self {
        self.usage = usage;
        self
    }
}
