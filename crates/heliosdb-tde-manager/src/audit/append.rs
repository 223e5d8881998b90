//! The append path of [`FileAuditSink`](super::FileAuditSink): the pending `audit.gap`
//! record, the event's record, rotation, the checkpoint decision, and the accounting of
//! records that could not be written.

use super::AuditFsync;
use super::checkpoint::{self, AuditCheckpoint, CheckpointUpdate};
use super::files::{Flock, write_line};
use super::format::{self, AuditRecord, FORMAT_VERSION};
use super::writer::{Inner, Job, State};
use heliosdb_tde_core::{AuditAction, AuditEvent, AuditOutcome, Result, TdeError};
use std::time::Instant;

pub(super) fn record_of(event: AuditEvent) -> AuditRecord {
    let (outcome, error) = match event.outcome {
        AuditOutcome::Success => ("success", None),
        AuditOutcome::Failure(e) => ("failure", Some(e)),
        // An outcome added to core later is not a success this sink knows of.
        _ => ("failure", Some("unrecognised outcome".to_string())),
    };
    AuditRecord {
        v: FORMAT_VERSION,
        at: event.at.to_string(),
        at_ms: event.at.as_millis(),
        action: event.action.name().to_string(),
        key: event.key.map(|k| k.to_string()),
        outcome: outcome.to_string(),
        error,
        error_kind: event.error_kind.map(str::to_string),
        provider: event.provider.map(|p| p.name().to_string()),
        detail: event.detail,
        ..AuditRecord::default()
    }
}

impl Inner {
    /// Seals and appends one record (under the flock), fsyncing it if `durable` or the
    /// policy is `always`.
    fn write_record(&self, st: &mut State, mut rec: AuditRecord, durable: bool) -> Result<()> {
        rec.seq = st.tail.seq + 1;
        self.facts.fill(&mut rec);
        {
            let key = st.key.as_ref().map(|k| {
                (
                    k.akv,
                    k.key.bytes().expose_secret().as_slice(),
                    st.tail.prev_mac.as_str(),
                )
            });
            rec.seal(&st.tail.hash, key);
        }
        let mut text = serde_json::to_vec(&rec)
            .map_err(|e| TdeError::corrupt("audit event", "serializer", e.to_string()))?;
        text.push(b'\n');
        if let Err(e) = write_line(&st.file, &text) {
            // A short write must not leave half a line for the next record to follow.
            let _ = st.file.set_len(st.len);
            return Err(TdeError::io(&self.path, e));
        }
        st.len += text.len() as u64;
        st.lines += 1;
        st.first_seq.get_or_insert(rec.seq);
        st.tail.seq = rec.seq;
        st.tail.hash = rec.hash;
        if let Some(mac) = rec.mac {
            st.tail.prev_mac = mac;
            st.tail.last_akv = rec.akv;
            st.last_akv_in_log = rec.akv;
        }
        st.written += 1;
        if durable || self.options.fsync == AuditFsync::Always {
            st.file
                .sync_data()
                .map_err(|e| TdeError::io(&self.path, e))?;
            st.dirty = false;
        } else {
            st.dirty = true;
            if let Some(s) = &self.syncer {
                s.mark_dirty();
            }
        }
        Ok(())
    }

    /// The synchronous part of `record`: the pending gap, then the event, then rotation and
    /// the checkpoint decision.
    pub(super) fn append(&self, event: AuditEvent) -> (Result<()>, Option<Job>) {
        let action = event.action;
        let mut st = self.state();
        let r = (|| {
            let _flock = Flock::take(&self.lock, &self.path)?;
            self.refresh(&mut st)?;
            if !st.gap.is_empty() {
                let gap = std::mem::take(&mut st.gap);
                let reported = gap.lost_count() + gap.foreign;
                let rec = record_of(AuditEvent::success(
                    AuditAction::AuditGap,
                    None,
                    gap.detail(),
                ));
                if let Err(e) = self.write_record(&mut st, rec, true) {
                    st.gap = gap;
                    return Err(e);
                }
                st.clear_lost += reported;
                st.since_checkpoint += 1;
            }
            let durable = action.is_state_changing();
            self.write_record(&mut st, record_of(event), durable)?;
            st.since_checkpoint += 1;
            if st.len >= self.options.max_file_bytes {
                self.rotate(&mut st);
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                let job = self.checkpoint_due(&mut st, action);
                (Ok(()), job)
            }
            Err(e) => {
                st.write_failures += 1;
                *st.gap.lost.entry(action.name().to_string()).or_insert(0) += 1;
                tracing::error!(
                    target: "heliosdb::tde::audit",
                    "audit record {} could not be written to {}: {e}; an audit.gap record will \
                     report it at the next successful write",
                    action.name(),
                    self.path.display()
                );
                let job = st.key.as_ref().map(|k| {
                    let change = CheckpointUpdate {
                        add_lost: vec![action.name().to_string()],
                        ..CheckpointUpdate::default()
                    };
                    (k.store.clone(), change)
                });
                (Err(e), job)
            }
        }
    }

    /// Whether the record just written moves the checkpoint: every state-changing record, and
    /// unwraps every `checkpoint_records` records or `checkpoint_interval`. The line it names
    /// is made durable first.
    fn checkpoint_due(&self, st: &mut State, action: AuditAction) -> Option<Job> {
        let store = st.key.as_ref()?.store.clone();
        let due = action.is_state_changing()
            || st.clear_lost > 0
            || st.since_checkpoint >= self.options.checkpoint_records
            || st.checkpoint_at.elapsed() >= self.options.checkpoint_interval;
        if !due {
            return None;
        }
        if st.dirty {
            if let Err(e) = st.file.sync_data() {
                tracing::error!(
                    target: "heliosdb::tde::audit",
                    "audit log {}: fsync before the checkpoint failed: {e}",
                    self.path.display()
                );
                return None;
            }
            st.dirty = false;
        }
        st.since_checkpoint = 0;
        st.checkpoint_at = Instant::now();
        let change = CheckpointUpdate {
            head: Some(AuditCheckpoint::new(
                st.tail.seq,
                st.tail.hash.clone(),
                Some(st.tail.prev_mac.clone()).filter(|m| m != format::ZERO),
            )),
            clear_lost: std::mem::take(&mut st.clear_lost),
            ..CheckpointUpdate::default()
        };
        Some((store, change))
    }

    /// Applies a checkpoint change; failures are logged, never returned.
    pub(super) async fn checkpoint(&self, job: Job) {
        let (store, change) = job;
        if change.is_empty() {
            return;
        }
        match checkpoint::update(&*store, &change).await {
            Ok(cp) => {
                let mut st = self.state();
                if st.last_checkpoint.is_none_or(|s| cp.seq > s) {
                    st.last_checkpoint = Some(cp.seq);
                }
            }
            Err(e) => {
                if change.clear_lost > 0 {
                    self.state().clear_lost += change.clear_lost;
                }
                tracing::warn!(
                    target: "heliosdb::tde::audit",
                    "audit log {}: the checkpoint in the key store was not updated: {e}",
                    self.path.display()
                );
            }
        }
    }
}
