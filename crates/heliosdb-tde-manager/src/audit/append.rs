//! The append path of [`FileAuditSink`](super::FileAuditSink): the pending `audit.gap`
//! record, the event's record, rotation, the checkpoint decision, and the accounting of
//! records that could not be written.

use super::AuditFsync;
use super::checkpoint::{self, AuditCheckpoint, CheckpointUpdate, Replace};
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
        // Only a successful change of key state moves the checkpoint at once: a command that
        // changes no key, or fails, leaves the key store byte-identical.
        let moves_checkpoint = event.is_success() && action.changes_key_state();
        // Cache-miss records move it with the periodic rule (count or time), and only they: a
        // start or a failed command never writes the key store, however long it takes.
        let periodic = action == AuditAction::TekUnwrapped;
        let mut st = self.state();
        let r = (|| {
            let _flock = Flock::take(&self.lock, &self.path)?;
            self.refresh(&mut st)?;
            self.write_gap(&mut st)?;
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
                let job = self.checkpoint_due(&mut st, moves_checkpoint, periodic);
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

    /// Writes the pending `audit.gap` record, if any (under the flock, after a refresh). A gap
    /// that reports a new log is a failure; once durable, the checkpoint is to be replaced by
    /// it. It is dropped if the log turns out not to be a new log after all
    /// ([`Inner::is_new_log`] asked again: another writer continued it, keyed it, or it
    /// reached the checkpoint).
    fn write_gap(&self, st: &mut State) -> Result<()> {
        if let Some(old) = st.gap.new_log.clone()
            && !self
                .is_new_log(st, &old, st.gap.new_log_opened_empty)
                .unwrap_or(false)
        {
            tracing::warn!(
                target: "heliosdb::tde::audit",
                "audit log {}: another writer continued it since it was opened; the key \
                 store's checkpoint (record {}) is left to it",
                self.path.display(),
                old.seq
            );
            st.gap.new_log = None;
        }
        if st.gap.is_empty() {
            return Ok(());
        }
        let gap = std::mem::take(&mut st.gap);
        let reported = gap.lost_count() + gap.foreign;
        let event = match &gap.new_log {
            Some(old) => {
                let error = TdeError::corrupt(
                    "audit log",
                    self.path.display().to_string(),
                    format!(
                        "the key store's checkpoint is at record {} of a log that is not here, \
                         and this log was new when it was opened; the checkpoint now names \
                         this record. If the old log was not moved aside on purpose, find it \
                         and check it with `heliosdb-cli security audit verify --path <file>`",
                        old.seq
                    ),
                );
                AuditEvent::failure(AuditAction::AuditGap, None, &error, gap.detail())
            }
            None => AuditEvent::success(AuditAction::AuditGap, None, gap.detail()),
        };
        if let Err(e) = self.write_record(st, record_of(event), true) {
            st.gap = gap;
            return Err(e);
        }
        st.clear_lost += reported;
        st.since_checkpoint += 1;
        if let Some(old) = gap.new_log {
            st.pending_replace = Some(Replace {
                old,
                new: self.tail_checkpoint(st),
            });
        }
        Ok(())
    }

    /// The newest record as a checkpoint.
    fn tail_checkpoint(&self, st: &State) -> AuditCheckpoint {
        AuditCheckpoint::new(
            st.tail.seq,
            st.tail.hash.clone(),
            Some(st.tail.prev_mac.clone()).filter(|m| m != format::ZERO),
        )
    }

    /// Writes the pending `audit.gap` record alone (when a new log was found at
    /// `attach_key`) and returns the checkpoint change it calls for. A failure is logged and
    /// counted; the gap stays pending for the next record.
    pub(super) fn append_gap(&self) -> Option<Job> {
        let mut st = self.state();
        let r = (|| {
            let _flock = Flock::take(&self.lock, &self.path)?;
            self.refresh(&mut st)?;
            self.write_gap(&mut st)
        })();
        match r {
            Ok(()) => self.checkpoint_due(&mut st, false, false),
            Err(e) => {
                st.write_failures += 1;
                tracing::error!(
                    target: "heliosdb::tde::audit",
                    "audit record audit.gap could not be written to {}: {e}; it is written \
                     before the next record",
                    self.path.display()
                );
                None
            }
        }
    }

    /// Whether the record just written moves the checkpoint: a successful change of key state
    /// ([`AuditAction::changes_key_state`]), a gap record that settles lost records or starts a
    /// new log, and a `tek.unwrapped` record (`periodic`) once `checkpoint_records` records
    /// have passed or `checkpoint_interval` since the last checkpoint. The line it names is
    /// made durable first.
    fn checkpoint_due(
        &self,
        st: &mut State,
        key_state_changed: bool,
        periodic: bool,
    ) -> Option<Job> {
        let store = st.key.as_ref()?.store.clone();
        let due = key_state_changed
            || st.clear_lost > 0
            || st.pending_replace.is_some()
            || (periodic
                && (st.since_checkpoint >= self.options.checkpoint_records
                    || st.checkpoint_at.elapsed() >= self.options.checkpoint_interval));
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
            head: Some(self.tail_checkpoint(st)),
            clear_lost: std::mem::take(&mut st.clear_lost),
            replace: st.pending_replace.take(),
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
                // After a replacement the store's checkpoint is the truth, even backwards.
                if change.replace.is_some() || st.last_checkpoint.is_none_or(|s| cp.seq > s) {
                    st.last_checkpoint = Some(cp.seq);
                }
            }
            Err(e) => {
                let mut st = self.state();
                if change.clear_lost > 0 {
                    st.clear_lost += change.clear_lost;
                }
                if let Some(r) = change.replace {
                    // Retried with the next checkpoint.
                    st.pending_replace.get_or_insert(r);
                }
                drop(st);
                tracing::warn!(
                    target: "heliosdb::tde::audit",
                    "audit log {}: the checkpoint in the key store was not updated: {e}",
                    self.path.display()
                );
            }
        }
    }
}
