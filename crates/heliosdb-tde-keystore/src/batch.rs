//! Records in and out of the `teks` table, range reads, and [`StoreBatch`] application (one
//! redb transaction per batch, read-modify-write operations inside it).

use crate::journal::frame_journal;
use crate::{Db, JOURNAL, RedbKeyStore, TEKS, record};
use heliosdb_tde_core::{Result, StoreBatch, TdeError, TekId, TekRecord, store::StoreOp};
use redb::{Database, ReadableTable};
use std::sync::atomic::Ordering;

impl RedbKeyStore {
    pub(crate) fn decode(&self, key: &[u8], value: &[u8]) -> Result<TekRecord> {
        let id = record::parse_tek_key(key, &self.loc())?;
        let guard = self.integrity_key.read().map_err(|_| self.poisoned())?;
        record::decode_with(
            &id,
            value,
            &format!("{} ({id})", self.loc()),
            guard.as_ref(),
            self.authenticated.load(Ordering::SeqCst),
        )
    }

    /// Encodes a record for writing: authenticated when the integrity key is loaded. A store
    /// whose records are authenticated refuses to write without it.
    pub(crate) fn encode(&self, rec: &TekRecord) -> Result<Vec<u8>> {
        let guard = self.integrity_key.read().map_err(|_| self.poisoned())?;
        if guard.is_none() && self.authenticated.load(Ordering::SeqCst) {
            return Err(TdeError::InvalidKeyState {
                key: format!("key store {}", self.loc()),
                state: heliosdb_tde_core::KeyState::Active,
                operation: "write a table key record".into(),
                hint: "its records are authenticated and the integrity key has not been loaded \
                       (the key manager loads it when it checks the default MEK at start)"
                    .into(),
            });
        }
        Ok(record::encode_with(rec, guard.as_ref()))
    }

    pub(crate) fn read_range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<TekRecord>> {
        self.with_db("reading keys", |db| {
            self.read_range_inner(db, lo, hi, limit)
        })
    }

    pub(crate) fn read_range_inner(
        &self,
        db: &Db,
        lo: &[u8],
        hi: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<TekRecord>> {
        let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
        let iter = match hi {
            Some(hi) => table.range::<&[u8]>(lo..hi),
            None => table.range::<&[u8]>(lo..),
        }
        .map_err(|e| self.err("range", e))?;
        let mut out: Vec<TekRecord> = Vec::new();
        let mut previous: Option<Vec<u8>> = None;
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err("read", e))?;
            let key = k.value();
            // Damaged pages can return keys out of order or outside the range asked for; a
            // scan must always move forward, so either is corruption.
            let in_range = key >= lo && hi.is_none_or(|hi| key < hi);
            let ascending = previous.as_deref().is_none_or(|p| key > p);
            if !in_range || !ascending {
                return Err(TdeError::corrupt(
                    "key store",
                    self.loc(),
                    format!(
                        "a scan of the table keys went backwards or out of range at key bytes \
                         {key:02x?}; the index is damaged. Restore the file from a backup"
                    ),
                ));
            }
            previous = Some(key.to_vec());
            out.push(self.decode(key, v.value())?);
        }
        Ok(out)
    }

    /// Applies a batch synchronously (what [`KeyStore::apply`](heliosdb_tde_core::KeyStore::apply) does).
    pub fn apply_blocking(&self, batch: StoreBatch) -> Result<()> {
        self.with_write_db("writing", |db| self.apply_inner(db, batch))
    }

    pub(crate) fn apply_inner(&self, db: &Database, batch: StoreBatch) -> Result<()> {
        let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
        self.bump_generation(&txn)?;
        if batch.changes_keys() {
            self.bump_key_generation(&txn)?;
        }
        self.ensure_store_id(&txn)?;
        {
            let mut teks = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
            let mut journal = txn
                .open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
            for op in batch.ops {
                match op {
                    StoreOp::Insert(rec) => {
                        let key = record::tek_key(&rec.id);
                        let exists = teks
                            .get(key.as_slice())
                            .map_err(|e| self.err("read", e))?
                            .is_some();
                        if exists {
                            // Dropping the transaction without commit aborts the whole batch.
                            return Err(TdeError::AlreadyExists {
                                key: format!("tek:{}", rec.id),
                            });
                        }
                        teks.insert(key.as_slice(), self.encode(&rec)?.as_slice())
                            .map_err(|e| self.err("insert", e))?;
                    }
                    StoreOp::Upsert(rec) => {
                        let key = record::tek_key(&rec.id);
                        teks.insert(key.as_slice(), self.encode(&rec)?.as_slice())
                            .map_err(|e| self.err("upsert", e))?;
                    }
                    StoreOp::PutJournal { name, value } => {
                        journal
                            .insert(name.as_str(), frame_journal(&name, &value).as_slice())
                            .map_err(|e| self.err("journal write", e))?;
                    }
                    StoreOp::DeleteJournal { name } => {
                        if name == crate::STORE_ID_ENTRY {
                            // The next write looks for the store id again (and adds one).
                            self.has_store_id.store(false, Ordering::Relaxed);
                        }
                        journal
                            .remove(name.as_str())
                            .map_err(|e| self.err("journal delete", e))?;
                    }
                    StoreOp::Rewrap {
                        id,
                        expect,
                        wrapped,
                        keep_previous,
                    } => {
                        let Some(mut rec) = self.read_in(&teks, &id)? else {
                            continue;
                        };
                        if rec.wrapped.mek != expect {
                            continue;
                        }
                        rec.metadata.wrapped_by = Some(wrapped.mek.clone());
                        let old = std::mem::replace(&mut rec.wrapped, wrapped);
                        rec.previous_wrap = keep_previous.then_some(old);
                        self.write_in(&mut teks, &rec)?;
                    }
                    StoreOp::ClearPreviousWrap { id } => {
                        if let Some(mut rec) = self.read_in(&teks, &id)?
                            && rec.previous_wrap.take().is_some()
                        {
                            self.write_in(&mut teks, &rec)?;
                        }
                    }
                    StoreOp::SetState { id, state } => {
                        let mut rec =
                            self.read_in(&teks, &id)?
                                .ok_or_else(|| TdeError::KeyNotFound {
                                    key: format!("tek:{id}"),
                                    hint: "no such table key version in the key store".into(),
                                })?;
                        rec.metadata.transition(state)?;
                        self.write_in(&mut teks, &rec)?;
                    }
                    StoreOp::ReserveEncryptions { id, at_least } => {
                        if let Some(mut rec) = self.read_in(&teks, &id)?
                            && rec.metadata.usage.encryptions < at_least
                        {
                            rec.metadata.usage.encryptions = at_least;
                            self.write_in(&mut teks, &rec)?;
                        }
                    }
                    StoreOp::CheckJournal { name, expect } => {
                        // Compare-and-set: the batch is dropped uncommitted on a mismatch.
                        let current = match journal
                            .get(name.as_str())
                            .map_err(|e| self.err("journal read", e))?
                        {
                            Some(v) => Some(self.unframe_journal(&name, v.value())?),
                            None => None,
                        };
                        if current != expect {
                            return Err(heliosdb_tde_core::store::journal_conflict(&name));
                        }
                    }
                    other => {
                        return Err(TdeError::Unsupported {
                            what: format!("store operation {other:?}"),
                            hint: "upgrade heliosdb-tde-keystore".into(),
                        });
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }

    pub(crate) fn read_in(
        &self,
        teks: &redb::Table<'_, &[u8], &[u8]>,
        id: &TekId,
    ) -> Result<Option<TekRecord>> {
        let key = record::tek_key(id);
        match teks.get(key.as_slice()).map_err(|e| self.err("read", e))? {
            Some(v) => Ok(Some(self.decode(&key, v.value())?)),
            None => Ok(None),
        }
    }

    pub(crate) fn write_in(
        &self,
        teks: &mut redb::Table<'_, &[u8], &[u8]>,
        rec: &TekRecord,
    ) -> Result<()> {
        let key = record::tek_key(&rec.id);
        teks.insert(key.as_slice(), self.encode(rec)?.as_slice())
            .map_err(|e| self.err("write", e))?;
        Ok(())
    }
}
