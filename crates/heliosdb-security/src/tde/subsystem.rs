//! `TdeSubsystem`: builds the provider, store and key manager from a [`TdeConfig`].

use super::audit;
use super::checked::CheckedConfig;
use super::migration::{member_label, name_member};
use super::{Result, TdeConfig};
use heliosdb_tde_cipher::{Backend, SealedParts, TableCipher, UsageLimits};
use heliosdb_tde_core::{MekId, MekProvider, ModeSource, ProviderSet, SecurityMode, TdeError};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};
use heliosdb_tde_manager::{
    KeyManager, KeyManagerConfig, RotationConfig, TableSealer, UsagePolicy,
};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroize;

pub(crate) mod providers;
pub(crate) use providers::{build_provider, build_source};

/// The running TDE subsystem.
pub struct TdeSubsystem {
    config: TdeConfig,
    default_mek_id: MekId,
    mode: SecurityMode,
    mode_source: ModeSource,
    key_manager: KeyManager,
    warnings: Vec<String>,
    pin_source: Option<&'static str>,
    audit_sink: Option<Arc<heliosdb_tde_manager::FileAuditSink>>,
    migration: Option<Arc<ProviderSet>>,
    /// The configured provider as built (during a migration: the target alone).
    provider: Arc<dyn MekProvider>,
    /// The memory protection start-up applied.
    memory: super::memory::Applied,
}

impl fmt::Debug for TdeSubsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdeSubsystem")
            .field("mode", &self.mode)
            .field("key_manager", &self.key_manager)
            .finish_non_exhaustive()
    }
}

/// Applies `[memory_protection]` (see [`super::memory`]) and logs its warnings, which are
/// returned for [`TdeSubsystem::warnings`].
fn protect_memory(
    config: &TdeConfig,
    mode: SecurityMode,
    read_only: bool,
) -> Result<(super::memory::Applied, Vec<String>)> {
    let mut warnings = Vec::new();
    let applied = super::memory::apply(
        &config.memory_protection,
        config.cache_limit,
        mode,
        read_only,
        &mut warnings,
    )?;
    for w in &warnings {
        tracing::warn!(target: "heliosdb::tde", "{w}");
    }
    Ok((applied, warnings))
}

/// Runs a start-up step, retrying it while the provider answers with a retryable error (it
/// is unreachable, sealed or throttling) for up to `wait`, with a growing pause between
/// attempts; each attempt is logged. The final error names the provider and where it is.
pub(crate) async fn with_startup_retry<T, F, Fut>(
    wait: std::time::Duration,
    provider: &str,
    mut step: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        match step().await {
            Err(e) if e.is_retryable() => {
                if started.elapsed() + pause > wait {
                    return Err(TdeError::ProviderUnavailable {
                        provider: provider.to_string(),
                        reason: format!(
                            "not reachable at start-up after {attempt} attempt(s) over {} s \
                             (provider_startup_wait_secs = {}): {e}",
                            started.elapsed().as_secs(),
                            wait.as_secs()
                        ),
                        retryable: true,
                    });
                }
                tracing::warn!(
                    target: "heliosdb::tde",
                    attempt,
                    "{provider} is not reachable yet ({e}); retrying in {} ms",
                    pause.as_millis()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Opens the key store under `key_storage_path`. Only a first start (no store file, and no
/// default MEK in the provider) creates one.
async fn open_store(
    config: &TdeConfig,
    provider: &dyn MekProvider,
    default_mek: &MekId,
    read_only: bool,
    migrating_from: Option<&MekId>,
) -> Result<RedbKeyStore> {
    let path = config.key_storage_path.join(STORE_FILE_NAME);
    let exists = match std::fs::symlink_metadata(&path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(TdeError::io(&path, e)),
    };
    if exists {
        return if read_only {
            RedbKeyStore::open_read_only(&path)
        } else {
            RedbKeyStore::open_existing(&path)
        };
    }
    if let Some(source_mek) = migrating_from {
        return Err(TdeError::KeyNotFound {
            key: format!("key store {}", path.display()),
            hint: format!(
                "the key store file is missing, but a provider migration from MEK {source_mek} \
                 is configured (migration_source), so this is not a first start (a wrong \
                 key_storage_path or mount?). Restore the key store from a backup; nothing was \
                 created"
            ),
        });
    }
    match provider.mek_info(default_mek).await {
        Ok(_) => Err(TdeError::KeyNotFound {
            key: format!("key store {}", path.display()),
            hint: format!(
                "the key store file is missing, but the MEK provider {} already holds MEK \
                 {default_mek}, so this is not a first start (a wrong key_storage_path or \
                 mount?). Restore the key store from a backup; a new, empty store would hide \
                 every table key",
                provider.description()
            ),
        }),
        // Not started yet: a read-only command sees an empty store and creates nothing.
        Err(TdeError::KeyNotFound { .. }) if read_only => RedbKeyStore::empty_read_only(&path),
        Err(TdeError::KeyNotFound { .. }) => {
            RedbKeyStore::create_new_in_dir(&config.key_storage_path)
        }
        Err(e) => Err(e),
    }
}

impl TdeSubsystem {
    /// Starts TDE from `config`:
    ///
    /// 1. checks the configuration and resolves the security mode;
    /// 2. builds the MEK provider the configuration names (secure file, KMS, HSM; the
    ///    in-memory provider when none is configured);
    /// 3. validates security: production mode refuses an insecure provider *before* anything
    ///    is created on disk;
    /// 4. opens the key store at `key_storage_path`; it is created only on a first start (no
    ///    store file and no default MEK in the provider). A missing store while the provider
    ///    holds the MEK is an error naming both places;
    /// 5. makes sure the default MEK exists: it is generated only on a first start, and its key
    ///    check value must unwrap (see [`KeyManager::ensure_default_mek`]).
    ///
    /// With `migration_source` set, step 2 builds the source provider too, and both must
    /// answer (an error names the `migration source (<kind>)` or the `target (<kind>)`); the
    /// source must hold its MEK, which is never created. The key manager then runs over a
    /// [`ProviderSet`] of the two with
    /// [`KeyManagerConfig::with_migration_source`]: new table keys are wrapped under the
    /// target, existing ones unwrap through whichever provider their envelope names, and
    /// [`KeyManager::migrate_mek`] moves them.
    pub async fn new(config: TdeConfig) -> Result<Self> {
        Self::start(config, false).await
    }

    /// Starts TDE for a read-only command: as [`TdeSubsystem::new`], but the key store is
    /// opened read-only and nothing is created or written (no directory, no store, no MEK, no
    /// audit record). Every file is left byte-identical. A missing or mismatched default MEK
    /// ([`TdeError::MekMissing`], [`TdeError::MekMismatch`]) does not stop it: it is reported in
    /// [`TdeSubsystem::warnings`], so that `security status` can show which tables it makes
    /// unreadable ([`KeyManager::key_availability`]).
    pub async fn open_read_only(config: TdeConfig) -> Result<Self> {
        Self::start(config, true).await
    }

    async fn start(mut config: TdeConfig, read_only: bool) -> Result<Self> {
        let mut checked: CheckedConfig = config.checked()?;
        if !config.enabled {
            return Err(TdeError::config(
                "enabled",
                "TDE is disabled in this configuration (enabled = false); there is nothing to start",
            ));
        }
        let (mode, _) = SecurityMode::resolve_configured(checked.security_mode)?;
        // Before the first key exists (the secure-file provider derives one as it opens).
        let protected = protect_memory(&config, mode, read_only)?;
        let wait = std::time::Duration::from_secs(config.provider_startup_wait_secs);
        let label = checked.provider.label();
        // Read before the target's provider takes a passphrase variable the source shares.
        let source_passphrase = providers::shared_passphrase(&checked);
        let built = with_startup_retry(wait, &label, || {
            build_provider(&checked.provider, &checked.default_mek_id, mode)
        })
        .await;
        // The provider holds the PIN as a zeroizing secret now; wipe the plain copies of the
        // configuration (the caller's own value is theirs to protect).
        for hsm in [config.hsm_config.as_mut(), checked.provider.hsm_mut()]
            .into_iter()
            .flatten()
        {
            hsm.pin.zeroize();
        }
        let (provider, facts) = match &checked.migration_source {
            Some(_) => built
                .map_err(|e| name_member(e, &member_label(false, checked.provider.kind_name())))?,
            None => built?,
        };
        let facts = providers::ProviderFacts {
            source_passphrase,
            ..facts
        };
        Self::start_with(
            config,
            checked.default_mek_id,
            read_only,
            provider,
            facts,
            Some(protected),
        )
        .await
    }

    /// Starts TDE from `config` over a provider already built from it (a restore opens the
    /// provider once and keeps it). `protected`: the memory protection the caller applied
    /// before building the provider; `None` applies it here.
    pub(crate) async fn start_with(
        mut config: TdeConfig,
        default_mek_id: MekId,
        read_only: bool,
        provider: Arc<dyn MekProvider>,
        mut facts: providers::ProviderFacts,
        protected: Option<(super::memory::Applied, Vec<String>)>,
    ) -> Result<Self> {
        let mut checked: CheckedConfig = config.checked()?;
        let (mode, mode_source) = SecurityMode::resolve_configured(checked.security_mode)?;
        checked.check_migration_mode(mode)?;
        let wait = std::time::Duration::from_secs(config.provider_startup_wait_secs);
        let mut warnings = std::mem::take(&mut facts.warnings);
        let (memory, memory_warnings) = match protected {
            Some(p) => p,
            None => protect_memory(&config, mode, read_only)?,
        };
        warnings.extend(memory_warnings);
        let pin_source = facts.pin_source;
        // During a provider migration every error about the configured provider says that it
        // is the target, and every error about the previous one that it is the source.
        let target_who = checked
            .migration_source
            .as_ref()
            .map(|_| member_label(false, checked.provider.kind_name()));
        let name_target = |e: TdeError| match &target_who {
            Some(who) => name_member(e, who),
            None => e,
        };
        if mode.is_production() && !provider.is_secure() {
            let e = name_target(TdeError::InsecureProvider {
                provider: provider.description(),
            });
            if !read_only {
                let event = audit::validated_event(
                    mode,
                    mode_source,
                    provider.as_ref(),
                    &warnings,
                    Some(&e),
                );
                audit::record_once(&config, mode, event).await;
            }
            return Err(e);
        }
        // A remote provider is asked before anything is created or opened, so that a first
        // start with the server down leaves nothing on disk (and waits for it a while).
        let label = match &target_who {
            Some(who) => format!("{who}: {}", provider.description()),
            None => provider.description(),
        };
        with_startup_retry(wait, &label, || async {
            match provider.mek_info(&default_mek_id).await {
                Err(TdeError::KeyNotFound { .. }) => Ok(()),
                other => other.map(drop),
            }
        })
        .await
        .map_err(name_target)?;
        let migration = match &checked.migration_source {
            Some(src) => {
                let built = super::migration::start_source(
                    src,
                    mode,
                    wait,
                    &provider,
                    &default_mek_id,
                    &mut warnings,
                    &facts,
                )
                .await;
                // The source provider holds its PIN as a secret now (or failed): wipe the plain
                // copies, as for the target.
                let copies = [
                    config
                        .migration_source
                        .as_mut()
                        .and_then(|m| m.hsm_config.as_mut()),
                    checked
                        .migration_source
                        .as_mut()
                        .and_then(|m| m.provider.hsm_mut()),
                ];
                for hsm in copies.into_iter().flatten() {
                    hsm.pin.zeroize();
                }
                Some(built?)
            }
            None => None,
        };
        let source_mek = migration.as_ref().map(|set| set.source_mek().clone());
        let configured = provider.clone();
        let provider: Arc<dyn MekProvider> = match &migration {
            Some(set) => set.clone(),
            None => provider,
        };
        let store = open_store(
            &config,
            provider.as_ref(),
            &default_mek_id,
            read_only,
            source_mek.as_ref(),
        )
        .await?;
        let grace =
            std::time::Duration::from_secs(config.rotation_grace_days.saturating_mul(86_400));
        let mut km_config = KeyManagerConfig::new(default_mek_id.clone(), mode)
            .with_cache_limit(config.cache_limit)
            .with_algorithm(config.algorithm)
            .with_rotation(RotationConfig::default().with_grace_period(grace))
            .with_usage(UsagePolicy::default().with_soft_limit(config.tek_usage_soft_limit));
        if let Some(source_mek) = source_mek {
            km_config = km_config.with_migration_source(source_mek);
        }
        let mut km = KeyManager::new(provider.clone(), Arc::new(store), km_config)?;
        // A read-only start writes nothing, so it does not open the audit log.
        let audit_sink = match read_only {
            true => None,
            false => audit::open_sink(&config, mode)?,
        };
        if let Some(sink) = &audit_sink {
            km = km.with_audit(sink.clone());
        }
        let checks = Self::checks(&km, &mut warnings, read_only, audit_sink.as_deref()).await;
        if !read_only {
            let event = audit::validated_event(
                mode,
                mode_source,
                provider.as_ref(),
                &warnings,
                checks.as_ref().err(),
            );
            km.record_audit(event).await;
        }
        checks?;
        Ok(Self {
            config,
            default_mek_id,
            mode,
            mode_source,
            key_manager: km,
            warnings,
            pin_source,
            audit_sink,
            migration,
            provider: configured,
            memory,
        })
    }

    /// Starts a provider migration from this running subsystem's provider to the one `target`
    /// configures, without a restart: the subsystem is closed and started again with `target`
    /// and this provider, as it runs, as the migration source. This is how a development
    /// database on the in-memory provider, whose MEK exists only in this process, moves to real
    /// keys (a `migration_source` in a configuration can only describe a provider a new process
    /// can open). Then run [`KeyManager::migrate_mek`], verify and finish on the returned
    /// subsystem, and start with `target` alone from then on.
    ///
    /// `target` must use the same `key_storage_path`, another `default_mek_id`, and no
    /// `migration_source` of its own. The target provider is opened and checked before this
    /// subsystem is closed; if anything fails after that, this subsystem is started again over
    /// its own provider and handed back with the error, so an in-memory MEK is never lost.
    pub async fn migrate_to(
        self,
        target: TdeConfig,
    ) -> std::result::Result<TdeSubsystem, Box<super::MigrateToError>> {
        let back = |e: TdeError, tde: TdeSubsystem| {
            Box::new(super::MigrateToError {
                error: e,
                previous: Some(tde),
            })
        };
        if target.migration_source.is_some() {
            let e = TdeError::config(
                "migration_source",
                "migrate_to takes the running subsystem as the source; leave migration_source \
                 out of the target configuration",
            );
            return Err(back(e, self));
        }
        if target.key_storage_path != self.config.key_storage_path {
            let e = TdeError::config(
                "key_storage_path",
                format!(
                    "the target must use the running subsystem's key store ({}); a migration \
                     moves the wraps of the TEKs in it",
                    self.config.key_storage_path.display()
                ),
            );
            return Err(back(e, self));
        }
        let mut config = target;
        config.migration_source = Some(super::MigrationSourceConfig::from_config(&self.config));
        let checked = match config.checked() {
            Ok(c) => c,
            Err(e) => return Err(back(e, self)),
        };
        let mode = match SecurityMode::resolve_configured(checked.security_mode) {
            Ok((m, _)) => m,
            Err(e) => return Err(back(e, self)),
        };
        // The target is opened and asked for its MEK before anything of this subsystem is
        // closed.
        let who = member_label(false, checked.provider.kind_name());
        let built = build_provider(&checked.provider, &checked.default_mek_id, mode).await;
        let (target_provider, facts) = match built {
            Ok(b) => b,
            Err(e) => return Err(back(name_member(e, &who), self)),
        };
        match target_provider.mek_info(&checked.default_mek_id).await {
            Ok(_) | Err(TdeError::KeyNotFound { .. }) => {}
            Err(e) => return Err(back(name_member(e, &who), self)),
        }
        let source = self.provider.clone();
        let previous = self.config.clone();
        let previous_mek = self.default_mek_id.clone();
        drop(self);
        let facts = providers::ProviderFacts {
            running_source: Some(source.clone()),
            ..facts
        };
        match Self::start_with(
            config,
            checked.default_mek_id,
            false,
            target_provider,
            facts,
            None,
        )
        .await
        {
            Ok(tde) => Ok(tde),
            Err(e) => {
                let restarted = Self::start_with(
                    previous,
                    previous_mek,
                    false,
                    source,
                    providers::ProviderFacts::default(),
                    None,
                )
                .await;
                match restarted {
                    Ok(tde) => Err(back(e, tde)),
                    // Neither start worked; the first error is the one to act on.
                    Err(again) => {
                        tracing::error!(
                            target: "heliosdb::tde",
                            "could not start the previous configuration again after a failed \
                             migrate_to: {again}"
                        );
                        Err(Box::new(super::MigrateToError {
                            error: e,
                            previous: None,
                        }))
                    }
                }
            }
        }
    }

    /// The checks of a start after the key manager exists: security validation, the default
    /// MEK, the audit key, and the notes on unfinished restores and rotations (pushed to
    /// `warnings`).
    async fn checks(
        km: &KeyManager,
        warnings: &mut Vec<String>,
        read_only: bool,
        audit_sink: Option<&heliosdb_tde_manager::FileAuditSink>,
    ) -> Result<()> {
        if let Some(w) = km.validate_security()? {
            warnings.push(w);
        }
        if read_only {
            // A read-only start is also how an operator diagnoses a lost or wrong MEK: report
            // it (and let `security status` list the tables it makes unreadable) instead of
            // refusing to start. Nothing is created either way.
            match km.check_default_mek().await {
                Ok(_) => {}
                Err(e @ (TdeError::MekMissing { .. } | TdeError::MekMismatch { .. })) => {
                    tracing::error!(target: "heliosdb::tde", "{e}");
                    warnings.push(e.to_string());
                }
                // A first start has not happened yet: there is nothing to read.
                Err(e @ TdeError::KeyNotFound { .. }) => warnings.push(e.to_string()),
                Err(e) => return Err(e),
            }
        } else {
            km.ensure_default_mek().await?;
        }
        if let Some(sink) = audit_sink {
            audit::attach_key(km, sink).await?;
        }
        // A restore whose last step (the rotation of every table's TEK) did not finish.
        if km
            .store()
            .get_journal(super::backup::RESTORE_PENDING_ENTRY)
            .await?
            .is_some()
        {
            let m = "a restore from a backup bundle did not finish its last step (a new TEK for \
                     every table); run `heliosdb-cli security restore` with the same bundle \
                     again to finish it"
                .to_string();
            tracing::warn!(target: "heliosdb::tde", "{m}");
            warnings.push(m);
        }
        // An interrupted rotation is resumed by running it again; say so at every start.
        if let Some(st) = km
            .mek_rotation_status(km.config().default_mek_id.as_str())
            .await?
        {
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
        if let Some(m) = super::migration::migration_notice(km).await? {
            tracing::warn!(target: "heliosdb::tde", "{m}");
            warnings.push(m);
        }
        Ok(())
    }

    /// The memory protection in force in this process, read now: whether key pages are
    /// locked, left out of core dumps and wiped in forked children, whether core dumps are
    /// disabled, the `RLIMIT_MEMLOCK` and the key arena's size. These are process-wide, so an
    /// embedding database can report them as its own.
    pub fn memory_protection(&self) -> super::MemoryProtection {
        self.memory.report()
    }

    /// The `[memory_protection]` settings start-up applied (environment overrides included).
    pub fn memory_protection_config(&self) -> &super::MemoryProtectionConfig {
        self.memory.config()
    }

    /// The key manager.
    pub fn key_manager(&self) -> &KeyManager {
        &self.key_manager
    }

    /// The configuration the subsystem was started with.
    pub fn config(&self) -> &TdeConfig {
        &self.config
    }

    /// The MEK that wraps table keys (`default_mek_id`, validated).
    pub fn default_mek_id(&self) -> &MekId {
        &self.default_mek_id
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

    /// The provider set of the provider migration this subsystem was started for
    /// (`migration_source` in the configuration): its [`ProviderSet::source`] and
    /// [`ProviderSet::target`] with their descriptions and health, and the MEK ids of both.
    /// `None` without a migration source. The key manager's provider is this set, so
    /// `key_manager().mek_provider.health()` reports both members.
    pub fn migration_source(&self) -> Option<&ProviderSet> {
        self.migration.as_deref()
    }

    /// The audit log this process writes, when `audit_log_path` is set and the start was not
    /// read-only.
    pub fn audit_sink(&self) -> Option<&heliosdb_tde_manager::FileAuditSink> {
        self.audit_sink.as_deref()
    }

    /// Where the HSM PIN came from, when the provider is an HSM.
    pub fn hsm_pin_source(&self) -> Option<&'static str> {
        self.pin_source
    }

    /// The sealing handle for `table`'s pages: every seal goes through the key manager, which
    /// counts it against the active TEK's nonce budget (reserved durably in the key store before
    /// use, so the count survives restarts) and rotates the key at its usage limit. This is the
    /// only way the facade seals pages.
    ///
    /// The table is resolved once, here: each seal through the handle takes no lock, lookup or
    /// allocation, and the handle follows the table through key rotations.
    pub async fn page_sealer(&self, table: &str) -> Result<PageSealer<'_>> {
        // Fails early (unknown table, no active version) rather than at the first seal.
        Ok(PageSealer {
            inner: self.key_manager.table_sealer(table).await?,
        })
    }

    /// The opening handle for pages of `table` sealed under TEK `version` (the version a sealed
    /// page's header names: [`heliosdb_tde_cipher::sealed_tek_version`]). It cannot seal.
    pub async fn page_opener(
        &self,
        table: &str,
        version: heliosdb_tde_core::TekVersion,
    ) -> Result<PageOpener> {
        let key = self.key_manager.get_table_key(table, Some(version)).await?;
        Ok(PageOpener {
            cipher: TableCipher::new(&key, Backend::default(), UsageLimits::default())?,
        })
    }
}

/// Seals the pages of one table with its active TEK, metered: see
/// [`TdeSubsystem::page_sealer`]. Handles are cheap; any number may exist, and they share the
/// key manager's one budget per key.
#[derive(Debug)]
pub struct PageSealer<'a> {
    inner: TableSealer<'a>,
}

impl PageSealer<'_> {
    /// The table.
    pub fn table(&self) -> &str {
        self.inner.table().as_str()
    }

    /// Seals `page` in place; returns the page header (naming the TEK version) and the tag.
    ///
    /// The manager's future itself (no second state machine around it), so that the common
    /// path stays as short as the manager's.
    pub fn seal_in_place<'s>(
        &'s self,
        aad: &'s [u8],
        page: &'s mut [u8],
    ) -> impl std::future::Future<Output = Result<SealedParts>> + Send + 's {
        self.inner.seal_in_place(aad, page)
    }

    /// Seals `plaintext` into `header || ciphertext || tag`.
    pub async fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.inner.seal(aad, plaintext).await
    }
}

/// Opens pages sealed under one TEK version; it has no sealing method. See
/// [`TdeSubsystem::page_opener`].
#[derive(Debug)]
pub struct PageOpener {
    cipher: TableCipher,
}

impl PageOpener {
    /// The TEK version this handle opens.
    pub fn tek(&self) -> &heliosdb_tde_core::TekId {
        self.cipher.tek()
    }

    /// Opens a page sealed in place, given its header and tag.
    pub fn open_in_place(&self, parts: &SealedParts, aad: &[u8], page: &mut [u8]) -> Result<()> {
        Ok(self.cipher.open_in_place(parts, aad, page)?)
    }

    /// Opens `header || ciphertext || tag`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        Ok(self.cipher.open(aad, sealed)?)
    }
}

#[cfg(test)]
mod tests;
