//! The TEK lifecycle: creating, listing and rotating table keys, each change one store batch.

use crate::{KeyManager, poisoned};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AsTableId, AuditAction, AuditEvent, KeyId, KeyMetadata, KeyState, KeyType, Result, StoreBatch,
    StoreOp, TableId, TableKey, TdeError, TekId, TekRecord, TekVersion, WrapContext,
};
use std::sync::Arc;

impl KeyManager {
    /// Creates version 1 of a table's TEK: 256 fresh bits from the OS CSPRNG, wrapped under the
    /// active MEK version with the AAD binding, stored durably, and cached.
    pub async fn create_table_key(&self, table: &(impl AsTableId + ?Sized)) -> Result<KeyMetadata> {
        let table = table.as_table_id()?.into_owned();
        let _guard = self.mutations.lock().await;
        if let Some(existing) = self.store.latest_tek(&table).await? {
            return Err(TdeError::AlreadyExists {
                key: format!("tek:{} (the table has keys; rotate instead)", existing.id),
            });
        }
        let id = TekId::new(table.clone(), TekVersion::FIRST);
        let record = self.new_record(&id).await?;
        let meta = record.0.metadata.clone();
        self.store.apply(StoreBatch::new().insert(record.0)).await?;
        self.cache.insert(id.clone(), Arc::new(record.1));
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table, id.version);
        self.audit(AuditEvent::success(
            AuditAction::TekCreated,
            Some(KeyId::Table(id)),
            format!(
                "wrapped under {}",
                meta.wrapped_by
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            ),
        ))
        .await;
        Ok(meta)
    }

    /// Creates version 1 of the TEK of each table in one store transaction: all or none. For
    /// setting up many tables at once.
    pub async fn create_table_keys<T: AsTableId + ?Sized>(
        &self,
        tables: &[&T],
    ) -> Result<Vec<KeyMetadata>> {
        let tables: Vec<TableId> = tables
            .iter()
            .map(|t| t.as_table_id().map(|t| t.into_owned()))
            .collect::<Result<_>>()?;
        let _guard = self.mutations.lock().await;
        let mut batch = StoreBatch::new();
        let mut metas = Vec::with_capacity(tables.len());
        let mut keys = Vec::with_capacity(tables.len());
        for table in &tables {
            let id = TekId::new(table.clone(), TekVersion::FIRST);
            let (rec, tek) = self.new_record(&id).await?;
            metas.push(rec.metadata.clone());
            batch = batch.insert(rec);
            keys.push(tek);
        }
        // The store refuses the whole batch if any table already has a key.
        self.store.apply(batch).await?;
        {
            let mut active = self.active_versions.write().map_err(|_| poisoned())?;
            for tek in keys {
                active.insert(tek.id().table.clone(), TekVersion::FIRST);
                self.cache.insert(tek.id().clone(), Arc::new(tek));
            }
        }
        self.audit(AuditEvent::success(
            AuditAction::TekCreated,
            None,
            format!("{} table keys created in one batch", metas.len()),
        ))
        .await;
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

    /// Lists keys: MEK versions, TEK versions, or both.
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
                    out.extend(page.into_iter().map(|r| r.metadata));
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
            return Err(TdeError::Unsupported {
                what: format!("rotate_table_key on {key_id}"),
                hint: "MEKs are rotated with rotate_mek_with_dual_encryption".into(),
            });
        };
        self.rotate_table(&tek.table).await
    }

    /// Rotates the TEK of `table`; see [`KeyManager::rotate_table_key`].
    pub async fn rotate_table(&self, table: &TableId) -> Result<KeyMetadata> {
        let _guard = self.mutations.lock().await;
        let versions = self.store.table_teks(table).await?;
        let latest = versions.last().ok_or_else(|| TdeError::KeyNotFound {
            key: format!("table {table}"),
            hint: "create its key first".into(),
        })?;
        let id = TekId::new(table.clone(), latest.id.version.next()?);
        let (record, tek) = self.new_record(&id).await?;
        let meta = record.metadata.clone();
        let mut batch = StoreBatch::new().insert(record);
        for old in versions {
            if old.metadata.state == KeyState::Active {
                // Read-modify-write in the store: a concurrent MEK rewrap of this record is
                // never undone.
                batch = batch.push(StoreOp::SetState {
                    id: old.id,
                    state: KeyState::DecryptOnly,
                });
            }
        }
        self.store.apply(batch).await?;
        self.cache.insert(id.clone(), Arc::new(tek));
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), id.version);
        // After the new version is active here: a sealer made from then on reads it.
        self.retire_encryptor(table)?;
        self.audit(AuditEvent::success(
            AuditAction::TekRotated,
            Some(KeyId::Table(id)),
            "older versions are decrypt-only",
        ))
        .await;
        Ok(meta)
    }
}
