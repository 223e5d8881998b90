#![doc = include_str!("../README.md")]

pub mod record;

use async_trait::async_trait;
use heliosdb_tde_core::{
    KeyBytes, KeyStore, Result, StoreBatch, TableId, TdeError, TekId, TekRecord, store::StoreOp,
};
use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

const TEKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("teks");
const JOURNAL: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("journal");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The `meta` entry counting commits, so that a handle reopened for writing can tell whether
/// another process wrote in between.
const GENERATION: &str = "generation";
/// The `meta` entry set (to 1) once every record is authenticated under the integrity key.
const AUTHENTICATED: &str = "authenticated";

/// The store's own format version (tables and record layout).
pub const STORE_FORMAT_VERSION: u64 = 2;
/// The oldest store format this build reads (format 1: journal entries without a checksum). A
/// format 1 store is upgraded at its first write.
pub const OLDEST_STORE_FORMAT: u64 = 1;
/// The file name of the store inside `key_storage_path`.
pub const STORE_FILE_NAME: &str = "tek-store.redb";
/// The journal entry holding the store's random identity (16 bytes), written at creation.
pub const STORE_ID_ENTRY: &str = "store/id";

/// The open database: writable, or opened read-only (which never modifies the file).
enum Db {
    ReadWrite(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> std::result::Result<ReadTransaction, redb::TransactionError> {
        match self {
            Db::ReadWrite(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
    }
}

/// How [`RedbKeyStore`] opens its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenMode {
    /// The file must exist and be a key store; it is opened for writing.
    Existing,
    /// The file must not exist; a new, empty store is created (an explicit first start).
    CreateNew,
    /// Open the file if it exists, else create it (tests and tools).
    OpenOrCreate,
    /// The file must exist; it is opened read-only and never modified.
    ReadOnly,
}

/// A key store in one redb file.
///
/// A store opened for writing starts out read-only and switches to writing at its first
/// write: redb changes the file when it is opened for writing, even if nothing is committed,
/// so a command that only reads, or fails before writing, leaves the file byte-identical.
pub struct RedbKeyStore {
    /// Always `Some` until drop; see [`Drop`].
    db: RwLock<Option<Db>>,
    /// Whether the first write may reopen the file for writing.
    writable: bool,
    /// The store's format version (1 or 2); from 2 on, journal entries carry a checksum.
    format: std::sync::atomic::AtomicU64,
    /// The store integrity key, once the key manager has unwrapped it (see
    /// [`KeyStore::set_integrity_key`]).
    integrity_key: RwLock<Option<KeyBytes>>,
    /// Whether every record of the store is authenticated (`meta` entry `authenticated`).
    authenticated: AtomicBool,
    path: PathBuf,
    /// Set when the storage engine panicked on damaged data; the store then refuses all work.
    damaged: AtomicBool,
}

impl Drop for RedbKeyStore {
    fn drop(&mut self) {
        let db = match self.db.get_mut() {
            Ok(db) => db.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
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
    /// Opens the store in directory `dir`, creating the directory (mode 0700) and the store if
    /// they do not exist. For tests and tools: a server decides between
    /// [`RedbKeyStore::open_existing`] and [`RedbKeyStore::create_new`].
    pub fn open_dir(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        Self::open(&dir.join(STORE_FILE_NAME))
    }

    /// Opens the store file at `path`, creating it if it does not exist. An existing file that
    /// is empty, damaged or not a key store is an error; it is never replaced.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, OpenMode::OpenOrCreate)
    }

    /// Opens the existing store file at `path` for writing. A missing, empty, damaged or
    /// foreign file is an error naming the path; nothing is created.
    pub fn open_existing(path: &Path) -> Result<Self> {
        Self::open_with(path, OpenMode::Existing)
    }

    /// Creates the directory `dir` (mode 0700) if needed and a new, empty store in it (an
    /// explicit first start). Fails if the store file exists.
    pub fn create_new_in_dir(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        Self::create_new(&dir.join(STORE_FILE_NAME))
    }

    /// Creates a new, empty store at `path` (an explicit first start). Fails if a file exists.
    pub fn create_new(path: &Path) -> Result<Self> {
        Self::open_with(path, OpenMode::CreateNew)
    }

    /// Opens the existing store file at `path` read-only: the file is never modified, and
    /// [`KeyStore::apply`] fails. For read-only commands.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        Self::open_with(path, OpenMode::ReadOnly)
    }

    fn open_with(path: &Path, mode: OpenMode) -> Result<Self> {
        let path = path.to_path_buf();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TdeError::io(&path, e)),
        };
        let existed = meta.is_some();
        match (&meta, mode) {
            (None, OpenMode::Existing | OpenMode::ReadOnly) => {
                return Err(TdeError::KeyNotFound {
                    key: format!("key store {}", path.display()),
                    hint: "the key store file does not exist; check key_storage_path, or restore \
                           the file from a backup"
                        .into(),
                });
            }
            (Some(_), OpenMode::CreateNew) => {
                return Err(TdeError::AlreadyExists {
                    key: format!("key store {}", path.display()),
                });
            }
            (Some(m), _) if !m.is_file() => {
                return Err(TdeError::corrupt(
                    "key store",
                    path.display().to_string(),
                    "it is not a regular file; point key_storage_path at the directory that \
                     holds the key store",
                ));
            }
            (Some(m), _) if m.len() == 0 => {
                return Err(TdeError::corrupt(
                    "key store",
                    path.display().to_string(),
                    "the file is empty (0 bytes); restore it from a backup. It is not re-created, \
                     because an empty store would hide every table key",
                ));
            }
            _ => {}
        }
        // redb validates its header and checksums on open; a damaged file must surface as an
        // error naming the file, so any panic inside the library is caught here too.
        let opened = catch_unwind(|| {
            if !existed {
                return Database::create(&path).map(Db::ReadWrite);
            }
            // Writers too start read-only; see the type's documentation.
            match ReadOnlyDatabase::open(&path) {
                // After an unclean shutdown (a crash, kill -9) redb must repair the file
                // before anyone reads it, which writes: a writer does it now.
                Err(DatabaseError::RepairAborted) if mode != OpenMode::ReadOnly => {
                    Database::open(&path).map(Db::ReadWrite)
                }
                other => other.map(Db::ReadOnly),
            }
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(&path, existed, e)),
            Err(_) => {
                return Err(open_error_text(
                    &path,
                    "the storage engine failed on damaged data",
                ));
            }
        };
        let store = Self {
            db: RwLock::new(Some(db)),
            writable: mode != OpenMode::ReadOnly,
            format: std::sync::atomic::AtomicU64::new(STORE_FORMAT_VERSION),
            integrity_key: RwLock::new(None),
            authenticated: AtomicBool::new(false),
            path,
            damaged: AtomicBool::new(false),
        };
        if existed {
            store.check_format()?;
        } else {
            store.init_new()?;
            restrict_file(&store.path)?;
        }
        Ok(store)
    }

    /// An empty, read-only store that exists only in memory, standing for the store that
    /// `path` would be once created: what read-only commands see before the first start.
    pub fn empty_read_only(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let db = catch_unwind(|| {
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
        });
        let db = match db {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(storage_error(&path, "create in memory", e)),
            Err(_) => {
                return Err(TdeError::ProviderUnavailable {
                    provider: format!("key store {}", path.display()),
                    reason: "the storage engine failed to create an empty store in memory".into(),
                    retryable: false,
                });
            }
        };
        let tables = (|| -> std::result::Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert("format_version", STORE_FORMAT_VERSION)?;
            txn.open_table(TEKS)?;
            txn.open_table(JOURNAL)?;
            txn.commit()?;
            Ok(())
        })();
        tables.map_err(|e| storage_error(&path, "create in memory", e))?;
        Ok(Self {
            db: RwLock::new(Some(Db::ReadWrite(db))),
            writable: false,
            format: std::sync::atomic::AtomicU64::new(STORE_FORMAT_VERSION),
            integrity_key: RwLock::new(None),
            authenticated: AtomicBool::new(false),
            path,
            damaged: AtomicBool::new(false),
        })
    }

    /// Whether the store was opened read-only (it refuses every write).
    pub fn is_read_only(&self) -> bool {
        !self.writable
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn loc(&self) -> String {
        self.path.display().to_string()
    }

    fn err(&self, what: &str, e: impl Into<redb::Error>) -> TdeError {
        storage_error(&self.path, what, e)
    }

    /// Runs `f` on the database, turning a panic of the storage engine (which it raises on
    /// some kinds of damaged pages) into a [`TdeError::Corrupt`] naming the file.
    fn with_db<T>(&self, what: &str, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
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
        let guard = self.db.read().map_err(|_| damaged())?;
        let Some(db) = guard.as_ref() else {
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

    /// Runs `f` on the database opened for writing, reopening it for writing first if it is
    /// still read-only (the first write of this handle).
    fn with_write_db<T>(&self, what: &str, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        if !self.writable {
            return Err(self.read_only_error());
        }
        let is_ro = self.with_db(what, |db| Ok(matches!(db, Db::ReadOnly(_))))?;
        if is_ro {
            self.upgrade()?;
        }
        if self.format.load(Ordering::SeqCst) < STORE_FORMAT_VERSION {
            self.with_db("upgrading the store format", |db| match db {
                Db::ReadWrite(db) => self.upgrade_format(db),
                Db::ReadOnly(_) => Err(self.read_only_error()),
            })?;
        }
        self.with_db(what, |db| match db {
            Db::ReadWrite(db) => f(db),
            Db::ReadOnly(_) => Err(self.read_only_error()),
        })
    }

    /// Reopens the file for writing. Another process may have written in the instant between
    /// closing the read-only handle and opening for writing; the store's generation counter
    /// tells, and then this write is refused (the caller's view of the store may be stale).
    fn upgrade(&self) -> Result<()> {
        let damaged = || {
            TdeError::corrupt(
                "key store",
                self.loc(),
                "the storage engine failed on damaged data while opening for writing",
            )
        };
        let mut guard = self.db.write().map_err(|_| damaged())?;
        let Some(Db::ReadOnly(_)) = guard.as_ref() else {
            return Ok(());
        };
        let seen = match guard.as_ref() {
            Some(db) => self.generation(db)?,
            None => return Err(damaged()),
        };
        // Close the read-only handle (and its shared lock) before opening for writing.
        drop(guard.take());
        let opened = catch_unwind(|| Database::open(&self.path));
        let db = match opened {
            Ok(Ok(db)) => Db::ReadWrite(db),
            Ok(Err(e)) => {
                // Keep reading: reopen read-only, as the handle was.
                if let Ok(Ok(ro)) = catch_unwind(|| ReadOnlyDatabase::open(&self.path)) {
                    *guard = Some(Db::ReadOnly(ro));
                }
                return Err(open_error(&self.path, true, e));
            }
            Err(_) => {
                self.damaged.store(true, Ordering::SeqCst);
                return Err(damaged());
            }
        };
        let now = self.generation(&db)?;
        *guard = Some(db);
        if now != seen {
            return Err(TdeError::InUse {
                what: "key store".into(),
                location: self.loc(),
                hint: "another process changed it while this one was reading it; retry the \
                       command"
                    .into(),
            });
        }
        Ok(())
    }

    /// Upgrades a format 1 store to format 2 in one transaction: every journal entry gets its
    /// checksum.
    fn upgrade_format(&self, db: &Database) -> Result<()> {
        let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
        self.bump_generation(&txn)?;
        {
            let mut journal = txn
                .open_table(JOURNAL)
                .map_err(|e| self.err("open journal", e))?;
            let mut entries = Vec::new();
            for item in journal.iter().map_err(|e| self.err("journal scan", e))? {
                let (k, v) = item.map_err(|e| self.err("journal read", e))?;
                entries.push((k.value().to_string(), v.value().to_vec()));
            }
            for (name, value) in entries {
                journal
                    .insert(name.as_str(), frame_journal(&name, &value).as_slice())
                    .map_err(|e| self.err("journal write", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
            meta.insert("format_version", STORE_FORMAT_VERSION)
                .map_err(|e| self.err("write format version", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))?;
        self.format.store(STORE_FORMAT_VERSION, Ordering::SeqCst);
        Ok(())
    }

    /// A stored journal value without its checksum, checked (format 2 on).
    fn unframe_journal(&self, name: &str, raw: &[u8]) -> Result<Vec<u8>> {
        if self.format.load(Ordering::SeqCst) < 2 {
            return Ok(raw.to_vec());
        }
        let bad = || {
            TdeError::corrupt(
                "key store journal entry",
                format!("{} ({name})", self.loc()),
                "checksum mismatch: the entry was damaged on disk",
            )
        };
        let split = raw.len().checked_sub(4).ok_or_else(bad)?;
        let (body, crc) = raw.split_at(split);
        if journal_crc(name, body).to_be_bytes() != crc {
            return Err(bad());
        }
        Ok(body.to_vec())
    }

    /// The store's commit generation (0 before the first counted commit).
    fn generation(&self, db: &Db) -> Result<u64> {
        let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        Ok(meta
            .get(GENERATION)
            .map_err(|e| self.err("read generation", e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Counts a commit: called inside every write transaction.
    fn bump_generation(&self, txn: &redb::WriteTransaction) -> Result<()> {
        let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        let g = meta
            .get(GENERATION)
            .map_err(|e| self.err("read generation", e))?
            .map(|v| v.value())
            .unwrap_or(0);
        meta.insert(GENERATION, g.wrapping_add(1))
            .map_err(|e| self.err("write generation", e))?;
        Ok(())
    }

    /// Checks an existing file's format version without writing anything.
    fn check_format(&self) -> Result<()> {
        self.with_db("opening", |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let meta = match txn.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Err(self.not_a_store("it has no HeliosDB metadata table"));
                }
                Err(e) => return Err(self.err("open meta", e)),
            };
            let current = meta
                .get("format_version")
                .map_err(|e| self.err("read format version", e))?
                .map(|v| v.value());
            match current {
                None => Err(self.not_a_store("it has no format version")),
                Some(v) if (OLDEST_STORE_FORMAT..=STORE_FORMAT_VERSION).contains(&v) => {
                    self.format.store(v, Ordering::SeqCst);
                    let authenticated = meta
                        .get(AUTHENTICATED)
                        .map_err(|e| self.err("read meta", e))?
                        .map(|v| v.value());
                    match authenticated {
                        None | Some(0) => {}
                        Some(1) => self.authenticated.store(true, Ordering::SeqCst),
                        Some(x) => {
                            return Err(TdeError::corrupt(
                                "key store",
                                self.loc(),
                                format!("the `authenticated` flag holds {x}, neither 0 nor 1"),
                            ));
                        }
                    }
                    if let Err(e) = txn.open_table(TEKS) {
                        return Err(self.not_a_store(&e.to_string()));
                    }
                    let journal = match txn.open_table(JOURNAL) {
                        Ok(j) => j,
                        Err(e) => return Err(self.not_a_store(&e.to_string())),
                    };
                    // The journal is small (rotation state, key check values, the store id):
                    // check every entry now, so that an entry whose name was damaged is found
                    // even though nobody asks for it by its new name.
                    for item in journal.iter().map_err(|e| self.err("journal scan", e))? {
                        let (k, v) = item.map_err(|e| self.err("journal read", e))?;
                        self.unframe_journal(k.value(), v.value())?;
                    }
                    Ok(())
                }
                Some(v) => Err(TdeError::corrupt(
                    "key store",
                    self.loc(),
                    format!(
                        "store format version {v} is not supported by this build (it reads \
                         version {STORE_FORMAT_VERSION}); upgrade HeliosDB"
                    ),
                )),
            }
        })
    }

    fn not_a_store(&self, detail: &str) -> TdeError {
        TdeError::corrupt(
            "key store",
            self.loc(),
            format!(
                "the file is not a HeliosDB key store ({detail}); check key_storage_path, or \
                 restore the file from a backup"
            ),
        )
    }

    /// Writes the tables, the format version and a fresh store identity into a new file.
    fn init_new(&self) -> Result<()> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| TdeError::ProviderUnavailable {
            provider: "OS random number generator".into(),
            reason: e.to_string(),
            retryable: true,
        })?;
        self.with_write_db("initialising", |db| {
            let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
                meta.insert("format_version", STORE_FORMAT_VERSION)
                    .map_err(|e| self.err("write format version", e))?;
                txn.open_table(TEKS).map_err(|e| self.err("open teks", e))?;
                let mut journal = txn
                    .open_table(JOURNAL)
                    .map_err(|e| self.err("open journal", e))?;
                journal
                    .insert(
                        STORE_ID_ENTRY,
                        frame_journal(STORE_ID_ENTRY, &id).as_slice(),
                    )
                    .map_err(|e| self.err("write store id", e))?;
            }
            txn.commit().map_err(|e| self.err("commit", e))
        })
    }

    fn read_only_error(&self) -> TdeError {
        TdeError::Unsupported {
            what: format!("writing to the key store {} opened read-only", self.loc()),
            hint: "this command only reads; run a command that changes keys to write".into(),
        }
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<TekRecord> {
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
    fn encode(&self, rec: &TekRecord) -> Result<Vec<u8>> {
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

    fn poisoned(&self) -> TdeError {
        TdeError::ProviderUnavailable {
            provider: format!("key store {}", self.loc()),
            reason: "internal lock poisoned by a panic in another thread".into(),
            retryable: false,
        }
    }

    fn read_range(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Vec<TekRecord>> {
        self.with_db("reading keys", |db| {
            self.read_range_inner(db, lo, hi, limit)
        })
    }

    fn read_range_inner(
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

    /// Applies a batch synchronously (what [`KeyStore::apply`] does).
    pub fn apply_blocking(&self, batch: StoreBatch) -> Result<()> {
        self.with_write_db("writing", |db| self.apply_inner(db, batch))
    }

    fn apply_inner(&self, db: &Database, batch: StoreBatch) -> Result<()> {
        let txn = db.begin_write().map_err(|e| self.err("begin", e))?;
        self.bump_generation(&txn)?;
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
        teks.insert(key.as_slice(), self.encode(rec)?.as_slice())
            .map_err(|e| self.err("write", e))?;
        Ok(())
    }
}

/// The checksum of a journal entry: CRC-32 over the name's length (u32), the name and the value.
fn journal_crc(name: &str, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(name.as_bytes());
    h.update(body);
    h.finalize()
}

/// A journal value as stored from format 2 on: the value, then its checksum.
fn frame_journal(name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(&journal_crc(name, body).to_be_bytes());
    out
}

fn open_error(path: &Path, existed: bool, e: DatabaseError) -> TdeError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => in_use(path),
        DatabaseError::RepairAborted => TdeError::InUse {
            what: "key store".into(),
            location: path.display().to_string(),
            hint: "or it was not closed cleanly (a crash?) and needs a recovery, which a \
                   read-only command does not do: start HeliosDB or run a command that changes \
                   keys once, then retry"
                .into(),
        },
        // Content the engine cannot read (not a redb file, cut short) is the file's fault;
        // every other operating-system error (permissions, I/O, space) is reported as such.
        DatabaseError::Storage(redb::StorageError::Io(io)) if !is_content_error(&io) => {
            TdeError::io(path, io)
        }
        other if !existed => storage_error(path, "create", other),
        other => open_error_text(path, &other.to_string()),
    }
}

/// An existing file that the engine cannot open (damaged, foreign, or the engine failed on it).
fn open_error_text(path: &Path, detail: &str) -> TdeError {
    TdeError::corrupt(
        "key store",
        path.display().to_string(),
        format!(
            "the file cannot be opened as a HeliosDB key store ({detail}). If it was damaged, \
             restore it from a backup; do not delete it, or every table key in it is lost"
        ),
    )
}

/// Maps a storage-engine error by its type: damage is `Corrupt`, an operating-system error is
/// `Io` (with its kind: permission denied, disk full...), a file held by another process is
/// `InUse`; anything else is the engine failing.
fn storage_error(path: &Path, what: &str, e: impl Into<redb::Error>) -> TdeError {
    match e.into() {
        redb::Error::Corrupted(detail) => {
            TdeError::corrupt("key store", path.display().to_string(), detail)
        }
        redb::Error::Io(io) if is_content_error(&io) => {
            TdeError::corrupt("key store", path.display().to_string(), io.to_string())
        }
        redb::Error::Io(io) => TdeError::io(path, io),
        redb::Error::DatabaseAlreadyOpen => in_use(path),
        other => TdeError::ProviderUnavailable {
            provider: format!("key store {}", path.display()),
            reason: format!("{what} failed: {other}"),
            retryable: false,
        },
    }
}

/// Whether an I/O error from the engine is about the file's content rather than the system.
fn is_content_error(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

fn in_use(path: &Path) -> TdeError {
    TdeError::InUse {
        what: "key store".into(),
        location: path.display().to_string(),
        hint: "is HeliosDB running? Stop it or wait for the other command to finish, then retry"
            .into(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each storage-engine error is mapped by its type, never by its text.
    #[test]
    fn engine_errors_map_by_type() {
        let p = Path::new("/var/lib/heliosdb/keys/tek-store.redb");
        let e = storage_error(p, "read", redb::Error::Corrupted("bad page".into()));
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        // A message that merely mentions corruption is not damage.
        let e = storage_error(p, "read", redb::Error::ValueTooLarge(1 << 40));
        assert!(matches!(e, TdeError::ProviderUnavailable { .. }), "{e:?}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        match storage_error(p, "read", redb::Error::Io(denied)) {
            TdeError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied)
            }
            other => panic!("{other:?}"),
        }
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        match storage_error(p, "commit", redb::Error::Io(full)) {
            TdeError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull)
            }
            other => panic!("{other:?}"),
        }
        let e = storage_error(p, "open", redb::Error::DatabaseAlreadyOpen);
        assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");

        let e = open_error(p, true, DatabaseError::DatabaseAlreadyOpen);
        assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");
        let foreign = std::io::Error::new(std::io::ErrorKind::InvalidData, "magic mismatch");
        let e = open_error(
            p,
            true,
            DatabaseError::Storage(redb::StorageError::Io(foreign)),
        );
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        let e = open_error(p, true, DatabaseError::RepairAborted);
        assert!(e.to_string().contains("recovery"), "{e}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = open_error(
            p,
            true,
            DatabaseError::Storage(redb::StorageError::Io(denied)),
        );
        assert!(matches!(e, TdeError::Io { .. }), "{e:?}");
        let e = open_error(
            p,
            true,
            DatabaseError::Storage(redb::StorageError::Corrupted("x".into())),
        );
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
    }
}
