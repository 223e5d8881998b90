//! The forward steps: [`Rotator::prepare`] (new MEK version) and [`Rotator::rewrap`] (re-wrap
//! every TEK, page by page, with the cursor in the journal).

use crate::{Phase, Progress, ProgressFn, RotationState};
use crate::{Rotator, wrong_phase};
use futures_util::stream::{self, StreamExt};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    KeyState, MekId, MekRef, Result, StoreBatch, StoreOp, TdeError, TekId, TekRecord, Timestamp,
    WrapContext, WrappedTek,
};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) fn jitter(cap: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let half = cap / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(u64::from_le_bytes(b) % nanos)
}

impl Rotator {
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
                if st.is_migration() {
                    return Err(crate::migration::not_a_rotation(&st, "rotate"));
                }
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

    /// Re-wraps one TEK, retrying retryable failures with backoff. `None`: the breaker of the
    /// pass is open, so this TEK was left for the resumed pass.
    pub(crate) async fn rewrap_one(
        &self,
        rec: &TekRecord,
        new: &MekRef,
        breaker: &Breaker,
    ) -> Option<Result<WrappedTek>> {
        let ctx = WrapContext::table_key(&rec.id);
        let mut attempt = 1;
        loop {
            if breaker.is_open() {
                return None;
            }
            match self.provider.rewrap_tek(&rec.wrapped, &ctx, new).await {
                Ok(w) => {
                    breaker.success();
                    return Some(Ok(w));
                }
                Err(e) if e.is_retryable() => {
                    breaker.failure(&e);
                    if attempt >= self.config.max_attempts {
                        return if breaker.is_open() {
                            None
                        } else {
                            Some(Err(e))
                        };
                    }
                    let exp = self
                        .config
                        .backoff_base
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(self.config.backoff_max);
                    tracing::debug!(target: "heliosdb::tde::rotation", tek = %rec.id, attempt, "retrying: {e}");
                    tokio::time::sleep(jitter(exp)).await;
                    attempt += 1;
                }
                Err(e) => {
                    // The provider answered: the outage streak, if any, is over.
                    breaker.success();
                    return Some(Err(e));
                }
            }
        }
    }

    /// Re-wraps every TEK still under the old version (from the saved cursor after a crash),
    /// then enters `DualActive`. Run again in `DualActive`, it re-wraps whatever is still
    /// under the old version, such as keys that failed before.
    ///
    /// A pass paused by the circuit breaker is the retryable
    /// [`TdeError::ProviderUnavailable`] of [`PassEnd::Paused`]; use [`Rotator::rewrap_pass`]
    /// to tell a pause from other failures.
    pub async fn rewrap(
        &self,
        mek_id: &MekId,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        match self.rewrap_pass(mek_id, progress).await? {
            PassEnd::Finished(st) => Ok(st),
            PassEnd::Paused { error, .. } => Err(error),
        }
    }

    /// [`Rotator::rewrap`], telling how the pass ended: [`PassEnd::Finished`] in
    /// `DualActive`, or [`PassEnd::Paused`] when the circuit breaker stopped it because the
    /// provider kept failing with retryable errors (the work done is committed; running the
    /// rotation again resumes it). Any other failure is the `Err`.
    pub async fn rewrap_pass(
        &self,
        mek_id: &MekId,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<PassEnd> {
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
        let breaker = Breaker::new(self.config.abort_after_consecutive_failures);
        // Failures not yet recorded (see below), with the cursor still before them.
        let mut held: Vec<(TekId, TdeError)> = Vec::new();
        while let Some(page) = pages.next_page().await? {
            done += page.len() as u64;
            let todo: Vec<&TekRecord> = page
                .iter()
                .filter(|r| st.moves(&r.wrapped.mek) && r.metadata.state != KeyState::Destroyed)
                .collect();
            let results: Vec<Rewrapped> = stream::iter(todo)
                .map(|rec| async {
                    (
                        rec.id.clone(),
                        rec.wrapped.mek.clone(),
                        self.rewrap_one(rec, &new, &breaker).await,
                    )
                })
                .buffer_unordered(self.config.concurrency.max(1))
                .collect()
                .await;
            if breaker.is_open() {
                let error = self
                    .pause(&mut step, &mut st, &new, results, &breaker)
                    .await?;
                return Ok(PassEnd::Paused { state: st, error });
            }
            let mut batch = StoreBatch::new();
            for (id, expect, r) in results {
                match r.unwrap_or_else(|| Err(breaker.error(&self.provider.description()))) {
                    Ok(wrapped) => {
                        batch = batch.push(StoreOp::Rewrap {
                            id,
                            expect,
                            wrapped,
                            keep_previous: true,
                        });
                        st.reencrypted += 1;
                    }
                    Err(e) => held.push((id, e)),
                }
            }
            // The cursor passes this page's failures only once the provider has answered
            // since: if the page ended inside a run of retryable failures, an outage may be
            // starting, and a pause must try these keys again rather than report them failed.
            if breaker.streak() == 0 {
                for (id, e) in held.drain(..) {
                    st.record_failure(&id, &e);
                }
                st.cursor = pages.cursor().cloned();
            }
            fail_here!("rotation::before_page_commit");
            self.save(&mut step, &st, batch).await?;
            fail_here!("rotation::after_page_commit");
            if let Some(p) = progress {
                p(&Progress {
                    phase: Phase::Rewrapping,
                    done: done.min(total.max(done)),
                    total: total.max(done),
                    failed: st.failed_total + held.len() as u64,
                });
            }
        }
        for (id, e) in held.drain(..) {
            st.record_failure(&id, &e);
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
        Ok(PassEnd::Finished(st))
    }

    /// Pauses a re-wrap pass whose breaker opened: commits the re-wraps of the current page
    /// that succeeded, keeps the cursor where it was (after the last page that ended with the
    /// provider answering, so the keys that failed since are tried again on resume and nothing
    /// is counted as failed twice), and returns the paused error (`Err`: the commit failed).
    async fn pause(
        &self,
        step: &mut crate::Step,
        st: &mut RotationState,
        new: &MekRef,
        results: Vec<Rewrapped>,
        breaker: &Breaker,
    ) -> Result<TdeError> {
        let mut batch = StoreBatch::new();
        for (id, expect, r) in results {
            if let Some(Ok(wrapped)) = r {
                batch = batch.push(StoreOp::Rewrap {
                    id,
                    expect,
                    wrapped,
                    keep_previous: true,
                });
                st.reencrypted += 1;
            }
        }
        self.save(step, st, batch).await?;
        let e = breaker.error(&self.provider.description());
        tracing::warn!(
            target: "heliosdb::tde::rotation",
            old = %st.old, new = %new, reencrypted = st.reencrypted,
            "{} paused: {e}", st.what()
        );
        Ok(TdeError::ProviderUnavailable {
            provider: self.provider.description(),
            reason: format!(
                "{} of mek:{} paused after {} consecutive retryable provider failures \
                 (last: {}); the {} TEKs re-wrapped so far are committed and the work \
                 resumes where it stopped when the same command is run again",
                st.what(),
                st.mek_id,
                breaker.threshold,
                breaker.last(),
                st.reencrypted
            ),
            retryable: true,
        })
    }
}

/// One TEK of a page: its id, the MEK version it was wrapped under when read (the expected
/// value of the read-modify-write), and the re-wrap's result (`None`: left for the resumed
/// pass by the open breaker).
type Rewrapped = (TekId, MekRef, Option<Result<WrappedTek>>);

/// How a re-wrap pass ([`Rotator::rewrap_pass`]) ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum PassEnd {
    /// Every TEK was handled; the rotation is in its dual-encryption period.
    Finished(RotationState),
    /// The circuit breaker stopped the pass: the provider failed with retryable errors
    /// [`RotationConfig::abort_after_consecutive_failures`](crate::RotationConfig) times in a
    /// row. The re-wraps done are committed; the same command resumes the rotation.
    Paused {
        /// The journaled state at the pause (phase `Rewrapping`, the cursor kept).
        state: RotationState,
        /// The retryable [`TdeError::ProviderUnavailable`] saying so.
        error: TdeError,
    },
}

/// The circuit breaker of one re-wrap pass (see
/// [`RotationConfig::abort_after_consecutive_failures`](crate::RotationConfig)): counts
/// retryable provider failures in a row across the concurrent re-wraps.
pub(crate) struct Breaker {
    threshold: u32,
    consecutive: AtomicU32,
    last: Mutex<String>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
            last: Mutex::new(String::new()),
        }
    }

    /// Whether the pass must stop calling the provider.
    pub(crate) fn is_open(&self) -> bool {
        self.consecutive.load(Ordering::SeqCst) >= self.threshold
    }

    /// Retryable failures since the last answer of the provider.
    pub(crate) fn streak(&self) -> u32 {
        self.consecutive.load(Ordering::SeqCst)
    }

    pub(crate) fn success(&self) {
        if !self.is_open() {
            self.consecutive.store(0, Ordering::SeqCst);
        }
    }

    pub(crate) fn failure(&self, e: &TdeError) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
        self.consecutive.fetch_add(1, Ordering::SeqCst);
    }

    fn last(&self) -> String {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The error a TEK left unattempted by an open breaker would report (not recorded: the
    /// pass pauses before recording anything of the page).
    fn error(&self, provider: &str) -> TdeError {
        TdeError::ProviderUnavailable {
            provider: provider.to_string(),
            reason: self.last(),
            retryable: true,
        }
    }
}
