//! A tamper-evident audit log: one JSON object per line, each chained to the previous one by
//! SHA-256.
//!
//! ```text
//! {"seq":1,"at":"2026-11-29T21:08:06Z","at_ms":...,"action":"tek.created","key":"tek:users@v1",
//!  "outcome":"success","error":null,"detail":"...","prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `hash = SHA-256(prev || canonical JSON of the line without "hash")`, with `prev` of the first
//! line all zeros. Deleting, reordering or editing a line breaks the chain, which
//! [`verify_audit_log`] reports with the line number. (Rewriting the whole file, chain included,
//! is not detected: ship the log to another host for that.) Each line is fsynced before
//! `record` returns. Events never contain key material.

pub mod format;
pub mod verify;

pub use verify::{AuditVerification, verify_audit_log, verify_lines};

use heliosdb_tde_core::{AuditEvent, AuditOutcome, AuditSink, Result, TdeError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    seq: u64,
    at: String,
    at_ms: u64,
    action: String,
    key: Option<String>,
    outcome: String,
    error: Option<String>,
    detail: String,
    prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hash: String,
}

impl Line {
    fn digest(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let canonical = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(&canonical);
        hex::encode(h.finalize())
    }
}

pub(crate) const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct Tail {
    file: File,
    seq: u64,
    last: String,
    /// The file's length after this sink's last append: a different length at the next append
    /// means another process appended meanwhile, and the chain's tail is read again.
    len: u64,
}

/// An append-only, hash-chained JSON-lines audit log.
pub struct FileAuditSink {
    path: PathBuf,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for FileAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAuditSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileAuditSink {
    /// Opens (or creates, mode 0600) the log at `path`, verifying the existing chain so that
    /// new lines extend it. A missing directory is created with mode 0700 (and so are its
    /// missing parents): the log names every key and table.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| TdeError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| TdeError::io(path, e))?;
        // Read the tail under the same lock appends take, so that a concurrent writer in
        // another process (a CLI command recording an event while the database runs) is
        // never half-seen.
        file.lock().map_err(|e| TdeError::io(path, e))?;
        let tail = (|| {
            let len = file.metadata().map_err(|e| TdeError::io(path, e))?.len();
            let (seq, last) = if len > 0 {
                let v = verify_audit_log(path)?;
                (v.lines, v.last_hash)
            } else {
                (0, ZERO.to_string())
            };
            Ok::<_, TdeError>((seq, last, len))
        })();
        let _ = file.unlock();
        let (seq, last, len) = tail?;
        Ok(Self {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                seq,
                last,
                len,
            }),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl AuditSink for FileAuditSink {
    async fn record(&self, event: AuditEvent) -> Result<()> {
        let mut tail = self
            .tail
            .lock()
            .map_err(|_| TdeError::ProviderUnavailable {
                provider: format!("audit log {}", self.path.display()),
                reason: "internal lock poisoned".into(),
                retryable: false,
            })?;
        // Appends from several processes (the database and a CLI command) take an exclusive
        // lock on the file, and each writer reads the chain's tail again when the file grew
        // behind its back, so that the chain stays whole.
        tail.file.lock().map_err(|e| TdeError::io(&self.path, e))?;
        let r = self.append_locked(&mut tail, event);
        let _ = tail.file.unlock();
        r
    }
}

impl FileAuditSink {
    fn append_locked(&self, tail: &mut Tail, event: AuditEvent) -> Result<()> {
        let len = tail
            .file
            .metadata()
            .map_err(|e| TdeError::io(&self.path, e))?
            .len();
        if len != tail.len {
            let v = verify_audit_log(&self.path)?;
            tail.seq = v.lines;
            tail.last = v.last_hash;
        }
        let (outcome, error) = match &event.outcome {
            AuditOutcome::Success => ("success".to_string(), None),
            AuditOutcome::Failure(e) => ("failure".to_string(), Some(e.clone())),
            // An outcome added to core later is not a success this sink knows of.
            _ => (
                "failure".to_string(),
                Some("unrecognised outcome".to_string()),
            ),
        };
        let mut line = Line {
            seq: tail.seq + 1,
            at: event.at.to_string(),
            at_ms: event.at.as_millis(),
            action: event.action.name().to_string(),
            key: event.key.map(|k| k.to_string()),
            outcome,
            error,
            detail: event.detail,
            prev: tail.last.clone(),
            hash: String::new(),
        };
        line.hash = line.digest();
        let mut text = serde_json::to_string(&line)
            .map_err(|e| TdeError::corrupt("audit event", "serializer", e.to_string()))?;
        text.push('\n');
        tail.file
            .write_all(text.as_bytes())
            .and_then(|()| tail.file.sync_data())
            .map_err(|e| TdeError::io(&self.path, e))?;
        tail.seq = line.seq;
        tail.last = line.hash;
        tail.len = tail
            .file
            .metadata()
            .map_err(|e| TdeError::io(&self.path, e))?
            .len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::{AuditAction, KeyId};

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
