//! Opening a store: the open modes, creation, format checks and upgrades, the switch from
//! read-only to writing at the first write, and the private directory and file permissions.

use crate::errors::{open_error, open_error_text, storage_error};
use crate::journal::frame_journal;
use crate::{
    AUTHENTICATED, Db, JOURNAL, META, OLDEST_STORE_FORMAT, OpenMode, RedbKeyStore, STORE_FILE_NAME,
    STORE_FORMAT_VERSION, STORE_ID_ENTRY, TEKS,
};
use heliosdb_tde_core::{Result, TdeError};
use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableTable};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// [`KeyStore::apply`](heliosdb_tde_core::KeyStore::apply) fails. For read-only commands.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        Self::open_with(path, OpenMode::ReadOnly)
    }

    pub(crate) fn open_with(path: &Path, mode: OpenMode) -> Result<Self> {
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
            has_store_id: AtomicBool::new(false),
        };
        if existed {
            store.check_format()?;
        } else {
            store.init_new()?;
            restrict_file(&store.path)?;
        }
        Ok(store)
    }

    /// An empty, writable store that exists only in memory (with a store id), named `label`
    /// in messages: a scratch store to load a backup bundle into and check it without
    /// touching any file.
    pub fn scratch(label: &Path) -> Result<Self> {
        let mut store = Self::empty_read_only(label)?;
        store.writable = true;
        let id = crate::export::random_id()?;
        store.with_write_db("initialising", |db| {
            let txn = db.begin_write().map_err(|e| store.err("begin", e))?;
            {
                let mut journal = txn
                    .open_table(JOURNAL)
                    .map_err(|e| store.err("open journal", e))?;
                journal
                    .insert(
                        STORE_ID_ENTRY,
                        frame_journal(STORE_ID_ENTRY, &id).as_slice(),
                    )
                    .map_err(|e| store.err("write store id", e))?;
            }
            txn.commit().map_err(|e| store.err("commit", e))
        })?;
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
            has_store_id: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the database, turning a panic of the storage engine (which it raises on
    /// some kinds of damaged pages) into a [`TdeError::Corrupt`] naming the file.
    pub(crate) fn with_db<T>(&self, what: &str, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
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
    pub(crate) fn with_write_db<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Database) -> Result<T>,
    ) -> Result<T> {
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
    pub(crate) fn upgrade(&self) -> Result<()> {
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
    pub(crate) fn upgrade_format(&self, db: &Database) -> Result<()> {
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

    /// Checks an existing file's format version without writing anything.
    pub(crate) fn check_format(&self) -> Result<()> {
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

    pub(crate) fn not_a_store(&self, detail: &str) -> TdeError {
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
    pub(crate) fn init_new(&self) -> Result<()> {
        let id = crate::export::random_id()?;
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

    pub(crate) fn read_only_error(&self) -> TdeError {
        TdeError::Unsupported {
            what: format!("writing to the key store {} opened read-only", self.loc()),
            hint: "this command only reads; run a command that changes keys to write".into(),
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
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
pub(crate) fn restrict_file(path: &Path) -> Result<()> {
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
