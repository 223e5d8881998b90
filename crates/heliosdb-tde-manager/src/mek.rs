//! The default MEK: finding or generating it, its key check value (the store integrity key
//! wrapped under each MEK version) and the active version new TEKs are wrapped under.

use crate::{KeyManager, poisoned};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AsMekId, AuditAction, KeyId, KeyState, MekId, MekInfo, MekRef, Result, TableId, TableKey,
    TdeError, TekId, TekRecord, TekVersion, WrapContext,
};
use heliosdb_tde_rotation::RotationState;
use std::sync::Arc;

impl KeyManager {
    /// Makes sure the default MEK exists and returns its active version.
    ///
    /// The MEK is generated only on a true first start: when the provider does not have it
    /// *and* the key store holds nothing that depends on it (no TEK wrapped under it, no
    /// rotation journal, no key check value). If anything depends on it, the MEK was lost or the
    /// provider points at the wrong place: that is [`TdeError::MekMissing`], and nothing is
    /// created. When the MEK exists, its key check value is unwrapped to prove that it is the
    /// key this store was written with ([`TdeError::MekMismatch`] otherwise), and written if the
    /// store has none yet.
    pub async fn ensure_default_mek(&self) -> Result<MekRef> {
        self.default_mek(true).await
    }

    /// [`KeyManager::ensure_default_mek`] for read-only use: checks the default MEK and its key
    /// check value, but never generates a key and never writes.
    pub async fn check_default_mek(&self) -> Result<MekRef> {
        self.default_mek(false).await
    }

    pub(crate) async fn default_mek(&self, may_write: bool) -> Result<MekRef> {
        let id = self.config.default_mek_id.clone();
        // During a provider migration the store's records are authenticated under the
        // integrity key of the source's key check value: load it first, so that the target's
        // key check value, when this start writes it (a new target MEK, or one made in the
        // target provider beforehand), wraps that same key.
        if self.integrity_key()?.is_none()
            && let Some(source) = self.config.migration_source.clone()
        {
            let info = self.call(self.mek_provider.mek_info(&source)).await?;
            self.verify_key_check(&active_of(&info)?, false).await?;
        }
        let info = match self.call(self.mek_provider.mek_info(&id)).await {
            Ok(info) => info,
            Err(TdeError::KeyNotFound { .. }) => {
                let deps = self.mek_dependents(&id).await?;
                if deps.teks > 0 || deps.reserved > 0 || deps.journal {
                    return Err(TdeError::MekMissing {
                        mek: id.to_string(),
                        provider: self.mek_provider.description(),
                        store: self.store.location(),
                        teks: deps.teks,
                        tables: deps.tables,
                    });
                }
                if !may_write {
                    return Err(TdeError::KeyNotFound {
                        key: format!("mek:{id}"),
                        hint: format!(
                            "the MEK provider {} has no such MEK and the key store is empty; \
                             start HeliosDB (or run `heliosdb-cli security tek create`) once to \
                             create it",
                            self.mek_provider.description()
                        ),
                    });
                }
                let v = self
                    .mek_provider
                    .generate_new(&id, self.config.algorithm)
                    .await?;
                self.write_key_check(&v.mek).await?;
                self.set_active_mek(v.mek.clone())?;
                return Ok(v.mek);
            }
            Err(e) => return Err(e),
        };
        let active = active_of(&info)?;
        self.verify_key_check(&active, may_write).await?;
        self.set_active_mek(active.clone())?;
        Ok(active)
    }

    /// What in the key store depends on MEK `id`.
    pub(crate) async fn mek_dependents(&self, id: &MekId) -> Result<MekDependents> {
        let mut deps = MekDependents::default();
        let mut last_table: Option<TableId> = None;
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    let under = r.wrapped.mek.id == *id
                        || r.previous_wrap.as_ref().is_some_and(|p| p.mek.id == *id);
                    if under && r.id.table.is_reserved() {
                        // The audit key: it counts for "something depends on this MEK", but it
                        // is no user's table key.
                        deps.reserved += 1;
                    } else if under {
                        deps.teks += 1;
                        if last_table.as_ref() != Some(&r.id.table) {
                            deps.tables += 1;
                            last_table = Some(r.id.table.clone());
                        }
                    }
                }
                Ok(())
            })
            .await?;
        deps.journal = self
            .store
            .get_journal(&format!("mek_rotation/{id}"))
            .await?
            .is_some();
        // A provider migration's journal (under the source's id) also names the target.
        if !deps.journal
            && let Some(source) = &self.config.migration_source
            && let Some(bytes) = self
                .store
                .get_journal(&format!("mek_rotation/{source}"))
                .await?
            && let Ok(st) = RotationState::decode(&bytes, &self.store.location())
        {
            deps.journal = st.new.as_ref().is_some_and(|m| m.id == *id);
        }
        Ok(deps)
    }

    /// Stores the key check value of `mek`: the store integrity key (a random 256-bit key,
    /// created once per store) wrapped under `mek`. Unwrapping it at start proves that the
    /// provider holds the MEK this store was written with, and gives the key that
    /// authenticates the store's records.
    pub(crate) async fn write_key_check(&self, mek: &MekRef) -> Result<()> {
        let canary = match self.integrity_key()? {
            Some(k) => k,
            None => match self.older_integrity_key(mek).await? {
                Some(k) => Arc::new(k),
                None => {
                    let (canary_id, _) = key_check_context();
                    Arc::new(TableKey::generate(canary_id, self.config.algorithm)?)
                }
            },
        };
        let (_, ctx) = key_check_context();
        let wrapped = self
            .call(self.mek_provider.wrap_tek(mek, &canary, &ctx))
            .await?;
        let bytes = heliosdb_tde_core::KeyBytes::from_slice(canary.bytes().expose_secret())?;
        self.store
            .set_integrity_key(bytes, Some((key_check_entry(mek), wrapped.encode())))
            .await?;
        *self.integrity.write().map_err(|_| poisoned())? = Some(canary);
        Ok(())
    }

    /// The integrity key from the newest older version of `mek`'s MEK that has a key check
    /// value which unwraps, if any.
    pub(crate) async fn older_integrity_key(&self, mek: &MekRef) -> Result<Option<TableKey>> {
        let mut v = mek.version.get();
        while v > 1 {
            v -= 1;
            let older = MekRef::new(mek.id.clone(), heliosdb_tde_core::MekVersion::new(v)?);
            if let Some(Ok(canary)) = self.read_key_check(&older).await? {
                return Ok(Some(canary));
            }
        }
        Ok(None)
    }

    pub(crate) fn integrity_key(&self) -> Result<Option<Arc<TableKey>>> {
        Ok(self.integrity.read().map_err(|_| poisoned())?.clone())
    }

    /// Keeps the store integrity key and hands it to the store, which from then on
    /// authenticates every record it reads and writes.
    pub(crate) async fn load_integrity_key(&self, canary: Arc<TableKey>) -> Result<()> {
        let bytes = heliosdb_tde_core::KeyBytes::from_slice(canary.bytes().expose_secret())?;
        self.store.set_integrity_key(bytes, None).await?;
        *self.integrity.write().map_err(|_| poisoned())? = Some(canary);
        Ok(())
    }

    /// Unwraps the key check value stored for `mek`, if there is one.
    pub(crate) async fn read_key_check(&self, mek: &MekRef) -> Result<Option<Result<TableKey>>> {
        let Some(bytes) = self.store.get_journal(&key_check_entry(mek)).await? else {
            return Ok(None);
        };
        let wrapped = heliosdb_tde_core::WrappedTek::decode(&bytes).map_err(|e| {
            TdeError::corrupt(
                "key check value",
                format!("{} ({})", self.store.location(), key_check_entry(mek)),
                e.to_string(),
            )
        })?;
        if wrapped.mek != *mek {
            return Ok(Some(Err(TdeError::KeyNotFound {
                key: format!("mek:{mek}"),
                hint: "the key check value names another MEK version".into(),
            })));
        }
        let (_, ctx) = key_check_context();
        Ok(Some(
            self.call(self.mek_provider.unwrap_tek(&wrapped, &ctx))
                .await,
        ))
    }

    /// Unwraps the key check value of `mek` and loads the store integrity key from it.
    /// Without one (a store written before key checks existed, or an MEK version created
    /// outside a rotation), one TEK wrapped under `mek` is unwrapped instead; then, when
    /// `may_write`, the integrity key (from another version's key check value, or new) is
    /// wrapped under `mek` and the store's records are authenticated.
    pub(crate) async fn verify_key_check(&self, mek: &MekRef, may_write: bool) -> Result<()> {
        let mismatch = || TdeError::MekMismatch {
            mek: mek.to_string(),
            provider: self.mek_provider.description(),
            store: self.store.location(),
        };
        let judge = |r: Result<TableKey>| match r {
            Ok(k) => Ok(k),
            Err(e @ (TdeError::ProviderUnavailable { .. } | TdeError::Io { .. })) => Err(e),
            Err(TdeError::KeyNotFound { .. } | TdeError::AuthenticationFailed { .. }) => {
                Err(mismatch())
            }
            Err(e) => Err(e),
        };
        if let Some(r) = self.read_key_check(mek).await? {
            let canary = judge(r)?;
            return self.load_integrity_key(Arc::new(canary)).await;
        }
        // No key check value yet: prove the MEK on one of the TEKs it wraps, if any.
        let mut sample: Option<TekRecord> = None;
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                if sample.is_none() {
                    sample = page.into_iter().find(|r| r.wrapped.mek == *mek);
                }
                Ok(())
            })
            .await?;
        if let Some(r) = sample {
            judge(
                self.call(
                    self.mek_provider
                        .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id)),
                )
                .await,
            )?;
        }
        // A read-only start can still verify records with the integrity key wrapped under an
        // older version of this MEK.
        if !may_write
            && self.integrity_key()?.is_none()
            && let Some(canary) = self.older_integrity_key(mek).await?
        {
            self.load_integrity_key(Arc::new(canary)).await?;
        }
        if may_write {
            self.write_key_check(mek).await?;
        }
        Ok(())
    }

    /// The key store's identity (hex), written when the store was created; `None` for a store
    /// created before stores had one.
    pub async fn store_id(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get_journal("store/id")
            .await?
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// Generates a new MEK (version 1) in the provider.
    ///
    /// Recorded in the audit log (`mek.generated`), success or failure ([`TdeError::AlreadyExists`]
    /// if the provider holds it already).
    pub async fn generate_mek(&self, mek_id: &(impl AsMekId + ?Sized)) -> Result<MekRef> {
        let id = match mek_id.as_mek_id() {
            Ok(id) => id,
            Err(e) => {
                self.audit_failure(AuditAction::MekGenerated, None, &e, "generate an MEK")
                    .await;
                return Err(e);
            }
        };
        let v = self
            .mek_provider
            .generate_new(&id, self.config.algorithm)
            .await?;
        Ok(v.mek)
    }

    pub(crate) fn set_active_mek(&self, mek: MekRef) -> Result<()> {
        *self.active_mek.write().map_err(|_| poisoned())? = Some(mek);
        Ok(())
    }

    /// The MEK version new TEKs are wrapped under.
    pub async fn active_mek(&self) -> Result<MekRef> {
        if let Some(m) = self.active_mek.read().map_err(|_| poisoned())?.clone() {
            return Ok(m);
        }
        let info = self
            .call(self.mek_provider.mek_info(&self.config.default_mek_id))
            .await?;
        let active = active_of(&info)?;
        self.set_active_mek(active.clone())?;
        Ok(active)
    }

    /// Forgets the cached active MEK version (after a rotation changed it).
    pub fn refresh_active_mek(&self) -> Result<()> {
        *self.active_mek.write().map_err(|_| poisoned())? = None;
        Ok(())
    }

    /// Describes the default MEK and its versions.
    pub async fn mek_info(&self) -> Result<MekInfo> {
        self.call(self.mek_provider.mek_info(&self.config.default_mek_id))
            .await
    }
}

/// MEK lifecycle changes outside the rotation steps, and the audit record of the compromise an
/// emergency rotation makes.
impl KeyManager {
    /// Moves MEK version `mek` to lifecycle `state` in the provider (for example to reactivate a
    /// decrypt-only version, or to mark one compromised), under the provider's lifecycle rules;
    /// the active version new TEKs are wrapped under is read again afterwards. Recorded in the
    /// audit log (`mek.state_changed`), success or failure.
    ///
    /// Rotation manages states by itself; this is for an operator's deliberate change.
    pub async fn set_mek_version_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        let r = {
            let _guard = self.mutations.lock().await;
            let r = self.mek_provider.set_mek_state(mek, state).await;
            if r.is_ok() {
                self.refresh_active_mek()?;
            }
            r
        };
        self.audit_result(
            AuditAction::MekStateChanged,
            Some(KeyId::Master(mek.clone())),
            &r,
            format!("-> {state}: set by an operator"),
        )
        .await;
        r
    }

    /// The MEK version an emergency rotation of `id` marks compromised (the old version of the
    /// rotation in progress, or the active version), with its state now; `None` if the
    /// provider cannot say (the rotation then fails and is recorded as such).
    pub(crate) async fn compromise_candidate(
        &self,
        id: &MekId,
        prior: Option<&RotationState>,
    ) -> Option<(MekRef, Option<KeyState>)> {
        let info = self.call(self.mek_provider.mek_info(id)).await.ok()?;
        let old = match prior {
            Some(st) => st.old.clone(),
            None => active_of(&info).ok()?,
        };
        let state = info.versions.iter().find(|v| v.mek == old).map(|v| v.state);
        Some((old, state))
    }

    /// Records `mek.state_changed` for the compromise marking of an emergency rotation: a
    /// success when `old` became compromised, a failure when the rotation's preparation failed
    /// before marking it. Nothing when it was compromised (or out of service) already.
    pub(crate) async fn record_compromise(
        &self,
        old: &MekRef,
        before: Option<KeyState>,
        prepared: &Result<RotationState>,
    ) {
        if !self.auditing()
            || matches!(
                before,
                Some(KeyState::Compromised | KeyState::Deactivated | KeyState::Destroyed)
            )
        {
            return;
        }
        let after = match self.call(self.mek_provider.mek_info(&old.id)).await {
            Ok(info) => info
                .versions
                .iter()
                .find(|v| v.mek == *old)
                .map(|v| v.state),
            Err(_) => None,
        };
        let key = Some(KeyId::Master(old.clone()));
        let from = before.map_or_else(|| "unknown".to_string(), |s| s.to_string());
        if after == Some(KeyState::Compromised) {
            let r: Result<()> = Ok(());
            let detail = format!("{from} -> {}: emergency rotation", KeyState::Compromised);
            self.audit_result(AuditAction::MekStateChanged, key, &r, detail)
                .await;
        } else if let Err(e) = prepared {
            let detail = format!(
                "{from} -> {}: emergency rotation; the version could not be marked",
                KeyState::Compromised
            );
            self.audit_failure(AuditAction::MekStateChanged, key, e, detail)
                .await;
        }
    }
}

/// What in a key store depends on one MEK.
#[derive(Debug, Default)]
pub(crate) struct MekDependents {
    teks: u64,
    tables: u64,
    /// TEKs of reserved tables (the audit key).
    reserved: u64,
    journal: bool,
}

/// The identity and wrap context of the key check canary.
pub(crate) fn key_check_context() -> (TekId, WrapContext) {
    let id = TekId::new(
        // A valid table id, and the purpose keeps it apart from any real table's key.
        TableId::new("heliosdb.keycheck").unwrap_or_else(|_| unreachable!("a valid table id")),
        TekVersion::FIRST,
    );
    let mut ctx = WrapContext::table_key(&id);
    ctx.purpose = heliosdb_tde_core::WrapPurpose::KeyCheck;
    (id, ctx)
}

/// The journal entry holding the key check value of `mek`.
pub fn key_check_entry(mek: &MekRef) -> String {
    format!("keycheck/{mek}")
}

pub(crate) fn active_of(info: &MekInfo) -> Result<MekRef> {
    let v = info
        .active_version()
        .ok_or_else(|| TdeError::InvalidKeyState {
            key: format!("mek:{}", info.id),
            state: info
                .versions
                .last()
                .map(|v| v.state)
                .unwrap_or(KeyState::Deactivated),
            operation: "wrap new table keys".into(),
            hint: "no version of this MEK is active; rotate it or reactivate a version".into(),
        })?;
    Ok(MekRef::new(info.id.clone(), v))
}
