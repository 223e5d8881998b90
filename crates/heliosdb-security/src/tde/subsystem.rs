//! `TdeSubsystem`: builds the provider, store and key manager from a [`TdeConfig`].

use super::{Result, TdeConfig};
use heliosdb_tde_cipher::{Backend, TableCipher, UsageLimits};
use heliosdb_tde_core::{MekId, MekProvider, ModeSource, SecurityMode, TdeError};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::fmt;
use std::sync::Arc;

/// The running TDE subsystem.
pub struct TdeSubsystem {
    config: TdeConfig,
    mode: SecurityMode,
    mode_source: ModeSource,
    key_manager: KeyManager,
    warnings: Vec<String>,
    pin_source: Option<&'static str>,
}

impl fmt::Debug for TdeSubsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdeSubsystem")
            .field("mode", &self.mode)
            .field("key_manager", &self.key_manager)
            .finish_non_exhaustive()
    }
}

fn missing_feature(what: &str, feature: &str) -> TdeError {
    // Features of this crate that exist but may be switched off.
    const KNOWN: &[&str] = &["secure-file", "pkcs11-hsm"];
    let hint = if KNOWN.contains(&feature) {
        format!(
            "build heliosdb-security with the cargo feature `{feature}` (features = \
             [\"{feature}\"]), or configure another MEK provider"
        )
    } else {
        format!(
            "the `{feature}` backend (cargo feature `{feature}`) is not part of this release of \
             heliosdb-security; configure the secure file provider instead"
        )
    };
    TdeError::Unsupported {
        what: format!(
            "{what} is configured, but this build of heliosdb-security has no {what} backend"
        ),
        hint,
    }
}

/// What the provider set-up found out, for the checklist.
#[derive(Default)]
struct ProviderFacts {
    warnings: Vec<String>,
    /// Where the HSM PIN came from (`environment`, `file`, `configuration file`).
    pin_source: Option<&'static str>,
}

/// Builds the MEK provider the configuration names.
async fn build_provider(
    config: &TdeConfig,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    if let Some(kms) = &config.kms_config {
        return Err(missing_feature(kms.name(), kms.feature()));
    }
    if let Some(hsm) = &config.hsm_config {
        #[cfg(feature = "pkcs11-hsm")]
        {
            use heliosdb_tde_pkcs11::{PinSource, Pkcs11MekProvider, Pkcs11Settings, resolve_pin};
            let (pin, source) = resolve_pin(hsm, mode)?;
            let p = Pkcs11MekProvider::open(Pkcs11Settings::from_config(hsm, pin)).await?;
            let mut facts = ProviderFacts {
                warnings: Vec::new(),
                pin_source: Some(match source {
                    PinSource::Environment => "environment",
                    PinSource::File => "file",
                    PinSource::ConfigFile => "configuration file",
                }),
            };
            if source == PinSource::ConfigFile {
                facts.warnings.push(
                    "the HSM PIN is written in the configuration file; use HELIOSDB_HSM_PIN or \
                     hsm_config.pin_file (the security checklist fails this in production mode)"
                        .into(),
                );
            }
            return Ok((Arc::new(p), facts));
        }
        #[cfg(not(feature = "pkcs11-hsm"))]
        {
            let _ = hsm;
            return Err(missing_feature("PKCS#11 HSM", "pkcs11-hsm"));
        }
    }
    if let Some(file) = &config.secure_file_config {
        #[cfg(feature = "secure-file")]
        {
            let p = heliosdb_tde_file::SecureFileMekProvider::open(file, mode)?;
            let facts = ProviderFacts {
                warnings: p.warnings(),
                pin_source: None,
            };
            return Ok((Arc::new(p), facts));
        }
        #[cfg(not(feature = "secure-file"))]
        {
            let _ = (file, mode);
            return Err(missing_feature("secure file", "secure-file"));
        }
    }
    Ok((
        Arc::new(InMemoryMekProvider::new()),
        ProviderFacts::default(),
    ))
}

impl TdeSubsystem {
    /// Starts TDE from `config`:
    ///
    /// 1. checks the configuration and resolves the security mode;
    /// 2. builds the MEK provider the configuration names (secure file, KMS, HSM; the
    ///    in-memory provider when none is configured);
    /// 3. validates security: production mode refuses an insecure provider *before* anything
    ///    is created on disk;
    /// 4. opens (or creates) the key store at `key_storage_path`;
    /// 5. makes sure the default MEK exists, generating it on first start.
    pub async fn new(config: TdeConfig) -> Result<Self> {
        config.validate()?;
        if !config.enabled {
            return Err(TdeError::config(
                "enabled",
                "TDE is disabled in this configuration (enabled = false); there is nothing to start",
            ));
        }
        let (mode, mode_source) = SecurityMode::resolve(config.security_mode.as_deref())?;
        let (provider, facts) = build_provider(&config, mode).await?;
        let mut warnings = facts.warnings;
        let pin_source = facts.pin_source;
        if mode.is_production() && !provider.is_secure() {
            return Err(TdeError::InsecureProvider {
                provider: provider.description(),
            });
        }
        let store = RedbKeyStore::open_dir(&config.key_storage_path)?;
        let mut km = KeyManager::new(provider, Arc::new(store), {
            let mut c = KeyManagerConfig::new(MekId::new(config.default_mek_id.clone())?, mode);
            c.cache_limit = config.cache_limit;
            c.algorithm = config.algorithm;
            c.rotation.grace_period =
                std::time::Duration::from_secs(config.rotation_grace_days.saturating_mul(86_400));
            c.usage.soft_limit = config.tek_usage_soft_limit;
            c
        })?;
        if let Some(path) = &config.audit_log_path {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| TdeError::io(parent, e))?;
            }
            km = km.with_audit(Arc::new(heliosdb_tde_manager::FileAuditSink::open(path)?));
        }
        if let Some(w) = km.validate_security()? {
            warnings.push(w);
        }
        km.ensure_default_mek().await?;
        // An interrupted rotation is resumed by running it again; say so at every start.
        if let Some(st) = km.mek_rotation_status(&config.default_mek_id).await? {
            use heliosdb_tde_manager::Phase;
            let msg = match st.phase {
                Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping => Some(format!(
                    "a rotation of {} was interrupted in phase {}; run `heliosdb-cli security mek \
                     rotate` to resume it (every table key is readable meanwhile)",
                    st.old, st.phase
                )),
                Phase::RollingBack => Some(format!(
                    "a rollback of the rotation of {} was interrupted; run `heliosdb-cli security \
                     mek rollback` to finish it",
                    st.old
                )),
                Phase::OldDeactivated => Some(format!(
                    "the deactivation of {} was interrupted; run `heliosdb-cli security mek \
                     deactivate` to finish it",
                    st.old
                )),
                _ => None,
            };
            if let Some(m) = msg {
                tracing::warn!(target: "heliosdb::tde", "{m}");
                warnings.push(m);
            }
        }
        Ok(Self {
            config,
            mode,
            mode_source,
            key_manager: km,
            warnings,
            pin_source,
        })
    }

    /// The key manager.
    pub fn key_manager(&self) -> &KeyManager {
        &self.key_manager
    }

    /// The configuration the subsystem was started with.
    pub fn config(&self) -> &TdeConfig {
        &self.config
    }

    /// The security mode in force.
    pub fn security_mode(&self) -> SecurityMode {
        self.mode
    }

    /// Where the security mode came from.
    pub fn mode_source(&self) -> ModeSource {
        self.mode_source
    }

    /// Warnings raised at start (development mode only; production turns them into errors).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Where the HSM PIN came from, when the provider is an HSM.
    pub fn hsm_pin_source(&self) -> Option<&'static str> {
        self.pin_source
    }

    /// A page cipher for the active TEK of `table`, on the default cipher backend.
    pub async fn table_cipher(&self, table: &str) -> Result<TableCipher> {
        let key = self.key_manager.active_table_key(table).await?;
        Ok(TableCipher::new(
            &key,
            Backend::default(),
            UsageLimits::default(),
        )?)
    }

    /// A page cipher for one TEK version of `table` (to open pages sealed under it).
    pub async fn table_cipher_version(
        &self,
        table: &str,
        version: heliosdb_tde_core::TekVersion,
    ) -> Result<TableCipher> {
        let key = self.key_manager.get_table_key(table, Some(version)).await?;
        Ok(TableCipher::new(
            &key,
            Backend::default(),
            UsageLimits::default(),
        )?)
    }
}
