//! Emergency rotations: the old version marked compromised, a rollback in progress reversed,
//! and the compromise carried over to the TEK versions.

use crate::{Phase, RotationState};
use crate::{Rotator, Step};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{KeyState, MekRef, Result, StoreBatch, StoreOp, TableId, TekId};

impl Rotator {
    /// Marks the old version of an emergency rotation compromised in the provider, unless it
    /// is already compromised or out of service (deactivated or destroyed: stronger).
    pub(crate) async fn ensure_old_compromised(
        &self,
        step: &mut Step,
        st: &RotationState,
    ) -> Result<()> {
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

    /// The part of [`Rotator::prepare`] for a rotation past `Preparing`: an emergency rotation
    /// gets its old version marked compromised, and a rollback in progress is reversed.
    pub(crate) async fn resume_emergency(
        &self,
        step: &mut Step,
        mut st: RotationState,
    ) -> Result<RotationState> {
        if !st.emergency {
            return Ok(st);
        }
        match st.phase {
            Phase::Preparing | Phase::OldDeactivated | Phase::RolledBack | Phase::Migrated => {}
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

    /// Marks every TEK version that `compromised` protected (its current or kept wrapped form
    /// is under that MEK version) `Compromised`: it still decrypts, so that data can be
    /// re-encrypted away from it, and never encrypts again. Versions already compromised,
    /// deactivated or destroyed are left as they are. Run it after the tables got new TEK
    /// versions (an emergency rotation does). Returns how many versions were marked.
    pub async fn mark_compromised_teks(&self, compromised: &MekRef) -> Result<u64> {
        Ok(self.mark_compromised_tek_list(compromised).await?.len() as u64)
    }

    /// [`Rotator::mark_compromised_teks`], returning the TEK versions marked (with the state
    /// each was in before), for the audit log.
    pub async fn mark_compromised_tek_list(
        &self,
        compromised: &MekRef,
    ) -> Result<Vec<(TekId, KeyState)>> {
        let mut marked: Vec<(TekId, KeyState)> = Vec::new();
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
                    marked.push((r.id.clone(), r.metadata.state));
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch).await?;
            }
        }
        if !marked.is_empty() {
            tracing::warn!(target: "heliosdb::tde::rotation", mek = %compromised, marked = marked.len(), "TEK versions marked compromised");
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
