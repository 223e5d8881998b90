//! [`Rotator::rollback`]: the old MEK version active again, every TEK wrapped under it once more.

use crate::{Phase, Progress, ProgressFn, RotationState};
use crate::{Rotator, wrong_phase};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    KeyState, MekId, MekRef, Result, StoreBatch, StoreOp, TdeError, WrapContext,
};

impl Rotator {
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
            Phase::OldDeactivated | Phase::RolledBack | Phase::Migrated => {
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
                    Some(p) if st.moves(&p.mek) => p.clone(),
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
        if !st.is_migration() {
            // A migration's target MEK is left as it is: it lives in another provider, which
            // the operator may keep for a later attempt or retire by its own means.
            self.provider.deactivate_mek_version(&new).await?;
        }
        st.phase = Phase::RolledBack;
        self.archive(&mut step, st).await
    }
}
