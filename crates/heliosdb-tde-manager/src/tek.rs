//! The TEK lifecycle: creating, listing and rotating table keys, each change one store batch.

use crate::{KeyManager, poisoned};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AsTableId, AuditAction, KeyId, KeyMetadata, KeyState, KeyType, Result, StoreBatch, StoreOp,
    TableId, TableKey, TdeError, TekId, TekRecord, TekVersion, WrapContext,
};
use std::sync::Arc;

/// What made a table key rotate, named in its `tek.rotated` audit event (`trigger=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Asked for: `rotate_table`, `rotate_table_key`.
    Manual,
    /// Part of an emergency MEK rotation.
    Emergency,
    /// The key reached its usage (nonce budget) limit.
    Usage,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Emergency => "emergency",
            Trigger::Usage => "usage",
        }
    }
}

fn wrapped_detail(meta: &KeyMetadata) -> String {
    meta.wrapped_by
        .as_ref()
        .map(|m| format!("wrapped under {m}"))
        .unwrap_or_default()
}

impl KeyManager {
    /// Creates version 1 of a table's TEK: 256 fresh bits from the OS CSPRNG, wrapped under the
    /// active MEK version with the AAD binding, stored durably, and cached.
    ///
    /// Table names starting with `_heliosdb` are reserved for HeliosDB's own keys (the audit
    /// key) and refused with [`TdeError::InvalidIdentifier`]. Recorded in the audit log
    /// (`tek.created`), success or failure.
    pub async fn create_table_key(&self, table: &(impl AsTableId + ?Sized)) -> Result<KeyMetadata> {
        let table = match table.as_table_id() {
            Ok(t) => t.into_owned(),
            Err(e) => {
                self.audit_failure(AuditAction::TekCreated, None, &e, "create a table key")
                    .await;
                return Err(e);
            }
        };
        if table.is_reserved() {
            let e = crate::reserved_table_error(&table);
            let key = KeyId::Table(TekId::new(table, TekVersion::FIRST));
            self.audit_failure(AuditAction::TekCreated, Some(key), &e, "refused")
                .await;
            return Err(e);
        }
        Ok(self.create_key(table).await?.0)
    }

    /// Creates version 1 of `table`'s TEK, audited; no reserved-name check (the audit key is
    /// created through it). Returns the metadata and the key.
    pub(crate) async fn create_key(&self, table: TableId) -> Result<(KeyMetadata, Arc<TableKey>)> {
        let id = TekId::new(table, TekVersion::FIRST);
        let r = self.create_key_inner(&id).await;
        let detail = match &r {
            Ok((meta, _)) => wrapped_detail(meta),
            Err(_) => String::new(),
        };
        self.audit_result(AuditAction::TekCreated, Some(KeyId::Table(id)), &r, detail)
            .await;
        r
    }

    async fn create_key_inner(&self, id: &TekId) -> Result<(KeyMetadata, Arc<TableKey>)> {
        let _guard = self.mutations.lock().await;
        if let Some(existing) = self.store.latest_tek(&id.table).await? {
            return Err(TdeError::AlreadyExists {
                key: format!("tek:{} (the table has keys; rotate instead)", existing.id),
            });
        }
        let record = self.new_record(id).await?;
        let meta = record.0.metadata.clone();
        self.store.apply(StoreBatch::new().insert(record.0)).await?;
        let key = Arc::new(record.1);
        self.cache.insert(id.clone(), key.clone());
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(id.table.clone(), id.version);
        Ok((meta, key))
    }

    /// Creates version 1 of the TEK of each table in one store transaction: all or none. For
    /// setting up many tables at once. Reserved names (`_heliosdb...`) refuse the whole batch.
    /// Each table key is recorded in the audit log (`tek.created`), and so is each failure.
    pub async fn create_table_keys<T: AsTableId + ?Sized>(
        &self,
        tables: &[&T],
    ) -> Result<Vec<KeyMetadata>> {
        let n = tables.len();
        let parsed = tables
            .iter()
            .map(|t| t.as_table_id().map(|t| t.into_owned()))
            .collect::<Result<Vec<TableId>>>()
            .and_then(|ts| match ts.iter().find(|t| t.is_reserved()) {
                Some(t) => Err(crate::reserved_table_error(t)),
                None => Ok(ts),
            });
        let tables = match parsed {
            Ok(ts) => ts,
            Err(e) => {
                self.audit_failure(
                    AuditAction::TekCreated,
                    None,
                    &e,
                    format!("a batch of {n} table keys was refused; none was created"),
                )
                .await;
                return Err(e);
            }
        };
        let r = self.create_keys_inner(&tables).await;
        if self.auditing() {
            match &r {
                Ok(metas) => {
                    for meta in metas {
                        let ev = self.event_of(
                            AuditAction::TekCreated,
                            Some(meta.key_id.clone()),
                            &r,
                            format!("{} (in a batch of {n})", wrapped_detail(meta)),
                        );
                        self.audit(ev).await;
                    }
                }
                Err(_) => {
                    for t in &tables {
                        let key = KeyId::Table(TekId::new(t.clone(), TekVersion::FIRST));
                        let ev = self.event_of(
                            AuditAction::TekCreated,
                            Some(key),
                            &r,
                            format!("in a batch of {n}; none was created"),
                        );
                        self.audit(ev).await;
                    }
                }
            }
        }
        r
    }

    async fn create_keys_inner(&self, tables: &[TableId]) -> Result<Vec<KeyMetadata>> {
        let _guard = self.mutations.lock().await;
        let mut batch = StoreBatch::new();
        let mut metas = Vec::with_capacity(tables.len());
        let mut keys = Vec::with_capacity(tables.len());
        for table in tables {
            let id = TekId::new(table.clone(), TekVersion::FIRST);
            let (rec, tek) = self.new_record(&id).await?;
            metas.push(rec.metadata.clone());
            batch = batch.insert(rec);
            keys.push(tek);
        }
        // The store refuses the whole batch if any table already has a key.
        self.store.apply(batch).await?;
        let mut active = self.active_versions.write().map_err(|_| poisoned())?;
        for tek in keys {
            active.insert(tek.id().table.clone(), TekVersion::FIRST);
            self.cache.insert(tek.id().clone(), Arc::new(tek));
        }
        Ok(metas)
    }

    /// A fresh TEK for `id`, wrapped under the active MEK, as a record plus the clear key.
    pub(crate) async fn new_record(&self, id: &TekId) -> Result<(TekRecord, TableKey)> {
        let mek = self.active_mek().await?;
        let tek = TableKey::generate(id.clone(), self.config.algorithm)?;
        let ctx = WrapContext::table_key(id);
        let wrapped = self
            .call(self.mek_provider.wrap_tek(&mek, &tek, &ctx))
            .await?;
        let meta = KeyMetadata::new_active(
            KeyId::Table(id.clone()),
            self.config.algorithm,
            Some(wrapped.mek.clone()),
        );
        Ok((TekRecord::new(id.clone(), meta, wrapped)?, tek))
    }

    pub(crate) async fn latest_version(&self, table: &TableId) -> Result<TekVersion> {
        if let Some(v) = self
            .active_versions
            .read()
            .map_err(|_| poisoned())?
            .get(table)
            .copied()
        {
            return Ok(v);
        }
        let latest = self
            .store
            .latest_tek(table)
            .await?
            .ok_or_else(|| TdeError::KeyNotFound {
                key: format!("table {table}"),
                hint: "create its key first (`heliosdb-cli security tek create`)".into(),
            })?;
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), latest.id.version);
        Ok(latest.id.version)
    }

    /// Lists keys: MEK versions, TEK versions, or both. The TEKs of reserved tables
    /// (`_heliosdb...`, the audit key) are not listed.
    pub async fn list_keys(&self, key_type: Option<KeyType>) -> Result<Vec<KeyMetadata>> {
        let mut out = Vec::new();
        if key_type != Some(KeyType::Table) {
            for id in self.call(self.mek_provider.list_meks()).await? {
                let info = self.call(self.mek_provider.mek_info(&id)).await?;
                for v in info.versions {
                    out.push(KeyMetadata {
                        key_id: KeyId::Master(v.mek),
                        state: v.state,
                        algorithm: v.algorithm,
                        wrapped_by: None,
                        created_at: v.created_at,
                        state_changed_at: v.created_at,
                        usage: Default::default(),
                    });
                }
            }
        }
        if key_type != Some(KeyType::Master) {
            self.store
                .tek_pages(None, 1024)
                .for_each(|page| {
                    // HeliosDB's own keys (the audit key) are not user tables.
                    out.extend(
                        page.into_iter()
                            .filter(|r| !r.id.table.is_reserved())
                            .map(|r| r.metadata),
                    );
                    Ok(())
                })
                .await?;
        }
        Ok(out)
    }

    /// Rotates a table's TEK: a new version becomes active for encryption and every older
    /// active version becomes decrypt-only, in one transaction. `key_id` names any version of
    /// the table's key (as listed by [`KeyManager::list_keys`]).
    pub async fn rotate_table_key(&self, key_id: &KeyId) -> Result<KeyMetadata> {
        let KeyId::Table(tek) = key_id else {
            let e = TdeError::Unsupported {
                what: format!("rotate_table_key on {key_id}"),
                hint: "MEKs are rotated with rotate_mek_with_dual_encryption".into(),
            };
            self.audit_failure(
                AuditAction::TekRotated,
                Some(key_id.clone()),
                &e,
                "trigger=manual",
            )
            .await;
            return Err(e);
        };
        self.rotate_table(&tek.table).await
    }

    /// Rotates the TEK of `table`; see [`KeyManager::rotate_table_key`]. Recorded in the
    /// audit log (`tek.rotated`, `trigger=manual`), success or failure, with a
    /// `tek.state_changed` event for each older version made decrypt-only. Rotating the audit
    /// table's key (`_heliosdb.audit`) hands the new version to the audit sink.
    pub async fn rotate_table(&self, table: &TableId) -> Result<KeyMetadata> {
        self.rotate_table_as(table, Trigger::Manual).await
    }

    /// [`KeyManager::rotate_table`], naming what triggered it in the audit log.
    pub(crate) async fn rotate_table_as(
        &self,
        table: &TableId,
        trigger: Trigger,
    ) -> Result<KeyMetadata> {
        let mut new_id: Option<TekId> = None;
        let mut demoted: Vec<TekId> = Vec::new();
        let r = self
            .rotate_table_inner(table, &mut new_id, &mut demoted)
            .await;
        if self.auditing() {
            let detail = match &r {
                Ok(_) => format!(
                    "trigger={}; {} older version(s) made decrypt-only",
                    trigger.name(),
                    demoted.len()
                ),
                Err(_) => format!("trigger={}; table {table}", trigger.name()),
            };
            let key = new_id.clone().map(KeyId::Table);
            self.audit(self.event_of(AuditAction::TekRotated, key, &r, detail))
                .await;
            if let (Ok(_), Some(new)) = (&r, &new_id) {
                for old in demoted {
                    let ev = self.event_of(
                        AuditAction::TekStateChanged,
                        Some(KeyId::Table(old)),
                        &r,
                        format!(
                            "{} -> {}: the table key was rotated to {} (trigger={})",
                            KeyState::Active,
                            KeyState::DecryptOnly,
                            new.version,
                            trigger.name()
                        ),
                    );
                    self.audit(ev).await;
                }
            }
        }
        if r.is_ok() && table.as_str() == heliosdb_tde_core::AUDIT_TABLE {
            self.reattach_audit_key().await;
        }
        r
    }

    async fn rotate_table_inner(
        &self,
        table: &TableId,
        new_id: &mut Option<TekId>,
        demoted: &mut Vec<TekId>,
    ) -> Result<KeyMetadata> {
        let _guard = self.mutations.lock().await;
        let versions = self.store.table_teks(table).await?;
        let latest = versions.last().ok_or_else(|| TdeError::KeyNotFound {
            key: format!("table {table}"),
            hint: "create its key first".into(),
        })?;
        let id = TekId::new(table.clone(), latest.id.version.next()?);
        *new_id = Some(id.clone());
        let (record, tek) = self.new_record(&id).await?;
        let meta = record.metadata.clone();
        let mut batch = StoreBatch::new().insert(record);
        let mut olds = Vec::new();
        for old in versions {
            if old.metadata.state == KeyState::Active {
                // Read-modify-write in the store: a concurrent MEK rewrap of this record is
                // never undone.
                olds.push(old.id.clone());
                batch = batch.push(StoreOp::SetState {
                    id: old.id,
                    state: KeyState::DecryptOnly,
                });
            }
        }
        self.store.apply(batch).await?;
        *demoted = olds;
        self.cache.insert(id.clone(), Arc::new(tek));
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), id.version);
        // After the new version is active here: a sealer made from then on reads it.
        self.retire_encryptor(table)?;
        Ok(meta)
    }
}
