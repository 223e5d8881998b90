//! Verification of an audit log: the hash chain (anyone), the MAC chain (with the audit
//! keys), the file set and the checkpoint; and reading its newest records.
//!
//! [`verify_audit_log_with`] walks the whole file set (rotated files `<log>.<first>-<last>` by
//! first sequence number, then the current file `<log>`) as one chain, or only the current file
//! ([`AuditVerifyOptions::current_file_only`], bounded: the newest rotated file is read from its
//! end only as far as needed). The first problem is reported as a
//! [`TdeError::Corrupt`] naming the file and line. [`read_audit_tail`] reads the newest records
//! for `security audit tail`. `docs/formats/audit-log.md` describes the format.

use super::format::{self, AuditRecord, RotatedFile, ZERO};
use heliosdb_tde_core::{Result, TableKey, TdeError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to compare with a copy of the log kept elsewhere, said after every tampering finding.
const INVESTIGATE: &str =
    "compare the log with a copy shipped off the host and investigate who wrote to it";

/// What [`verify_audit_log_with`] (and [`verify_audit_log`], [`verify_lines`]) found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditVerification {
    /// Lines checked (in every file checked).
    pub lines: u64,
    /// The hash of the last line (to compare with a copy kept elsewhere); all zeros for an
    /// empty log.
    pub last_hash: String,
    /// The files checked, in chain order (the current file last).
    pub files: Vec<PathBuf>,
    /// The sequence number of the last record (0 for an empty log). With
    /// [`AuditVerifyOptions::current_file_only`] it counts the records of the rotated files too,
    /// unlike [`lines`](Self::lines).
    pub last_seq: u64,
    /// The newest MAC in the log (the `prev_mac` of the next keyed line), if any line has one.
    pub last_mac: Option<String>,
    /// MACs checked against the audit keys (0 without keys).
    pub macs_checked: u64,
    /// Records after the last line with a MAC: written without the audit key (or format 1) and
    /// not yet covered by a keyed line. Anyone who can write the file could have changed them;
    /// not an error.
    pub unauthenticated_tail: u64,
    /// The checkpoint's sequence number, when a checkpoint was given and the record at it was
    /// found and matched. `None` without a checkpoint, for a checkpoint at 0, and (current file
    /// only) when the checkpoint's record lies in a rotated file before that file's last line:
    /// then only that the log reaches it was checked.
    pub checkpoint: Option<u64>,
    /// Format 1 lines among those checked.
    pub format1_lines: u64,
}

/// The audit key versions to check MACs with: the TEK versions of the reserved table
/// `_heliosdb.audit`. Its `Debug` lists the versions, never key bytes.
#[derive(Clone, Default)]
pub struct AuditKeys {
    keys: BTreeMap<u32, Arc<TableKey>>,
}

impl AuditKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the key of audit key version `akv` (the `akv` field of the lines it made).
    pub fn with_version(mut self, akv: u32, key: Arc<TableKey>) -> Self {
        self.keys.insert(akv, key);
        self
    }

    /// The versions held, ascending.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, akv: u32) -> Option<&TableKey> {
        self.keys.get(&akv).map(|k| k.as_ref())
    }

    fn describe_versions(&self) -> String {
        if self.keys.is_empty() {
            return "none".to_string();
        }
        self.versions()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKeys")
            .field("versions", &self.versions().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Checkpoint {
    seq: u64,
    hash: String,
    mac: Option<String>,
}

/// What [`verify_audit_log_with`] checks beyond the structure.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AuditVerifyOptions {
    keys: Option<AuditKeys>,
    checkpoint: Option<Checkpoint>,
    current_file_only: bool,
}

impl AuditVerifyOptions {
    /// The structure only: hashes, sequence numbers and the file set; MACs are not checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every keyed line's MAC with `keys`; a line made with a version not in `keys` is
    /// an error.
    pub fn with_keys(mut self, keys: AuditKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Checks the key store's checkpoint (`audit/head`): the log must reach record `seq`, and
    /// that record must have `hash` and, when given, `mac` as the newest MAC up to it.
    pub fn with_checkpoint(mut self, seq: u64, hash: String, mac: Option<String>) -> Self {
        self.checkpoint = Some(Checkpoint { seq, hash, mac });
        self
    }

    /// Checks the current file only (bounded, for the status checklist): its first line is
    /// chained to the last line of the newest rotated file, which is read from its end.
    pub fn current_file_only(mut self) -> Self {
        self.current_file_only = true;
        self
    }
}

/// Which records [`read_audit_tail`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditFilter {
    action: Option<String>,
    key: Option<String>,
}

impl AuditFilter {
    /// Every record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only records whose action is `action` (`tek.unwrapped`) or, for a prefix without the
    /// dot, in that family (`tek` matches `tek.created`, `tek.unwrapped`...).
    pub fn with_action(mut self, action: String) -> Self {
        self.action = Some(action);
        self
    }

    /// Only records about the key `key`: the full id (`tek:users@v2`), the id without its
    /// version (`tek:users`), or the name alone, with or without version (`users`,
    /// `users@v2`).
    pub fn with_key(mut self, key: String) -> Self {
        self.key = Some(key);
        self
    }

    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        if let Some(a) = &self.action {
            let family = record
                .action
                .strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if record.action != *a && !family {
                return false;
            }
        }
        if let Some(k) = &self.key {
            let Some(full) = &record.key else {
                return false;
            };
            let unversioned = full.rsplit_once('@').map_or(full.as_str(), |(b, _)| b);
            let name = full.split_once(':').map_or(full.as_str(), |(_, n)| n);
            let bare = unversioned.split_once(':').map_or(unversioned, |(_, n)| n);
            if ![full.as_str(), unversioned, name, bare].contains(&k.as_str()) {
                return false;
            }
        }
        true
    }
}

fn at(path: &Path, n: u64) -> String {
    format!("{} line {n}", path.display())
}

fn corrupt(location: String, detail: String) -> TdeError {
    TdeError::corrupt("audit log", location, detail)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Parses one line read as bytes; `complete` is whether it ended with a newline.
fn parse_bytes(bytes: &[u8], complete: bool, location: impl Fn() -> String) -> Result<AuditRecord> {
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<AuditRecord>(text).map_err(|e| e.to_string()));
    parsed.map_err(|e| {
        let detail = if complete {
            format!("the line is not an audit record ({e}); {INVESTIGATE}")
        } else {
            format!(
                "the last line is incomplete, with no newline ({e}): a write was cut short by a \
                 crash or a full disk (a torn line); the next start of the database moves it \
                 aside to <log>.torn-<time> and records an audit.gap"
            )
        };
        corrupt(location(), detail)
    })
}

fn mac_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The state of the chain after the last line checked.
struct Chain<'a> {
    keys: Option<&'a AuditKeys>,
    checkpoint: Option<&'a Checkpoint>,
    next_seq: u64,
    prev: String,
    prev_mac: String,
    last_mac: Option<String>,
    seen_v2: bool,
    lines: u64,
    macs_checked: u64,
    unauthenticated: u64,
    format1_lines: u64,
    checkpoint_ok: Option<u64>,
}

impl<'a> Chain<'a> {
    fn new(opts: &'a AuditVerifyOptions) -> Self {
        Self {
            keys: opts.keys.as_ref(),
            checkpoint: opts.checkpoint.as_ref().filter(|c| c.seq > 0),
            next_seq: 1,
            prev: ZERO.to_string(),
            prev_mac: ZERO.to_string(),
            last_mac: None,
            seen_v2: false,
            lines: 0,
            macs_checked: 0,
            unauthenticated: 0,
            format1_lines: 0,
            checkpoint_ok: None,
        }
    }

    fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Compares the checkpoint with the record at `seq`, whose hash is `hash` and after which
    /// the newest MAC is `mac`.
    fn compare_checkpoint(
        &mut self,
        seq: u64,
        hash: &str,
        mac: Option<&str>,
        location: impl Fn() -> String,
    ) -> Result<()> {
        let Some(cp) = self.checkpoint else {
            return Ok(());
        };
        if cp.seq != seq {
            return Ok(());
        }
        if cp.hash != hash {
            return Err(corrupt(
                location(),
                format!(
                    "the record at the key store's checkpoint (record {seq}) has another hash \
                     than the checkpoint: the log was rewritten up to or past it; {INVESTIGATE}"
                ),
            ));
        }
        if let Some(want) = &cp.mac
            && mac.is_none_or(|m| !mac_eq(m, want))
        {
            return Err(corrupt(
                location(),
                format!(
                    "the newest MAC at the key store's checkpoint (record {seq}) is not the \
                     checkpoint's: the log was rewritten up to or past it; {INVESTIGATE}"
                ),
            ));
        }
        self.checkpoint_ok = Some(seq);
        Ok(())
    }

    fn line(&mut self, rec: AuditRecord, location: impl Fn() -> String) -> Result<()> {
        let fail = |detail: String| Err(corrupt(location(), detail));
        match rec.v {
            1 if self.seen_v2 => {
                return fail(format!(
                    "a format 1 line after format 2 lines: the writer never does that, the line \
                     was inserted or rewritten; {INVESTIGATE}"
                ));
            }
            1 | 2 => {}
            0 => {
                return fail(format!(
                    "the line has format 0, which does not exist; {INVESTIGATE}"
                ));
            }
            v => {
                return fail(format!(
                    "the line has format {v}, newer than this verifier knows (1 and 2); verify \
                     with a newer heliosdb-cli"
                ));
            }
        }
        if rec.seq != self.next_seq {
            return fail(format!(
                "sequence {} where {} was expected: a line was removed, reordered or inserted; \
                 {INVESTIGATE}",
                rec.seq, self.next_seq
            ));
        }
        if rec.prev != self.prev {
            return fail(format!(
                "the chain is broken: the previous line was changed or removed; {INVESTIGATE}"
            ));
        }
        if rec.digest() != rec.hash {
            return fail(format!(
                "the line's hash does not match its content: it was edited; {INVESTIGATE}"
            ));
        }
        match (rec.akv, &rec.mac) {
            (Some(akv), Some(mac)) => {
                if rec.v == 1 {
                    return fail(format!(
                        "a format 1 line carries a MAC, which only format 2 has: it was edited; \
                         {INVESTIGATE}"
                    ));
                }
                if let Some(keys) = self.keys {
                    let Some(key) = keys.get(akv) else {
                        return fail(format!(
                            "the line's MAC was made with audit key version {akv}, which the key \
                             store does not hold (it holds versions {}): verify against the key \
                             store the log was written with, or restore that key from a backup",
                            keys.describe_versions()
                        ));
                    };
                    let want = rec.compute_mac(key.bytes().expose_secret(), &self.prev_mac);
                    if !mac_eq(&want, mac) {
                        return fail(format!(
                            "the line's MAC (audit key version {akv}) does not match: the line or \
                             the keyed line before it was written without the audit key, by \
                             someone who recomputed the hashes; {INVESTIGATE}"
                        ));
                    }
                    self.macs_checked += 1;
                }
                self.prev_mac = mac.clone();
                self.last_mac = Some(mac.clone());
                self.unauthenticated = 0;
            }
            (None, None) => self.unauthenticated += 1,
            _ => {
                return fail(format!(
                    "the line has an audit key version without a MAC or a MAC without a version: \
                     it was edited; {INVESTIGATE}"
                ));
            }
        }
        if rec.v == 1 {
            self.format1_lines += 1;
        } else {
            self.seen_v2 = true;
        }
        let last_mac = self.last_mac.clone();
        self.compare_checkpoint(rec.seq, &rec.hash, last_mac.as_deref(), &location)?;
        self.lines += 1;
        self.next_seq += 1;
        self.prev = rec.hash;
        Ok(())
    }

    /// Checks the lines of one file. `range` is what a rotated file's name says it holds;
    /// `current` says whether it is the current file (whose last line may be torn). Returns
    /// how many lines it read.
    fn file(
        &mut self,
        mut reader: impl BufRead,
        path: &Path,
        range: Option<(u64, u64)>,
    ) -> Result<u64> {
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| TdeError::io(path, e))?;
            if read == 0 {
                break;
            }
            n += 1;
            let complete = buf.last() == Some(&b'\n');
            if complete {
                buf.pop();
            }
            let rec = parse_bytes(&buf, complete, || at(path, n))?;
            if let Some((first, last)) = range
                && self.next_seq > last
            {
                return Err(corrupt(
                    at(path, n),
                    format!(
                        "the file's name says it holds records {first}..{last}, but it goes on \
                         with record {}: a line was added or the file renamed; {INVESTIGATE}",
                        rec.seq
                    ),
                ));
            }
            self.line(rec, || at(path, n))?;
        }
        if let Some((_, last)) = range
            && self.next_seq <= last
        {
            return Err(corrupt(
                at(path, n + 1),
                format!(
                    "the file ends at record {}, but its name says it holds records up to \
                     {last}: records {}..{last} were removed from its end; {INVESTIGATE}",
                    self.last_seq(),
                    self.next_seq
                ),
            ));
        }
        Ok(n)
    }

    fn finish(
        self,
        files: Vec<PathBuf>,
        end_location: impl Fn() -> String,
    ) -> Result<AuditVerification> {
        if let Some(cp) = self.checkpoint
            && self.last_seq() < cp.seq
        {
            return Err(corrupt(
                end_location(),
                format!(
                    "records were removed from the end of the log: the key store's checkpoint \
                     is at record {}, the log ends at record {}; {INVESTIGATE}",
                    cp.seq,
                    self.last_seq()
                ),
            ));
        }
        Ok(AuditVerification {
            lines: self.lines,
            last_seq: self.last_seq(),
            last_hash: self.prev,
            last_mac: self.last_mac,
            files,
            macs_checked: self.macs_checked,
            unauthenticated_tail: self.unauthenticated,
            checkpoint: self.checkpoint_ok,
            format1_lines: self.format1_lines,
        })
    }
}

/// Checks the structure of the whole file set of the log at `path` (hashes, sequence numbers,
/// files): [`verify_audit_log_with`] without keys or checkpoint.
pub fn verify_audit_log(path: &Path) -> Result<AuditVerification> {
    verify_audit_log_with(path, &AuditVerifyOptions::new())
}

/// Checks the structure of one chain read from `reader`, starting at record 1 (one file, as
/// written before rotation existed); `path` names it in errors.
pub fn verify_lines(reader: impl BufRead, path: &Path) -> Result<AuditVerification> {
    let opts = AuditVerifyOptions::new();
    let mut chain = Chain::new(&opts);
    chain.file(reader, path, None)?;
    chain.finish(vec![path.to_path_buf()], || path.display().to_string())
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// The sequence number of the first line of `path`, if it has a parsable one (`None` for an
/// empty or missing file).
fn first_seq(path: &Path) -> Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TdeError::io(path, e)),
    };
    let mut first = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut first)
        .map_err(|e| TdeError::io(path, e))?;
    Ok(std::str::from_utf8(&first)
        .ok()
        .and_then(|t| serde_json::from_str::<SeqOnly>(t).ok())
        .map(|s| s.seq))
}

/// Checks that the rotated files' names cover records 1.. without gap or overlap, and that the
/// current file (starting at `current_first`) follows them.
fn check_names(log: &Path, rotated: &[RotatedFile], current_first: Option<u64>) -> Result<()> {
    let mut expected = 1u64;
    let mut prev: Option<&RotatedFile> = None;
    for f in rotated {
        let name = file_name(&f.path);
        if f.last < f.first {
            return Err(corrupt(
                f.path.display().to_string(),
                format!(
                    "the file's name says records {}..{}, which is not a range: it was added or \
                     renamed; move it out of the log's directory and verify again",
                    f.first, f.last
                ),
            ));
        }
        if f.first < expected {
            let detail = match prev {
                Some(p) => format!(
                    "file {name} names records {}..{}, which overlap records {}..{} of file {}: \
                     one of them was added or renamed; move the extra one out of the log's \
                     directory and verify again",
                    f.first,
                    f.last,
                    p.first,
                    p.last,
                    file_name(&p.path)
                ),
                None => format!(
                    "file {name} names record 0, and records start at 1: it was added or \
                     renamed; move it out of the log's directory and verify again"
                ),
            };
            return Err(corrupt(f.path.display().to_string(), detail));
        }
        if f.first > expected {
            if current_first == Some(expected) {
                return Err(corrupt(
                    f.path.display().to_string(),
                    format!(
                        "file {name} is extra: it names records {}..{}, but the current file \
                         continues the log from record {expected}; move it out of the log's \
                         directory and verify again",
                        f.first, f.last
                    ),
                ));
            }
            let missing = format::rotated_path(log, expected, f.first - 1);
            return Err(corrupt(
                missing.display().to_string(),
                format!(
                    "records {expected}..{} are missing: file {} was removed; restore it from a \
                     copy of the log shipped off the host, then verify again",
                    f.first - 1,
                    file_name(&missing)
                ),
            ));
        }
        expected = f.last.checked_add(1).ok_or_else(|| {
            corrupt(
                f.path.display().to_string(),
                "the file's name says records up to the largest sequence number: it was added or \
                 renamed; move it out of the log's directory"
                    .to_string(),
            )
        })?;
        prev = Some(f);
    }
    match current_first {
        Some(s) if s > expected => {
            let missing = format::rotated_path(log, expected, s - 1);
            let (location, cause) = if prev.is_some() {
                (
                    missing.display().to_string(),
                    format!(
                        "file {} was removed (the current file starts at record {s}), or lines \
                         were removed from the start of the current file",
                        file_name(&missing)
                    ),
                )
            } else {
                (
                    at(log, 1),
                    format!(
                        "the current file starts at record {s}: file {} was removed, or lines \
                         were removed or reordered at the start of this file",
                        file_name(&missing)
                    ),
                )
            };
            Err(corrupt(
                location,
                format!(
                    "records {expected}..{} are missing: {cause}; restore them from a copy of \
                     the log shipped off the host, then verify again",
                    s - 1
                ),
            ))
        }
        Some(s) if s < expected => {
            let holder = prev.map_or_else(String::new, |p| file_name(&p.path));
            Err(corrupt(
                at(log, 1),
                format!(
                    "the current file starts at record {s}, which file {holder} already covers \
                     (up to record {}): one of them was added, copied or renamed; move the extra \
                     one out of the log's directory and verify again",
                    expected - 1
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Whether the current file exists; a missing log is an error only when it has no rotated
/// files either.
fn current_exists(path: &Path, rotated: &[RotatedFile]) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rotated.is_empty() => Ok(false),
        Err(e) => Err(TdeError::io(path, e)),
    }
}

/// Checks the log at `path`: its whole file set (or, with
/// [`AuditVerifyOptions::current_file_only`], the current file) as one hash chain, the MACs of
/// keyed lines when `opts` has keys, and the checkpoint when it has one. The first problem is
/// reported as a [`TdeError::Corrupt`] naming the file and line.
///
/// A writer may append or rotate meanwhile: when the set's file names changed during the
/// check, or the check failed and the current file's length changed, it is run again (three
/// times at most), so that a rotation or an append in progress is not reported as damage. Read
/// the checkpoint before calling this: the log only grows past it.
pub fn verify_audit_log_with(path: &Path, opts: &AuditVerifyOptions) -> Result<AuditVerification> {
    consistently(path, |r| r.is_err(), || verify_once(path, opts))
}

/// What a writer changes: the rotated files' names and the current file's length.
#[derive(PartialEq, Eq)]
struct SetState {
    names: Vec<PathBuf>,
    current_len: Option<u64>,
}

fn set_state(path: &Path) -> Result<SetState> {
    Ok(SetState {
        names: format::rotated_files(path)?
            .into_iter()
            .map(|f| f.path)
            .collect(),
        current_len: std::fs::metadata(path).ok().map(|m| m.len()),
    })
}

/// Runs `f` until the set's names did not change during it (and, when `grown_matters` says so
/// for its result, neither did the current file's length), three times at most.
fn consistently<T>(
    path: &Path,
    grown_matters: impl Fn(&Result<T>) -> bool,
    f: impl Fn() -> Result<T>,
) -> Result<T> {
    let mut attempt = 1;
    loop {
        let before = set_state(path)?;
        let r = f();
        if attempt == 3 {
            return r;
        }
        let after = set_state(path)?;
        let stable = before.names == after.names
            && (before.current_len == after.current_len || !grown_matters(&r));
        if stable {
            return r;
        }
        attempt += 1;
    }
}

fn verify_once(path: &Path, opts: &AuditVerifyOptions) -> Result<AuditVerification> {
    let rotated = format::rotated_files(path)?;
    let exists = current_exists(path, &rotated)?;
    if opts.current_file_only {
        return verify_current(path, &rotated, exists, opts);
    }
    check_names(path, &rotated, first_seq(path)?)?;
    let mut chain = Chain::new(opts);
    let mut files = Vec::with_capacity(rotated.len() + 1);
    for f in &rotated {
        let file = File::open(&f.path).map_err(|e| TdeError::io(&f.path, e))?;
        chain.file(BufReader::new(file), &f.path, Some((f.first, f.last)))?;
        files.push(f.path.clone());
    }
    let mut n = 0;
    if exists {
        let file = File::open(path).map_err(|e| TdeError::io(path, e))?;
        n = chain.file(BufReader::new(file), path, None)?;
        files.push(path.to_path_buf());
    }
    chain.finish(files, || at(path, n + 1))
}

/// The last record of the newest rotated file and the newest MAC up to it, read backwards.
struct RotatedTail {
    seq: u64,
    hash: String,
    last_mac: Option<String>,
    /// Records after the last keyed one.
    unauthenticated: u64,
    /// Whether a format 2 line was read.
    seen_v2: bool,
}

fn read_rotated_tail(rotated: &[RotatedFile]) -> Result<Option<RotatedTail>> {
    let Some(newest) = rotated.last() else {
        return Ok(None);
    };
    let mut tail: Option<RotatedTail> = None;
    for f in rotated.iter().rev() {
        let mut lines = ReverseLines::open(&f.path)?;
        let mut k = 0u64;
        while let Some((bytes, complete)) = lines.next_line()? {
            k += 1;
            let location = || format!("{} line {k} from the end", f.path.display());
            let rec = parse_bytes(&bytes, complete, location)?;
            if tail.is_none() && rec.seq != newest.last {
                return Err(corrupt(
                    location(),
                    format!(
                        "the file ends at record {}, but its name says it holds records {}..{}: \
                         it was cut or renamed; {INVESTIGATE}",
                        rec.seq, newest.first, newest.last
                    ),
                ));
            }
            let t = tail.get_or_insert_with(|| RotatedTail {
                seq: rec.seq,
                hash: rec.hash.clone(),
                last_mac: None,
                unauthenticated: 0,
                seen_v2: false,
            });
            t.seen_v2 |= rec.v == 2;
            if rec.mac.is_some() {
                t.last_mac = rec.mac;
                return Ok(tail);
            }
            t.unauthenticated += 1;
        }
        if tail.is_none() {
            return Err(corrupt(
                at(&f.path, 1),
                format!(
                    "the file is empty, but its name says it holds records {}..{}: it was \
                     emptied or added; {INVESTIGATE}",
                    f.first, f.last
                ),
            ));
        }
    }
    Ok(tail)
}

fn verify_current(
    path: &Path,
    rotated: &[RotatedFile],
    exists: bool,
    opts: &AuditVerifyOptions,
) -> Result<AuditVerification> {
    let mut chain = Chain::new(opts);
    if let Some(t) = read_rotated_tail(rotated)? {
        chain.next_seq = t.seq + 1;
        chain.prev = t.hash.clone();
        chain.unauthenticated = t.unauthenticated;
        if let Some(m) = &t.last_mac {
            chain.prev_mac = m.clone();
        }
        // A keyed line is format 2; older lines than those read are not looked at.
        chain.seen_v2 = t.seen_v2 || t.last_mac.is_some();
        chain.last_mac = t.last_mac.clone();
        if let Some(newest) = rotated.last() {
            let location = || format!("{} last line", newest.path.display());
            chain.compare_checkpoint(t.seq, &t.hash, t.last_mac.as_deref(), location)?;
        }
    }
    let mut n = 0;
    let mut files = Vec::new();
    if exists {
        if let Some(s) = first_seq(path)?
            && s != chain.next_seq
            && let Some(newest) = rotated.last()
        {
            return Err(corrupt(
                at(path, 1),
                format!(
                    "the current file starts at record {s}, but the newest rotated file {} ends \
                     at record {}: a file was removed, added or renamed; run the full \
                     verification (`security audit verify`)",
                    file_name(&newest.path),
                    chain.last_seq()
                ),
            ));
        }
        let file = File::open(path).map_err(|e| TdeError::io(path, e))?;
        n = chain.file(BufReader::new(file), path, None)?;
        files.push(path.to_path_buf());
    }
    chain.finish(files, || at(path, n + 1))
}

/// Reads a file's lines from its end, in blocks: memory is bounded by the longest line, and
/// each byte is read and copied once.
struct ReverseLines {
    file: File,
    /// Bytes before `pos` are not read yet.
    pos: u64,
    /// The block being scanned; `block[..end]` is not returned yet.
    block: Vec<u8>,
    end: usize,
    /// The parts of the line being assembled that lie after `block`, the latest first.
    pending: Vec<Vec<u8>>,
    /// Nothing returned yet: the next segment is what follows the last newline.
    at_end: bool,
    done: bool,
    path: PathBuf,
}

const BLOCK: u64 = 64 * 1024;

impl ReverseLines {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| TdeError::io(path, e))?;
        let len = file.metadata().map_err(|e| TdeError::io(path, e))?.len();
        Ok(Self {
            file,
            pos: len,
            block: Vec::new(),
            end: 0,
            pending: Vec::new(),
            at_end: true,
            done: len == 0,
            path: path.to_path_buf(),
        })
    }

    /// `block[from..end]` followed by the pending parts, in file order.
    fn assemble(&mut self, from: usize) -> Vec<u8> {
        let mut line = self.block[from..self.end].to_vec();
        for part in self.pending.drain(..).rev() {
            line.extend_from_slice(&part);
        }
        line
    }

    /// The previous line and whether it ended with a newline (only the file's last line can
    /// lack one); `None` at the start of the file.
    fn next_line(&mut self) -> Result<Option<(Vec<u8>, bool)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let segment = if let Some(i) = self.block[..self.end].iter().rposition(|&b| b == b'\n')
            {
                let s = self.assemble(i + 1);
                self.end = i;
                s
            } else if self.pos == 0 {
                self.done = true;
                self.assemble(0)
            } else {
                if self.end > 0 {
                    self.pending.push(self.block[..self.end].to_vec());
                }
                let n = BLOCK.min(self.pos);
                self.pos -= n;
                // n is at most BLOCK, which fits in usize.
                self.block.resize(usize::try_from(n).unwrap_or(0), 0);
                self.file
                    .read_exact_at(&mut self.block, self.pos)
                    .map_err(|e| TdeError::io(&self.path, e))?;
                self.end = self.block.len();
                continue;
            };
            if std::mem::replace(&mut self.at_end, false) {
                if segment.is_empty() {
                    // The file ends with a newline.
                    continue;
                }
                return Ok(Some((segment, false)));
            }
            return Ok(Some((segment, true)));
        }
    }
}

/// The newest `n` records of the log at `path` that pass `filter`, oldest first, across its
/// file set: the current file first, then the rotated files newest first, each read from its
/// end and only until `n` records are found (memory is bounded by `n` and the longest line).
/// A torn last line (no newline, not a record) is skipped; any other unreadable line is an
/// error naming the file and the line counted from its end. A rotation during the read makes
/// it read again (three times at most). Nothing is verified: use [`verify_audit_log_with`]
/// for that.
pub fn read_audit_tail(path: &Path, n: usize, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
    // Read again if a writer rotated the current file meanwhile, which could skip records.
    consistently(path, |_| false, || read_tail_once(path, n, filter))
}

fn read_tail_once(path: &Path, n: usize, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
    let rotated = format::rotated_files(path)?;
    let exists = current_exists(path, &rotated)?;
    let mut out = Vec::new();
    if n == 0 {
        return Ok(out);
    }
    let mut files: Vec<(&Path, bool)> = Vec::with_capacity(rotated.len() + 1);
    if exists {
        files.push((path, true));
    }
    files.extend(rotated.iter().rev().map(|f| (f.path.as_path(), false)));
    'files: for (file, current) in files {
        let mut lines = ReverseLines::open(file)?;
        let mut k = 0u64;
        while let Some((bytes, complete)) = lines.next_line()? {
            k += 1;
            let location = || format!("{} line {k} from the end", file.display());
            let rec = match parse_bytes(&bytes, complete, location) {
                Ok(r) => r,
                Err(_) if current && !complete => continue,
                Err(e) => return Err(e),
            };
            if filter.matches(&rec) {
                out.push(rec);
                if out.len() >= n {
                    break 'files;
                }
            }
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reverse(text: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, text).unwrap();
        let mut r = ReverseLines::open(&p).unwrap();
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn lines_read_backwards_are_the_lines_read_forwards() {
        let l = |s: &str, c: bool| (s.as_bytes().to_vec(), c);
        assert!(reverse(b"").is_empty());
        assert_eq!(reverse(b"\n"), vec![l("", true)]);
        assert_eq!(reverse(b"a\nb\n"), vec![l("b", true), l("a", true)]);
        assert_eq!(reverse(b"a\nb"), vec![l("b", false), l("a", true)]);
        assert_eq!(
            reverse(b"\n\na"),
            vec![l("a", false), l("", true), l("", true)]
        );
        // Lines longer than a block and a file of several blocks.
        let long = "x".repeat(150_000);
        let text = format!("{long}\nshort\n{long}y\n");
        let got = reverse(text.as_bytes());
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, format!("{long}y").into_bytes());
        assert_eq!(got[1].0, b"short".to_vec());
        assert_eq!(got[2].0, long.into_bytes());
        // Newlines right at block boundaries, many lines.
        let lines: Vec<String> = (0..5000).map(|i| "a".repeat(i % 97)).collect();
        let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        let got: Vec<Vec<u8>> = reverse(text.as_bytes()).into_iter().map(|l| l.0).collect();
        let want: Vec<Vec<u8>> = lines.iter().rev().map(|l| l.clone().into_bytes()).collect();
        assert_eq!(got, want);
        let mut exact = "b".repeat(65_535);
        exact.push('\n');
        exact.push_str(&"c".repeat(65_535));
        exact.push('\n');
        let got = reverse(exact.as_bytes());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), 65_535);
        assert_eq!(got[1].0, "b".repeat(65_535).into_bytes());
    }

    #[test]
    fn filters_match_actions_by_name_or_family_and_keys_by_id_or_name() {
        let mut r = AuditRecord {
            action: "tek.unwrapped".into(),
            key: Some("tek:public.users@v2".into()),
            ..Default::default()
        };
        for a in ["tek.unwrapped", "tek"] {
            assert!(AuditFilter::new().with_action(a.into()).matches(&r), "{a}");
        }
        for a in ["tek.unwrap", "te", "mek"] {
            assert!(!AuditFilter::new().with_action(a.into()).matches(&r), "{a}");
        }
        for k in [
            "tek:public.users@v2",
            "tek:public.users",
            "public.users",
            "public.users@v2",
        ] {
            assert!(AuditFilter::new().with_key(k.into()).matches(&r), "{k}");
        }
        for k in ["public", "tek:public.users@v1", "users"] {
            assert!(!AuditFilter::new().with_key(k.into()).matches(&r), "{k}");
        }
        r.key = None;
        assert!(!AuditFilter::new().with_key("x".into()).matches(&r));
    }

    #[test]
    fn audit_keys_debug_lists_versions_only() {
        let key = TableKey::new(
            "t@v1".parse().unwrap(),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
            heliosdb_tde_core::KeyBytes::from_slice(&[0xAB; 32]).unwrap(),
        );
        let keys = AuditKeys::new().with_version(3, Arc::new(key));
        let text = format!(
            "{keys:?} {:?}",
            AuditVerifyOptions::new().with_keys(keys.clone())
        );
        assert!(text.contains("versions: [3]"), "{text}");
        assert!(!text.to_lowercase().contains("abab"), "{text}");
        assert!(!text.contains("171"), "{text}");
    }
}
