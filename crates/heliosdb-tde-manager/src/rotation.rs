//! MEK rotation and usage-driven TEK rotation, on top of `heliosdb-tde-rotation`.

use crate::{KeyManager, poisoned};
use heliosdb_tde_cipher::{
    Backend, CipherError, HARD_LIMIT, SealedParts, TableCipher, UsageLimits,
};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, KeyId, MekId, MekRef, Result, TableId, TdeError, Timestamp,
};
use heliosdb_tde_rotation::{Phase, ProgressFn, RotationState, Rotator, Verification};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What `rotate_mek_with_dual_encryption` reports (the guide's field names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
pub struct EmergencyRotation {
    /// The MEK rotation (the old version is now marked compromised).
    pub rotation: MekRotationResult,
    /// Tables that got a new TEK version (older versions are decrypt-only).
    pub tables_rotated: Vec<TableId>,
    /// Tables whose data is still encrypted under TEK versions that were wrapped by the
    /// compromised MEK: re-encrypt their pages with the new TEK versions.
    pub tables_needing_reencryption: Vec<TableId>,
}

/// Nonce-budget policy for table keys used through the key manager.
///
/// Built from [`UsagePolicy::default`] and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsagePolicy {
    /// Encryptions after which a table key is rotated automatically (at most 2^32).
    pub soft_limit: u64,
    /// Encryptions reserved (persisted) ahead of use, per reservation.
    pub reservation_block: u64,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            soft_limit: HARD_LIMIT / 2,
            reservation_block: 1 << 16,
        }
    }
}

impl UsagePolicy {
    /// Sets [`UsagePolicy::soft_limit`], the encryptions after which a table key is rotated.
    #[must_use]
    pub fn with_soft_limit(mut self, soft_limit: u64) -> Self {
        self.soft_limit = soft_limit;
        self
    }

    /// Sets [`UsagePolicy::reservation_block`], the encryptions reserved ahead of use.
    #[must_use]
    pub fn with_reservation_block(mut self, reservation_block: u64) -> Self {
        self.reservation_block = reservation_block;
        self
    }
}

/// A page sealer for one TEK version with a persisted reservation of nonce budget.
pub(crate) struct Encryptor {
    cipher: TableCipher,
    block_end: u64,
}

impl KeyManager {
    fn rotator(&self) -> Rotator {
        Rotator::new(
            self.mek_provider.clone(),
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
        current_mek_id: &str,
    ) -> Result<MekRotationResult> {
        self.rotate_mek_with_progress(current_mek_id, None).await
    }

    /// [`KeyManager::rotate_mek_with_dual_encryption`] with a progress callback.
    pub async fn rotate_mek_with_progress(
        &self,
        current_mek_id: &str,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekRotationResult> {
        self.rotate_inner(current_mek_id, false, progress).await
    }

    async fn rotate_inner(
        &self,
        current_mek_id: &str,
        emergency: bool,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<MekRotationResult> {
        let id = MekId::new(current_mek_id)?;
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
        current_mek_id: &str,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<EmergencyRotation> {
        let rotation = self.rotate_inner(current_mek_id, true, progress).await?;
        let mut tables: Vec<TableId> = Vec::new();
        self.store.tek_pages(None, 4096).for_each(|page| {
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
    pub async fn mek_rotation_status(&self, mek_id: &str) -> Result<Option<RotationState>> {
        self.rotator().status(&MekId::new(mek_id)?).await
    }

    /// Counts the TEKs only the old MEK version can unwrap; with none the rotation is verified.
    pub async fn verify_mek_rotation(&self, mek_id: &str) -> Result<Verification> {
        self.rotator().verify(&MekId::new(mek_id)?).await
    }

    /// Deactivates the old MEK version of a verified rotation whose grace period is over.
    pub async fn deactivate_old_mek(&self, mek_id: &str) -> Result<RotationState> {
        self.deactivate_old_mek_at(mek_id, Timestamp::now()).await
    }

    /// [`KeyManager::deactivate_old_mek`] judged at `now` (for tests and tools).
    pub async fn deactivate_old_mek_at(
        &self,
        mek_id: &str,
        now: Timestamp,
    ) -> Result<RotationState> {
        let st = self
            .rotator()
            .deactivate_old(&MekId::new(mek_id)?, now)
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
        mek_id: &str,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RotationState> {
        let id = MekId::new(mek_id)?;
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

    fn drop_encryptors(&self) -> Result<()> {
        self.encryptors.write().map_err(|_| poisoned())?.clear();
        Ok(())
    }

    /// The sealer for `table`, creating it (and reserving nonce budget) if needed.
    async fn encryptor(&self, table: &TableId) -> Result<Arc<Encryptor>> {
        if let Some(e) = self.encryptors.read().map_err(|_| poisoned())?.get(table) {
            return Ok(e.clone());
        }
        let _guard = self.encryptor_lock.lock().await;
        if let Some(e) = self.encryptors.read().map_err(|_| poisoned())?.get(table) {
            return Ok(e.clone());
        }
        let key = self.active_table_key(table.as_str()).await?;
        // Everything reserved before may have been used (a crash loses the exact count), so
        // this process starts counting at the reservation and takes the next block, read and
        // raised in one store transaction: no other sealer, here or in another process, can be
        // handed the same invocation numbers.
        let block = self
            .store
            .reserve_encryptions(
                key.id(),
                self.config.usage.reservation_block.max(1),
                HARD_LIMIT,
            )
            .await?;
        if block.is_empty() {
            return Err(TdeError::NonceBudgetExhausted {
                key: format!("tek:{}", key.id()),
                invocations: block.start,
            });
        }
        let (start, block_end) = (block.start, block.end);
        let limits = UsageLimits::new(block_end, block_end)?;
        let cipher = TableCipher::with_invocations(&key, Backend::default(), limits, start)?;
        let enc = Arc::new(Encryptor { cipher, block_end });
        self.encryptors
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), enc.clone());
        Ok(enc)
    }

    fn retire_encryptor(&self, table: &TableId, enc: &Arc<Encryptor>) -> Result<()> {
        let mut map = self.encryptors.write().map_err(|_| poisoned())?;
        if map.get(table).is_some_and(|e| Arc::ptr_eq(e, enc)) {
            map.remove(table);
        }
        Ok(())
    }

    /// Seals a page of `table` in place with its active TEK, counting against the key's nonce
    /// budget (persisted ahead of use in blocks). When the key reaches the soft limit, the
    /// table key is rotated automatically and later pages use the new version.
    pub async fn seal_page_in_place(
        &self,
        table: &str,
        aad: &[u8],
        page: &mut [u8],
    ) -> Result<SealedParts> {
        let table = TableId::new(table)?;
        loop {
            let enc = self.encryptor(&table).await?;
            match enc.cipher.seal_in_place(aad, page) {
                Ok(parts) => {
                    if enc.cipher.usage().invocations >= self.config.usage.soft_limit {
                        // The page is sealed: whatever happens to the rotation, the caller
                        // must get the header and tag, or the page could never be opened.
                        // A failed rotation is logged and counted, and tried again at the next
                        // seal (the key is still over its soft limit then).
                        let rotated = match self.retire_encryptor(&table, &enc) {
                            Ok(()) => self.rotate_for_usage(&table, &enc).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = rotated {
                            self.counters
                                .usage_rotation_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                target: "heliosdb::tde",
                                tek = %enc.cipher.tek(),
                                "the table key reached its usage limit but could not be rotated \
                                 ({e}); the page was sealed, and the rotation is retried at the \
                                 next seal"
                            );
                        }
                    }
                    return Ok(parts);
                }
                Err(CipherError::NonceBudgetExhausted { .. }) => {
                    // The reserved block is spent: reserve the next one (or rotate at 2^32).
                    self.retire_encryptor(&table, &enc)?;
                    if enc.block_end >= HARD_LIMIT {
                        self.rotate_for_usage(&table, &enc).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Seals `plaintext` of `table` into `header || ciphertext || tag`; see
    /// [`KeyManager::seal_page_in_place`].
    pub async fn seal_page(&self, table: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(heliosdb_tde_cipher::HEADER_LEN + plaintext.len() + 16);
        out.extend_from_slice(&[0u8; heliosdb_tde_cipher::HEADER_LEN]);
        out.extend_from_slice(plaintext);
        let parts = self
            .seal_page_in_place(table, aad, &mut out[heliosdb_tde_cipher::HEADER_LEN..])
            .await?;
        out[..heliosdb_tde_cipher::HEADER_LEN].copy_from_slice(&parts.header);
        out.extend_from_slice(&parts.tag);
        Ok(out)
    }

    /// Opens what [`KeyManager::seal_page`] produced, with the TEK version named in its header.
    pub async fn open_page(&self, table: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let version = heliosdb_tde_cipher::sealed_tek_version(sealed)?;
        let key = self.get_table_key(table, Some(version)).await?;
        let cipher = TableCipher::new(&key, Backend::default(), UsageLimits::default())?;
        Ok(cipher.open(aad, sealed)?)
    }

    /// Encryptions counted so far by this process's sealer for the active TEK of `table`
    /// (including the budget reserved by earlier processes), if it has one.
    pub fn sealer_invocations(&self, table: &str) -> Option<u64> {
        let table = TableId::new(table).ok()?;
        let map = self.encryptors.read().ok()?;
        map.get(&table).map(|e| e.cipher.usage().invocations)
    }

    async fn rotate_for_usage(&self, table: &TableId, enc: &Encryptor) -> Result<()> {
        // Only rotate if nobody did already.
        let latest = self.store.latest_tek(table).await?;
        if latest.is_some_and(|r| r.id.version > enc.cipher.tek().version) {
            return Ok(());
        }
        tracing::info!(
            target: "heliosdb::tde",
            tek = %enc.cipher.tek(),
            invocations = enc.cipher.usage().invocations,
            "usage limit reached: rotating the table key"
        );
        self.rotate_table(table).await?;
        Ok(())
    }
}
