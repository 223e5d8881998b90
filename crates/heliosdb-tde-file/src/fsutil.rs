//! File-system helpers: private directories, permission checks, atomic replacement.

use heliosdb_tde_core::{Result, SecurityMode, TdeError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of temporary files; they are ignored by the loader and removed at open.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` with mode 0700 if it is missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TdeError::io(dir, e))
}

/// Checks that `path` gives group and other users no access. In production mode a violation is
/// an error naming the `chmod` that fixes it; in development mode it is returned as a warning.
pub(crate) fn check_private(
    path: &Path,
    expected: u32,
    mode: SecurityMode,
) -> Result<Option<String>> {
    let meta = fs::metadata(path).map_err(|e| TdeError::io(path, e))?;
    let bits = meta.permissions().mode() & 0o777;
    if bits & 0o077 == 0 {
        return Ok(None);
    }
    let err = TdeError::InsecurePermissions {
        path: path.to_path_buf(),
        mode: bits,
        expected,
    };
    if mode.is_production() {
        Err(err)
    } else {
        Ok(Some(format!("{err} (allowed in development mode only)")))
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in the same directory is
/// written, fsynced, renamed over the target, and the directory is fsynced. A crash at any
/// point leaves either the old file or the new one, never a torn one.
pub(crate) fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| TdeError::Random(e.to_string()))?;
    let tmp: PathBuf = dir.join(format!(
        "{TEMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        u64::from_le_bytes(rnd)
    ));
    let target = dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| TdeError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| TdeError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TdeError::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &target).map_err(|e| TdeError::io(&target, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file and makes the removal durable.
pub(crate) fn durable_remove(dir: &Path, name: &str) -> Result<()> {
    let p = dir.join(name);
    match fs::remove_file(&p) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TdeError::io(p, e)),
    }
}

/// fsyncs a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TdeError::io(dir, e))
}

/// Removes temporary files left by an interrupted write. They are never the only copy of a
/// key: the rename that would have published one did not happen.
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir).map_err(|e| TdeError::io(dir, e))? {
        let entry = entry.map_err(|e| TdeError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path()).map_err(|e| TdeError::io(entry.path(), e))?;
            n += 1;
        }
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
}
