//! MEK rotation through the key manager, on top of `heliosdb-tde-rotation`: rotation with
//! dual encryption, emergency rotation, status, verification, deactivation and rollback.

use crate::{KeyManager, poisoned};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AsMekId, AuditAction, AuditEvent, KeyId, MekRef, Result, TableId, TdeError, Timestamp,
};
use heliosdb_tde_rotation::{Phase, ProgressFn, RotationState, Rotator, Verification};

/// What `rotate_mek_with_dual_encryption` reports. Applications print these fields by name
/// (`old_mek_id`, `new_mek_id`, `keys_reencrypted`, `failed_keys`), so they keep them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MekRotationResult {
    /// The version replaced.
    pub old_mek_id: MekRef,
    /// The version now wrapping TEKs.
    pub new_mek_id: MekRef,
    /// TEKs re-wrapped under the new version (over all passes of this rotation).
    pub keys_reencrypted: u64,
    /// Keys that failed in the last pass, with the error; run the rotation again to retry them.
    pub failed_keys: Vec<(String, String)>,
    /// How many keys failed in the last pass (all of them, even beyond the 1000 listed).
    pub failed_total: u64,
    /// Where the rotation is now.
    pub phase: Phase,
    /// When the old version may be deactivated.
    pub grace_until: Option<Timestamp>,
}

impl MekRotationResult {
    fn from_state(st: &RotationState) -> Result<Self> {
        Ok(Self {
            old_mek_id: st.old.clone(),
            new_mek_id: st.new_mek()?,
            keys_reencrypted: st.reencrypted,
            failed_keys: st.failed.clone(),
            failed_total: st.failed_total,
            phase: st.phase,
            grace_until: st.grace_until,
        })
    }
}

/// What an emergency rotation did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EmergencyRotation {
    /// The MEK rotation (the old version is now marked compromised).
    pub rotation: MekRotationResult,
    /// Tables that got a new TEK version (older versions are decrypt-only).
    pub tables_rotated: Vec<TableId>,
    /// Tables whose data is still encrypted under TEK versions that were wrapped by the
    /// compromised MEK: re-encrypt their pages with the new TEK versions.
    pub tables_needing_reencryption: Vec<TableId>,
}

impl KeyManager {
    pub(crate) fn rotator(&self) -> Rotator {
        Rotator::new(
            self.mek_provider.provider().clone(),
            self.store.clone(),
            self.config.rotation.clone(),
        )
    }

    /// Rotates an MEK with a dual-encryption period: a new version is created and made active
    /// for new TEKs, every TEK is re-wrapped under it (keeping its old wrapped form), and both
    /// versions stay valid until [`KeyManager::deactivate_old_mek`]. Resumes an interrupted
    /// rotation; run again, it retries the keys that failed.
    pub async fn rotate_mek_with_dual_encryption(
        &self,
        current_mek_id: &(impl AsMekId + ?Sized),
    ) -> Result<MekRotationResult> {
        self.rotate_mek_with_progress(current_mek_id, None).await
    }

    /// [`KeyManager::rotate_mek_with_dual_encryption`] with a progress callback.
    pub async fn rotate_mek_with_progress(
        &self,
        current_mek_id: &(impl AsMekId + ?Sized),
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekRotationResult> {
        self.rotate_inner(current_mek_id, false, progress).await
    }

    pub(crate) async fn rotate_inner(
        &self,
        current_mek_id: &(impl AsMekId + ?Sized),
        emergency: bool,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekRotationResult> {
        let id = current_mek_id.as_mek_id()?.into_owned();
        let rot = self.rotator();
        if let Some(st) = rot.status(&id).await? {
            // An emergency request takes over a rollback in progress (the rotator turns it
            // around); a plain request must let the rollback finish first.
            if matches!(st.phase, Phase::RollingBack) && !emergency && !st.emergency {
                return Err(TdeError::RotationPhase {
                    mek: st.old.to_string(),
                    phase: st.phase.to_string(),
                    operation: "rotate".into(),
                    hint: "a rollback is in progress; finish it with `heliosdb-cli security mek \
                           rollback` (or request an emergency rotation, which takes it over)"
                        .into(),
                });
            }
        }
        let st = {
            // New TEKs must be wrapped under the new version from the moment it exists.
            let _guard = self.mutations.lock().await;
            let st = rot.prepare(&id, emergency).await?;
            if id == self.config.default_mek_id {
                *self.active_mek.write().map_err(|_| poisoned())? = Some(st.new_mek()?);
            }
            st
        };
        let started = st.phase == Phase::NewMekReady;
        let st = rot.rewrap(&id, progress).await?;
        // The emergency flag is sticky in the journal: a plain request that resumed an
        // emergency rotation is an emergency too.
        let emergency = emergency || st.emergency;
        let result = MekRotationResult::from_state(&st)?;
        // The new version gets its key check value now, so that the next start need not write.
        if self
            .store
            .get_journal(&crate::key_check_entry(&result.new_mek_id))
            .await?
            .is_none()
        {
            self.write_key_check(&result.new_mek_id).await?;
        }
        self.audit(AuditEvent::success(
            AuditAction::MekRotated,
            Some(KeyId::Master(result.new_mek_id.clone())),
            format!(
                "{}{} -> {}: {} re-wrapped, {} failed{}",
                if emergency { "EMERGENCY " } else { "" },
                result.old_mek_id,
                result.new_mek_id,
                result.keys_reencrypted,
                result.failed_total,
                if started { "" } else { " (resumed)" }
            ),
        ))
        .await;
        Ok(result)
    }

    /// Emergency rotation for a suspected MEK compromise: rotates the MEK (marking the old
    /// version compromised), re-wraps every TEK, gives every table a new TEK version (older
    /// versions become decrypt-only), and lists the tables whose data must be re-encrypted.
    pub async fn emergency_rotate_mek(
        &self,
        current_mek_id: &(impl AsMekId + ?Sized),
        progress: Option<ProgressFn<'_>>,
    ) -> Result<EmergencyRotation> {
        let rotation = self.rotate_inner(current_mek_id, true, progress).await?;
        let mut tables: Vec<TableId> = Vec::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    if tables.last() != Some(&r.id.table) {
                        tables.push(r.id.table);
                    }
                }
                Ok(())
            })
            .await?;
        let mut rotated = Vec::new();
        for t in &tables {
            // A table whose newest TEK was created under the new MEK needs nothing.
            let latest = self.store.latest_tek(t).await?;
            let fresh = latest.as_ref().is_some_and(|r| {
                r.wrapped.mek == rotation.new_mek_id
                    && r.previous_wrap.is_none()
                    && r.metadata.state == heliosdb_tde_core::KeyState::Active
            });
            if !fresh {
                self.rotate_table(t).await?;
                rotated.push(t.clone());
            }
        }
        self.drop_encryptors()?;
        // Every TEK version the compromised MEK protected is compromised too (decrypt only);
        // the tables holding such versions, including those rotated by an interrupted earlier
        // run of this emergency, must have their pages re-encrypted.
        let rot = self.rotator();
        rot.mark_compromised_teks(&rotation.old_mek_id).await?;
        let needing = rot.tables_needing_reencryption().await?;
        Ok(EmergencyRotation {
            rotation,
            tables_needing_reencryption: needing,
            tables_rotated: rotated,
        })
    }

    /// The rotation of `mek_id` in progress, if any.
    pub async fn mek_rotation_status(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
    ) -> Result<Option<RotationState>> {
        self.rotator().status(&*mek_id.as_mek_id()?).await
    }

    /// Counts the TEKs only the old MEK version can unwrap; with none the rotation is verified.
    pub async fn verify_mek_rotation(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
    ) -> Result<Verification> {
        self.rotator().verify(&*mek_id.as_mek_id()?).await
    }

    /// Deactivates the old MEK version of a verified rotation whose grace period is over.
    pub async fn deactivate_old_mek(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
    ) -> Result<RotationState> {
        self.deactivate_old_mek_at(mek_id, Timestamp::now()).await
    }

    /// [`KeyManager::deactivate_old_mek`] judged at `now` (for tests and tools).
    pub async fn deactivate_old_mek_at(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
        now: Timestamp,
    ) -> Result<RotationState> {
        let st = self
            .rotator()
            .deactivate_old(&*mek_id.as_mek_id()?, now)
            .await?;
        self.audit(AuditEvent::success(
            AuditAction::MekStateChanged,
            Some(KeyId::Master(st.old.clone())),
            "deactivated after a verified rotation",
        ))
        .await;
        Ok(st)
    }

    /// Rolls back the rotation of `mek_id`: the old version is active again and every TEK is
    /// wrapped under it. Possible until the old version is deactivated.
    pub async fn rollback_mek_rotation(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let id = mek_id.as_mek_id()?.into_owned();
        let st = {
            let _guard = self.mutations.lock().await;
            let st = self.rotator().rollback(&id, progress).await?;
            if id == self.config.default_mek_id {
                *self.active_mek.write().map_err(|_| poisoned())? = Some(st.old.clone());
            }
            st
        };
        self.audit(AuditEvent::success(
            AuditAction::MekStateChanged,
            Some(KeyId::Master(st.old.clone())),
            "rotation rolled back; this version is active again",
        ))
        .await;
        Ok(st)
    }
}
