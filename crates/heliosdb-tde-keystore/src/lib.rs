//! The durable TEK store of heliosdb-security, on redb.
//!
//! [`RedbKeyStore`] implements [`heliosdb_tde_core::KeyStore`] in one redb file
//! (`tek-store.redb` under the configured `key_storage_path`). redb is an embedded ACID key-value
//! store in pure Rust: a write transaction is durable once `commit` returns (it fsyncs with
//! checksummed pages), and a crash leaves the last committed state.
//!
//! Tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `teks` | table id, 0x00, TEK version (u32 BE) | a [`record`] (metadata and wrapped TEK) |
//! | `journal` | name | opaque bytes (rotation state, counter reservations) |
//! | `meta` | name | u64 (`format_version`) |
//!
//! Every call runs synchronously on the calling thread: operations are local and short (a
//! commit is one fsync). Callers that cannot block use `spawn_blocking` around a batch.

pub mod record;

use async_trait::async_trait;
use heliosdb_tde_core::{
    KeyStore, Result, StoreBatch, TableId, TdeError, TekId, TekRecord, store::StoreOp,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const TEKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("teks");
const JOURNAL: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("journal");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The store's own format version (tables and record layout).
pub const STORE_FORMAT_VERSION: u64 = 1;
/// The file name of the store inside `key_storage_path`.
pub const STORE_FILE_NAME: &str = "tek-store.redb";

/// A key store in one redb file.
pub struct RedbKeyStore {
    /// Always `Some` until drop; see [`Drop`].
    db: Option<Database>,
    path: PathBuf,
    /// Set when the storage engine panicked on damaged data; the store then refuses all work.
    damaged: AtomicBool,
}

impl Drop for RedbKeyStore {
    fn drop(&mut self) {
        let db = self.db.take();
        if self.damaged.load(Ordering::SeqCst) {
            // The engine's in-memory state is unreliable after it hit damaged data, and its own
            // drop may panic again; leak it rather than risk an abort. This happens only after a
            // damaged file was reported to the caller.
            std::mem::forget(db);
        } else {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
    }
}

impl fmt::Debug for RedbKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbKeyStore {
    /// Opens (or creates) the store in directory `dir`, creating the directory with mode 0700.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        Self::open(&dir.join(STORE_FILE_NAME))
    }

    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let existed = path.exists();
        // redb validates its header and checksums on open; a damaged file must surface as an
        // error naming the file, so any panic inside the library is caught here too.
        let opened = catch_unwind(|| Database::create(&path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(&path, existed, &e.to_string())),
            Err(_) => {
                return Err(open_error(
                    &path,
                    existed,
                    "the storage engine failed on damaged data",
                ));
            }
        };
        let store = Self {
            db: Some(db),
            path,
            damaged: AtomicBool::new(false),
        };
        store.init()?;
        restrict_file(&store.path)?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn loc(&self) -> String {
        self.path.display().to_string()
    }

    fn err(&self, what: &str, e: impl fmt::Display) -> TdeError {
        storage_error(&self.path, what, e)
    }

    /// Runs `f` on the database, turning a panic of the storage engine (which it raises on
    /// some kinds of damaged pages) into a [`TdeError::Corrupt`] naming the file.
    fn with_db<T>(&self, what: &str, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let damaged = || {
            TdeError::corrupt(
                "key store",
                self.loc(),
                format!(
                    "the storage engine found damaged data while {what}. Restore the file from \
                     a backup; do not delete it, or every table key in it is lost"
                ),
            )
        };
        if self.damaged.load(Ordering::SeqCst) {
            return Err(damaged());
        }
        let Some(db) = self.db.as_ref() else {
            return Err(damaged());
        };
        match catch_unwind(AssertUnwindSafe(|| f(db))) {
            Ok(r) => r,
            Err(_) => {
                self.damaged.store(true, Ordering::SeqCst);
                Err(damaged())
            }
        }
    }

    fn init(&self) -> Result<()> {
        self.with_db("initialising", |db| self.init_inner(db))
    }

    fn init_inner(&self, db: &Database) -> Result<()> {
        let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
            let current = meta
                .get("format_version")
                .map_err(|e| self.err("read format version", e))?
                .map(|v| v.value());
            match current {
                None => {
                    meta.insert("format_version", STORE_FORMAT_VERSION)
                        .map_err(|e| self.err("write format version", e))?;
                }
                Some(v) if v == STORE_FORMAT_VERSION => {}
                Some(v) => {
                    return Err(TdeError::corrupt(
                        "key store",
                        self.loc(),
                        format!(
                            "store format version {v} is not supported by this build (it reads \
                             version {STORE_FORMAT_VERSION}); upgrade HeliosDB"
                        ),
                    ));
                }
            }
            txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
            txn.open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<TekRecord> {
        let id = record::parse_tek_key(key, &self.loc())?;
        record::decode(&id, value, &format!("{} ({id})", self.loc()))
    }

    fn read_range(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Vec<TekRecord>> {
        self.with_db("reading keys", |db| {
            self.read_range_inner(db, lo, hi, limit)
        })
    }

    fn read_range_inner(
        &self,
        db: &Database,
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
        let mut out = Vec::new();
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err("read", e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Applies a batch synchronously (what [`KeyStore::apply`] does).
    pub fn apply_blocking(&self, batch: StoreBatch) -> Result<()> {
        self.with_db("writing", |db| self.apply_inner(db, batch))
    }

    fn apply_inner(&self, db: &Database, batch: StoreBatch) -> Result<()> {
        let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
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
                        teks.insert(key.as_slice(), record::encode(&rec).as_slice())
                            .map_err(|e| self.err("insert", e))?;
                    }
                    StoreOp::Upsert(rec) => {
                        let key = record::tek_key(&rec.id);
                        teks.insert(key.as_slice(), record::encode(&rec).as_slice())
                            .map_err(|e| self.err("upsert", e))?;
                    }
                    StoreOp::PutJournal { name, value } => {
                        journal
                            .insert(name.as_str(), value.as_slice())
                            .map_err(|e| self.err("journal write", e))?;
                    }
                    StoreOp::DeleteJournal { name } => {
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
                        let current = journal
                            .get(name.as_str())
                            .map_err(|e| self.err("journal read", e))?
                            .map(|v| v.value().to_vec());
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
}

impl RedbKeyStore {
    fn read_in(
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

    fn write_in(&self, teks: &mut redb::Table<'_, &[u8], &[u8]>, rec: &TekRecord) -> Result<()> {
        let key = record::tek_key(&rec.id);
        teks.insert(key.as_slice(), record::encode(rec).as_slice())
            .map_err(|e| self.err("write", e))?;
        Ok(())
    }
}

fn open_error(path: &Path, existed: bool, detail: &str) -> TdeError {
    if detail.contains("Permission denied") {
        return TdeError::io(
            path,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
    }
    if !existed {
        return storage_error(path, "create", detail);
    }
    TdeError::corrupt(
        "key store",
        path.display().to_string(),
        format!(
            "the file cannot be opened as a HeliosDB key store ({detail}). If it was damaged, \
             restore it from a backup; do not delete it, or every table key in it is lost"
        ),
    )
}

fn storage_error(path: &Path, what: &str, e: impl fmt::Display) -> TdeError {
    let text = e.to_string();
    if text.contains("corrupt") || text.contains("Corrupt") {
        return TdeError::corrupt("key store", path.display().to_string(), text);
    }
    TdeError::ProviderUnavailable {
        provider: format!("key store {}", path.display()),
        reason: format!("{what} failed: {text}"),
        retryable: false,
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| TdeError::io(dir, e))
}

/// Makes the store file owner-only (0600).
fn restrict_file(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| TdeError::io(path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| TdeError::io(path, e))?;
        }
    }
    Ok(())
}

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
            t.len().map_err(|e| self.err("count", e))
        })
    }

    async fn get_journal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.with_db("reading the journal", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let t = txn
                .open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
            Ok(t.get(name)
                .map_err(|e| self.err("journal read", e))?
                .map(|v| v.value().to_vec()))
        })
    }

    fn location(&self) -> String {
        self.loc()
    }
}
