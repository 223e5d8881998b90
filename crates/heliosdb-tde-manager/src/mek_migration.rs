//! Provider migration through the key manager: every TEK's wrap moved from the previous
//! provider's MEK (the source, [`KeyManagerConfig::migration_source`]) to the configured
//! provider's (the target), with the rotation orchestrator's journal, paging, retries, circuit
//! breaker and failed-key reporting (`heliosdb_tde_rotation::Rotator::prepare_migration`).
//!
//! The manager's provider is then a [`heliosdb_tde_core::ProviderSet`]: new TEKs are wrapped
//! under the target from the start, existing ones unwrap through whichever provider their
//! envelope names, so reads and page sealing go on during the whole migration.
//!
//! [`KeyManagerConfig::migration_source`]: crate::KeyManagerConfig::migration_source

use crate::{KeyManager, poisoned};
use heliosdb_tde_core::{AuditAction, KeyId, MekId, MekRef, Result, TdeError, Timestamp};
use heliosdb_tde_rotation::{
    MigrationInfo, PassEnd, Phase, ProgressFn, RotationState, Verification,
};

/// What a migration pass ([`KeyManager::migrate_mek`]) reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MekMigrationResult {
    /// The source provider's MEK version the TEKs were wrapped under.
    pub source: MekRef,
    /// The target provider's MEK version they are wrapped under now.
    pub target: MekRef,
    /// The source provider's kind.
    pub source_provider: String,
    /// The target provider's kind.
    pub target_provider: String,
    /// TEKs moved to the target so far (over all passes).
    pub keys_moved: u64,
    /// Keys that failed in the last pass, with the error; run the migration again to retry.
    pub failed_keys: Vec<(String, String)>,
    /// How many keys failed in the last pass.
    pub failed_total: u64,
    /// Where the migration is now.
    pub phase: Phase,
    /// When `finish` may drop the source wraps.
    pub grace_until: Option<Timestamp>,
    /// Whether this pass started the migration (`false`: it resumed one).
    pub started: bool,
}

impl MekMigrationResult {
    fn from_state(st: &RotationState, started: bool) -> Result<Self> {
        let info = st
            .migration
            .clone()
            .unwrap_or_else(|| MigrationInfo::new("", ""));
        Ok(Self {
            source: st.old.clone(),
            target: st.new_mek()?,
            source_provider: info.source_provider,
            target_provider: info.target_provider,
            keys_moved: st.reencrypted,
            failed_keys: st.failed.clone(),
            failed_total: st.failed_total,
            phase: st.phase,
            grace_until: st.grace_until,
            started,
        })
    }
}

impl KeyManager {
    /// The source MEK of the provider migration this manager is configured for, if any.
    pub fn migration_source(&self) -> Option<&MekId> {
        self.config.migration_source.as_ref()
    }

    fn require_migration_source(&self, operation: &str) -> Result<MekId> {
        self.config
            .migration_source
            .clone()
            .ok_or_else(|| TdeError::InvalidConfig {
                field: "migration_source".into(),
                reason: format!(
                    "cannot {operation}: no previous provider is configured; describe it in \
                     migration_source (or run `heliosdb-cli security mek migrate --to \
                     TARGET.toml` with the current configuration)"
                ),
            })
    }

    /// Moves every TEK's wrap from the source provider's MEK to the target's (the default
    /// MEK), page by page with the cursor in the journal, keeping the source wrap until
    /// [`KeyManager::finish_mek_migration`]. Starts the migration, or resumes it after a crash
    /// or a pause; run again, it retries the keys that failed. A pass stopped by the circuit
    /// breaker (a provider kept failing with retryable errors) is the retryable
    /// [`TdeError::ProviderUnavailable`] saying so; the work done is committed.
    pub async fn migrate_mek(
        &self,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekMigrationResult> {
        let r = self.migrate_run(progress).await;
        match &r {
            Ok(Ok(res)) => {
                let detail = format!(
                    "{} {} ({}) -> {} ({}): {} moved, {} failed",
                    if res.started { "started" } else { "resumed" },
                    res.source,
                    res.source_provider,
                    res.target,
                    res.target_provider,
                    res.keys_moved,
                    res.failed_total
                );
                let ok: Result<()> = Ok(());
                self.audit_result(
                    AuditAction::MekMigrated,
                    Some(KeyId::Master(res.target.clone())),
                    &ok,
                    detail,
                )
                .await;
            }
            Ok(Err((st, e))) => {
                let detail = format!(
                    "{} -> {}: paused by a provider outage after {} moved; run the migration \
                     again to resume",
                    st.old,
                    st.new.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                    st.reencrypted
                );
                self.audit_failure(
                    AuditAction::MekMigrationPaused,
                    st.new.clone().map(KeyId::Master),
                    e,
                    detail,
                )
                .await;
            }
            Err(e) => {
                let source = self.config.migration_source.clone();
                self.audit_failure(
                    AuditAction::MekMigrated,
                    None,
                    e,
                    format!(
                        "migration from mek:{} failed",
                        source.map(|s| s.to_string()).unwrap_or_default()
                    ),
                )
                .await;
            }
        }
        match r {
            Ok(Ok(res)) => Ok(res),
            Ok(Err((_, e))) | Err(e) => Err(e),
        }
    }

    #[allow(clippy::type_complexity)]
    async fn migrate_run(
        &self,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<std::result::Result<MekMigrationResult, (RotationState, TdeError)>> {
        let source = self.require_migration_source("migrate")?;
        // The target is the default MEK (in the configured provider); it exists from the
        // first start with a migration source, or is made now by the first-start rule.
        let target = self.ensure_default_mek().await?;
        let source_kind = self.mek_provider.mek_info(&source).await?.provider;
        let info = MigrationInfo::new(source_kind.name(), self.mek_provider.kind().name());
        let rot = self.rotator();
        let st = {
            // New TEKs are wrapped under the target from here on (again, after a rollback in
            // this process had moved them back to the source).
            let _guard = self.mutations.lock().await;
            let st = rot.prepare_migration(&source, &target, info).await?;
            *self.active_mek.write().map_err(|_| poisoned())? = Some(target.clone());
            st
        };
        let started = st.phase == Phase::NewMekReady && st.reencrypted == 0;
        match rot.rewrap_pass(&source, progress).await? {
            PassEnd::Finished(st) => Ok(Ok(MekMigrationResult::from_state(&st, started)?)),
            PassEnd::Paused { state, error } => Ok(Err((state, error))),
            other => Err(TdeError::Unsupported {
                what: format!("a re-wrap pass that ended as {other:?}"),
                hint: "upgrade heliosdb-tde-manager to match heliosdb-tde-rotation".into(),
            }),
        }
    }

    /// The provider migration in progress, if any (`None` also when none is configured).
    pub async fn mek_migration_status(&self) -> Result<Option<RotationState>> {
        let Some(source) = self.config.migration_source.clone() else {
            return Ok(None);
        };
        Ok(self
            .rotator()
            .status(&source)
            .await?
            .filter(RotationState::is_migration))
    }

    /// Counts the TEKs that only the source can still unwrap and, with none, trial-unwraps a
    /// sample through the target (comparing it with the kept source wrap): the migration is
    /// then verified, which [`KeyManager::finish_mek_migration`] requires.
    pub async fn verify_mek_migration(&self) -> Result<Verification> {
        let r = match self.require_migration_source("verify the migration") {
            Ok(source) => self.rotator().verify(&source).await,
            Err(e) => Err(e),
        };
        let key = r.as_ref().ok().and_then(|v| v.state.new.clone());
        let detail = match &r {
            Ok(v) => format!(
                "{} TEK(s) still only under the source; phase {}",
                v.stranded, v.state.phase
            ),
            Err(_) => "verify the migration".into(),
        };
        self.audit_result(
            AuditAction::MekMigrationVerified,
            key.map(KeyId::Master),
            &r,
            detail,
        )
        .await;
        r
    }

    /// Finishes a verified migration whose grace period is over: drops the source wraps (only
    /// when no TEK depends on them) and archives the journal. Then remove `migration_source`
    /// from the configuration.
    pub async fn finish_mek_migration(&self) -> Result<RotationState> {
        self.finish_mek_migration_at(Timestamp::now()).await
    }

    /// [`KeyManager::finish_mek_migration`] judged at `now` (for tests and tools).
    pub async fn finish_mek_migration_at(&self, now: Timestamp) -> Result<RotationState> {
        let r = match self.require_migration_source("finish the migration") {
            Ok(source) => self.rotator().finish_migration(&source, now).await,
            Err(e) => Err(e),
        };
        let key = r.as_ref().ok().and_then(|st| st.new.clone());
        let detail = match &r {
            Ok(st) => format!("{} -> {}: source wraps dropped", st.old, st.new_mek()?),
            Err(_) => "finish the migration".into(),
        };
        self.audit_result(
            AuditAction::MekMigrationFinished,
            key.map(KeyId::Master),
            &r,
            detail,
        )
        .await;
        r
    }

    /// Rolls the migration back: every TEK is wrapped under the source's MEK again (its kept
    /// source wrap, or a new source wrap for a TEK created during the migration), and this
    /// manager wraps new TEKs under the source from then on. Possible until the migration is
    /// finished. Afterwards put the source's configuration back (without
    /// `migration_source`); the target's MEK is left as it is.
    pub async fn rollback_mek_migration(
        &self,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let r = match self.require_migration_source("roll the migration back") {
            Ok(source) => {
                let _guard = self.mutations.lock().await;
                let rot = self.rotator();
                match rot.status(&source).await {
                    Ok(Some(st)) if !st.is_migration() => Err(TdeError::RotationPhase {
                        mek: format!("mek:{source}"),
                        phase: st.phase.to_string(),
                        operation: "roll back a provider migration".into(),
                        hint: "this MEK has a rotation in progress, not a migration; use \
                               `heliosdb-cli security mek rollback`"
                            .into(),
                    }),
                    Ok(_) => {
                        let r = rot.rollback(&source, progress).await;
                        if let Ok(st) = &r {
                            *self.active_mek.write().map_err(|_| poisoned())? =
                                Some(st.old.clone());
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let key = r.as_ref().ok().map(|st| st.old.clone());
        let detail = match &r {
            Ok(st) => format!(
                "{} <- {}: every TEK is under the source again",
                st.old,
                st.new.as_ref().map(|m| m.to_string()).unwrap_or_default()
            ),
            Err(_) => "roll the migration back".into(),
        };
        self.audit_result(
            AuditAction::MekMigrationRolledBack,
            key.map(KeyId::Master),
            &r,
            detail,
        )
        .await;
        r
    }

    /// The error of a rotation requested while a provider migration is in progress.
    pub(crate) async fn refuse_rotation_during_migration(&self) -> Result<()> {
        if let Some(st) = self.mek_migration_status().await? {
            return Err(TdeError::RotationPhase {
                mek: format!("mek:{}", st.old.id),
                phase: format!("{} (provider migration)", st.phase),
                operation: "rotate an MEK".into(),
                hint: "a provider migration is in progress; finish it (`heliosdb-cli security mek \
                       migrate --finish`) or roll it back before rotating"
                    .into(),
            });
        }
        Ok(())
    }
}
