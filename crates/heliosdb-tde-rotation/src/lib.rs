#![doc = include_str!("../README.md")]

/// Injects a failure at a fail point (feature `failpoints`); a no-op otherwise.
macro_rules! fail_here {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err(
            heliosdb_tde_core::TdeError::ProviderUnavailable {
                provider: "fail point".into(),
                reason: concat!("injected failure at ", $name).into(),
                retryable: false,
            }
        ));
    };
}

mod config;
mod emergency;
mod migration;
mod rollback;
mod state;
mod steps;
mod verification;

pub use config::{Progress, ProgressFn, RotationConfig, Verification};
pub use state::{JOURNAL_FORMAT, MAX_FAILED_KEPT, MigrationInfo, Phase, RotationState};
pub use steps::PassEnd;
pub use verification::trial_sample_size;

use heliosdb_tde_core::store::JOURNAL_CHANGED;
use heliosdb_tde_core::{
    KeyState, KeyStore, MekId, MekProvider, MekRef, Result, StoreBatch, TdeError, Timestamp,
};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The journal entry of the rotation of `mek_id`.
pub fn journal_name(mek_id: &MekId) -> String {
    format!("mek_rotation/{mek_id}")
}

fn archive_name(st: &RotationState) -> String {
    format!(
        "mek_rotation_done/{}/{}",
        st.mek_id,
        st.started_at.as_millis()
    )
}

/// Rotation steps running in this process, by key store location and MEK id.
static RUNNING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One running rotation step: holds the in-process lock of its MEK (released on drop) and the
/// journal as this step last read or wrote it (the expected value of the next write).
struct Step {
    key: String,
    mek_id: MekId,
    operation: &'static str,
    seen: Option<Vec<u8>>,
    /// Whether this step has written to the store (and so holds its write lock).
    wrote: bool,
}

impl Drop for Step {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(&self.key);
    }
}

/// Drives MEK rotations over any provider and store.
pub struct Rotator {
    provider: Arc<dyn MekProvider>,
    store: Arc<dyn KeyStore>,
    config: RotationConfig,
}

impl fmt::Debug for Rotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotator")
            .field("provider", &self.provider.description())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Rotator {
    /// A rotator over `provider` and `store`.
    pub fn new(
        provider: Arc<dyn MekProvider>,
        store: Arc<dyn KeyStore>,
        config: RotationConfig,
    ) -> Self {
        Self {
            provider,
            store,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RotationConfig {
        &self.config
    }

    /// The rotation of `mek_id` in progress, if any.
    pub async fn status(&self, mek_id: &MekId) -> Result<Option<RotationState>> {
        match self.store.get_journal(&journal_name(mek_id)).await? {
            Some(bytes) => Ok(Some(RotationState::decode(&bytes, &self.store.location())?)),
            None => Ok(None),
        }
    }

    /// Takes the in-process lock of `mek_id`'s rotation for one step, or fails at once.
    fn begin(&self, mek_id: &MekId, operation: &'static str) -> Result<Step> {
        let key = format!("{}\u{0}{mek_id}", self.store.location());
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if !running.insert(key.clone()) {
            return Err(TdeError::RotationPhase {
                mek: format!("mek:{mek_id}"),
                phase: "busy".into(),
                operation: operation.into(),
                hint: "a rotation step is already running for this MEK in this process; wait \
                       for it to finish, then run the command again"
                    .into(),
            });
        }
        Ok(Step {
            key,
            mek_id: mek_id.clone(),
            operation,
            seen: None,
            wrote: false,
        })
    }

    /// Reads the journal for `step`, remembering its bytes for the next compare-and-set.
    async fn load(&self, step: &mut Step) -> Result<Option<RotationState>> {
        let raw = self.store.get_journal(&journal_name(&step.mek_id)).await?;
        let st = match &raw {
            Some(bytes) => Some(RotationState::decode(bytes, &self.store.location())?),
            None => None,
        };
        step.seen = raw;
        Ok(st)
    }

    async fn load_existing(&self, step: &mut Step) -> Result<RotationState> {
        let mek_id = step.mek_id.clone();
        self.load(step).await?.ok_or_else(|| no_rotation(&mek_id))
    }

    /// Rewrites the journal unchanged (compare-and-set) before a step changes anything in the
    /// provider: the first write makes the store take its cross-process write lock, so a step
    /// that cannot get it stops here, having changed nothing.
    async fn claim(&self, step: &mut Step) -> Result<()> {
        if step.wrote {
            return Ok(());
        }
        if let Some(bytes) = step.seen.clone() {
            let name = journal_name(&step.mek_id);
            let batch = StoreBatch::new()
                .check_journal(name.clone(), Some(bytes.clone()))
                .put_journal(name, bytes);
            self.commit(step, batch).await?;
            step.wrote = true;
        }
        Ok(())
    }

    /// Commits `batch` with the journal set to `st`, if the journal is still what `step` saw.
    async fn save(&self, step: &mut Step, st: &RotationState, batch: StoreBatch) -> Result<()> {
        let bytes = st.encode();
        let name = journal_name(&st.mek_id);
        let mut full = StoreBatch::new().check_journal(name.clone(), step.seen.clone());
        full.ops.extend(batch.ops);
        let full = full.put_journal(name, bytes.clone());
        self.commit(step, full).await?;
        step.seen = Some(bytes);
        step.wrote = true;
        Ok(())
    }

    /// Archives the journal (compare-and-set, like [`Rotator::save`]).
    async fn archive(&self, step: &mut Step, mut st: RotationState) -> Result<RotationState> {
        st.finished_at = Some(Timestamp::now());
        let name = journal_name(&st.mek_id);
        let batch = StoreBatch::new()
            .check_journal(name.clone(), step.seen.clone())
            .put_journal(archive_name(&st), st.encode())
            .delete_journal(name);
        self.commit(step, batch).await?;
        step.seen = None;
        step.wrote = true;
        Ok(st)
    }

    async fn commit(&self, step: &Step, batch: StoreBatch) -> Result<()> {
        match self.store.apply(batch).await {
            Err(TdeError::RotationPhase { phase, .. }) if phase == JOURNAL_CHANGED => {
                let now = self
                    .status(&step.mek_id)
                    .await
                    .ok()
                    .flatten()
                    .map_or_else(|| "none (finished)".to_string(), |s| s.phase.to_string());
                Err(TdeError::RotationPhase {
                    mek: format!("mek:{}", step.mek_id),
                    phase: now,
                    operation: step.operation.into(),
                    hint: "another process or task changed the rotation journal while this step \
                           ran (compare-and-set), so this step wrote nothing; check `heliosdb-cli \
                           security mek rotation-status` and run the command again"
                        .into(),
                })
            }
            other => other,
        }
    }

    async fn active_version(&self, mek_id: &MekId) -> Result<MekRef> {
        let info = self.provider.mek_info(mek_id).await?;
        let v = info
            .active_version()
            .ok_or_else(|| TdeError::InvalidKeyState {
                key: format!("mek:{mek_id}"),
                state: info
                    .versions
                    .last()
                    .map(|v| v.state)
                    .unwrap_or(KeyState::Deactivated),
                operation: "rotate".into(),
                hint: "no version of this MEK is active".into(),
            })?;
        Ok(MekRef::new(mek_id.clone(), v))
    }

    async fn mek_state(&self, mek: &MekRef) -> Result<Option<KeyState>> {
        let info = self.provider.mek_info(&mek.id).await?;
        Ok(info
            .versions
            .iter()
            .find(|v| &v.mek == mek)
            .map(|v| v.state))
    }
}

fn no_rotation(mek_id: &MekId) -> TdeError {
    TdeError::KeyNotFound {
        key: format!("rotation of mek:{mek_id}"),
        hint: "no rotation of this MEK is in progress; start one with `heliosdb-cli security mek \
               rotate`"
            .into(),
    }
}

fn wrong_phase(st: &RotationState, phase: Phase, op: &str) -> TdeError {
    TdeError::RotationPhase {
        mek: format!("mek:{}", st.mek_id),
        phase: phase.to_string(),
        operation: op.to_string(),
        hint: match phase {
            Phase::NewMekReady | Phase::Rewrapping if st.is_migration() => {
                "run the migration again (`heliosdb-cli security mek migrate`) to finish moving \
                 the wraps first"
                    .into()
            }
            Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping => {
                "run the rotation again (`heliosdb-cli security mek rotate`) to finish re-wrapping \
                 first"
                    .into()
            }
            Phase::OldDeactivated => "the old MEK is deactivated; run `heliosdb-cli security mek \
                                      deactivate` to finish the clean-up"
                .into(),
            Phase::RollingBack if st.is_migration() => "a rollback of the migration is in \
                                                        progress; run `heliosdb-cli security \
                                                        mek migrate --rollback` to finish it"
                .into(),
            Phase::RollingBack => "a rollback is in progress; run `heliosdb-cli security mek \
                                   rollback` to finish it"
                .into(),
            _ => "see `heliosdb-cli security mek rotation-status`".into(),
        },
    }
}
