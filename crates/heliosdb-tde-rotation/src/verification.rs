//! Checks before a wrap becomes the only copy: [`Rotator::verify`] (stranded TEKs), trial
//! unwraps, and [`Rotator::deactivate_old`] with the clean-up of the kept wrapped forms.

use crate::{Phase, RotationState, Verification};
use crate::{Rotator, Step, wrong_phase};
use futures_util::stream::{self, StreamExt};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    KeyState, MekId, MekRef, Result, StoreBatch, StoreOp, TdeError, TekId, TekRecord, Timestamp,
    WrapContext,
};
use std::collections::HashMap;

/// How many of `count` TEKs wrapped under one MEK version a trial unwrap checks: all of them
/// up to 100, then at least 100 and at least 1% (rounded up).
pub fn trial_sample_size(count: u64) -> u64 {
    if count <= 100 {
        count
    } else {
        count.div_ceil(100).max(100)
    }
}

pub(crate) fn random_below(n: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| TdeError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b) % n.max(1))
}

impl Rotator {
    /// The TEKs still under the version(s) `st` moves away from (see [`RotationState::moves`]).
    pub(crate) async fn stranded_in(&self, st: &RotationState) -> Result<(u64, Vec<TekId>)> {
        self.stranded_where(|m| st.moves(m)).await
    }

    pub(crate) async fn stranded(&self, old: &MekRef) -> Result<(u64, Vec<TekId>)> {
        self.stranded_where(|m| m == old).await
    }

    async fn stranded_where(&self, under: impl Fn(&MekRef) -> bool) -> Result<(u64, Vec<TekId>)> {
        let mut count = 0u64;
        let mut examples = Vec::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    if under(&r.wrapped.mek) && r.metadata.state != KeyState::Destroyed {
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

    pub(crate) async fn verify_in(
        &self,
        step: &mut Step,
        mut st: RotationState,
    ) -> Result<Verification> {
        if !matches!(st.phase, Phase::DualActive | Phase::Verified) {
            return Err(wrong_phase(&st, st.phase, "verify"));
        }
        let (stranded, examples) = self.stranded_in(&st).await?;
        if stranded == 0 && st.is_migration() {
            // A migration's verification also unwraps a sample through the target (and
            // compares it with the kept source wrap).
            self.trial_unwrap(&st.old, "verify the migration").await?;
        }
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
        if st.is_migration() {
            return Err(crate::migration::not_a_rotation(
                &st,
                "deactivate the old MEK version",
            ));
        }
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

    pub(crate) async fn finish_deactivation(
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
                if r.previous_wrap.as_ref().is_some_and(|p| st.moves(&p.mek)) {
                    batch = batch.push(StoreOp::ClearPreviousWrap { id: r.id });
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch).await?;
            }
        }
        let st = self.archive(step, st).await?;
        tracing::info!(target: "heliosdb::tde::rotation", old = %st.old, "{} finished: kept wraps dropped", st.what());
        Ok(st)
    }

    /// Trial-unwraps a sample of the TEKs' current wraps, [`trial_sample_size`] per MEK
    /// version, before a step after which those wraps are the only copies (`leaving` is the
    /// version about to stop unwrapping). Where a TEK still keeps a wrapped form under
    /// `leaving` and that version still unwraps, both forms must hold the same key. Returns
    /// how many TEKs were checked; the first failure is an error naming the TEK and `step`.
    pub(crate) async fn trial_unwrap(&self, leaving: &MekRef, step: &str) -> Result<u64> {
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

    pub(crate) async fn trial_one(
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
}
