#![doc = include_str!("../README.md")]

mod batch;
mod errors;
mod export;
mod journal;
mod open;
pub mod record;
mod store;

use errors::storage_error;

use heliosdb_tde_core::{KeyBytes, TdeError};
use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, TableDefinition};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

const TEKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("teks");
const JOURNAL: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("journal");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The `meta` entry counting commits, so that a handle reopened for writing can tell whether
/// another process wrote in between.
const GENERATION: &str = "generation";
/// The `meta` entry counting changes of keys and journal (every `apply`), not nonce
/// reservations: the generation a backup records.
const KEY_GENERATION: &str = "key_generation";
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
    /// Set once a committed store id was seen, so that writes stop looking for it.
    has_store_id: AtomicBool,
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

    fn poisoned(&self) -> TdeError {
        TdeError::ProviderUnavailable {
            provider: format!("key store {}", self.loc()),
            reason: "internal lock poisoned by a panic in another thread".into(),
            retryable: false,
        }
    }
}
