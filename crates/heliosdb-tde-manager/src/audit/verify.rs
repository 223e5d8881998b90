//! Verification of an audit log: the hash chain (anyone), the MAC chain (with the audit
//! keys), the file set and the checkpoint.

use super::Line;
use super::ZERO;
use heliosdb_tde_core::{Result, TdeError};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// What [`verify_audit_log`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditVerification {
    /// Lines checked.
    pub lines: u64,
    /// The hash of the last line (to compare with a copy kept elsewhere).
    pub last_hash: String,
}

fn parse_line(text: &str, path: &Path, n: u64) -> Result<Line> {
    serde_json::from_str(text).map_err(|e| {
        TdeError::corrupt(
            "audit log",
            format!("{} line {n}", path.display()),
            e.to_string(),
        )
    })
}

/// Checks the whole chain of the log at `path`.
pub fn verify_audit_log(path: &Path) -> Result<AuditVerification> {
    let file = File::open(path).map_err(|e| TdeError::io(path, e))?;
    verify_lines(BufReader::new(file), path)
}

/// Checks a chain read from `reader`; `path` names it in errors.
pub fn verify_lines(reader: impl BufRead, path: &Path) -> Result<AuditVerification> {
    let mut prev = ZERO.to_string();
    let mut n = 0u64;
    for line in reader.lines() {
        let text = line.map_err(|e| TdeError::io(path, e))?;
        n += 1;
        let l = parse_line(&text, path, n)?;
        let at = format!("{} line {n}", path.display());
        if l.seq != n {
            return Err(TdeError::corrupt(
                "audit log",
                at,
                format!(
                    "sequence {} where {n} was expected: a line was removed or reordered",
                    l.seq
                ),
            ));
        }
        if l.prev != prev {
            return Err(TdeError::corrupt(
                "audit log",
                at,
                "the chain is broken: the previous line was changed or removed",
            ));
        }
        if l.digest() != l.hash {
            return Err(TdeError::corrupt(
                "audit log",
                at,
                "the line's hash does not match its content: it was edited",
            ));
        }
        prev = l.hash;
    }
    Ok(AuditVerification {
        lines: n,
        last_hash: prev,
    })
}
