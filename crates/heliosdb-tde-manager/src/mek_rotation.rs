//! MEK rotation through the key manager, on top of `heliosdb-tde-rotation`: rotation with
//! dual encryption, emergency rotation, status, verification, deactivation and rollback.

use crate::tek::Trigger;
use crate::{KeyManager, poisoned};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AsMekId, AuditAction, KeyId, KeyState, MekId, MekRef, Result, TableId, TdeError, TekId,
    Timestamp,
};
use heliosdb_tde_rotation::{PassEnd, Phase, ProgressFn, RotationState, Rotator, Verification};

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
    /// The audit key's new version, if it got one in this run (it is not listed with the
    /// tables: `_heliosdb.audit` is reserved).
    pub audit_key: Option<TekId>,
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

    /// One rotation run (prepare, then a re-wrap pass), recorded in the audit log: the pass's
    /// end (`mek.rotated`: started or resumed, counts, emergency), a pause by the circuit
    /// breaker (`mek.rotation_paused`), or the failure (`mek.rotated`, failure).
    pub(crate) async fn rotate_inner(
        &self,
        current_mek_id: &(impl AsMekId + ?Sized),
        emergency: bool,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekRotationResult> {
        let id = match current_mek_id.as_mek_id() {
            Ok(id) => id.into_owned(),
            Err(e) => {
                self.audit_failure(AuditAction::MekRotated, None, &e, "rotate an MEK")
                    .await;
                return Err(e);
            }
        };
        let mut known: Option<MekRef> = None;
        let run = self.rotate_run(&id, emergency, progress, &mut known).await;
        match run {
            Ok(RunEnd::Finished {
                result,
                started,
                emergency,
            }) => {
                let r: Result<()> = Ok(());
                let detail = format!(
                    "{} {} -> {}: {} re-wrapped, {} failed, emergency={emergency}",
                    started_word(started),
                    result.old_mek_id,
                    result.new_mek_id,
                    result.keys_reencrypted,
                    result.failed_total,
                );
                let key = Some(KeyId::Master(result.new_mek_id.clone()));
                self.audit_result(AuditAction::MekRotated, key, &r, detail)
                    .await;
                Ok(result)
            }
            Ok(RunEnd::Paused {
                state,
                error,
                started,
            }) => {
                let detail = format!(
                    "{} {} -> {}: paused by the provider's outage after {} re-wrapped, \
                     emergency={}; run the rotation again to resume",
                    started_word(started),
                    state.old,
                    state
                        .new
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    state.reencrypted,
                    state.emergency,
                );
                let key = state.new.clone().unwrap_or(state.old.clone());
                self.audit_failure(
                    AuditAction::MekRotationPaused,
                    Some(KeyId::Master(key)),
                    &error,
                    detail,
                )
                .await;
                Err(error)
            }
            Err(e) => {
                let detail = format!(
                    "rotation of mek:{id} failed{}",
                    if emergency { ", emergency=true" } else { "" }
                );
                self.audit_failure(
                    AuditAction::MekRotated,
                    known.map(KeyId::Master),
                    &e,
                    detail,
                )
                .await;
                Err(e)
            }
        }
    }

    async fn rotate_run(
        &self,
        id: &MekId,
        emergency: bool,
        progress: Option<ProgressFn<'_>>,
        known: &mut Option<MekRef>,
    ) -> Result<RunEnd> {
        self.refuse_rotation_during_migration().await?;
        let rot = self.rotator();
        let prior = rot.status(id).await?;
        if prior.is_none() {
            // The version a new rotation starts from, as far as this manager knows it.
            *known = self
                .active_mek
                .read()
                .map_err(|_| poisoned())?
                .clone()
                .filter(|m| m.id == *id);
        }
        if let Some(st) = &prior {
            *known = Some(st.new.clone().unwrap_or(st.old.clone()));
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
        // The version an emergency marks compromised, and its state before, for the audit log.
        let compromise = if emergency {
            self.compromise_candidate(id, prior.as_ref()).await
        } else {
            None
        };
        let prepared = {
            // New TEKs must be wrapped under the new version from the moment it exists.
            let _guard = self.mutations.lock().await;
            let st = rot.prepare(id, emergency).await;
            if let Ok(st) = &st
                && *id == self.config.default_mek_id
            {
                *self.active_mek.write().map_err(|_| poisoned())? = Some(st.new_mek()?);
            }
            st
        };
        if let Some((old, before)) = compromise {
            self.record_compromise(&old, before, &prepared).await;
        }
        let st = prepared?;
        *known = Some(st.new_mek()?);
        let started = st.phase == Phase::NewMekReady;
        let st = match rot.rewrap_pass(id, progress).await? {
            PassEnd::Finished(st) => st,
            PassEnd::Paused { state, error } => {
                return Ok(RunEnd::Paused {
                    state: Box::new(state),
                    error,
                    started,
                });
            }
            other => {
                return Err(TdeError::Unsupported {
                    what: format!("a re-wrap pass that ended as {other:?}"),
                    hint: "upgrade heliosdb-tde-manager to match heliosdb-tde-rotation".into(),
                });
            }
        };
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
        Ok(RunEnd::Finished {
            result,
            started,
            emergency,
        })
    }

    /// Emergency rotation for a suspected MEK compromise: rotates the MEK (marking the old
    /// version compromised), re-wraps every TEK, gives every table a new TEK version (older
    /// versions become decrypt-only), and lists the tables whose data must be re-encrypted.
    ///
    /// The audit key (`_heliosdb.audit`) gets a new version too (the compromised MEK may have
    /// exposed it), handed to the audit sink at once; reserved tables are not listed in
    /// [`EmergencyRotation::tables_rotated`] or
    /// [`EmergencyRotation::tables_needing_reencryption`].
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
        let mut audit_key = None;
        for t in &tables {
            // A table whose newest TEK was created under the new MEK needs nothing.
            let latest = self.store.latest_tek(t).await?;
            let fresh = latest.as_ref().is_some_and(|r| {
                r.wrapped.mek == rotation.new_mek_id
                    && r.previous_wrap.is_none()
                    && r.metadata.state == KeyState::Active
            });
            if !fresh {
                let meta = self.rotate_table_as(t, Trigger::Emergency).await?;
                if t.is_reserved() {
                    if t.as_str() == heliosdb_tde_core::AUDIT_TABLE
                        && let KeyId::Table(id) = meta.key_id
                    {
                        audit_key = Some(id);
                    }
                } else {
                    rotated.push(t.clone());
                }
            }
        }
        self.drop_encryptors()?;
        // Every TEK version the compromised MEK protected is compromised too (decrypt only);
        // the tables holding such versions, including those rotated by an interrupted earlier
        // run of this emergency, must have their pages re-encrypted.
        let rot = self.rotator();
        let marked = rot.mark_compromised_tek_list(&rotation.old_mek_id).await;
        match &marked {
            Ok(list) => {
                for (id, before) in list {
                    let detail = format!(
                        "{before} -> {}: it was wrapped under the compromised {}",
                        KeyState::Compromised,
                        rotation.old_mek_id
                    );
                    self.audit_result(
                        AuditAction::TekStateChanged,
                        Some(KeyId::Table(id.clone())),
                        &marked,
                        detail,
                    )
                    .await;
                }
            }
            Err(e) => {
                let detail = format!(
                    "marking the TEK versions wrapped under the compromised {} compromised",
                    rotation.old_mek_id
                );
                self.audit_failure(AuditAction::TekStateChanged, None, e, detail)
                    .await;
            }
        }
        marked?;
        let needing = rot
            .tables_needing_reencryption()
            .await?
            .into_iter()
            .filter(|t| !t.is_reserved())
            .collect();
        Ok(EmergencyRotation {
            rotation,
            tables_needing_reencryption: needing,
            tables_rotated: rotated,
            audit_key,
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
        let id = match mek_id.as_mek_id() {
            Ok(id) => id.into_owned(),
            Err(e) => {
                self.audit_failure(AuditAction::MekStateChanged, None, &e, "deactivate")
                    .await;
                return Err(e);
            }
        };
        let r = self.rotator().deactivate_old(&id, now).await;
        let key = match &r {
            Ok(st) => Some(st.old.clone()),
            Err(_) => self.rotation_old(&id).await,
        };
        self.audit_result(
            AuditAction::MekStateChanged,
            key.map(KeyId::Master),
            &r,
            format!(
                "-> {}: the old version after a verified rotation",
                KeyState::Deactivated
            ),
        )
        .await;
        r
    }

    /// Rolls back the rotation of `mek_id`: the old version is active again and every TEK is
    /// wrapped under it. Possible until the old version is deactivated.
    pub async fn rollback_mek_rotation(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let id = match mek_id.as_mek_id() {
            Ok(id) => id.into_owned(),
            Err(e) => {
                self.audit_failure(AuditAction::MekStateChanged, None, &e, "roll back")
                    .await;
                return Err(e);
            }
        };
        let r = {
            let _guard = self.mutations.lock().await;
            let r = self.rotator().rollback(&id, progress).await;
            if let Ok(st) = &r
                && id == self.config.default_mek_id
            {
                *self.active_mek.write().map_err(|_| poisoned())? = Some(st.old.clone());
            }
            r
        };
        let key = match &r {
            Ok(st) => Some(st.old.clone()),
            Err(_) => self.rotation_old(&id).await,
        };
        let detail = match &r {
            Ok(st) => format!(
                "-> {}: rotation rolled back, this version is active again{}",
                KeyState::Active,
                st.new
                    .as_ref()
                    .map(|n| format!(" and {n} is {}", KeyState::DecryptOnly))
                    .unwrap_or_default()
            ),
            Err(_) => format!("-> {}: roll back the rotation", KeyState::Active),
        };
        self.audit_result(
            AuditAction::MekStateChanged,
            key.map(KeyId::Master),
            &r,
            detail,
        )
        .await;
        r
    }

    /// The old version of the rotation of `id` in progress, if any (for the audit event of a
    /// failed step).
    async fn rotation_old(&self, id: &MekId) -> Option<MekRef> {
        self.rotator()
            .status(id)
            .await
            .ok()
            .flatten()
            .map(|st| st.old)
    }
}

/// How a rotation run ended, before it is recorded.
enum RunEnd {
    Finished {
        result: MekRotationResult,
        started: bool,
        emergency: bool,
    },
    Paused {
        state: Box<RotationState>,
        error: TdeError,
        started: bool,
    },
}

fn started_word(started: bool) -> &'static str {
    if started { "started" } else { "resumed" }
}
