//! A tamper-evident audit log: one JSON object per line, each chained to the previous one by
//! SHA-256 and, once the audit key is attached, by an HMAC under it.
//!
//! ```text
//! {"v":2,"seq":7,"at":"2026-12-02T17:03:00Z","at_ms":...,"action":"tek.created",
//!  "key":"tek:users@v1","outcome":"success","error":null,"detail":"...","pid":...,"uid":...,
//!  "user":"heliosdb","exe":"...","host":"db1","mode":"production","prev":"<64 hex>",
//!  "akv":1,"mac":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! [`format`](mod@format) defines both line formats, the hash chain and the MAC chain. The writer,
//! [`FileAuditSink`]:
//!
//! * writes format 2 lines, continuing any existing chain (format 1 lines included); lines
//!   written before [`AuditSink::attach_key`](heliosdb_tde_core::AuditSink::attach_key) (a
//!   command that runs without the subsystem) have no `akv`/`mac`;
//! * makes state-changing records durable before `record` returns; `tek.unwrapped` records are
//!   fsynced by a group commit at most 100 ms later with [`AuditFsync::Batched`] (the default),
//!   at once with [`AuditFsync::Always`];
//! * keeps a checkpoint (the newest durable record, and records lost) in the key store's
//!   journal entry [`AUDIT_HEAD_ENTRY`], after every state-changing record and every 1,000
//!   unwrap records or 10 s;
//! * renames a file that reached [`AuditLogOptions::max_file_bytes`] to `<log>.<first>-<last>`
//!   and continues the chain in a new file; nothing is ever deleted;
//! * sets an incomplete last line (a crash during an append) aside in `<log>.torn-<time>` and
//!   reports it, like records it failed to write, with an `audit.gap` record;
//! * shares the log with other processes: every append takes an exclusive lock on
//!   `<log>.lock` and first reads what others appended or rotated.
//!
//! [`verify_audit_log`] checks a file's chain. Events never contain key material.

mod append;
mod checkpoint;
mod files;
pub mod format;
mod group_commit;
mod process;
pub mod verify;
mod writer;

pub use checkpoint::{AUDIT_HEAD_ENTRY, AuditCheckpoint};
pub use format::AuditRecord;
pub use verify::{
    AuditFilter, AuditKeys, AuditVerification, AuditVerifyOptions, read_audit_tail,
    verify_audit_log, verify_audit_log_with, verify_lines,
};
pub use writer::FileAuditSink;

use heliosdb_tde_core::{Result, SecurityMode, TdeError};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The default size at which the current file is rotated: 64 MiB.
pub const DEFAULT_AUDIT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How long a `tek.unwrapped` record may wait for its fsync with [`AuditFsync::Batched`].
pub const GROUP_COMMIT_DELAY: Duration = Duration::from_millis(100);

/// When `tek.unwrapped` records are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditFsync {
    /// Every record is fsynced before `record` returns.
    Always,
    /// State-changing records are fsynced before `record` returns; `tek.unwrapped` records are
    /// written at once and fsynced by a group commit at most [`GROUP_COMMIT_DELAY`] later (and
    /// before any state-changing record).
    #[default]
    Batched,
}

impl AuditFsync {
    /// The policy's name: `always` or `batched`.
    pub fn name(self) -> &'static str {
        match self {
            AuditFsync::Always => "always",
            AuditFsync::Batched => "batched",
        }
    }
}

impl fmt::Display for AuditFsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AuditFsync {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(AuditFsync::Always),
            "batched" => Ok(AuditFsync::Batched),
            other => Err(TdeError::config(
                "audit_fsync",
                format!("{other:?} is not a fsync policy; use \"always\" or \"batched\""),
            )),
        }
    }
}

/// How [`FileAuditSink::open_with`] writes the log. Build with [`AuditLogOptions::new`] and
/// the `with_` methods.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditLogOptions {
    /// The size at which the current file is rotated (default
    /// [`DEFAULT_AUDIT_MAX_FILE_BYTES`]).
    pub max_file_bytes: u64,
    /// When `tek.unwrapped` records are fsynced (default [`AuditFsync::Batched`]).
    pub fsync: AuditFsync,
    /// The security mode written into every line, if known.
    pub mode: Option<SecurityMode>,
    /// `tek.unwrapped` records between two checkpoints at most (default 1,000).
    pub checkpoint_records: u64,
    /// Time between two checkpoints at most while only `tek.unwrapped` records are written
    /// (default 10 s; checked when a record is written).
    pub checkpoint_interval: Duration,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_AUDIT_MAX_FILE_BYTES,
            fsync: AuditFsync::default(),
            mode: None,
            checkpoint_records: 1_000,
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

impl AuditLogOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rotates the current file when it reaches `bytes` (at least 1).
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes.max(1);
        self
    }

    /// Sets the fsync policy.
    pub fn with_fsync(mut self, fsync: AuditFsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// Sets the security mode written into every line.
    pub fn with_mode(mut self, mode: SecurityMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Checkpoints after `records` `tek.unwrapped` records (at least 1) or `interval`,
    /// whichever comes first.
    pub fn with_checkpoint_every(mut self, records: u64, interval: Duration) -> Self {
        self.checkpoint_records = records.max(1);
        self.checkpoint_interval = interval;
        self
    }
}

/// What a [`FileAuditSink`] did since it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditSinkStats {
    /// Records written (`audit.gap` records included).
    pub written: u64,
    /// Records that could not be written, and failed group-commit fsyncs.
    pub write_failures: u64,
    /// The sequence number of the newest record the sink knows of.
    pub last_seq: u64,
    /// The sequence number of the last checkpoint this sink wrote or read.
    pub last_checkpoint: Option<u64>,
    /// Whether the audit key is attached (lines carry a MAC).
    pub keyed: bool,
    /// The attached audit key's version.
    pub akv: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::{AuditAction, AuditEvent, AuditSink, KeyId};
    use std::path::Path;

    #[test]
    fn fsync_policies_parse_by_name_and_options_build() {
        for f in [AuditFsync::Always, AuditFsync::Batched] {
            assert_eq!(f.name().parse::<AuditFsync>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(AuditFsync::default(), AuditFsync::Batched);
        let e = "sometimes".parse::<AuditFsync>().unwrap_err().to_string();
        assert!(e.contains("audit_fsync") && e.contains("always"), "{e}");
        let o = AuditLogOptions::new()
            .with_max_file_bytes(10)
            .with_fsync(AuditFsync::Always)
            .with_mode(SecurityMode::Production);
        assert_eq!(o.max_file_bytes, 10);
        assert_eq!(o.fsync, AuditFsync::Always);
        assert_eq!(o.mode, Some(SecurityMode::Production));
        assert_eq!(
            AuditLogOptions::default().max_file_bytes,
            DEFAULT_AUDIT_MAX_FILE_BYTES
        );
    }

    async fn write(path: &Path, n: usize) {
        let sink = FileAuditSink::open(path).unwrap();
        for i in 0..n {
            let key: KeyId = format!("tek:t{i}@v1").parse().unwrap();
            sink.record(AuditEvent::success(AuditAction::TekCreated, Some(key), "d"))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn two_writers_on_one_log_keep_one_chain() {
        // Two sinks on one file, as the database and a CLI command in two processes: appends
        // interleave and the chain stays whole.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = FileAuditSink::open(&path).unwrap();
        let b = FileAuditSink::open(&path).unwrap();
        for i in 0..10 {
            let sink = if i % 3 == 0 { &b } else { &a };
            sink.record(AuditEvent::success(
                AuditAction::BackupWritten,
                None,
                format!("e{i}"),
            ))
            .await
            .unwrap();
        }
        let v = verify_audit_log(&path).unwrap();
        assert_eq!(v.lines, 10);
    }

    #[tokio::test]
    async fn chain_verifies_and_extends_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 3).await;
        write(&path, 2).await;
        let v = verify_audit_log(&path).unwrap();
        assert_eq!(v.lines, 5);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Issue 9, item 10: the log's directory is created 0700, not with the umask's 0755.
    #[tokio::test]
    async fn a_missing_log_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log").join("tde").join("audit.log");
        write(&path, 1).await;
        for d in [dir.path().join("log"), dir.path().join("log").join("tde")] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700,
                "{}",
                d.display()
            );
        }
        assert_eq!(verify_audit_log(&path).unwrap().lines, 1);
    }

    #[tokio::test]
    async fn edits_deletions_and_reorders_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 4).await;
        let good = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let check = |text: String, needle: &str| {
            std::fs::write(&path, text).unwrap();
            let e = verify_audit_log(&path).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        check(good.replace("tek:t2@v1", "tek:t9@v1"), "line 3");
        check(
            format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]),
            "line 2",
        );
        check(
            format!("{}\n{}\n{}\n{}\n", lines[1], lines[0], lines[2], lines[3]),
            "line 1",
        );
        check(format!("{good}not json\n"), "line 5");
        // Reopening a damaged log refuses to extend it.
        assert!(FileAuditSink::open(&path).is_err());
    }
}
