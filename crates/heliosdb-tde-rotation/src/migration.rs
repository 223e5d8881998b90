//! Provider migration: the rotation machinery with "the new MEK version" replaced by "the target
//! provider's MEK".
//!
//! The rotator's provider is then a [`heliosdb_tde_core::ProviderSet`] (target plus source);
//! the journal is the rotation journal of the *source* MEK id, marked with
//! [`crate::MigrationInfo`], so that a rotation and a migration of the same MEK exclude each
//! other and an MEK with a migration in progress counts as depended on. The re-wrap pass, its
//! cursor, retries, circuit breaker and failed-key reporting are [`Rotator::rewrap_pass`]'s;
//! rollback is [`Rotator::rollback`]'s (the target's MEK is left as it is); verification adds a
//! trial unwrap through the target; [`Rotator::finish_migration`] drops the source wraps.

use crate::{MigrationInfo, Phase, RotationState, Rotator, wrong_phase};
use heliosdb_tde_core::{MekId, MekRef, Result, StoreBatch, TdeError, Timestamp};

impl Rotator {
    /// Starts the migration of every TEK from `source_mek` (the source provider's MEK, whose
    /// active version the TEKs are wrapped under) to `target` (the target provider's MEK
    /// version, which must exist), or returns the migration in progress to resume it with
    /// [`Rotator::rewrap_pass`].
    ///
    /// Refused while a rotation of `source_mek` is in progress, while a migration to another
    /// target is, and while a migration's rollback is.
    pub async fn prepare_migration(
        &self,
        source_mek: &MekId,
        target: &MekRef,
        info: MigrationInfo,
    ) -> Result<RotationState> {
        let mut step = self.begin(source_mek, "migrate")?;
        if let Some(st) = self.load(&mut step).await? {
            if !st.is_migration() {
                return Err(TdeError::RotationPhase {
                    mek: format!("mek:{source_mek}"),
                    phase: st.phase.to_string(),
                    operation: "start a provider migration".into(),
                    hint: "an MEK rotation of this MEK is in progress; finish it (`heliosdb-cli \
                           security mek deactivate`) or roll it back before migrating"
                        .into(),
                });
            }
            if st.new.as_ref() != Some(target) {
                return Err(TdeError::RotationPhase {
                    mek: format!("mek:{source_mek}"),
                    phase: st.phase.to_string(),
                    operation: format!("migrate to {target}"),
                    hint: format!(
                        "a migration to {} is in progress; finish it (`heliosdb-cli security \
                         mek migrate --finish`) or roll it back (`--rollback`) first",
                        st.new
                            .as_ref()
                            .map_or_else(|| "another MEK".to_string(), |m| m.to_string())
                    ),
                });
            }
            if st.phase == Phase::RollingBack {
                return Err(wrong_phase(&st, st.phase, "migrate"));
            }
            return Ok(st);
        }
        let old = self.active_version(source_mek).await?;
        let mut st = RotationState::new(source_mek.clone(), old, false);
        st.new = Some(target.clone());
        st.migration = Some(info);
        st.phase = Phase::NewMekReady;
        self.save(&mut step, &st, StoreBatch::new()).await?;
        fail_here!("rotation::migration_started");
        tracing::info!(
            target: "heliosdb::tde::rotation",
            source = %st.old, target = %target, "MEK provider migration started"
        );
        Ok(st)
    }

    /// Finishes a verified migration whose grace period is over (`now` judges it): refused
    /// before [`Rotator::verify`] has found no TEK that depends on the source alone, while any
    /// TEK does again, and before the grace period ends. A sample of the target wraps is
    /// trial-unwrapped first; then the kept source wraps are dropped and the journal is
    /// archived in [`Phase::Migrated`]. The source provider's MEK is left as it is: backups
    /// taken before the migration still need it.
    pub async fn finish_migration(
        &self,
        source_mek: &MekId,
        now: Timestamp,
    ) -> Result<RotationState> {
        let mut step = self.begin(source_mek, "finish the migration")?;
        let mut st = self.load_existing(&mut step).await?;
        if !st.is_migration() {
            return Err(not_a_migration(&st));
        }
        if st.phase == Phase::Migrated {
            return self.finish_deactivation(&mut step, st).await;
        }
        if st.phase != Phase::Verified {
            return Err(TdeError::RotationPhase {
                mek: format!("mek:{}", st.old),
                phase: st.phase.to_string(),
                operation: "finish the migration".into(),
                hint: "verify it first (`heliosdb-cli security mek migrate --verify`): finishing \
                       drops the source wraps, so it needs a verification that found every TEK \
                       under the target"
                    .into(),
            });
        }
        let (stranded, examples) = self.stranded_in(&st).await?;
        if stranded > 0 {
            let list: Vec<String> = examples.iter().take(10).map(|t| t.to_string()).collect();
            return Err(TdeError::InvalidKeyState {
                key: format!("mek:{}", st.old),
                state: heliosdb_tde_core::KeyState::Active,
                operation: "finish the migration away from it".into(),
                hint: format!(
                    "{stranded} TEK(s) can only be unwrapped through the source (for example \
                     {}); run `heliosdb-cli security mek migrate` again to move them, then \
                     verify",
                    list.join(", ")
                ),
            });
        }
        if let Some(until) = st.grace_until
            && now < until
        {
            return Err(TdeError::InvalidKeyState {
                key: format!("mek:{}", st.old),
                state: heliosdb_tde_core::KeyState::Active,
                operation: "finish the migration away from it".into(),
                hint: format!(
                    "the grace period, during which a rollback can still use the source wraps, \
                     lasts until {until}; finish after that (it is `rotation_grace_days`, 30 days \
                     by default)"
                ),
            });
        }
        self.trial_unwrap(&st.old, "finish the migration").await?;
        self.claim(&mut step).await?;
        st.phase = Phase::Migrated;
        self.save(&mut step, &st, StoreBatch::new()).await?;
        fail_here!("rotation::migrated_saved");
        self.finish_deactivation(&mut step, st).await
    }
}

/// The error of a migration step run on a rotation's journal.
pub(crate) fn not_a_migration(st: &RotationState) -> TdeError {
    TdeError::RotationPhase {
        mek: format!("mek:{}", st.mek_id),
        phase: st.phase.to_string(),
        operation: "continue a provider migration".into(),
        hint: "this MEK has a rotation in progress, not a migration; use the rotation commands \
               (`heliosdb-cli security mek rotation-status`)"
            .into(),
    }
}

/// The error of a rotation step run on a migration's journal.
pub(crate) fn not_a_rotation(st: &RotationState, operation: &str) -> TdeError {
    TdeError::RotationPhase {
        mek: format!("mek:{}", st.mek_id),
        phase: format!("{} (provider migration)", st.phase),
        operation: operation.into(),
        hint: "a provider migration of this MEK is in progress; use `heliosdb-cli security mek \
               migrate` (`--verify`, `--finish`, `--rollback`) and `security mek \
               migration-status`"
            .into(),
    }
}
