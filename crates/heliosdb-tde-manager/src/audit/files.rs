//! The files of an audit log on disk: the current file and its lock, reading the chain's tail
//! (verifying the current file), setting a torn last line aside, and size rotation.

use super::format::{self, AuditRecord, ZERO};
use heliosdb_tde_core::{Result, TdeError, Timestamp};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What to do about a damaged log, appended to every refusal.
pub(crate) const DAMAGED_HINT: &str = "run `heliosdb-cli security audit verify` to \
     investigate, then move the file aside (HeliosDB never deletes it) to start a new log";

/// The end of the chain as a writer knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainTail {
    /// The last sequence number (0: no record yet).
    pub(crate) seq: u64,
    /// The last record's hash (`ZERO`: none).
    pub(crate) hash: String,
    /// The `mac` of the newest record that has one (`ZERO`: none).
    pub(crate) prev_mac: String,
    /// The audit key version of that record.
    pub(crate) last_akv: Option<u32>,
}

impl Default for ChainTail {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: ZERO.to_string(),
            prev_mac: ZERO.to_string(),
            last_akv: None,
        }
    }
}

/// The sibling `<log>.lock` that every writer locks (flock, exclusive) for an append, a
/// rotation or a scan: a lock on the log file itself would not survive its rotation.
pub(crate) fn lock_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    log.with_file_name(name)
}

fn open_mode_0600(path: &Path, opts: &mut OpenOptions) -> Result<File> {
    opts.mode(0o600)
        .open(path)
        .map_err(|e| TdeError::io(path, e))
}

/// Opens (creating it, mode 0600) the lock file of `log`.
pub(crate) fn open_lock(log: &Path) -> Result<File> {
    open_mode_0600(
        &lock_path(log),
        OpenOptions::new().create(true).read(true).write(true),
    )
}

/// Opens (creating it, mode 0600) the current file of `log` for appending and reading.
pub(crate) fn open_current(log: &Path) -> Result<File> {
    open_mode_0600(log, OpenOptions::new().create(true).append(true).read(true))
}

/// `(dev, ino)` of a file.
pub(crate) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Fsyncs the directory holding `path`, so that a rename or a new name in it is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TdeError::io(dir, e))
}

fn damaged(path: &Path, line: u64, what: impl std::fmt::Display) -> TdeError {
    TdeError::corrupt(
        "audit log",
        format!("{} line {line}", path.display()),
        format!("{what}; {DAMAGED_HINT}"),
    )
}

/// A record's `seq` and `hash`.
pub(crate) type SeqHash = (u64, String);

/// A record's `mac` and `akv`.
pub(crate) type MacAt = (String, Option<u32>);

/// What a scan of (part of) the current file found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The length of the complete lines (the offset where the next line goes).
    pub(crate) complete_len: u64,
    /// Complete lines scanned.
    pub(crate) lines: u64,
    /// The first scanned record's sequence number.
    pub(crate) first_seq: Option<u64>,
    /// The last scanned record's `(seq, hash)`.
    pub(crate) last: Option<(u64, String)>,
    /// The newest scanned record with a MAC: `(mac, akv)`.
    pub(crate) newest_mac: Option<MacAt>,
    /// Bytes after the last newline.
    pub(crate) partial: Vec<u8>,
    /// `partial` as a record, when it is a whole record that continues the chain (only its
    /// newline is missing).
    pub(crate) partial_record: Option<AuditRecord>,
}

/// The chain link a record must continue: `None` at the start of a file that may start
/// anywhere (a file after rotation), `Some((0, ZERO))` at the start of the log.
fn check_link(r: &AuditRecord, after: Option<&(u64, String)>, path: &Path, n: u64) -> Result<()> {
    if let Some((seq, hash)) = after {
        if r.seq != seq + 1 {
            return Err(damaged(
                path,
                n,
                format!(
                    "sequence {} where {} was expected: a line was removed or reordered",
                    r.seq,
                    seq + 1
                ),
            ));
        }
        if &r.prev != hash {
            return Err(damaged(
                path,
                n,
                "the chain is broken: the previous line was changed or removed",
            ));
        }
    }
    if r.digest() != r.hash {
        return Err(damaged(
            path,
            n,
            "the line's hash does not match its content: it was edited",
        ));
    }
    Ok(())
}

/// Reads the current file `file` (at `path`) from byte `from`, where `lines_before` complete
/// lines precede, checking each line's hash and its link to `after` (the record before `from`;
/// `None`: the file may start anywhere). A complete line that is damaged is an error; the
/// bytes after the last newline are returned for the caller to repair.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    from: u64,
    lines_before: u64,
    after: Option<(u64, String)>,
) -> Result<Scan> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(from))
        .map_err(|e| TdeError::io(path, e))?;
    let mut out = Scan {
        complete_len: from,
        last: after,
        ..Scan::default()
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| TdeError::io(path, e))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            let record = std::str::from_utf8(&buf)
                .ok()
                .and_then(|t| serde_json::from_str::<AuditRecord>(t).ok());
            out.partial_record =
                record.filter(|r| check_link(r, out.last.as_ref(), path, 0).is_ok());
            out.partial = std::mem::take(&mut buf);
            break;
        }
        let line_no = lines_before + out.lines + 1;
        let text = std::str::from_utf8(&buf[..buf.len() - 1])
            .map_err(|_| damaged(path, line_no, "the line is not UTF-8"))?;
        let r = format::parse_record(text, path, line_no)
            .map_err(|_| damaged(path, line_no, "the line is not an audit record"))?;
        check_link(&r, out.last.as_ref(), path, line_no)?;
        out.add(r, n as u64);
    }
    Ok(out)
}

impl Scan {
    /// Counts one more complete line of `len` bytes holding `r`.
    pub(crate) fn add(&mut self, r: AuditRecord, len: u64) {
        self.first_seq.get_or_insert(r.seq);
        if let Some(mac) = &r.mac {
            self.newest_mac = Some((mac.clone(), r.akv));
        }
        self.last = Some((r.seq, r.hash));
        self.lines += 1;
        self.complete_len += len;
    }
}

/// The newest records of the rotated files of `log` that come after the record `after_seq`:
/// the last record `(seq, hash)` of the newest rotated file (if `want_last`), and the newest
/// `(mac, akv)`, looking back file by file until one is found.
pub(crate) fn rotated_tail(
    log: &Path,
    after_seq: u64,
    want_last: bool,
) -> Result<(Option<SeqHash>, Option<MacAt>)> {
    let files = format::rotated_files(log)?;
    let mut last = None;
    for (i, f) in files.iter().rev().enumerate() {
        if f.last <= after_seq && !(want_last && i == 0) {
            break;
        }
        let file = File::open(&f.path).map_err(|e| TdeError::io(&f.path, e))?;
        let mut newest_mac = None;
        let mut n = 0u64;
        for line in BufReader::new(file).lines() {
            let text = line.map_err(|e| TdeError::io(&f.path, e))?;
            n += 1;
            let r = format::parse_record(&text, &f.path, n)
                .map_err(|_| damaged(&f.path, n, "the line is not an audit record"))?;
            if r.seq > after_seq
                && let Some(mac) = &r.mac
            {
                newest_mac = Some((mac.clone(), r.akv));
            }
            if i == 0 {
                last = Some((r.seq, r.hash));
            }
        }
        if newest_mac.is_some() {
            return Ok((last, newest_mac));
        }
    }
    Ok((last, None))
}

/// What the current file of `log` says about an older log's record `seq`: whether any of its
/// lines is keyed (has a `mac`), and the `hash` of its record `seq`, if it holds one. Reads
/// the whole file (complete lines only); call it under the flock.
pub(crate) fn keyed_and_hash_at(log: &Path, seq: u64) -> Result<(bool, Option<String>)> {
    let file = File::open(log).map_err(|e| TdeError::io(log, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut keyed = false;
    let mut hash = None;
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| TdeError::io(log, e))?;
        if read == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        n += 1;
        let text = std::str::from_utf8(&buf[..buf.len() - 1])
            .map_err(|_| damaged(log, n, "the line is not UTF-8"))?;
        let r = format::parse_record(text, log, n)
            .map_err(|_| damaged(log, n, "the line is not an audit record"))?;
        keyed |= r.mac.is_some();
        if r.seq == seq {
            hash = Some(r.hash);
        }
    }
    Ok((keyed, hash))
}

/// A compact UTC time for file names, `20261202T170300.123Z`.
fn stamp(at: Timestamp) -> String {
    let civil: String = at
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = civil.trim_end_matches('Z');
    format!("{base}.{:03}Z", at.as_millis() % 1000)
}

/// Copies a torn last line's bytes to a new `<log>.torn-<time>` file (mode 0600, fsynced,
/// never overwriting one) and returns its path.
pub(crate) fn set_aside_torn(log: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let base = stamp(Timestamp::now());
    let mut attempt = 1u32;
    loop {
        let at = if attempt == 1 {
            base.clone()
        } else {
            format!("{base}-{attempt}")
        };
        let target = format::torn_path(log, &at);
        match OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&target)
        {
            Ok(mut f) => {
                f.write_all(bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| TdeError::io(&target, e))?;
                sync_dir(&target)?;
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                attempt += 1;
            }
            Err(e) => return Err(TdeError::io(&target, e)),
        }
    }
}

/// Renames the full current file `file` of `log` to `<log>.<first>-<last>` without ever
/// replacing a file: a hard link, then the old name removed, each made durable. A link left by
/// an interrupted rotation (the same file under both names) is completed.
pub(crate) fn rotate(log: &Path, file: &File, first: u64, last: u64) -> Result<PathBuf> {
    file.sync_data().map_err(|e| TdeError::io(log, e))?;
    let target = format::rotated_path(log, first, last);
    match std::fs::hard_link(log, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let ours = file.metadata().map_err(|e| TdeError::io(log, e))?;
            let theirs = std::fs::metadata(&target).map_err(|e| TdeError::io(&target, e))?;
            if identity(&ours) != identity(&theirs) {
                return Err(TdeError::corrupt(
                    "audit log",
                    target.display().to_string(),
                    format!(
                        "a rotated file of that name already exists and is not the current \
                         file, so {} cannot be rotated; {DAMAGED_HINT}",
                        log.display()
                    ),
                ));
            }
        }
        Err(e) => return Err(TdeError::io(&target, e)),
    }
    sync_dir(log)?;
    std::fs::remove_file(log).map_err(|e| TdeError::io(log, e))?;
    sync_dir(log)?;
    Ok(target)
}

/// Holds the cross-process lock; released on drop.
pub(crate) struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    pub(crate) fn take(file: &'a File, path: &Path) -> Result<Self> {
        file.lock().map_err(|e| TdeError::io(lock_path(path), e))?;
        Ok(Self(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Writes one line; the fail point `audit::write` makes it fail in tests.
pub(crate) fn write_line(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    fail::fail_point!("audit::write", |_| Err(std::io::Error::other(
        "injected by the fail point audit::write"
    )));
    let mut f = file;
    f.write_all(bytes)
}

/// The current file as loaded by a full scan.
pub(crate) struct Loaded {
    pub(crate) file: File,
    pub(crate) id: (u64, u64),
    pub(crate) len: u64,
    pub(crate) lines: u64,
    pub(crate) first_seq: Option<u64>,
    pub(crate) tail: ChainTail,
}

/// Repairs the bytes after the last newline of a scanned file: a whole record gets its
/// newline; anything else is set aside as a torn line and cut off, and described in `torn` for
/// the `audit.gap` record.
pub(crate) fn repair_tail(
    path: &Path,
    file: &File,
    scan: &mut Scan,
    torn: &mut Vec<String>,
) -> Result<()> {
    if scan.partial.is_empty() {
        return Ok(());
    }
    let partial = std::mem::take(&mut scan.partial);
    if let Some(r) = scan.partial_record.take() {
        let mut f = file;
        f.write_all(b"\n")
            .and_then(|()| file.sync_data())
            .map_err(|e| TdeError::io(path, e))?;
        scan.add(r, partial.len() as u64 + 1);
        return Ok(());
    }
    let aside = set_aside_torn(path, &partial)?;
    file.set_len(scan.complete_len)
        .and_then(|()| file.sync_all())
        .map_err(|e| TdeError::io(path, e))?;
    let name = aside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::warn!(
        target: "heliosdb::tde::audit",
        "the audit log {} ended in an incomplete line ({} bytes, a crash or a full disk \
         during an append); it was moved to {name} and the log continues",
        path.display(),
        partial.len()
    );
    torn.push(format!(
        "an incomplete last line ({} bytes) was moved to {name}",
        partial.len()
    ));
    Ok(())
}

/// Opens and scans the current file of `path` (verifying its chain, repairing a torn tail),
/// taking what it lacks from the rotated files: the tail when it is empty, the newest MAC when
/// it has none newer than `known`.
pub(crate) fn load(path: &Path, known: &ChainTail, torn: &mut Vec<String>) -> Result<Loaded> {
    let file = open_current(path)?;
    let rotated = format::rotated_files(path)?;
    let start = rotated.is_empty().then(|| (0, format::ZERO.to_string()));
    let mut scan = scan(&file, path, 0, 0, start)?;
    repair_tail(path, &file, &mut scan, torn)?;
    let last = if scan.lines > 0 {
        scan.last.clone()
    } else if rotated.is_empty() {
        None
    } else {
        rotated_tail(path, u64::MAX, true)?.0
    };
    let (seq, hash) = last.unwrap_or((0, format::ZERO.to_string()));
    // What this writer knew of the MAC chain still holds only if the log continued from
    // there (not if it was moved aside and begun again).
    let mut tail = if known.seq > 0 && seq >= known.seq {
        known.clone()
    } else {
        ChainTail::default()
    };
    let newest_mac = match scan.newest_mac.take() {
        Some(m) => Some(m),
        None if !rotated.is_empty() => rotated_tail(path, tail.seq, false)?.1,
        None => None,
    };
    tail.seq = seq;
    tail.hash = hash;
    if let Some((mac, akv)) = newest_mac {
        tail.prev_mac = mac;
        tail.last_akv = akv;
    }
    let meta = file.metadata().map_err(|e| TdeError::io(path, e))?;
    Ok(Loaded {
        id: identity(&meta),
        file,
        len: scan.complete_len,
        lines: scan.lines,
        first_seq: scan.first_seq,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_compact_utc_with_milliseconds() {
        assert_eq!(stamp(Timestamp(1_729_859_696_042)), "20241025T123456.042Z");
    }

    #[test]
    fn torn_files_never_overwrite_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let a = set_aside_torn(&log, b"one").unwrap();
        let b = set_aside_torn(&log, b"two").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        assert_eq!(lock_path(&log), dir.path().join("audit.log.lock"));
    }
}
