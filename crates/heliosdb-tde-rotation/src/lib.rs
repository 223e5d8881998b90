//! Crash-resumable MEK rotation with a dual-encryption period.
//!
//! The [`Rotator`] drives one MEK through a persisted state machine, kept as a journal entry
//! in the key store and updated in the same transaction as the TEK records it changes:
//!
//! ```text
//! Preparing ──▶ NewMekReady ──▶ Rewrapping(cursor) ──▶ DualActive ──▶ Verified ──▶ OldDeactivated
//!                    │                 │                    │             │
//!                    └─────────────────┴────── RollingBack ─┴─────────────┘──▶ RolledBack
//! ```
//!
//! * **Preparing**: the rotation is recorded before the provider creates the new version, so
//!   a crash right after the provider call is recognised on resume (the provider's active
//!   version is newer than the recorded old one) and the version is not created twice.
//! * **Rewrapping**: TEKs are re-wrapped page by page; each page's rewraps and the cursor are
//!   one store transaction. Each TEK keeps its old wrapped form (`previous_wrap`).
//! * **DualActive**: both versions unwrap; new TEKs are wrapped under the new one. The grace
//!   period (30 days by default) starts.
//! * **Verified**: no TEK depends on the old version alone.
//! * **OldDeactivated**: the old version is deactivated in the provider and the kept wrapped
//!   forms are dropped. The journal is archived.
//!
//! Every step can be re-run: finished steps are recognised from the journal and skipped.
//! Fail points (feature `failpoints`) sit at each transition and around each store commit.

mod state;

pub use state::{JOURNAL_FORMAT, MAX_FAILED_KEPT, Phase, RotationState};

use futures_util::stream::{self, StreamExt};
use heliosdb_tde_core::{
    KeyState, KeyStore, MekId, MekProvider, MekRef, Result, StoreBatch, StoreOp, TdeError, TekId,
    TekRecord, Timestamp, WrapContext, WrappedTek,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Tuning and policy of a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// Re-wraps in flight at once (bounds the load on a remote KMS or HSM).
    pub concurrency: usize,
    /// TEKs per store transaction.
    pub batch_size: usize,
    /// Attempts per TEK on retryable errors, the first included.
    pub max_attempts: u32,
    /// First backoff delay; doubles on each retry, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// How long both MEK versions stay valid before the old one may be deactivated.
    pub grace_period: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            batch_size: 512,
            max_attempts: 5,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            grace_period: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Progress of a long step, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The step running.
    pub phase: Phase,
    /// TEKs examined so far.
    pub done: u64,
    /// TEKs in the store when the step started.
    pub total: u64,
    /// TEKs that failed so far.
    pub failed: u64,
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Send + Sync);

/// What the verify step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// TEKs that only the old MEK version can unwrap.
    pub stranded: u64,
    /// The first of them (at most 100), to report.
    pub examples: Vec<TekId>,
    /// The rotation's state after the check.
    pub state: RotationState,
}

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

/// Injects a failure at a fail point (feature `failpoints`); a no-op otherwise.
macro_rules! fail_here {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err(TdeError::ProviderUnavailable {
            provider: "fail point".into(),
            reason: concat!("injected failure at ", $name).into(),
            retryable: false,
        }));
    };
}

fn jitter(cap: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let half = cap / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(u64::from_le_bytes(b) % nanos)
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

    async fn save(&self, st: &RotationState, batch: StoreBatch) -> Result<()> {
        self.store
            .apply(batch.put_journal(journal_name(&st.mek_id), st.encode()))
            .await
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

    /// Starts a rotation of `mek_id`, or resumes the one in progress, up to `NewMekReady` (the
    /// new version exists and wraps new TEKs). Returns the state reached.
    pub async fn prepare(&self, mek_id: &MekId, emergency: bool) -> Result<RotationState> {
        let mut st = match self.status(mek_id).await? {
            Some(st) if st.phase != Phase::Preparing => return Ok(st),
            Some(st) => st,
            None => {
                let old = self.active_version(mek_id).await?;
                let st = RotationState::new(mek_id.clone(), old, emergency);
                self.save(&st, StoreBatch::new()).await?;
                tracing::info!(target: "heliosdb::tde::rotation", mek = %st.old, emergency, "MEK rotation started");
                st
            }
        };
        fail_here!("rotation::preparing_saved");
        // If the provider already rotated before a crash, adopt that version.
        let current = self.active_version(mek_id).await?;
        let new = if current.version > st.old.version {
            current
        } else {
            self.provider.rotate_mek(mek_id).await?.mek
        };
        fail_here!("rotation::after_provider_rotate");
        if st.emergency {
            let info = self.provider.mek_info(mek_id).await?;
            let old_state = info
                .versions
                .iter()
                .find(|v| v.mek == st.old)
                .map(|v| v.state);
            if old_state != Some(KeyState::Compromised) {
                self.provider
                    .set_mek_state(&st.old, KeyState::Compromised)
                    .await?;
            }
        }
        st.new = Some(new);
        st.phase = Phase::NewMekReady;
        self.save(&st, StoreBatch::new()).await?;
        fail_here!("rotation::new_mek_ready_saved");
        Ok(st)
    }

    async fn rewrap_one(&self, rec: &TekRecord, new: &MekRef) -> Result<WrappedTek> {
        let ctx = WrapContext::table_key(&rec.id);
        let mut attempt = 1;
        loop {
            match self.provider.rewrap_tek(&rec.wrapped, &ctx, new).await {
                Ok(w) => return Ok(w),
                Err(e) if e.is_retryable() && attempt < self.config.max_attempts => {
                    let exp = self
                        .config
                        .backoff_base
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(self.config.backoff_max);
                    tracing::debug!(target: "heliosdb::tde::rotation", tek = %rec.id, attempt, "retrying: {e}");
                    tokio::time::sleep(jitter(exp)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-wraps every TEK still under the old version (from the saved cursor after a crash),
    /// then enters `DualActive`. Run again in `DualActive`, it re-wraps whatever is still
    /// under the old version, such as keys that failed before.
    pub async fn rewrap(
        &self,
        mek_id: &MekId,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let mut st = self
            .status(mek_id)
            .await?
            .ok_or_else(|| no_rotation(mek_id))?;
        let new = st.new_mek()?;
        match st.phase {
            Phase::NewMekReady | Phase::DualActive | Phase::Verified => {
                st.phase = Phase::Rewrapping;
                st.cursor = None;
                st.failed.clear();
                st.failed_total = 0;
                self.save(&st, StoreBatch::new()).await?;
            }
            Phase::Rewrapping => {}
            other => return Err(wrong_phase(&st, other, "re-wrap")),
        }
        let total = self.store.count_teks().await?;
        let mut done = 0u64;
        loop {
            let page = self
                .store
                .scan_teks(st.cursor.as_ref(), self.config.batch_size)
                .await?;
            let Some(last) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            done += page.len() as u64;
            let todo: Vec<&TekRecord> = page
                .iter()
                .filter(|r| r.wrapped.mek == st.old && r.metadata.state != KeyState::Destroyed)
                .collect();
            let results: Vec<(TekId, Result<WrappedTek>)> = stream::iter(todo)
                .map(|rec| async { (rec.id.clone(), self.rewrap_one(rec, &new).await) })
                .buffer_unordered(self.config.concurrency.max(1))
                .collect()
                .await;
            let mut batch = StoreBatch::new();
            for (id, r) in results {
                match r {
                    Ok(wrapped) => {
                        batch = batch.push(StoreOp::Rewrap {
                            id,
                            expect: st.old.clone(),
                            wrapped,
                            keep_previous: true,
                        });
                        st.reencrypted += 1;
                    }
                    Err(e) => st.record_failure(&id, &e),
                }
            }
            st.cursor = Some(last);
            fail_here!("rotation::before_page_commit");
            self.save(&st, batch).await?;
            fail_here!("rotation::after_page_commit");
            if let Some(p) = progress {
                p(&Progress {
                    phase: Phase::Rewrapping,
                    done: done.min(total.max(done)),
                    total: total.max(done),
                    failed: st.failed_total,
                });
            }
        }
        st.phase = Phase::DualActive;
        st.cursor = None;
        if st.grace_until.is_none() {
            st.grace_until = Some(Timestamp::now().saturating_add(self.config.grace_period));
        }
        self.save(&st, StoreBatch::new()).await?;
        fail_here!("rotation::dual_active_saved");
        tracing::info!(
            target: "heliosdb::tde::rotation",
            old = %st.old, new = %new, reencrypted = st.reencrypted, failed = st.failed_total,
            "MEK rotation: dual-encryption period"
        );
        Ok(st)
    }

    async fn stranded(&self, old: &MekRef) -> Result<(u64, Vec<TekId>)> {
        let mut cursor = None;
        let mut count = 0u64;
        let mut examples = Vec::new();
        loop {
            let page = self.store.scan_teks(cursor.as_ref(), 4096).await?;
            let Some(last) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            for r in &page {
                if &r.wrapped.mek == old && r.metadata.state != KeyState::Destroyed {
                    count += 1;
                    if examples.len() < 100 {
                        examples.push(r.id.clone());
                    }
                }
            }
            cursor = Some(last);
        }
        Ok((count, examples))
    }

    /// Counts the TEKs that only the old version can unwrap. With none, the rotation becomes
    /// `Verified`.
    pub async fn verify(&self, mek_id: &MekId) -> Result<Verification> {
        let mut st = self
            .status(mek_id)
            .await?
            .ok_or_else(|| no_rotation(mek_id))?;
        if !matches!(st.phase, Phase::DualActive | Phase::Verified) {
            return Err(wrong_phase(&st, st.phase, "verify"));
        }
        let (stranded, examples) = self.stranded(&st.old).await?;
        if stranded == 0 && st.phase != Phase::Verified {
            st.phase = Phase::Verified;
            st.verified_at = Some(Timestamp::now());
            self.save(&st, StoreBatch::new()).await?;
            fail_here!("rotation::verified_saved");
        } else if stranded > 0 && st.phase == Phase::Verified {
            st.phase = Phase::DualActive;
            self.save(&st, StoreBatch::new()).await?;
        }
        Ok(Verification {
            stranded,
            examples,
            state: st,
        })
    }

    /// Deactivates the old MEK version: refused while any TEK depends on it alone, and before
    /// the grace period ends (`now` is the clock to judge it by). Then drops the kept wrapped
    /// forms and archives the journal.
    pub async fn deactivate_old(&self, mek_id: &MekId, now: Timestamp) -> Result<RotationState> {
        let st = self
            .status(mek_id)
            .await?
            .ok_or_else(|| no_rotation(mek_id))?;
        if st.phase == Phase::OldDeactivated {
            return self.finish_deactivation(st).await;
        }
        let v = self.verify(mek_id).await?;
        let mut st = v.state;
        if v.stranded > 0 {
            let list: Vec<String> = v.examples.iter().take(10).map(|t| t.to_string()).collect();
            return Err(TdeError::InvalidKeyState {
                key: format!("mek:{}", st.old),
                state: KeyState::DecryptOnly,
                operation: "deactivate it".into(),
                hint: format!(
                    "{} TEK(s) can only be unwrapped by it (for example {}); run the rotation \
                     again (`heliosdb-cli security mek rotate`) to re-wrap them. There is no way \
                     to skip this check",
                    v.stranded,
                    list.join(", ")
                ),
            });
        }
        if let Some(until) = st.grace_until
            && now < until
        {
            return Err(TdeError::InvalidKeyState {
                key: format!("mek:{}", st.old),
                state: KeyState::DecryptOnly,
                operation: "deactivate it".into(),
                hint: format!(
                    "the dual-encryption grace period lasts until {until}; deactivate after \
                         that (the period is configurable, 30 days by default)"
                ),
            });
        }
        let info = self.provider.mek_info(mek_id).await?;
        let state = info
            .versions
            .iter()
            .find(|x| x.mek == st.old)
            .map(|x| x.state);
        if state != Some(KeyState::Deactivated) {
            self.provider.deactivate_mek_version(&st.old).await?;
        }
        fail_here!("rotation::after_provider_deactivate");
        st.phase = Phase::OldDeactivated;
        self.save(&st, StoreBatch::new()).await?;
        fail_here!("rotation::old_deactivated_saved");
        self.finish_deactivation(st).await
    }

    async fn finish_deactivation(&self, mut st: RotationState) -> Result<RotationState> {
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan_teks(cursor.as_ref(), self.config.batch_size)
                .await?;
            let Some(last) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            let mut batch = StoreBatch::new();
            for r in &page {
                if r.previous_wrap.as_ref().is_some_and(|p| p.mek == st.old) {
                    batch = batch.push(StoreOp::ClearPreviousWrap { id: r.id.clone() });
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch).await?;
            }
            cursor = Some(last);
        }
        st.finished_at = Some(Timestamp::now());
        let done = st.encode();
        self.store
            .apply(
                StoreBatch::new()
                    .put_journal(archive_name(&st), done)
                    .delete_journal(journal_name(&st.mek_id)),
            )
            .await?;
        tracing::info!(target: "heliosdb::tde::rotation", old = %st.old, "old MEK version deactivated");
        Ok(st)
    }

    /// Rolls the rotation back: the old version becomes active again and every TEK is wrapped
    /// under it once more (from its kept wrapped form, or re-wrapped if it was created during
    /// the dual period). Impossible once the old version is deactivated, and after an
    /// emergency rotation (the old version is compromised).
    pub async fn rollback(
        &self,
        mek_id: &MekId,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let mut st = self
            .status(mek_id)
            .await?
            .ok_or_else(|| no_rotation(mek_id))?;
        match st.phase {
            Phase::OldDeactivated | Phase::RolledBack => {
                return Err(wrong_phase(&st, st.phase, "roll back"));
            }
            _ if st.emergency => {
                return Err(TdeError::InvalidKeyState {
                    key: format!("mek:{}", st.old),
                    state: KeyState::Compromised,
                    operation: "roll back to it".into(),
                    hint: "an emergency rotation replaced a compromised MEK; it cannot return"
                        .into(),
                });
            }
            Phase::Preparing => {
                let current = self.active_version(mek_id).await?;
                if current.version > st.old.version {
                    st.new = Some(current);
                } else {
                    // Nothing was rotated yet: dropping the journal is the whole rollback.
                    st.phase = Phase::RolledBack;
                    return self.archive(st).await;
                }
            }
            _ => {}
        }
        let new = st.new_mek()?;
        if st.phase != Phase::RollingBack {
            st.phase = Phase::RollingBack;
            st.cursor = None;
            self.save(&st, StoreBatch::new()).await?;
        }
        // Old active first, then new decrypt-only: there is always an active version.
        let info = self.provider.mek_info(mek_id).await?;
        let state_of = |m: &MekRef| info.versions.iter().find(|v| &v.mek == m).map(|v| v.state);
        if state_of(&st.old) != Some(KeyState::Active) {
            self.provider
                .set_mek_state(&st.old, KeyState::Active)
                .await?;
        }
        if state_of(&new) == Some(KeyState::Active) {
            self.provider
                .set_mek_state(&new, KeyState::DecryptOnly)
                .await?;
        }
        fail_here!("rotation::rollback_provider_done");
        let total = self.store.count_teks().await?;
        let mut done = 0;
        loop {
            let page = self
                .store
                .scan_teks(st.cursor.as_ref(), self.config.batch_size)
                .await?;
            let Some(last) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            done += page.len() as u64;
            let mut batch = StoreBatch::new();
            for r in page.iter().filter(|r| r.wrapped.mek == new) {
                let wrapped = match &r.previous_wrap {
                    Some(p) if p.mek == st.old => p.clone(),
                    _ => {
                        let ctx = WrapContext::table_key(&r.id);
                        self.provider.rewrap_tek(&r.wrapped, &ctx, &st.old).await?
                    }
                };
                batch = batch.push(StoreOp::Rewrap {
                    id: r.id.clone(),
                    expect: new.clone(),
                    wrapped,
                    keep_previous: false,
                });
            }
            st.cursor = Some(last);
            self.save(&st, batch).await?;
            fail_here!("rotation::rollback_page_committed");
            if let Some(p) = progress {
                p(&Progress {
                    phase: Phase::RollingBack,
                    done,
                    total: total.max(done),
                    failed: 0,
                });
            }
        }
        let (left, _) = self.stranded(&new).await?;
        if left > 0 {
            return Err(TdeError::InvalidKeyState {
                key: format!("mek:{new}"),
                state: KeyState::DecryptOnly,
                operation: "finish the rollback".into(),
                hint: format!("{left} TEK(s) are still wrapped under it; run the rollback again"),
            });
        }
        self.provider.deactivate_mek_version(&new).await?;
        st.phase = Phase::RolledBack;
        self.archive(st).await
    }

    async fn archive(&self, mut st: RotationState) -> Result<RotationState> {
        st.finished_at = Some(Timestamp::now());
        self.store
            .apply(
                StoreBatch::new()
                    .put_journal(archive_name(&st), st.encode())
                    .delete_journal(journal_name(&st.mek_id)),
            )
            .await?;
        Ok(st)
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
            Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping => {
                "run the rotation again (`heliosdb-cli security mek rotate`) to finish re-wrapping \
                 first"
                    .into()
            }
            Phase::OldDeactivated => "the old MEK is deactivated; run `heliosdb-cli security mek \
                                      deactivate` to finish the clean-up"
                .into(),
            Phase::RollingBack => "a rollback is in progress; run `heliosdb-cli security mek \
                                   rollback` to finish it"
                .into(),
            _ => "see `heliosdb-cli security mek rotation-status`".into(),
        },
    }
}
