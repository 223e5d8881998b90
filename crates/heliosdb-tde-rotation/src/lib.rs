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
//!
//! # Emergency rotations
//!
//! An emergency request ([`Rotator::prepare`] with `emergency = true`) is sticky: it is
//! recorded in the journal of the rotation in progress whatever its phase, and from then on the
//! old version is marked `Compromised` in the provider (a version already deactivated stays
//! deactivated, which is stronger), rollback is refused, and the old version may be
//! deactivated as soon as no TEK depends on it, without waiting for the grace period. A
//! rollback in progress is reversed: the new version becomes active again and the TEKs are
//! re-wrapped forward. [`Rotator::mark_compromised_teks`] and
//! [`Rotator::tables_needing_reencryption`] carry the compromise over to the TEK versions.
//!
//! # Mutual exclusion
//!
//! The steps that change a rotation ([`Rotator::prepare`], [`Rotator::rewrap`],
//! [`Rotator::verify`], [`Rotator::deactivate_old`], [`Rotator::rollback`]) are mutually
//! exclusive per key store and MEK id:
//!
//! * **within one process**, a second step while one is running fails at once with
//!   [`TdeError::RotationPhase`] saying "a rotation step is already running";
//! * **across processes**, the key store is written by one process at a time (a redb writer
//!   holds an exclusive lock on its file), so a second `heliosdb-cli security mek ...` command
//!   fails at its first write while a server or another command has the store; every step
//!   writes the journal before its first change in the provider, so it stops before touching
//!   an MEK version;
//! * **every journal write is a compare-and-set** ([`StoreOp::CheckJournal`]) against the
//!   journal as this step last read or wrote it: if anything else changed the rotation
//!   meanwhile, the write (and the TEK changes committed with it) is refused and nothing is
//!   written.
//!
//! # Trial unwraps
//!
//! Before deactivating an old MEK version, before clearing the kept wrapped forms and before
//! finishing a rollback, a sample of the wraps that will then be the only copies is unwrapped
//! through the provider ([`trial_sample_size`] TEKs per MEK version: at least 1% and at least
//! 100, all of them when fewer); where the other wrapped form is still kept and still unwraps,
//! both must give the same key. A failure stops the step before it changes anything.

mod state;

pub use state::{JOURNAL_FORMAT, MAX_FAILED_KEPT, Phase, RotationState};

use futures_util::stream::{self, StreamExt};
use heliosdb_tde_core::store::{JOURNAL_CHANGED, KeyStoreExt};
use heliosdb_tde_core::{
    KeyState, KeyStore, MekId, MekProvider, MekRef, Result, StoreBatch, StoreOp, TableId, TdeError,
    TekId, TekRecord, Timestamp, WrapContext, WrappedTek,
};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
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

/// How many of `count` TEKs wrapped under one MEK version a trial unwrap checks: all of them
/// up to 100, then at least 100 and at least 1% (rounded up).
pub fn trial_sample_size(count: u64) -> u64 {
    if count <= 100 {
        count
    } else {
        count.div_ceil(100).max(100)
    }
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

fn random_below(n: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| TdeError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b) % n.max(1))
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

    /// Marks the old version of an emergency rotation compromised in the provider, unless it
    /// is already compromised or out of service (deactivated or destroyed: stronger).
    async fn ensure_old_compromised(&self, step: &mut Step, st: &RotationState) -> Result<()> {
        if !st.emergency {
            return Ok(());
        }
        let state = self.mek_state(&st.old).await?;
        if !matches!(
            state,
            Some(KeyState::Compromised | KeyState::Deactivated | KeyState::Destroyed)
        ) {
            self.claim(step).await?;
            self.provider
                .set_mek_state(&st.old, KeyState::Compromised)
                .await?;
            tracing::warn!(target: "heliosdb::tde::rotation", mek = %st.old, "MEK version marked compromised");
        }
        Ok(())
    }

    /// Starts a rotation of `mek_id`, or resumes the one in progress, up to `NewMekReady` (the
    /// new version exists and wraps new TEKs). Returns the state reached.
    ///
    /// An `emergency` request is sticky: it is recorded in the journal of a rotation in any
    /// phase, and the old version is then marked compromised (see the crate documentation). A
    /// rollback in progress is turned around so that the rotation goes forward again. Fails
    /// with "a rotation step is already running" while another step of this MEK runs in this
    /// process.
    pub async fn prepare(&self, mek_id: &MekId, emergency: bool) -> Result<RotationState> {
        let mut step = self.begin(mek_id, "rotate")?;
        let mut st = match self.load(&mut step).await? {
            Some(mut st) => {
                if emergency && !st.emergency {
                    st.emergency = true;
                    self.save(&mut step, &st, StoreBatch::new()).await?;
                    tracing::warn!(
                        target: "heliosdb::tde::rotation",
                        mek = %st.old, phase = %st.phase,
                        "MEK rotation escalated to an emergency rotation"
                    );
                    fail_here!("rotation::emergency_saved");
                }
                if st.phase != Phase::Preparing {
                    return self.resume_emergency(&mut step, st).await;
                }
                st
            }
            None => {
                let old = self.active_version(mek_id).await?;
                let st = RotationState::new(mek_id.clone(), old, emergency);
                self.save(&mut step, &st, StoreBatch::new()).await?;
                tracing::info!(target: "heliosdb::tde::rotation", mek = %st.old, emergency, "MEK rotation started");
                st
            }
        };
        fail_here!("rotation::preparing_saved");
        // If the provider already rotated before a crash, adopt that version.
        self.claim(&mut step).await?;
        let current = self.active_version(mek_id).await?;
        let new = if current.version > st.old.version {
            current
        } else {
            self.provider.rotate_mek(mek_id).await?.mek
        };
        fail_here!("rotation::after_provider_rotate");
        self.ensure_old_compromised(&mut step, &st).await?;
        st.new = Some(new);
        st.phase = Phase::NewMekReady;
        self.save(&mut step, &st, StoreBatch::new()).await?;
        fail_here!("rotation::new_mek_ready_saved");
        Ok(st)
    }

    /// The part of [`Rotator::prepare`] for a rotation past `Preparing`: an emergency rotation
    /// gets its old version marked compromised, and a rollback in progress is reversed.
    async fn resume_emergency(
        &self,
        step: &mut Step,
        mut st: RotationState,
    ) -> Result<RotationState> {
        if !st.emergency {
            return Ok(st);
        }
        match st.phase {
            Phase::Preparing | Phase::OldDeactivated | Phase::RolledBack => {}
            Phase::NewMekReady | Phase::Rewrapping | Phase::DualActive | Phase::Verified => {
                self.ensure_old_compromised(step, &st).await?;
            }
            Phase::RollingBack => {
                // The rollback was making the compromised version active again: turn it
                // around. The new version becomes active first, so one always is.
                let new = st.new_mek()?;
                self.claim(step).await?;
                match self.mek_state(&new).await? {
                    Some(KeyState::Active) => {}
                    Some(KeyState::Deactivated) => {
                        self.provider
                            .set_mek_state(&new, KeyState::DecryptOnly)
                            .await?;
                        self.provider.set_mek_state(&new, KeyState::Active).await?;
                    }
                    _ => self.provider.set_mek_state(&new, KeyState::Active).await?,
                }
                self.ensure_old_compromised(step, &st).await?;
                fail_here!("rotation::emergency_reversed_in_provider");
                st.phase = Phase::Rewrapping;
                st.cursor = None;
                st.failed.clear();
                st.failed_total = 0;
                self.save(step, &st, StoreBatch::new()).await?;
                tracing::warn!(
                    target: "heliosdb::tde::rotation",
                    old = %st.old, new = %new,
                    "rollback reversed by an emergency rotation: re-wrapping under the new version"
                );
            }
        }
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
        let mut step = self.begin(mek_id, "re-wrap")?;
        let mut st = self.load_existing(&mut step).await?;
        let new = st.new_mek()?;
        match st.phase {
            Phase::NewMekReady | Phase::DualActive | Phase::Verified => {
                self.ensure_old_compromised(&mut step, &st).await?;
                st.phase = Phase::Rewrapping;
                st.cursor = None;
                st.failed.clear();
                st.failed_total = 0;
                self.save(&mut step, &st, StoreBatch::new()).await?;
            }
            Phase::Rewrapping => self.ensure_old_compromised(&mut step, &st).await?,
            other => return Err(wrong_phase(&st, other, "re-wrap")),
        }
        let total = self.store.count_teks().await?;
        let mut done = 0u64;
        let mut pages = self
            .store
            .tek_pages(st.cursor.clone(), self.config.batch_size);
        while let Some(page) = pages.next_page().await? {
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
            st.cursor = pages.cursor().cloned();
            fail_here!("rotation::before_page_commit");
            self.save(&mut step, &st, batch).await?;
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
        self.save(&mut step, &st, StoreBatch::new()).await?;
        fail_here!("rotation::dual_active_saved");
        tracing::info!(
            target: "heliosdb::tde::rotation",
            old = %st.old, new = %new, reencrypted = st.reencrypted, failed = st.failed_total,
            "MEK rotation: dual-encryption period"
        );
        Ok(st)
    }

    async fn stranded(&self, old: &MekRef) -> Result<(u64, Vec<TekId>)> {
        let mut count = 0u64;
        let mut examples = Vec::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    if &r.wrapped.mek == old && r.metadata.state != KeyState::Destroyed {
                        count += 1;
                        if examples.len() < 100 {
                            examples.push(r.id);
                        }
                    }
                }
                Ok(())
            })
            .await?;
        Ok((count, examples))
    }

    /// Counts the TEKs that only the old version can unwrap. With none, the rotation becomes
    /// `Verified`.
    pub async fn verify(&self, mek_id: &MekId) -> Result<Verification> {
        let mut step = self.begin(mek_id, "verify")?;
        let st = self.load_existing(&mut step).await?;
        self.verify_in(&mut step, st).await
    }

    async fn verify_in(&self, step: &mut Step, mut st: RotationState) -> Result<Verification> {
        if !matches!(st.phase, Phase::DualActive | Phase::Verified) {
            return Err(wrong_phase(&st, st.phase, "verify"));
        }
        let (stranded, examples) = self.stranded(&st.old).await?;
        if stranded == 0 && st.phase != Phase::Verified {
            st.phase = Phase::Verified;
            st.verified_at = Some(Timestamp::now());
            self.save(step, &st, StoreBatch::new()).await?;
            fail_here!("rotation::verified_saved");
        } else if stranded > 0 && st.phase == Phase::Verified {
            st.phase = Phase::DualActive;
            self.save(step, &st, StoreBatch::new()).await?;
        }
        Ok(Verification {
            stranded,
            examples,
            state: st,
        })
    }

    /// Deactivates the old MEK version: refused while any TEK depends on it alone, and before
    /// the grace period ends (`now` is the clock to judge it by) unless the rotation is an
    /// emergency one (the old version is compromised). A sample of the TEKs' current wraps is
    /// unwrapped first (see the crate documentation); a failure changes nothing. Then drops the
    /// kept wrapped forms and archives the journal.
    pub async fn deactivate_old(&self, mek_id: &MekId, now: Timestamp) -> Result<RotationState> {
        let mut step = self.begin(mek_id, "deactivate the old MEK version")?;
        let st = self.load_existing(&mut step).await?;
        if st.phase == Phase::OldDeactivated {
            return self.finish_deactivation(&mut step, st).await;
        }
        let v = self.verify_in(&mut step, st).await?;
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
            && !st.emergency
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
        self.trial_unwrap(&st.old, "deactivate the old MEK version")
            .await?;
        self.claim(&mut step).await?;
        if self.mek_state(&st.old).await? != Some(KeyState::Deactivated) {
            self.provider.deactivate_mek_version(&st.old).await?;
        }
        fail_here!("rotation::after_provider_deactivate");
        st.phase = Phase::OldDeactivated;
        self.save(&mut step, &st, StoreBatch::new()).await?;
        fail_here!("rotation::old_deactivated_saved");
        self.finish_deactivation(&mut step, st).await
    }

    async fn finish_deactivation(
        &self,
        step: &mut Step,
        st: RotationState,
    ) -> Result<RotationState> {
        // The kept wrapped forms are about to go: the current ones must unwrap.
        self.trial_unwrap(&st.old, "clear the kept wrapped forms")
            .await?;
        if st.emergency {
            // Record which TEK versions the compromised MEK protected before the kept wrapped
            // forms, which show it, are dropped.
            self.mark_compromised_teks(&st.old).await?;
        }
        let mut pages = self.store.tek_pages(None, self.config.batch_size);
        while let Some(page) = pages.next_page().await? {
            let mut batch = StoreBatch::new();
            for r in page {
                if r.previous_wrap.as_ref().is_some_and(|p| p.mek == st.old) {
                    batch = batch.push(StoreOp::ClearPreviousWrap { id: r.id });
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch).await?;
            }
        }
        let st = self.archive(step, st).await?;
        tracing::info!(target: "heliosdb::tde::rotation", old = %st.old, "old MEK version deactivated");
        Ok(st)
    }

    /// Rolls the rotation back: the old version becomes active again and every TEK is wrapped
    /// under it once more (from its kept wrapped form, or re-wrapped if it was created during
    /// the dual period). Impossible once the old version is deactivated, and after an
    /// emergency rotation (the old version is compromised). Before the new version is
    /// deactivated, a sample of the restored wraps is unwrapped; a failure stops the rollback
    /// there and it can be run again.
    pub async fn rollback(
        &self,
        mek_id: &MekId,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let mut step = self.begin(mek_id, "roll back")?;
        let mut st = self.load_existing(&mut step).await?;
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
                    return self.archive(&mut step, st).await;
                }
            }
            _ => {}
        }
        let new = st.new_mek()?;
        if st.phase != Phase::RollingBack {
            st.phase = Phase::RollingBack;
            st.cursor = None;
            self.save(&mut step, &st, StoreBatch::new()).await?;
        }
        // Old active first, then new decrypt-only: there is always an active version.
        self.claim(&mut step).await?;
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
        let mut pages = self
            .store
            .tek_pages(st.cursor.clone(), self.config.batch_size);
        while let Some(page) = pages.next_page().await? {
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
            st.cursor = pages.cursor().cloned();
            self.save(&mut step, &st, batch).await?;
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
        self.trial_unwrap(&new, "finish the rollback").await?;
        self.provider.deactivate_mek_version(&new).await?;
        st.phase = Phase::RolledBack;
        self.archive(&mut step, st).await
    }

    /// Trial-unwraps a sample of the TEKs' current wraps, [`trial_sample_size`] per MEK
    /// version, before a step after which those wraps are the only copies (`leaving` is the
    /// version about to stop unwrapping). Where a TEK still keeps a wrapped form under
    /// `leaving` and that version still unwraps, both forms must hold the same key. Returns
    /// how many TEKs were checked; the first failure is an error naming the TEK and `step`.
    async fn trial_unwrap(&self, leaving: &MekRef, step: &str) -> Result<u64> {
        // Pass 1: how many TEKs each MEK version wraps.
        let mut counts: HashMap<MekRef, (u64, u64)> = HashMap::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page
                    .into_iter()
                    .filter(|r| r.metadata.state != KeyState::Destroyed)
                {
                    counts.entry(r.wrapped.mek).or_default().0 += 1;
                }
                Ok(())
            })
            .await?;
        for (n, k) in counts.values_mut() {
            *k = trial_sample_size(*n);
        }
        let compare_with_leaving = self
            .mek_state(leaving)
            .await?
            .is_some_and(KeyState::can_decrypt);
        // Pass 2: a uniform sample per version (selection sampling, Knuth's algorithm S).
        let mut checked = 0u64;
        let mut pages = self.store.tek_pages(None, self.config.batch_size);
        while let Some(page) = pages.next_page().await? {
            let mut sample = Vec::new();
            for r in page
                .iter()
                .filter(|r| r.metadata.state != KeyState::Destroyed)
            {
                let Some((left, want)) = counts.get_mut(&r.wrapped.mek) else {
                    continue; // created after the count: wrapped just now, not a kept copy
                };
                if *want == 0 {
                    continue;
                }
                let pick = *left <= *want || random_below(*left)? < *want;
                *left = left.saturating_sub(1);
                if pick {
                    *want -= 1;
                    sample.push(r);
                }
            }
            let results: Vec<Result<()>> = stream::iter(sample)
                .map(|r| self.trial_one(r, leaving, compare_with_leaving, step))
                .buffer_unordered(self.config.concurrency.max(1))
                .collect()
                .await;
            for r in results {
                r?;
                checked += 1;
            }
        }
        tracing::debug!(target: "heliosdb::tde::rotation", checked, step, "trial unwrap passed");
        Ok(checked)
    }

    async fn trial_one(
        &self,
        r: &TekRecord,
        leaving: &MekRef,
        compare_with_leaving: bool,
        step: &str,
    ) -> Result<()> {
        let ctx = WrapContext::table_key(&r.id);
        let failed = |detail: String| {
            TdeError::corrupt(
                "wrapped TEK",
                format!("tek:{} in {}", r.id, self.store.location()),
                format!(
                    "{detail}. A trial unwrap before the step \"{step}\" failed, so the step \
                     was not done and every wrapped form is still kept; check the provider and \
                     the key store before running it again"
                ),
            )
        };
        let current = match self.provider.unwrap_tek(&r.wrapped, &ctx).await {
            Ok(k) => k,
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                return Err(failed(format!(
                    "its wrapped form under {} does not unwrap ({e})",
                    r.wrapped.mek
                )));
            }
        };
        if let Some(prev) = r.previous_wrap.as_ref().filter(|p| &p.mek == leaving)
            && compare_with_leaving
        {
            match self.provider.unwrap_tek(prev, &ctx).await {
                Ok(k) if k.bytes().expose_secret() == current.bytes().expose_secret() => {}
                Ok(_) => {
                    return Err(failed(format!(
                        "its wrapped forms under {} and {} hold different keys",
                        r.wrapped.mek, prev.mek
                    )));
                }
                Err(e) if e.is_retryable() => return Err(e),
                // The kept form is the one going away; the current one unwrapped.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Marks every TEK version that `compromised` protected (its current or kept wrapped form
    /// is under that MEK version) `Compromised`: it still decrypts, so that data can be
    /// re-encrypted away from it, and never encrypts again. Versions already compromised,
    /// deactivated or destroyed are left as they are. Run it after the tables got new TEK
    /// versions (an emergency rotation does). Returns how many versions were marked.
    pub async fn mark_compromised_teks(&self, compromised: &MekRef) -> Result<u64> {
        let mut marked = 0u64;
        let mut pages = self.store.tek_pages(None, self.config.batch_size);
        while let Some(page) = pages.next_page().await? {
            let mut batch = StoreBatch::new();
            for r in &page {
                let exposed = &r.wrapped.mek == compromised
                    || r.previous_wrap
                        .as_ref()
                        .is_some_and(|p| &p.mek == compromised);
                let open = matches!(r.metadata.state, KeyState::Active | KeyState::DecryptOnly);
                if exposed && open {
                    batch = batch.push(StoreOp::SetState {
                        id: r.id.clone(),
                        state: KeyState::Compromised,
                    });
                    marked += 1;
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch).await?;
            }
        }
        if marked > 0 {
            tracing::warn!(target: "heliosdb::tde::rotation", mek = %compromised, marked, "TEK versions marked compromised");
        }
        Ok(marked)
    }

    /// The tables that still hold data under a compromised TEK version (any version in state
    /// `Compromised`), in table order: their pages must be re-encrypted with the active TEK
    /// version. Found from the store alone, so it includes tables handled by an interrupted
    /// earlier run of the same emergency rotation. A table drops out once its compromised
    /// versions are deactivated or destroyed after the re-encryption.
    pub async fn tables_needing_reencryption(&self) -> Result<Vec<TableId>> {
        let mut tables: Vec<TableId> = Vec::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    if r.metadata.state == KeyState::Compromised
                        && tables.last() != Some(&r.id.table)
                    {
                        tables.push(r.id.table);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(tables)
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
