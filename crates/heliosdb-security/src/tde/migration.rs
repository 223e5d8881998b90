//! Provider migration in the facade: [`MigrationSourceConfig`] (the previous MEK provider,
//! `migration_source` in [`TdeConfig`]) and the naming of start-up errors by the member of the
//! migration they come from.
//!
//! While `migration_source` is set, the main sections of the configuration describe the
//! **target** (the provider TEKs move to, and the one new TEKs are wrapped under) and
//! `migration_source` the **source** (the provider whose MEK the existing TEKs are wrapped
//! under). A start builds both, requires both to answer, and hands the key manager a
//! [`ProviderSet`](heliosdb_tde_core::ProviderSet) of the two; the migration itself runs
//! through [`KeyManager::migrate_mek`](heliosdb_tde_manager::KeyManager::migrate_mek) and the
//! calls after it.

use super::Result;
use super::checked::{CheckedSource, ConfiguredProvider};
use super::config::TdeConfig;
use super::subsystem::{build_source, with_startup_retry};
use heliosdb_tde_core::{
    HsmConfig, KmsConfig, MekId, MekProvider, ProviderSet, SecureFileConfig, SecurityMode, TdeError,
};
use heliosdb_tde_manager::KeyManager;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The previous MEK provider during a provider migration: `[migration_source]` in TOML, with the
/// same provider sections as the main configuration (`[migration_source.secure_file_config]`,
/// `[migration_source.kms_config]`, `[migration_source.hsm_config]`). At most one section may be
/// set; with none the source is the in-memory provider, which is accepted only in development
/// mode (and holds no key across processes, so only a source built in this process could hold
/// the MEK).
///
/// ```toml
/// default_mek_id = "master_key_002"          # the target's MEK
/// [secure_file_config]                       # the target
/// storage_path = "/var/lib/heliosdb/mek-new"
///
/// [migration_source]
/// default_mek_id = "master_key_001"          # the MEK the existing TEKs are wrapped under
/// [migration_source.secure_file_config]
/// storage_path = "/var/lib/heliosdb/mek"
/// ```
///
/// The environment overrides of [`TdeConfig::apply_env`] (`HELIOSDB_TDE_MEK_STORAGE_PATH`,
/// `VAULT_ADDR`, ...) apply to the main sections only, never to this one. Each section reads its
/// own secrets as it does in the main configuration (`passphrase_file`, `pin_file`,
/// `token_file`...); a passphrase or PIN environment variable is removed from the environment
/// once read, so when both providers need one, give the source its own
/// (`passphrase_env_var`) or a file.
///
/// In Rust: [`MigrationSourceConfig::new`] and the `with_*` methods, or
/// [`MigrationSourceConfig::from_config`] for "the configuration in force so far".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MigrationSourceConfig {
    /// The source's MEK: the one the existing TEKs are wrapped under. It must exist in the
    /// source provider and differ from the target's `default_mek_id`.
    pub default_mek_id: String,
    /// The source is the secure file provider.
    pub secure_file_config: Option<SecureFileConfig>,
    /// The source is a cloud KMS provider.
    pub kms_config: Option<KmsConfig>,
    /// The source is a PKCS#11 HSM provider.
    pub hsm_config: Option<HsmConfig>,
}

impl Default for MigrationSourceConfig {
    fn default() -> Self {
        Self::new(TdeConfig::default().default_mek_id)
    }
}

impl MigrationSourceConfig {
    /// A source whose MEK is `default_mek_id`, with no provider section (the in-memory
    /// provider) until one of the `with_*` methods sets it.
    pub fn new(default_mek_id: impl Into<String>) -> Self {
        Self {
            default_mek_id: default_mek_id.into(),
            secure_file_config: None,
            kms_config: None,
            hsm_config: None,
        }
    }

    /// The source is the secure file provider `file` (replacing any other section).
    pub fn with_secure_file(self, file: SecureFileConfig) -> Self {
        Self {
            secure_file_config: Some(file),
            kms_config: None,
            hsm_config: None,
            ..self
        }
    }

    /// The source is the cloud KMS provider `kms` (replacing any other section).
    pub fn with_kms(self, kms: KmsConfig) -> Self {
        Self {
            secure_file_config: None,
            kms_config: Some(kms),
            hsm_config: None,
            ..self
        }
    }

    /// The source is the PKCS#11 HSM `hsm` (replacing any other section).
    pub fn with_hsm(self, hsm: HsmConfig) -> Self {
        Self {
            secure_file_config: None,
            kms_config: None,
            hsm_config: Some(hsm),
            ..self
        }
    }

    /// The provider and MEK of `config` as a migration source: what was configured before a
    /// migration to another provider (`heliosdb-cli security mek migrate --to TARGET.toml`).
    pub fn from_config(config: &TdeConfig) -> Self {
        Self {
            default_mek_id: config.default_mek_id.clone(),
            secure_file_config: config.secure_file_config.clone(),
            kms_config: config.kms_config.clone(),
            hsm_config: config.hsm_config.clone(),
        }
    }
}

/// A failed [`crate::tde::TdeSubsystem::migrate_to`]: the error, and the subsystem it was
/// called on, running again over its own provider (`None` only if that restart failed too,
/// which the log records).
#[non_exhaustive]
pub struct MigrateToError {
    /// What failed.
    pub error: TdeError,
    /// The subsystem as it was before the call.
    pub previous: Option<crate::tde::TdeSubsystem>,
}

impl std::fmt::Debug for MigrateToError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateToError")
            .field("error", &self.error)
            .field("previous_running", &self.previous.is_some())
            .finish()
    }
}

impl std::fmt::Display for MigrateToError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for MigrateToError {}

impl From<&TdeConfig> for MigrationSourceConfig {
    fn from(config: &TdeConfig) -> Self {
        Self::from_config(config)
    }
}

/// Which member of a migration an error comes from, for the start-up messages:
/// `migration source (secure-file)` or `target (pkcs11-hsm)`.
pub(crate) fn member_label(source: bool, kind: &str) -> String {
    if source {
        format!("migration source ({kind})")
    } else {
        format!("target ({kind})")
    }
}

/// `e` with its message naming `who` (see [`member_label`]), of the same kind and
/// retryability. The two variants whose text has no free part to name it in
/// (`PassphraseEnvMissing`, which names the variable, and `InsecurePermissions`, which names
/// the path) and those a start cannot return are left as they are.
pub(crate) fn name_member(e: TdeError, who: &str) -> TdeError {
    let p = |s: String| {
        if s.contains(who) {
            s
        } else {
            format!("{who}: {s}")
        }
    };
    match e {
        TdeError::InsecureProvider { provider } => TdeError::InsecureProvider {
            provider: p(provider),
        },
        TdeError::AuthenticationFailed { what } => TdeError::AuthenticationFailed { what: p(what) },
        TdeError::KeyNotFound { key, hint } => TdeError::KeyNotFound { key: p(key), hint },
        TdeError::AlreadyExists { key } => TdeError::AlreadyExists { key: p(key) },
        TdeError::TargetExists { what, hint } => TdeError::TargetExists {
            what: p(what),
            hint,
        },
        TdeError::InvalidKeyState {
            key,
            state,
            operation,
            hint,
        } => TdeError::InvalidKeyState {
            key: p(key),
            state,
            operation,
            hint,
        },
        TdeError::ProviderUnavailable {
            provider,
            reason,
            retryable,
        } => TdeError::ProviderUnavailable {
            provider: p(provider),
            reason,
            retryable,
        },
        TdeError::Provider {
            provider,
            message,
            hint,
        } => TdeError::Provider {
            provider: p(provider),
            message,
            hint,
        },
        TdeError::Corrupt {
            what,
            location,
            detail,
        } => TdeError::Corrupt {
            what,
            location: if location.contains(who) {
                location
            } else {
                format!("{location} ({who})")
            },
            detail,
        },
        TdeError::InvalidIdentifier {
            kind,
            value,
            reason,
        } => TdeError::InvalidIdentifier {
            kind,
            value,
            reason: if reason.contains(who) {
                reason
            } else {
                format!("{reason} ({who})")
            },
        },
        TdeError::InvalidConfig { field, reason } => TdeError::InvalidConfig {
            field: p(field),
            reason,
        },
        TdeError::SecurityPolicy(m) => TdeError::SecurityPolicy(p(m)),
        TdeError::Unsupported { what, hint } => TdeError::Unsupported {
            what: p(what),
            hint,
        },
        TdeError::Random(m) => TdeError::Random(p(m)),
        TdeError::InvalidArgument(m) => TdeError::InvalidArgument(p(m)),
        TdeError::InUse {
            what,
            location,
            hint,
        } => TdeError::InUse {
            what: p(what),
            location,
            hint,
        },
        TdeError::MekMissing {
            mek,
            provider,
            store,
            teks,
            tables,
        } => TdeError::MekMissing {
            mek,
            provider: p(provider),
            store,
            teks,
            tables,
        },
        TdeError::MekMismatch {
            mek,
            provider,
            store,
        } => TdeError::MekMismatch {
            mek,
            provider: p(provider),
            store,
        },
        TdeError::Io { path, source } if !source.to_string().contains(who) => TdeError::Io {
            path,
            source: std::io::Error::new(source.kind(), format!("{who}: {source}")),
        },
        other => other,
    }
}

/// Builds the source of a provider migration, checks that it answers and holds its MEK (never
/// creating it), and returns the set of the target and the source. Every error names the
/// source (`migration source (<kind>)`).
pub(crate) async fn start_source(
    src: &CheckedSource,
    mode: SecurityMode,
    wait: std::time::Duration,
    target: &Arc<dyn MekProvider>,
    target_mek: &MekId,
    warnings: &mut Vec<String>,
    given: &super::subsystem::providers::ProviderFacts,
) -> Result<Arc<ProviderSet>> {
    // A passphrase read for the source before the target took it from the environment, and a
    // source already running in this process (`TdeSubsystem::migrate_to`).
    let passphrase = given.source_passphrase.as_ref();
    let running = given.running_source.clone();
    let who = member_label(true, src.provider.kind_name());
    let label = format!("{who}: {}", src.provider.label());
    let source = match running {
        Some(p) => p,
        None => {
            let (source, facts) =
                with_startup_retry(wait, &label, || build_source(src, mode, passphrase))
                    .await
                    .map_err(|e| name_member(e, &who))?;
            warnings.extend(facts.warnings.into_iter().map(|w| format!("{who}: {w}")));
            source
        }
    };
    if mode.is_production() && !source.is_secure() {
        return Err(name_member(
            TdeError::InsecureProvider {
                provider: source.description(),
            },
            &who,
        ));
    }
    let label = format!("{who}: {}", source.description());
    let mek = &src.default_mek_id;
    with_startup_retry(wait, &label, || source.mek_info(mek))
        .await
        .map_err(|e| match e {
            TdeError::KeyNotFound { .. } => TdeError::KeyNotFound {
                key: format!("{who}: MEK {mek}"),
                hint: match src.provider {
                    ConfiguredProvider::InMemory => format!(
                        "the in-memory provider starts empty in every process, so it cannot \
                         hold MEK {mek}; describe the provider that holds it in \
                         migration_source (secure_file_config, kms_config or hsm_config). \
                         Nothing was created"
                    ),
                    _ => format!(
                        "{} does not hold MEK {mek}, the MEK the existing table keys are \
                         wrapped under; check migration_source (its default_mek_id and provider \
                         section). Nothing was created",
                        source.description()
                    ),
                },
            },
            e => name_member(e, &who),
        })?;
    let set = ProviderSet::new(target.clone(), target_mek.clone(), source, mek.clone())?;
    Ok(Arc::new(set))
}

/// What a start says about the provider migration in progress: how to go on with it.
pub(crate) async fn migration_notice(km: &KeyManager) -> Result<Option<String>> {
    use heliosdb_tde_manager::Phase;
    let Some(st) = km.mek_migration_status().await? else {
        return Ok(None);
    };
    let to = st.new.as_ref().map(|m| m.to_string()).unwrap_or_default();
    Ok(match st.phase {
        Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping => Some(format!(
            "a provider migration from {} to {to} is in phase {} ({} table key(s) moved); \
             run `heliosdb-cli security mek migrate` again to resume it (every table key is \
             readable meanwhile)",
            st.old, st.phase, st.reencrypted
        )),
        Phase::RollingBack => Some(format!(
            "a rollback of the provider migration from {} to {to} was interrupted; run \
             `heliosdb-cli security mek migrate --rollback` to finish it",
            st.old
        )),
        _ => None,
    })
}

/// The provider migration recorded in the key store of `config` (the journal of its
/// `migration_source`'s MEK), read from the store alone: no provider is opened, nothing is
/// created or written. `None` when `config` has no migration source, the store does not exist
/// yet, or no migration of that MEK is in progress. A command that only continues a migration
/// (verify, finish, roll back) asks this first, so that without one it changes nothing, not
/// even the target's MEK. Fails like a read-only start while the database holds the store.
pub async fn recorded_migration(
    config: &TdeConfig,
) -> Result<Option<heliosdb_tde_manager::RotationState>> {
    use heliosdb_tde_core::KeyStore;
    let Some(src) = &config.migration_source else {
        return Ok(None);
    };
    let path = config
        .key_storage_path
        .join(heliosdb_tde_keystore::STORE_FILE_NAME);
    if !path.exists() {
        return Ok(None);
    }
    let store = heliosdb_tde_keystore::RedbKeyStore::open_read_only(&path)?;
    let Some(raw) = store
        .get_journal(&format!("mek_rotation/{}", src.default_mek_id))
        .await?
    else {
        return Ok(None);
    };
    let st = heliosdb_tde_manager::RotationState::decode(&raw, &store.location())?;
    Ok(st.is_migration().then_some(st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_error_keeps_its_kind_and_retryability() {
        let cases = [
            TdeError::ProviderUnavailable {
                provider: "Vault at http://x".into(),
                reason: "refused".into(),
                retryable: true,
            },
            TdeError::AuthenticationFailed {
                what: "MEK file m.v1.mek".into(),
            },
            TdeError::config("secure_file_config.storage_path", "bad"),
            TdeError::io("/x", std::io::Error::from(std::io::ErrorKind::NotFound)),
            TdeError::Provider {
                provider: "HSM".into(),
                message: "CKR_PIN_INCORRECT".into(),
                hint: "h".into(),
            },
        ];
        for e in cases {
            let (kind, retry) = (e.kind(), e.is_retryable());
            let who = member_label(true, "secure-file");
            let named = name_member(e, &who);
            assert_eq!(named.kind(), kind);
            assert_eq!(named.is_retryable(), retry);
            let text = named.to_string();
            assert!(text.contains("migration source (secure-file)"), "{text}");
            // Naming twice does not repeat the name.
            let again = name_member(named, &who).to_string();
            assert_eq!(again.matches("migration source").count(), 1, "{again}");
        }
        let t = name_member(
            TdeError::KeyNotFound {
                key: "mek:a".into(),
                hint: "h".into(),
            },
            &member_label(false, "pkcs11-hsm"),
        );
        assert!(t.to_string().contains("target (pkcs11-hsm): mek:a"), "{t}");
    }
}
