//! The key store trait: durable storage for wrapped TEKs, their metadata and the rotation
//! journal.
//!
//! A store never sees a TEK in the clear. Every mutation goes through [`KeyStore::apply`] with a
//! [`StoreBatch`], which the implementation must commit atomically and durably: after `apply`
//! returns, the whole batch survives a crash; if it does not return, none of it is visible.

use crate::envelope::WrappedTek;
use crate::error::{Result, TdeError};
use crate::ids::{KeyId, MekRef, TableId, TekId};
use crate::metadata::KeyMetadata;
use crate::metadata::KeyState;
use async_trait::async_trait;
use std::fmt;

/// A stored TEK: its metadata and its wrapped form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TekRecord {
    /// Which TEK.
    pub id: TekId,
    /// Its metadata; `metadata.key_id` is `KeyId::Table(id)`.
    pub metadata: KeyMetadata,
    /// The TEK wrapped under its current MEK version.
    pub wrapped: WrappedTek,
    /// During an MEK rotation's dual-encryption period: the TEK wrapped under the previous MEK
    /// version, kept so that the rotation can be rolled back.
    pub previous_wrap: Option<WrappedTek>,
}

impl TekRecord {
    /// Builds a record, checking that the metadata names the same TEK.
    pub fn new(id: TekId, metadata: KeyMetadata, wrapped: WrappedTek) -> Result<Self> {
        if metadata.key_id != KeyId::Table(id.clone()) {
            return Err(TdeError::corrupt(
                "TEK record",
                id.to_string(),
                format!("metadata names {} instead", metadata.key_id),
            ));
        }
        Ok(Self {
            id,
            metadata,
            wrapped,
            previous_wrap: None,
        })
    }
}

/// One mutation inside a [`StoreBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// Adds a TEK; the whole batch fails with [`TdeError::AlreadyExists`] if it exists.
    Insert(TekRecord),
    /// Adds or replaces a TEK.
    Upsert(TekRecord),
    /// Sets a journal entry (rotation state, counter reservations...).
    PutJournal {
        /// The entry's name.
        name: String,
        /// Its value, opaque to the store.
        value: Vec<u8>,
    },
    /// Removes a journal entry if present.
    DeleteJournal {
        /// The entry's name.
        name: String,
    },
    /// Replaces a TEK's wrapped form, read-modify-write inside the transaction so that no
    /// concurrent metadata change is lost. Skipped (not an error) when the TEK is missing or is
    /// no longer wrapped under `expect`: another writer got there first.
    Rewrap {
        /// Which TEK.
        id: TekId,
        /// The MEK version the current wrapped form must be under.
        expect: MekRef,
        /// The new wrapped form; `metadata.wrapped_by` follows it.
        wrapped: WrappedTek,
        /// Keep the current wrapped form as `previous_wrap` (dual-encryption period), or clear
        /// `previous_wrap`.
        keep_previous: bool,
    },
    /// Drops the kept `previous_wrap` of a TEK (the dual-encryption period is over).
    ClearPreviousWrap {
        /// Which TEK.
        id: TekId,
    },
    /// Moves a TEK to another lifecycle state (read-modify-write; the lifecycle rules apply and
    /// a refused transition fails the batch).
    SetState {
        /// Which TEK.
        id: TekId,
        /// The new state.
        state: KeyState,
    },
    /// Raises a TEK's recorded encryption count to at least `at_least` (nonce-budget
    /// reservations; never lowers it).
    ReserveEncryptions {
        /// Which TEK.
        id: TekId,
        /// The count to reserve up to.
        at_least: u64,
    },
    /// Fails the whole batch with [`journal_conflict`] unless the journal entry `name`
    /// currently holds exactly `expect` (`None`: the entry must be absent). Placed before a
    /// `PutJournal` or `DeleteJournal` of the same name, it makes that write a compare-and-set.
    CheckJournal {
        /// The entry's name.
        name: String,
        /// The value it must hold, or `None` if it must not exist.
        expect: Option<Vec<u8>>,
    },
}

/// The `phase` of the [`TdeError::RotationPhase`] a store returns when a
/// [`StoreOp::CheckJournal`] finds another value (see [`journal_conflict`]).
pub const JOURNAL_CHANGED: &str = "changed since it was read";

/// The error of a failed [`StoreOp::CheckJournal`]: another writer changed the entry `name`
/// after the caller read it. Nothing of the batch was written.
pub fn journal_conflict(name: &str) -> TdeError {
    TdeError::RotationPhase {
        mek: format!("journal entry {name}"),
        phase: JOURNAL_CHANGED.into(),
        operation: "write the journal entry".into(),
        hint: "another process or task changed it meanwhile and nothing was written; check \
               `heliosdb-cli security mek rotation-status` and run the command again"
            .into(),
    }
}

/// A set of mutations committed as one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreBatch {
    /// The mutations, applied in order.
    pub ops: Vec<StoreOp>,
}

impl StoreBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert of a new TEK.
    pub fn insert(mut self, record: TekRecord) -> Self {
        self.ops.push(StoreOp::Insert(record));
        self
    }

    /// Adds an insert-or-replace of a TEK.
    pub fn upsert(mut self, record: TekRecord) -> Self {
        self.ops.push(StoreOp::Upsert(record));
        self
    }

    /// Adds a journal write.
    pub fn put_journal(mut self, name: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(StoreOp::PutJournal {
            name: name.into(),
            value,
        });
        self
    }

    /// Adds a journal delete.
    pub fn delete_journal(mut self, name: impl Into<String>) -> Self {
        self.ops.push(StoreOp::DeleteJournal { name: name.into() });
        self
    }

    /// Adds a compare-and-set check of a journal entry (see [`StoreOp::CheckJournal`]).
    pub fn check_journal(mut self, name: impl Into<String>, expect: Option<Vec<u8>>) -> Self {
        self.ops.push(StoreOp::CheckJournal {
            name: name.into(),
            expect,
        });
        self
    }

    /// Adds an operation.
    pub fn push(mut self, op: StoreOp) -> Self {
        self.ops.push(op);
        self
    }

    /// Whether the batch has no mutations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether the batch changes key state, and so raises the store's key generation: every
    /// batch does except one that only touches journal entries under [`AUDIT_JOURNAL_PREFIX`]
    /// (the audit log's checkpoint is not key state; a backup taken before it moved is not
    /// stale).
    pub fn changes_keys(&self) -> bool {
        !self.ops.iter().all(|op| match op {
            StoreOp::PutJournal { name, .. }
            | StoreOp::DeleteJournal { name }
            | StoreOp::CheckJournal { name, .. } => name.starts_with(AUDIT_JOURNAL_PREFIX),
            _ => false,
        })
    }
}

/// Journal entries under this prefix belong to the audit log (its checkpoint, `audit/head`);
/// writing them does not change the store's key generation ([`StoreBatch::changes_keys`]).
pub const AUDIT_JOURNAL_PREFIX: &str = "audit/";

/// Durable storage for wrapped TEKs.
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Commits a batch atomically and durably.
    async fn apply(&self, batch: StoreBatch) -> Result<()>;

    /// One TEK version, if stored.
    async fn get_tek(&self, id: &TekId) -> Result<Option<TekRecord>>;

    /// The highest stored version of a table's TEK, if any.
    async fn latest_tek(&self, table: &TableId) -> Result<Option<TekRecord>>;

    /// Every stored version of one table's TEK, oldest first.
    async fn table_teks(&self, table: &TableId) -> Result<Vec<TekRecord>>;

    /// Up to `limit` TEKs in id order, starting after `after` (or from the first). Used to walk
    /// a large store in pages, for example by a rotation cursor; callers walk it through
    /// [`KeyStoreExt::tek_pages`], which keeps the cursor and checks that every page moves
    /// forward.
    async fn scan_teks(&self, after: Option<&TekId>, limit: usize) -> Result<Vec<TekRecord>>;

    /// How many TEK versions are stored.
    async fn count_teks(&self) -> Result<u64>;

    /// A journal entry, if present.
    async fn get_journal(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Reserves the next block of encryptions of TEK `id` in one transaction: reads its
    /// recorded encryption count `c`, raises it to `min(c + block, limit)` and returns
    /// `c..min(c + block, limit)`. Two callers, in one process or several, never receive
    /// overlapping blocks. The range is empty when the count has reached `limit`.
    async fn reserve_encryptions(
        &self,
        id: &TekId,
        block: u64,
        limit: u64,
    ) -> Result<std::ops::Range<u64>>;

    /// Gives the store its integrity key: the key that authenticates every record's state,
    /// counters, reservations and wrapped forms, so that only a holder of the MEK (which wraps
    /// the integrity key, as the key check value) can produce a record the store accepts. From
    /// then on every record read is verified, and a record that fails is
    /// [`TdeError::Corrupt`] and never used.
    ///
    /// With `key_check` (journal entry name and value: the integrity key wrapped under an MEK
    /// version), the store writes that entry and, if its records are not yet authenticated
    /// (written before this existed), authenticates them all, in one transaction. Without it,
    /// the key came from an existing key check value, so the store must already be
    /// authenticated: if it is not, the flag was cleared behind its back, which is corruption.
    async fn set_integrity_key(
        &self,
        key: crate::KeyBytes,
        key_check: Option<(String, Vec<u8>)>,
    ) -> Result<()>;

    /// Where the store lives, for messages (a path, a URL). Never a secret.
    fn location(&self) -> String;

    /// The store's identity and key generation (see [`StoreIdentity`]). A store that cannot
    /// tell answers [`TdeError::Unsupported`].
    async fn identity(&self) -> Result<StoreIdentity> {
        Err(unsupported(self, "report its identity"))
    }

    /// Visits everything the store holds as of one read transaction, for a backup: every TEK
    /// record in id order, then every journal entry in name order, and returns the identity as
    /// of that transaction with the counts. Blocking (call it from a blocking thread); memory
    /// stays bounded whatever the number of keys, because each item is handed to `visit` and
    /// dropped. An error from `visit` stops the walk and is returned as is.
    fn export_blocking(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<()>,
    ) -> Result<ExportSummary> {
        let _ = visit;
        Err(unsupported(self, "export its contents"))
    }

    /// Loads an export into this store, which must hold no TEK and no journal entry but its own
    /// identity, in one transaction: either everything is stored (with `identity` as the
    /// store's identity and generation) or nothing is. `next` yields the items in the order
    /// [`KeyStore::export_blocking`] gave them; each record is checked as it is read. Returns
    /// the number of TEK records stored. Blocking.
    fn import_blocking(
        &self,
        identity: StoreIdentity,
        next: &mut dyn FnMut() -> Result<Option<ImportItem>>,
    ) -> Result<u64> {
        let _ = (identity, next);
        Err(unsupported(self, "import a backup"))
    }
}

fn unsupported<S: KeyStore + ?Sized>(store: &S, what: &str) -> TdeError {
    TdeError::Unsupported {
        what: format!("the key store {} cannot {what}", store.location()),
        hint: "use the redb key store (heliosdb-tde-keystore)".into(),
    }
}

/// Who a store is and how far its keys have changed: a random 128-bit id made with the store,
/// and a generation that every [`KeyStore::apply`] (every change of a key or of the journal)
/// raises. Nonce reservations do not change it: they change no key, and a backup that predates
/// them is made safe by the rotation a restore performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreIdentity {
    /// The store id.
    pub id: [u8; 16],
    /// The key generation.
    pub generation: u64,
}

impl StoreIdentity {
    /// An identity.
    pub fn new(id: [u8; 16], generation: u64) -> Self {
        Self { id, generation }
    }

    /// The id as 32 lowercase hex digits.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits.
    pub fn parse_id(hex: &str) -> Option<[u8; 16]> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(id)
    }
}

/// One item of a [`KeyStore::export_blocking`] walk.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExportItem<'a> {
    /// A TEK record: its store key and stored bytes (the store's documented record encoding),
    /// and the record they decode to.
    Tek {
        /// The store key.
        key: &'a [u8],
        /// The stored record bytes.
        value: &'a [u8],
        /// The decoded record.
        record: &'a TekRecord,
    },
    /// A journal entry (its value as [`KeyStore::get_journal`] returns it).
    Journal {
        /// The entry's name.
        name: &'a str,
        /// Its value.
        value: &'a [u8],
    },
}

/// An item for [`KeyStore::import_blocking`], as exported.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportItem {
    /// A TEK record: its store key and stored bytes.
    Tek {
        /// The store key.
        key: Vec<u8>,
        /// The stored record bytes.
        value: Vec<u8>,
    },
    /// A journal entry.
    Journal {
        /// The entry's name.
        name: String,
        /// Its value.
        value: Vec<u8>,
    },
}

/// What a [`KeyStore::export_blocking`] walk saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// The identity as of the walk's read transaction.
    pub identity: StoreIdentity,
    /// TEK records visited.
    pub teks: u64,
    /// Journal entries visited.
    pub journal: u64,
}

impl ExportSummary {
    /// A summary.
    pub fn new(identity: StoreIdentity, teks: u64, journal: u64) -> Self {
        Self {
            identity,
            teks,
            journal,
        }
    }
}

/// Checks that a page returned by [`KeyStore::scan_teks`] after `cursor` moves strictly forward
/// (every id greater than the cursor and than the id before it), and returns its last id, the
/// next cursor. A page that does not advance is a damaged index: walking it again would loop
/// forever, so it is reported as [`TdeError::Corrupt`].
pub fn next_scan_cursor(
    location: &str,
    cursor: Option<&TekId>,
    page: &[TekRecord],
) -> Result<Option<TekId>> {
    let mut previous = cursor;
    for r in page {
        if previous.is_some_and(|p| r.id <= *p) {
            return Err(TdeError::corrupt(
                "key store",
                location,
                format!(
                    "a scan of the table keys did not move forward ({} after {}); the index is \
                     damaged",
                    r.id,
                    previous.map(|p| p.to_string()).unwrap_or_default()
                ),
            ));
        }
        previous = Some(&r.id);
    }
    Ok(page.last().map(|r| r.id.clone()))
}

/// Paging over [`KeyStore::scan_teks`] for every store, `dyn KeyStore` included: the cursor is
/// handled once, here.
pub trait KeyStoreExt: KeyStore {
    /// The stored TEKs in id order, `page_size` (at least 1) at a time, starting after `after`
    /// (or from the first). The cursor after each page is [`TekPages::cursor`], for callers that
    /// persist it (a rotation journal) to resume from there. A scan that does not move forward
    /// (a damaged index) is [`TdeError::Corrupt`] instead of an endless loop.
    ///
    /// `store.tek_pages(None, n).for_each(|page| ...)` visits every page.
    fn tek_pages(&self, after: Option<TekId>, page_size: usize) -> TekPages<'_, Self> {
        TekPages {
            store: self,
            cursor: after,
            page_size: page_size.max(1),
            finished: false,
        }
    }
}

impl<S: KeyStore + ?Sized> KeyStoreExt for S {}

/// A walk over a store's TEKs in pages (see [`KeyStoreExt::tek_pages`]).
#[derive(Debug)]
pub struct TekPages<'a, S: ?Sized> {
    store: &'a S,
    cursor: Option<TekId>,
    page_size: usize,
    finished: bool,
}

impl<S: KeyStore + ?Sized> TekPages<'_, S> {
    /// The next page, or `None` once every TEK was returned. A page that does not move past
    /// the cursor is [`TdeError::Corrupt`] (see [`next_scan_cursor`]).
    pub async fn next_page(&mut self) -> Result<Option<Vec<TekRecord>>> {
        if self.finished {
            return Ok(None);
        }
        let page = self
            .store
            .scan_teks(self.cursor.as_ref(), self.page_size)
            .await?;
        match next_scan_cursor(&self.store.location(), self.cursor.as_ref(), &page)? {
            Some(next) => {
                self.cursor = Some(next);
                Ok(Some(page))
            }
            None => {
                self.finished = true;
                Ok(None)
            }
        }
    }

    /// The id of the last TEK returned so far (the starting cursor before the first page):
    /// where a walk resumed later continues.
    pub fn cursor(&self) -> Option<&TekId> {
        self.cursor.as_ref()
    }

    /// Calls `f` on every remaining page.
    pub async fn for_each<F>(mut self, mut f: F) -> Result<()>
    where
        F: FnMut(Vec<TekRecord>) -> Result<()>,
    {
        while let Some(page) = self.next_page().await? {
            f(page)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::{EncryptionAlgorithm, MekRef, ProviderKind, TableId};

    fn record(id: &str) -> TekRecord {
        let id: TekId = id.parse().unwrap();
        let mek: MekRef = "m@v1".parse().unwrap();
        let meta = KeyMetadata::new_active(
            KeyId::Table(id.clone()),
            EncryptionAlgorithm::Aes256Gcm,
            Some(mek.clone()),
        );
        let wrapped = WrappedTek::new(
            EncryptionAlgorithm::Aes256Gcm,
            ProviderKind::InMemory,
            mek,
            vec![0; 8],
        );
        TekRecord::new(id, meta, wrapped).unwrap()
    }

    /// A store over a fixed list; `stuck` makes every scan return the first record again (a
    /// damaged index).
    #[derive(Debug)]
    struct ListStore {
        records: Vec<TekRecord>,
        stuck: bool,
    }

    #[async_trait]
    impl KeyStore for ListStore {
        async fn apply(&self, _: StoreBatch) -> Result<()> {
            Ok(())
        }
        async fn get_tek(&self, _: &TekId) -> Result<Option<TekRecord>> {
            Ok(None)
        }
        async fn latest_tek(&self, _: &TableId) -> Result<Option<TekRecord>> {
            Ok(None)
        }
        async fn table_teks(&self, _: &TableId) -> Result<Vec<TekRecord>> {
            Ok(Vec::new())
        }
        async fn scan_teks(&self, after: Option<&TekId>, limit: usize) -> Result<Vec<TekRecord>> {
            if self.stuck {
                return Ok(self.records[..1].to_vec());
            }
            Ok(self
                .records
                .iter()
                .filter(|r| after.is_none_or(|a| r.id > *a))
                .take(limit)
                .cloned()
                .collect())
        }
        async fn count_teks(&self) -> Result<u64> {
            Ok(self.records.len() as u64)
        }
        async fn get_journal(&self, _: &str) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        async fn reserve_encryptions(
            &self,
            _: &TekId,
            _: u64,
            _: u64,
        ) -> Result<std::ops::Range<u64>> {
            Ok(0..0)
        }
        async fn set_integrity_key(
            &self,
            _: crate::KeyBytes,
            _: Option<(String, Vec<u8>)>,
        ) -> Result<()> {
            Ok(())
        }
        fn location(&self) -> String {
            "list".into()
        }
    }

    fn store(stuck: bool) -> ListStore {
        ListStore {
            records: ["a@v1", "a@v2", "b@v1", "c@v1", "d@v1"]
                .iter()
                .map(|id| record(id))
                .collect(),
            stuck,
        }
    }

    #[tokio::test]
    async fn pages_visit_every_tek_once_and_resume_from_the_cursor() {
        let s: &dyn KeyStore = &store(false);
        let mut pages = s.tek_pages(None, 2);
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            sizes.push(page.len());
            seen.extend(page.into_iter().map(|r| r.id.to_string()));
            assert_eq!(
                pages.cursor().map(ToString::to_string),
                seen.last().cloned()
            );
        }
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(seen, ["a@v1", "a@v2", "b@v1", "c@v1", "d@v1"]);
        assert!(pages.next_page().await.unwrap().is_none(), "stays finished");

        let mut rest = Vec::new();
        s.tek_pages(Some("b@v1".parse().unwrap()), 0)
            .for_each(|page| {
                assert_eq!(page.len(), 1, "a page size of 0 is 1");
                rest.extend(page.into_iter().map(|r| r.id.to_string()));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(rest, ["c@v1", "d@v1"]);
    }

    #[tokio::test]
    async fn a_scan_that_does_not_move_forward_is_corruption_not_a_loop() {
        let s = store(true);
        let mut pages = s.tek_pages(None, 2);
        assert!(pages.next_page().await.unwrap().is_some());
        let e = pages.next_page().await.unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("did not move forward"), "{e}");
    }
}
