//! The audit log's line formats, the hash chain and the MAC chain, and the names of the files
//! of a log's set. Shared by the writer ([`super::FileAuditSink`]) and the verifier.
//!
//! Format 1 (no `"v"`): `hash = SHA-256(prev || canonical line without "hash")`.
//! Format 2 (`"v":2`): adds the error kind, the provider, what the writer knows about its
//! process, `akv` (the audit key version) and `mac = HMAC-SHA256(audit key, prev_mac ||
//! canonical line without "mac" and "hash")`, where `prev_mac` is the `mac` of the newest
//! earlier line that has one (all zeros before the first). A line written without the audit key
//! (a command that runs without the subsystem) has neither `akv` nor `mac`; the next line with a
//! MAC covers it through `prev`. `hash` is computed last, over the line with its `mac`.
//! `docs/formats/audit-log.md` is the full description.

use heliosdb_tde_core::{Result, TdeError};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The `prev` of the first line, and the `prev_mac` before the first line with a MAC.
pub const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The line format this crate writes.
pub const FORMAT_VERSION: u32 = 2;

fn is_v1(v: &u32) -> bool {
    *v <= 1
}

fn v1() -> u32 {
    1
}

/// One record of the audit log, as written (both formats). Never holds key material.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuditRecord {
    /// The line format: absent (1) or 2.
    #[serde(default = "v1", skip_serializing_if = "is_v1")]
    pub v: u32,
    /// Sequence number, 1 for the first record of the log (across its whole file set).
    pub seq: u64,
    /// When, RFC 3339 (UTC).
    pub at: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The action's stable name (`AuditAction::name`).
    pub action: String,
    /// The key, if any (`tek:users@v1`, `mek:master@v2`).
    pub key: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    /// The error's message, for a failure.
    pub error: Option<String>,
    /// The error's stable kind (`TdeError::kind`), for a failure. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The provider kind involved (`secure-file`, `pkcs11-hsm`...). Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Free-form, non-secret detail.
    pub detail: String,
    /// The writer's process id. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The writer's user id. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The user name of `uid` (from the password database), if it has one. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The writer's executable. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The host name. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The security mode of the writer (`production`, `development`), if it knows it. Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The `hash` of the previous record (all zeros for the first).
    pub prev: String,
    /// The audit key version the `mac` was made with. Format 2, keyed lines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akv: Option<u32>,
    /// HMAC-SHA256 under the audit key, hex. Format 2, keyed lines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// SHA-256 of `prev` and the canonical line without `hash`, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl AuditRecord {
    /// The canonical bytes of the line without `hash` (and without `mac` when `with_mac` is
    /// false): its JSON serialization with fields in declaration order.
    fn canonical(&self, with_mac: bool) -> Vec<u8> {
        let mut c = self.clone();
        c.hash = String::new();
        if !with_mac {
            c.mac = None;
        }
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(&c).unwrap_or_default()
    }

    /// The hash this record should carry: `SHA-256(prev || canonical without hash)`, hex.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(self.canonical(true));
        hex::encode(h.finalize())
    }

    /// The MAC this record should carry under `key`, after the line whose MAC was `prev_mac`:
    /// `HMAC-SHA256(key, prev_mac || canonical without mac and hash)`, hex.
    pub fn compute_mac(&self, key: &[u8], prev_mac: &str) -> String {
        // HMAC takes keys of any length, so this never fails; if it did, the empty MAC would
        // match no record.
        let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
            return String::new();
        };
        m.update(prev_mac.as_bytes());
        m.update(&self.canonical(false));
        hex::encode(m.finalize().into_bytes())
    }

    /// Completes a record for appending after the line whose hash is `prev` (and, with a key,
    /// whose newest MAC is `prev_mac`): sets `prev`, `akv` and `mac` (keyed) and then `hash`.
    pub fn seal(&mut self, prev: &str, key: Option<(u32, &[u8], &str)>) {
        self.prev = prev.to_string();
        self.hash = String::new();
        match key {
            Some((version, key, prev_mac)) => {
                self.akv = Some(version);
                self.mac = None;
                self.mac = Some(self.compute_mac(key, prev_mac));
            }
            None => {
                self.akv = None;
                self.mac = None;
            }
        }
        self.hash = self.digest();
    }

    /// Whether the record is a success.
    pub fn is_success(&self) -> bool {
        self.outcome == "success"
    }
}

/// Parses one line; `path` and `n` (1-based line number in its file) name it in errors.
pub fn parse_record(text: &str, path: &Path, n: u64) -> Result<AuditRecord> {
    serde_json::from_str(text).map_err(|e| {
        TdeError::corrupt(
            "audit log",
            format!("{} line {n}", path.display()),
            format!("the line is not an audit record ({e})"),
        )
    })
}

/// The name a full file of the log at `log` is renamed to: `<log>.<first seq>-<last seq>`.
pub fn rotated_path(log: &Path, first: u64, last: u64) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first}-{last}"));
    log.with_file_name(name)
}

/// The name a torn last line is moved to: `<log>.torn-<at>`.
pub fn torn_path(log: &Path, at: &str) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".torn-{at}"));
    log.with_file_name(name)
}

/// One rotated file of a log's set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotatedFile {
    /// Its path.
    pub path: PathBuf,
    /// The first sequence number its name says it holds.
    pub first: u64,
    /// The last sequence number its name says it holds.
    pub last: u64,
}

/// The rotated files of the log at `log` (`<log>.<first>-<last>`), oldest first. The current
/// file (`log` itself), torn-line files and anything else in the directory are not listed.
pub fn rotated_files(log: &Path) -> Result<Vec<RotatedFile>> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(base) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TdeError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TdeError::io(&dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(range) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            continue;
        }
        let (Ok(first), Ok(last)) = (a.parse::<u64>(), b.parse::<u64>()) else {
            continue;
        };
        out.push(RotatedFile {
            path: entry.path(),
            first,
            last,
        });
    }
    out.sort_by_key(|f| (f.first, f.last));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> AuditRecord {
        AuditRecord {
            v: FORMAT_VERSION,
            seq,
            at: "2026-12-02T00:00:00Z".into(),
            at_ms: 1,
            action: "tek.created".into(),
            key: Some("tek:t@v1".into()),
            outcome: "success".into(),
            detail: "d".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_keyed_record_round_trips_and_its_mac_binds_key_chain_and_content() {
        let key = [7u8; 32];
        let mut r = record(1);
        r.seal(ZERO, Some((1, &key, ZERO)));
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with("{\"v\":2,"), "{text}");
        let back = parse_record(&text, Path::new("l"), 1).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.digest(), back.hash);
        let mac = back.mac.clone().unwrap();
        assert_eq!(back.compute_mac(&key, ZERO), mac);
        assert_ne!(back.compute_mac(&[8u8; 32], ZERO), mac, "another key");
        assert_ne!(
            back.compute_mac(&key, &"1".repeat(64)),
            mac,
            "another chain"
        );
        let mut edited = back.clone();
        edited.detail = "e".into();
        assert_ne!(edited.compute_mac(&key, ZERO), mac, "another content");
    }

    #[test]
    fn a_format_1_line_keeps_its_canonical_form() {
        // Written by the first release: no "v", no format 2 fields.
        let mut r = record(1);
        r.v = 1;
        r.seal(ZERO, None);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with("{\"seq\":1,"), "{text}");
        assert!(
            !text.contains("\"mac\"") && !text.contains("\"akv\""),
            "{text}"
        );
        let back = parse_record(&text, Path::new("l"), 1).unwrap();
        assert_eq!(back.v, 1);
        assert_eq!(back.digest(), back.hash);
    }

    #[test]
    fn rotated_file_names_are_listed_in_order_and_others_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        for n in [
            "audit.log",
            "audit.log.11-20",
            "audit.log.1-10",
            "audit.log.torn-2026",
            "audit.log.lock",
            "audit.log.x-1",
            "other.log.1-3",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let files = rotated_files(&log).unwrap();
        let ranges: Vec<(u64, u64)> = files.iter().map(|f| (f.first, f.last)).collect();
        assert_eq!(ranges, vec![(1, 10), (11, 20)]);
        assert_eq!(rotated_path(&log, 1, 10), dir.path().join("audit.log.1-10"));
    }
}
