//! The [`KeyStore`] implementation over the pieces of this crate.

use crate::journal::frame_journal;
use crate::{AUTHENTICATED, JOURNAL, META, RedbKeyStore, TEKS, record};
use async_trait::async_trait;
use heliosdb_tde_core::{
    ExportItem, ExportSummary, ImportItem, KeyBytes, KeyStore, Result, StoreBatch, StoreIdentity,
    TableId, TdeError, TekId, TekRecord,
};
use redb::{ReadableTable, ReadableTableMetadata};
use std::sync::atomic::Ordering;

#[async_trait]
impl KeyStore for RedbKeyStore {
    async fn apply(&self, batch: StoreBatch) -> Result<()> {
        self.apply_blocking(batch)
    }

    async fn get_tek(&self, id: &TekId) -> Result<Option<TekRecord>> {
        self.with_db("reading a key", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
            let key = record::tek_key(id);
            match table.get(key.as_slice()).map_err(|e| self.err("read", e))? {
                Some(v) => Ok(Some(self.decode(&key, v.value())?)),
                None => Ok(None),
            }
        })
    }

    async fn latest_tek(&self, table: &TableId) -> Result<Option<TekRecord>> {
        let (lo, hi) = record::table_range(table);
        self.with_db("reading a key", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let t = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
            let mut range = t
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(|e| self.err("range", e))?;
            match range.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(|e| self.err("read", e))?;
                    Ok(Some(self.decode(k.value(), v.value())?))
                }
                None => Ok(None),
            }
        })
    }

    async fn table_teks(&self, table: &TableId) -> Result<Vec<TekRecord>> {
        let (lo, hi) = record::table_range(table);
        self.read_range(&lo, Some(&hi), usize::MAX)
    }

    async fn scan_teks(&self, after: Option<&TekId>, limit: usize) -> Result<Vec<TekRecord>> {
        let lo = match after {
            // The smallest key greater than `after`'s key.
            Some(id) => {
                let mut k = record::tek_key(id);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        self.read_range(&lo, None, limit)
    }

    async fn count_teks(&self) -> Result<u64> {
        self.with_db("counting keys", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let t = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
            let recorded = t.len().map_err(|e| self.err("count", e))?;
            // The engine's stored length is metadata like any other: check it against the
            // entries actually there (cheap next to the work a caller does per key).
            let mut counted = 0u64;
            for item in t.iter().map_err(|e| self.err("count", e))? {
                item.map_err(|e| self.err("count", e))?;
                counted += 1;
                if counted > recorded {
                    break;
                }
            }
            if counted != recorded {
                return Err(TdeError::corrupt(
                    "key store",
                    self.loc(),
                    format!(
                        "the table of keys says it holds {recorded} entries but {counted} are \
                         there; its index is damaged"
                    ),
                ));
            }
            Ok(recorded)
        })
    }

    async fn get_journal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.with_db("reading the journal", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let t = txn
                .open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
            match t.get(name).map_err(|e| self.err("journal read", e))? {
                Some(v) => Ok(Some(self.unframe_journal(name, v.value())?)),
                None => Ok(None),
            }
        })
    }

    async fn reserve_encryptions(
        &self,
        id: &TekId,
        block: u64,
        limit: u64,
    ) -> Result<std::ops::Range<u64>> {
        self.with_write_db("reserving encryptions", |db| {
            let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
            self.bump_generation(&txn)?;
            let range = {
                let mut teks = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
                let mut rec = self
                    .read_in(&teks, id)?
                    .ok_or_else(|| TdeError::KeyNotFound {
                        key: format!("tek:{id}"),
                        hint: "no such table key version in the key store".into(),
                    })?;
                let start = rec.metadata.usage.encryptions;
                let end = start.saturating_add(block).min(limit).max(start);
                if end > start {
                    rec.metadata.usage.encryptions = end;
                    self.write_in(&mut teks, &rec)?;
                }
                start..end
            };
            txn.commit().map_err(|e| self.err("commit", e))?;
            Ok(range)
        })
    }

    async fn set_integrity_key(
        &self,
        key: KeyBytes,
        key_check: Option<(String, Vec<u8>)>,
    ) -> Result<()> {
        *self.integrity_key.write().map_err(|_| self.poisoned())? = Some(key);
        let Some((name, value)) = key_check else {
            if !self.authenticated.load(Ordering::SeqCst) {
                return Err(TdeError::corrupt(
                    "key store",
                    self.loc(),
                    "it has a key check value, so its records are authenticated, but the flag \
                     that says so was cleared: records written by something that does not hold \
                     the MEK could otherwise be accepted",
                ));
            }
            return Ok(());
        };
        // The key check value and the authentication of every record land together, so that
        // a store never has one without the other.
        self.with_write_db("authenticating records", |db| {
            let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
            self.bump_generation(&txn)?;
            self.bump_key_generation(&txn)?;
            self.ensure_store_id(&txn)?;
            {
                let mut journal = txn
                    .open_table(JOURNAL)
                    .map_err(|e| self.err("open journal", e))?;
                journal
                    .insert(name.as_str(), frame_journal(&name, &value).as_slice())
                    .map_err(|e| self.err("journal write", e))?;
                if !self.authenticated.load(Ordering::SeqCst) {
                    let mut teks = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
                    let mut all = Vec::new();
                    for item in teks.iter().map_err(|e| self.err("scan", e))? {
                        let (k, v) = item.map_err(|e| self.err("read", e))?;
                        all.push(self.decode(k.value(), v.value())?);
                    }
                    for rec in &all {
                        self.write_in(&mut teks, rec)?;
                    }
                    let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
                    meta.insert(AUTHENTICATED, 1)
                        .map_err(|e| self.err("write meta", e))?;
                }
            }
            txn.commit().map_err(|e| self.err("commit", e))?;
            self.authenticated.store(true, Ordering::SeqCst);
            Ok(())
        })
    }

    fn location(&self) -> String {
        self.loc()
    }

    async fn identity(&self) -> Result<StoreIdentity> {
        self.identity_blocking()
    }

    fn export_blocking(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<()>,
    ) -> Result<ExportSummary> {
        self.export_inner(visit)
    }

    fn import_blocking(
        &self,
        identity: StoreIdentity,
        next: &mut dyn FnMut() -> Result<Option<ImportItem>>,
    ) -> Result<u64> {
        self.import_inner(identity, next)
    }
}
