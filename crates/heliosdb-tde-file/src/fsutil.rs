//! File-system helpers: private directories, ownership, type and permission checks on opened
//! descriptors, the directory lock, atomic replacement.

use heliosdb_tde_core::{Result, SecurityMode, TdeError};
use rustix::fs::{Mode, OFlags};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of temporary files; they are ignored by the loader and removed at open.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// The largest passphrase file read (a passphrase is a line, not a document).
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// What an opened path must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A directory (the MEK directory).
    Dir,
    /// A regular file (an MEK file, the passphrase file).
    File,
}

/// The effective user id HeliosDB runs as: key files must belong to it.
pub(crate) fn running_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn type_name(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Checks the metadata of an opened descriptor (`fstat`): its type (always an error when
/// wrong), its owner (the running user) and its permission bits (no group or other access).
/// Owner and mode problems are errors in production mode and warnings in development mode.
pub(crate) fn check_meta(
    path: &Path,
    meta: &fs::Metadata,
    expect: Expect,
    expected_mode: u32,
    mode: SecurityMode,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let type_ok = match expect {
        Expect::Dir => meta.is_dir(),
        Expect::File => meta.file_type().is_file(),
    };
    if !type_ok {
        let wanted = match expect {
            Expect::Dir => "a directory",
            Expect::File => "a regular file",
        };
        return Err(TdeError::SecurityPolicy(format!(
            "{} is {}, not {wanted}; key files and directories must be what they claim to be. \
             Replace it with {wanted} owned by the user running HeliosDB",
            path.display(),
            type_name(meta)
        )));
    }
    let uid = running_uid();
    if meta.uid() != uid {
        let msg = format!(
            "{} is owned by uid {}, but HeliosDB runs as uid {uid}: another user controls this \
             key {}. Fix: chown {uid} {}",
            path.display(),
            meta.uid(),
            if expect == Expect::Dir {
                "directory"
            } else {
                "file"
            },
            path.display()
        );
        if mode.is_production() {
            return Err(TdeError::SecurityPolicy(msg));
        }
        warnings.push(format!("{msg} (allowed in development mode only)"));
    }
    let bits = meta.permissions().mode() & 0o777;
    if bits & 0o077 != 0 {
        let err = TdeError::InsecurePermissions {
            path: path.to_path_buf(),
            mode: bits,
            expected: expected_mode,
        };
        if mode.is_production() {
            return Err(err);
        }
        warnings.push(format!("{err} (allowed in development mode only)"));
    }
    Ok(())
}

/// Maps an error of `open(O_NOFOLLOW)`: `ELOOP` means the last component is a symbolic link.
fn open_error(path: &Path, e: rustix::io::Errno, what: &str) -> TdeError {
    if e == rustix::io::Errno::LOOP {
        TdeError::SecurityPolicy(format!(
            "{} is a symbolic link; {what} must be a regular file in its directory (links are \
             not followed, so that the file checked is the file used). Replace the link with \
             the file it points to",
            path.display()
        ))
    } else {
        TdeError::io(path, e.into())
    }
}

/// Opens a key file for reading without following a symbolic link (`O_NOFOLLOW`, and
/// `O_NONBLOCK` so that a named pipe cannot block us), then checks the opened descriptor
/// (`fstat`, not the path): a regular file, owned by the running user, mode `0600` or
/// stricter. `what` names the file in errors ("an MEK file", "the passphrase file").
pub(crate) fn open_private_file(
    path: &Path,
    what: &str,
    mode: SecurityMode,
    warnings: &mut Vec<String>,
) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_error(path, e, what))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| TdeError::io(path, e))?;
    check_meta(path, &meta, Expect::File, 0o600, mode, warnings)?;
    Ok(file)
}

/// Reads a small private file (the passphrase file) through [`open_private_file`]; the
/// contents are returned in a buffer that is zeroized when dropped.
pub(crate) fn read_private_small_file(
    path: &Path,
    what: &str,
    mode: SecurityMode,
    warnings: &mut Vec<String>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let file = open_private_file(path, what, mode, warnings)?;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| TdeError::io(path, e))?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(TdeError::SecurityPolicy(format!(
            "{} is larger than {MAX_SMALL_FILE} bytes; {what} holds one line",
            path.display()
        )));
    }
    Ok(buf)
}

/// Resolves the MEK directory: creates it (mode 0700) if it is missing, follows symbolic
/// links to the real directory, opens that without following a link and checks the opened
/// descriptor (a directory owned by the running user, mode 0700 or stricter). Returns the
/// resolved path, which all further file operations use.
pub(crate) fn resolve_private_dir(
    dir: &Path,
    mode: SecurityMode,
    warnings: &mut Vec<String>,
) -> Result<PathBuf> {
    create_private_dir(dir)?;
    let resolved = fs::canonicalize(dir).map_err(|e| TdeError::io(dir, e))?;
    let fd = rustix::fs::open(
        &resolved,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::NOTDIR {
            TdeError::config(
                "secure_file_config.storage_path",
                format!("{} is not a directory", resolved.display()),
            )
        } else {
            open_error(&resolved, e, "the MEK directory")
        }
    })?;
    let meta = File::from(fd)
        .metadata()
        .map_err(|e| TdeError::io(&resolved, e))?;
    let mut found = Vec::new();
    check_meta(&resolved, &meta, Expect::Dir, 0o700, mode, &mut found)?;
    if resolved != dir {
        for w in &mut found {
            w.push_str(&format!(
                " (storage_path {} resolves to {})",
                dir.display(),
                resolved.display()
            ));
        }
    }
    warnings.extend(found);
    Ok(resolved)
}

/// Takes the exclusive advisory lock (`flock`) on the MEK directory `dir` itself. The lock lasts as
/// long as the returned file is open (and ends with the process, however it ends). If another
/// process holds it, the error names that process, found in the kernel's lock table
/// (`/proc/locks`): the lock file itself is never written, so a command that only reads leaves
/// every file of the directory byte-identical.
pub(crate) fn lock_dir(dir: &Path, shown: &Path) -> Result<File> {
    // The directory itself is locked: no lock file is ever created or written.
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_error(dir, e, "the MEK directory"))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| TdeError::io(dir, e))?;
    let path = dir;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            let holder = match lock_holder(&meta) {
                Some(pid) => format!("process {pid}"),
                None => "another process".to_string(),
            };
            Err(TdeError::InUse {
                what: "MEK directory".into(),
                location: shown.display().to_string(),
                hint: format!(
                    "{holder} holds its lock on {}: is the HeliosDB server running? Only one \
                     process at a time may use a MEK directory; stop that process and run the \
                     command again. Nothing was changed",
                    path.display()
                ),
            })
        }
        Err(fs::TryLockError::Error(e)) => Err(TdeError::io(path, e)),
    }
}

/// The process holding an `flock` on the file described by `meta`, from `/proc/locks` (lines
/// such as `1: FLOCK  ADVISORY  WRITE 4242 fd:01:131 0 EOF`, device numbers in hex).
fn lock_holder(meta: &fs::Metadata) -> Option<u32> {
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        meta.ino()
    );
    let table = fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // id, class, mode, access, pid, dev:dev:inode, start, end (a "->" marks waiters).
        if f.get(1) != Some(&"FLOCK") || f.contains(&"->") {
            return None;
        }
        (f.get(5) == Some(&want.as_str())).then(|| f.get(4)?.parse().ok())?
    })
}

/// Opens an MEK file through [`open_private_file`] and reads it. (The parser bounds the
/// size; an MEK file is a few hundred bytes.)
pub(crate) fn read_key_file(
    path: &Path,
    mode: SecurityMode,
    warnings: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let file = open_private_file(path, "an MEK file", mode, warnings)?;
    let mut buf = Vec::with_capacity(256);
    file.take(MAX_SMALL_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| TdeError::io(path, e))?;
    Ok(buf)
}

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
