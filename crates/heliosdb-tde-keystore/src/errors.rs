//! Storage-engine and open errors mapped to [`TdeError`] by their type, never by their text.

use heliosdb_tde_core::TdeError;
use redb::DatabaseError;
use std::path::Path;

pub(crate) fn open_error(path: &Path, existed: bool, e: DatabaseError) -> TdeError {
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
pub(crate) fn open_error_text(path: &Path, detail: &str) -> TdeError {
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
pub(crate) fn storage_error(path: &Path, what: &str, e: impl Into<redb::Error>) -> TdeError {
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
pub(crate) fn is_content_error(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

pub(crate) fn in_use(path: &Path) -> TdeError {
    TdeError::InUse {
        what: "key store".into(),
        location: path.display().to_string(),
        hint: "is HeliosDB running? Stop it or wait for the other command to finish, then retry"
            .into(),
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
