//! The audit log's checkpoint: the newest durable record `(seq, hash, mac)` and the records
//! writers lost, kept in the key store's journal entry [`AUDIT_HEAD_ENTRY`]. A log that ends
//! before its checkpoint had records cut from its end.
//!
//! Writers update it with compare-and-set and never move it backwards: several processes may
//! append to one log and checkpoint it. The one exception is a new log (the old one moved aside
//! or deleted): its first writer reports the old checkpoint in an `audit.gap` record and
//! replaces the checkpoint by that record, if it still holds the old value.

use heliosdb_tde_core::store::JOURNAL_CHANGED;
use heliosdb_tde_core::{KeyStore, Result, StoreBatch, TdeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The key-store journal entry holding the audit log's [`AuditCheckpoint`] (JSON). Under
/// `audit/`, so writing it does not change the store's key generation.
pub const AUDIT_HEAD_ENTRY: &str = "audit/head";

/// The newest checkpointed record of the audit log, and records lost by writers that have not
/// yet been reported by an `audit.gap` record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditCheckpoint {
    /// The sequence number of the checkpointed record (durable when the checkpoint was
    /// written).
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
    /// Its `mac` (keyed lines).
    #[serde(default)]
    pub mac: Option<String>,
    /// Records a writer failed to write and no `audit.gap` record has reported yet.
    #[serde(default)]
    pub lost: u64,
    /// The distinct action names of those records, sorted.
    #[serde(default)]
    pub lost_actions: Vec<String>,
}

impl AuditCheckpoint {
    /// A checkpoint at the record `seq` with this `hash` and `mac`, with nothing lost.
    pub fn new(seq: u64, hash: impl Into<String>, mac: Option<String>) -> Self {
        Self {
            seq,
            hash: hash.into(),
            mac,
            lost: 0,
            lost_actions: Vec::new(),
        }
    }

    /// The checkpoint in `store`, if one was written.
    pub async fn read(store: &dyn KeyStore) -> Result<Option<AuditCheckpoint>> {
        match store.get_journal(AUDIT_HEAD_ENTRY).await? {
            Some(bytes) => Ok(Some(Self::from_bytes(&bytes, store)?)),
            None => Ok(None),
        }
    }

    fn from_bytes(bytes: &[u8], store: &dyn KeyStore) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            TdeError::corrupt(
                "audit checkpoint",
                format!("{} journal entry {AUDIT_HEAD_ENTRY}", store.location()),
                format!("it is not an audit checkpoint ({e})"),
            )
        })
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| TdeError::corrupt("audit checkpoint", "serializer", e.to_string()))
    }
}

/// One change to the checkpoint, applied by [`update`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CheckpointUpdate {
    /// Move the checkpoint to this record, unless it already names a newer one.
    pub(crate) head: Option<AuditCheckpoint>,
    /// Records this writer just lost (their action names).
    pub(crate) add_lost: Vec<String>,
    /// How many lost records an `audit.gap` record just reported.
    pub(crate) clear_lost: u64,
    /// A new log began: replace the checkpoint (backwards) by a record of it, if the
    /// checkpoint still names the old log's record. Applied before `head`.
    pub(crate) replace: Option<Replace>,
}

/// The one backwards move of the checkpoint: from `old` (the record of a log that is not there
/// any more) to `new` (the `audit.gap` record of the new log reporting it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replace {
    /// The checkpoint as read when the new log was found (`seq`, `hash`, `mac` compared).
    pub(crate) old: AuditCheckpoint,
    /// The new log's record.
    pub(crate) new: AuditCheckpoint,
}

impl Replace {
    fn matches(&self, current: &AuditCheckpoint) -> bool {
        current.seq == self.old.seq && current.hash == self.old.hash && current.mac == self.old.mac
    }
}

impl CheckpointUpdate {
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
            && self.add_lost.is_empty()
            && self.clear_lost == 0
            && self.replace.is_none()
    }

    fn apply_to(&self, current: Option<&AuditCheckpoint>) -> AuditCheckpoint {
        let mut next = current.cloned().unwrap_or_default();
        // Only while the checkpoint still names the old log's record: if another writer moved
        // it meanwhile (it replaced it first, or the old log is back), it moves forward only.
        if let Some(r) = &self.replace
            && current.is_some_and(|c| r.matches(c))
        {
            next.seq = r.new.seq;
            next.hash.clone_from(&r.new.hash);
            next.mac.clone_from(&r.new.mac);
        }
        if let Some(head) = &self.head
            && (current.is_none() || head.seq > next.seq)
        {
            next.seq = head.seq;
            next.hash.clone_from(&head.hash);
            next.mac.clone_from(&head.mac);
        }
        if !self.add_lost.is_empty() {
            next.lost = next.lost.saturating_add(self.add_lost.len() as u64);
            let mut names: BTreeSet<String> = next.lost_actions.drain(..).collect();
            names.extend(self.add_lost.iter().cloned());
            next.lost_actions = names.into_iter().collect();
        }
        if self.clear_lost > 0 {
            next.lost = next.lost.saturating_sub(self.clear_lost);
            if next.lost == 0 {
                next.lost_actions.clear();
            }
        }
        next
    }
}

fn is_conflict(e: &TdeError) -> bool {
    matches!(e, TdeError::RotationPhase { phase, .. } if phase == JOURNAL_CHANGED)
}

/// Applies `change` to the checkpoint in `store` with compare-and-set, retrying once if
/// another writer changed it meanwhile. Returns the checkpoint as it now stands.
pub(crate) async fn update(
    store: &dyn KeyStore,
    change: &CheckpointUpdate,
) -> Result<AuditCheckpoint> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let old = store.get_journal(AUDIT_HEAD_ENTRY).await?;
        let current = match &old {
            Some(bytes) => Some(AuditCheckpoint::from_bytes(bytes, store)?),
            None => None,
        };
        let next = change.apply_to(current.as_ref());
        if current.as_ref() == Some(&next) {
            return Ok(next);
        }
        let batch = StoreBatch::new()
            .check_journal(AUDIT_HEAD_ENTRY, old)
            .put_journal(AUDIT_HEAD_ENTRY, next.to_bytes()?);
        match store.apply(batch).await {
            Ok(()) => return Ok(next),
            Err(e) if attempt < 2 && is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_never_move_the_head_backwards_and_count_lost_records() {
        let cp = AuditCheckpoint::new(10, "h10", Some("m10".into()));
        let back = CheckpointUpdate {
            head: Some(AuditCheckpoint::new(9, "h9", None)),
            ..Default::default()
        };
        assert_eq!(back.apply_to(Some(&cp)), cp);
        let lost = CheckpointUpdate {
            add_lost: vec![
                "tek.created".into(),
                "mek.rotated".into(),
                "tek.created".into(),
            ],
            ..Default::default()
        };
        let with_lost = lost.apply_to(Some(&cp));
        assert_eq!(with_lost.lost, 3);
        assert_eq!(with_lost.lost_actions, vec!["mek.rotated", "tek.created"]);
        let clear = CheckpointUpdate {
            head: Some(AuditCheckpoint::new(12, "h12", Some("m12".into()))),
            clear_lost: 3,
            ..Default::default()
        };
        let cleared = clear.apply_to(Some(&with_lost));
        assert_eq!(cleared, AuditCheckpoint::new(12, "h12", Some("m12".into())));
        assert!(CheckpointUpdate::default().is_empty());
    }

    #[test]
    fn a_replace_moves_back_only_from_the_old_value_and_keeps_lost_records() {
        let mut old = AuditCheckpoint::new(40, "h40", Some("m40".into()));
        old.lost = 2;
        old.lost_actions = vec!["tek.created".into()];
        let new = AuditCheckpoint::new(1, "n1", Some("nm1".into()));
        let replace = CheckpointUpdate {
            replace: Some(Replace {
                old: AuditCheckpoint::new(40, "h40", Some("m40".into())),
                new: new.clone(),
            }),
            ..Default::default()
        };
        assert!(!replace.is_empty());
        let moved = replace.apply_to(Some(&old));
        assert_eq!((moved.seq, moved.hash.as_str()), (1, "n1"));
        assert_eq!(moved.mac.as_deref(), Some("nm1"));
        assert_eq!((moved.lost, moved.lost_actions.len()), (2, 1));
        // Someone else moved it first: no backwards move.
        let other = AuditCheckpoint::new(41, "h41", Some("m41".into()));
        assert_eq!(replace.apply_to(Some(&other)), other);
        let moved_by_other = AuditCheckpoint::new(1, "x1", None);
        assert_eq!(replace.apply_to(Some(&moved_by_other)), moved_by_other);
        // A head after the replacement moves it forward from there.
        let both = CheckpointUpdate {
            head: Some(AuditCheckpoint::new(2, "n2", Some("nm2".into()))),
            ..replace.clone()
        };
        assert_eq!(both.apply_to(Some(&old)).seq, 2);
    }
}
