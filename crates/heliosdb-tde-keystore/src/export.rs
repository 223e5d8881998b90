//! The store's identity, the consistent export a backup is built from, and the import a
//! restore loads it with.

use crate::journal::frame_journal;
use crate::{AUTHENTICATED, JOURNAL, KEY_GENERATION, META, RedbKeyStore, STORE_ID_ENTRY, TEKS};
use crate::{Db, record};
use heliosdb_tde_core::{
    ExportItem, ExportSummary, ImportItem, Result, StoreIdentity, TdeError, TekRecord,
};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use std::sync::atomic::Ordering;

impl RedbKeyStore {
    /// Adds a random store id inside a write transaction if the store has none (a store created
    /// before stores had one gets it at its first write).
    pub(crate) fn ensure_store_id(&self, txn: &redb::WriteTransaction) -> Result<()> {
        if self.has_store_id.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut journal = txn
            .open_table(JOURNAL)
            .map_err(|e| self.err("open journal", e))?;
        let present = journal
            .get(STORE_ID_ENTRY)
            .map_err(|e| self.err("journal read", e))?
            .is_some();
        if present {
            // Committed before this transaction: it stays (only a batch that deletes the entry
            // could remove it, and then the id is gone on purpose).
            self.has_store_id.store(true, Ordering::Relaxed);
        } else {
            let id = random_id()?;
            journal
                .insert(
                    STORE_ID_ENTRY,
                    frame_journal(STORE_ID_ENTRY, &id).as_slice(),
                )
                .map_err(|e| self.err("write store id", e))?;
        }
        Ok(())
    }

    fn identity_in(&self, txn: &ReadTransaction) -> Result<StoreIdentity> {
        let journal = txn
            .open_table(JOURNAL)
            .map_err(|e| self.err("open journal", e))?;
        let raw = journal
            .get(STORE_ID_ENTRY)
            .map_err(|e| self.err("journal read", e))?
            .map(|v| v.value().to_vec());
        let Some(raw) = raw else {
            return Err(TdeError::KeyNotFound {
                key: format!("store id of the key store {}", self.loc()),
                hint: "the store was created by an older version and has no id yet; start \
                       HeliosDB (or run any command that changes keys) once to add it"
                    .into(),
            });
        };
        let value = self.unframe_journal(STORE_ID_ENTRY, &raw)?;
        let id: [u8; 16] = value.as_slice().try_into().map_err(|_| {
            TdeError::corrupt(
                "key store",
                self.loc(),
                format!("its store id has {} bytes instead of 16", value.len()),
            )
        })?;
        let meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        let generation = meta
            .get(KEY_GENERATION)
            .map_err(|e| self.err("read key generation", e))?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok(StoreIdentity::new(id, generation))
    }

    /// The store's identity and key generation.
    pub fn identity_blocking(&self) -> Result<StoreIdentity> {
        self.with_db("reading the store identity", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            self.identity_in(&txn)
        })
    }

    pub(crate) fn export_inner(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<()>,
    ) -> Result<ExportSummary> {
        self.with_db("exporting", |db: &Db| {
            // One read transaction: everything below is the store as of one commit.
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let identity = self.identity_in(&txn)?;
            let mut teks = 0u64;
            {
                let table = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
                let mut previous: Option<Vec<u8>> = None;
                for item in table.iter().map_err(|e| self.err("scan", e))? {
                    let (k, v) = item.map_err(|e| self.err("read", e))?;
                    let key = k.value();
                    if previous.as_deref().is_some_and(|p| key <= p) {
                        return Err(TdeError::corrupt(
                            "key store",
                            self.loc(),
                            "a scan of the table keys went backwards; the index is damaged. \
                             Restore the file from a backup",
                        ));
                    }
                    let rec: TekRecord = self.decode(key, v.value())?;
                    visit(ExportItem::Tek {
                        key,
                        value: v.value(),
                        record: &rec,
                    })?;
                    previous = Some(key.to_vec());
                    teks += 1;
                }
            }
            let mut journal = 0u64;
            let table = txn
                .open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
            for item in table.iter().map_err(|e| self.err("journal scan", e))? {
                let (k, v) = item.map_err(|e| self.err("journal read", e))?;
                let value = self.unframe_journal(k.value(), v.value())?;
                visit(ExportItem::Journal {
                    name: k.value(),
                    value: &value,
                })?;
                journal += 1;
            }
            Ok(ExportSummary::new(identity, teks, journal))
        })
    }

    pub(crate) fn import_inner(
        &self,
        identity: StoreIdentity,
        next: &mut dyn FnMut() -> Result<Option<ImportItem>>,
    ) -> Result<u64> {
        let loc = self.loc();
        self.with_write_db("importing a backup", |db| {
            let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
            self.bump_generation(&txn)?;
            let mut count = 0u64;
            let mut authenticated: Option<bool> = None;
            {
                let mut teks = txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
                let mut journal = txn
                    .open_table(JOURNAL)
                    .map_err(|e| self.err("open journal", e))?;
                let own_only = journal
                    .iter()
                    .map_err(|e| self.err("journal scan", e))?
                    .all(|item| item.is_ok_and(|(k, _)| k.value() == STORE_ID_ENTRY));
                if teks.len().map_err(|e| self.err("count", e))? != 0 || !own_only {
                    return Err(TdeError::AlreadyExists {
                        key: format!(
                            "table keys or journal entries in the key store {loc}, which a \
                             restore only loads into an empty store"
                        ),
                    });
                }
                journal
                    .insert(
                        STORE_ID_ENTRY,
                        frame_journal(STORE_ID_ENTRY, &identity.id).as_slice(),
                    )
                    .map_err(|e| self.err("write store id", e))?;
                while let Some(item) = next()? {
                    match item {
                        ImportItem::Tek { key, value } => {
                            let id = record::parse_tek_key(&key, &loc)?;
                            // The checksum and layout are checked now; the authentication code
                            // needs the integrity key, which the key manager loads at start.
                            record::decode(&id, &value, &format!("{loc} ({id})"))?;
                            let is_auth =
                                value.first() == Some(&record::AUTHENTICATED_RECORD_VERSION);
                            if *authenticated.get_or_insert(is_auth) != is_auth {
                                return Err(TdeError::corrupt(
                                    "key store import",
                                    format!("{loc} ({id})"),
                                    "it mixes authenticated and unauthenticated records; the \
                                     backup was assembled from two stores",
                                ));
                            }
                            teks.insert(key.as_slice(), value.as_slice())
                                .map_err(|e| self.err("insert", e))?;
                            count += 1;
                        }
                        ImportItem::Journal { name, value } => {
                            if name == STORE_ID_ENTRY && value.as_slice() != identity.id {
                                return Err(TdeError::corrupt(
                                    "key store import",
                                    loc.clone(),
                                    "its store id entry differs from the identity it was \
                                     exported with",
                                ));
                            }
                            journal
                                .insert(name.as_str(), frame_journal(&name, &value).as_slice())
                                .map_err(|e| self.err("journal write", e))?;
                        }
                        other => {
                            return Err(TdeError::Unsupported {
                                what: format!("importing {other:?}"),
                                hint: "upgrade heliosdb-tde-keystore".into(),
                            });
                        }
                    }
                }
                let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
                meta.insert(KEY_GENERATION, identity.generation)
                    .map_err(|e| self.err("write key generation", e))?;
                if authenticated == Some(true) {
                    meta.insert(AUTHENTICATED, 1)
                        .map_err(|e| self.err("write meta", e))?;
                }
            }
            txn.commit().map_err(|e| self.err("commit", e))?;
            if authenticated == Some(true) {
                self.authenticated.store(true, Ordering::SeqCst);
            }
            Ok(count)
        })
    }
}

/// A fresh random store id.
pub(crate) fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| TdeError::ProviderUnavailable {
        provider: "OS random number generator".into(),
        reason: e.to_string(),
        retryable: true,
    })?;
    Ok(id)
}
