//! The writer of the audit log: [`FileAuditSink`].

use super::checkpoint::{AuditCheckpoint, CheckpointUpdate, Replace};
use super::files::{self, ChainTail, Flock, Loaded};
use super::format;
use super::group_commit::Syncer;
use super::process::ProcessFacts;
use super::{AuditFsync, AuditLogOptions, AuditSinkStats, GROUP_COMMIT_DELAY};
use heliosdb_tde_core::{AuditEvent, AuditSink, KeyStore, Result, TableKey, TdeError};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The audit key and the key store, once attached.
pub(super) struct Attached {
    pub(super) key: Arc<TableKey>,
    pub(super) akv: u32,
    pub(super) store: Arc<dyn KeyStore>,
}

/// What the next `audit.gap` record must report.
#[derive(Default)]
pub(super) struct Gap {
    /// Torn last lines set aside.
    pub(super) torn: Vec<String>,
    /// Records this sink failed to write, by action.
    pub(super) lost: BTreeMap<String, u64>,
    /// Records another writer lost, from the checkpoint.
    pub(super) foreign: u64,
    pub(super) foreign_actions: Vec<String>,
    /// This sink began a new log while the checkpoint names a record of an older one (moved
    /// aside or deleted): the checkpoint as read. The gap record is then a failure.
    pub(super) new_log: Option<AuditCheckpoint>,
    /// The log held no record when this sink opened it (the first of the two ways a log is
    /// new, see [`Inner::is_new_log`]).
    pub(super) new_log_opened_empty: bool,
}

impl Gap {
    pub(super) fn is_empty(&self) -> bool {
        self.torn.is_empty() && self.lost.is_empty() && self.foreign == 0 && self.new_log.is_none()
    }

    pub(super) fn lost_count(&self) -> u64 {
        self.lost.values().sum()
    }

    pub(super) fn detail(&self) -> String {
        let mut parts = Vec::new();
        if let Some(old) = &self.new_log {
            parts.push(new_log_detail(old));
        }
        parts.extend(self.torn.iter().cloned());
        if !self.lost.is_empty() {
            let actions: Vec<String> = self
                .lost
                .iter()
                .map(|(a, n)| format!("{a} ({n})"))
                .collect();
            parts.push(format!(
                "{} records lost because writing them failed: {}",
                self.lost_count(),
                actions.join(", ")
            ));
        }
        if self.foreign > 0 {
            parts.push(format!(
                "{} records lost by another writer (from the checkpoint): {}",
                self.foreign,
                self.foreign_actions.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// What the `audit.gap` record of a new log says about the checkpoint `old` it found.
pub(super) fn new_log_detail(old: &AuditCheckpoint) -> String {
    format!(
        "a new audit log was started: the key store's checkpoint was at record {seq} (hash \
         {hash}) of a log that is not here (moved aside or deleted); records 1..{seq} of that \
         log are not in this one",
        seq = old.seq,
        hash = old.hash
    )
}

/// The sink's view of the log, under its mutex.
pub(super) struct State {
    pub(super) file: Arc<File>,
    pub(super) id: (u64, u64),
    pub(super) len: u64,
    pub(super) lines: u64,
    pub(super) first_seq: Option<u64>,
    pub(super) tail: ChainTail,
    /// Lines written but not yet fsynced.
    pub(super) dirty: bool,
    pub(super) key: Option<Attached>,
    pub(super) gap: Gap,
    /// Lost records an `audit.gap` record reported, to clear from the checkpoint.
    pub(super) clear_lost: u64,
    pub(super) since_checkpoint: u64,
    pub(super) checkpoint_at: Instant,
    pub(super) written: u64,
    pub(super) write_failures: u64,
    pub(super) last_checkpoint: Option<u64>,
    pub(super) last_akv_in_log: Option<u32>,
    /// The log's file set held no record when this sink opened it (an empty or new current
    /// file, no rotated file), and no checkpoint has been read since: a checkpoint ahead of
    /// the log then belongs to a log that was moved aside or deleted.
    pub(super) new_at_open: bool,
    /// The backwards move of the checkpoint to the new log's gap record, still to be applied.
    pub(super) pending_replace: Option<Replace>,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) options: AuditLogOptions,
    pub(super) facts: ProcessFacts,
    /// `<log>.lock`, flocked for every append, rotation and scan.
    pub(super) lock: File,
    pub(super) state: Mutex<State>,
    pub(super) syncer: Option<Arc<Syncer>>,
}

/// An append-only audit log: hash-chained JSON lines (format 2), MAC-chained under the audit
/// key once [`attach_key`](AuditSink::attach_key) handed it over, checkpointed in the key
/// store, rotated by size, safe to share between processes. See the [module](super) docs.
pub struct FileAuditSink {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FileAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAuditSink")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A checkpoint change to apply after the state lock is released.
pub(super) type Job = (Arc<dyn KeyStore>, CheckpointUpdate);

impl FileAuditSink {
    /// Opens (or creates, mode 0600) the log at `path` with the default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, AuditLogOptions::default())
    }

    /// Opens (or creates, mode 0600) the log at `path`. A missing directory is created with
    /// mode 0700 (and so are its missing parents): the log names every key and table. The
    /// current file's chain is verified so that new lines extend it; an incomplete last line
    /// (a crash during an append) is moved to `<log>.torn-<time>` and reported by an
    /// `audit.gap` record before the next event. Any other damage refuses to open the log.
    pub fn open_with(path: &Path, options: AuditLogOptions) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| TdeError::io(dir, e))?;
        }
        let lock = files::open_lock(path)?;
        let mut gap = Gap::default();
        let (loaded, new_at_open) = {
            let _flock = Flock::take(&lock, path)?;
            let loaded = files::load(path, &ChainTail::default(), &mut gap.torn)?;
            let new = loaded.lines == 0 && format::rotated_files(path)?.is_empty();
            (loaded, new)
        };
        let syncer = (options.fsync == AuditFsync::Batched).then(|| Arc::new(Syncer::default()));
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            facts: ProcessFacts::current(options.mode),
            options,
            lock,
            state: Mutex::new(State {
                file: Arc::new(loaded.file),
                id: loaded.id,
                len: loaded.len,
                lines: loaded.lines,
                first_seq: loaded.first_seq,
                last_akv_in_log: loaded.tail.last_akv,
                tail: loaded.tail,
                dirty: false,
                key: None,
                gap,
                clear_lost: 0,
                since_checkpoint: 0,
                checkpoint_at: Instant::now(),
                written: 0,
                write_failures: 0,
                last_checkpoint: None,
                new_at_open,
                pending_replace: None,
            }),
            syncer: syncer.clone(),
        });
        let thread = match syncer {
            Some(s) => {
                let weak = Arc::downgrade(&inner);
                Some(
                    std::thread::Builder::new()
                        .name("heliosdb-audit-sync".into())
                        .spawn(move || {
                            s.run(move || weak.upgrade().map(|i| i.sync_pending()).is_some())
                        })
                        .map_err(|e| TdeError::io(path, e))?,
                )
            }
            None => None,
        };
        Ok(Self { inner, thread })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &AuditLogOptions {
        &self.inner.options
    }

    /// Makes every line written so far durable (the pending group commit, if any).
    pub fn flush(&self) -> Result<()> {
        let file = self.inner.state().file.clone();
        file.sync_data()
            .map_err(|e| TdeError::io(&self.inner.path, e))
    }

    /// Counters and the chain's position.
    pub fn stats(&self) -> AuditSinkStats {
        let st = self.inner.state();
        AuditSinkStats {
            written: st.written,
            write_failures: st.write_failures,
            last_seq: st.tail.seq,
            last_checkpoint: st.last_checkpoint,
            keyed: st.key.is_some(),
            akv: st.key.as_ref().map(|k| k.akv),
        }
    }

    /// The audit key version of the newest keyed line in the log, as found when it was opened
    /// or last read again (or written by this sink); `None` if no line has a MAC.
    pub fn last_akv_in_log(&self) -> Option<u32> {
        self.inner.state().last_akv_in_log
    }
}

impl Drop for FileAuditSink {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(target: "heliosdb::tde::audit", "audit log fsync at close failed: {e}");
        }
        if let Some(s) = &self.inner.syncer {
            s.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group commit: fsyncs lines left unsynced.
    fn sync_pending(&self) {
        let file = {
            let mut st = self.state();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            st.file.clone()
        };
        if let Err(e) = file.sync_data() {
            self.state().write_failures += 1;
            tracing::error!(
                target: "heliosdb::tde::audit",
                "audit log {}: fsync of the group commit failed: {e}; records acknowledged in \
                 the last {} ms may be lost at a crash",
                self.path.display(),
                GROUP_COMMIT_DELAY.as_millis()
            );
        }
    }

    /// Brings `st` up to date with the file at `path` (under the flock): reopens it if another
    /// writer rotated it, reads what other writers appended, and finishes a rotation left
    /// undone.
    pub(super) fn refresh(&self, st: &mut State) -> Result<()> {
        let path = &self.path;
        let on_disk = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TdeError::io(path, e)),
        };
        let same = on_disk
            .as_ref()
            .is_some_and(|m| files::identity(m) == st.id);
        if !same {
            if st.dirty {
                let _ = st.file.sync_data();
                st.dirty = false;
            }
            let loaded = files::load(path, &st.tail, &mut st.gap.torn)?;
            self.install(st, loaded);
        } else {
            let len = on_disk.map(|m| m.len()).unwrap_or(0);
            if len < st.len {
                let loaded = files::load(path, &ChainTail::default(), &mut st.gap.torn)?;
                self.install(st, loaded);
            } else if len > st.len {
                let mut scan = files::scan(
                    &st.file,
                    path,
                    st.len,
                    st.lines,
                    Some((st.tail.seq, st.tail.hash.clone())),
                )?;
                let file = st.file.clone();
                files::repair_tail(path, &file, &mut scan, &mut st.gap.torn)?;
                if let Some((seq, hash)) = scan.last.take() {
                    st.tail.seq = seq;
                    st.tail.hash = hash;
                }
                if let Some((mac, akv)) = scan.newest_mac.take() {
                    st.tail.prev_mac = mac;
                    st.tail.last_akv = akv;
                    st.last_akv_in_log = akv;
                }
                if st.first_seq.is_none() {
                    st.first_seq = scan.first_seq;
                }
                st.len = scan.complete_len;
                st.lines += scan.lines;
            }
        }
        if st.lines > 0 && st.len >= self.options.max_file_bytes {
            self.rotate(st);
        }
        Ok(())
    }

    /// Whether the log as it stands (`st` refreshed, under the flock) is a new log with respect
    /// to the checkpoint `old`, whose record is then not in it: either
    ///
    /// * this sink opened it holding no record (`opened_empty`), every record since is its
    ///   own, and the checkpoint is past its end; or
    /// * it has no rotated file, its records start at 1 and none is keyed (only writers
    ///   without the audit key, such as a CLI command run without the subsystem, wrote it),
    ///   while the checkpoint was written by a keyed writer (it has a `mac`) and is past the
    ///   log's end or names a record whose hash differs from the log's record of that number.
    ///
    /// A log with a keyed line that ends before the checkpoint was cut in place: not new.
    pub(super) fn is_new_log(
        &self,
        st: &State,
        old: &AuditCheckpoint,
        opened_empty: bool,
    ) -> Result<bool> {
        if opened_empty && st.tail.seq == st.written && old.seq > st.tail.seq {
            return Ok(true);
        }
        if old.mac.is_none()
            || st.tail.prev_mac != format::ZERO
            || st.first_seq.is_some_and(|s| s != 1)
            || !format::rotated_files(&self.path)?.is_empty()
        {
            return Ok(false);
        }
        let (keyed, hash) = files::keyed_and_hash_at(&self.path, old.seq)?;
        Ok(!keyed && hash.as_deref() != Some(old.hash.as_str()))
    }

    /// Decides at `attach_key` whether the log is new with respect to the checkpoint `cp`
    /// ([`is_new_log`](Self::is_new_log)); if so, the `audit.gap` record reporting it is made
    /// pending and `true` returned.
    fn find_new_log(&self, cp: &AuditCheckpoint, opened_empty: bool) -> bool {
        let mut st = self.state();
        let r = (|| {
            let _flock = Flock::take(&self.lock, &self.path)?;
            self.refresh(&mut st)?;
            self.is_new_log(&st, cp, opened_empty)
        })();
        let new_log = match r {
            Ok(new_log) => new_log,
            Err(e) => {
                tracing::warn!(
                    target: "heliosdb::tde::audit",
                    "audit log {}: whether it is a new log cannot be decided: {e}",
                    self.path.display()
                );
                // The next record decides again, after its own refresh.
                opened_empty && cp.seq > st.tail.seq
            }
        };
        if new_log {
            let mut old = cp.clone();
            old.lost = 0;
            old.lost_actions = Vec::new();
            st.gap.new_log = Some(old);
            st.gap.new_log_opened_empty = opened_empty;
        }
        new_log
    }

    fn install(&self, st: &mut State, loaded: Loaded) {
        st.file = Arc::new(loaded.file);
        st.id = loaded.id;
        st.len = loaded.len;
        st.lines = loaded.lines;
        st.first_seq = loaded.first_seq;
        st.last_akv_in_log = loaded.tail.last_akv;
        st.tail = loaded.tail;
    }

    /// Renames the full current file and continues in a new one. A failure is logged; the
    /// next append tries again.
    pub(super) fn rotate(&self, st: &mut State) {
        let first = st.first_seq.unwrap_or(st.tail.seq);
        let r = files::rotate(&self.path, &st.file, first, st.tail.seq).and_then(|_| {
            let file = files::open_current(&self.path)?;
            let meta = file.metadata().map_err(|e| TdeError::io(&self.path, e))?;
            files::sync_dir(&self.path)?;
            Ok((file, meta))
        });
        match r {
            Ok((file, meta)) => {
                st.file = Arc::new(file);
                st.id = files::identity(&meta);
                st.len = 0;
                st.lines = 0;
                st.first_seq = None;
                st.dirty = false;
            }
            Err(e) => tracing::error!(
                target: "heliosdb::tde::audit",
                "audit log {}: rotation failed: {e}; the file keeps growing until it succeeds",
                self.path.display()
            ),
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for FileAuditSink {
    async fn record(&self, event: AuditEvent) -> Result<()> {
        let (result, job) = self.inner.append(event);
        if let Some(job) = job {
            self.inner.checkpoint(job).await;
        }
        result
    }

    async fn attach_key(&self, key: Arc<TableKey>, store: Arc<dyn KeyStore>) -> Result<()> {
        let akv = key.id().version.get();
        let first = {
            let mut st = self.inner.state();
            let first = st.key.is_none();
            st.key = Some(Attached {
                key,
                akv,
                store: store.clone(),
            });
            st.checkpoint_at = Instant::now();
            st.since_checkpoint = 0;
            first
        };
        match AuditCheckpoint::read(&*store).await {
            Ok(Some(cp)) => {
                let opened_empty = {
                    let mut st = self.inner.state();
                    if st.last_checkpoint.is_none_or(|s| cp.seq > s) {
                        st.last_checkpoint = Some(cp.seq);
                    }
                    if first && cp.lost > 0 {
                        st.gap.foreign += cp.lost;
                        st.gap.foreign_actions.clone_from(&cp.lost_actions);
                    }
                    std::mem::take(&mut st.new_at_open)
                };
                if self.inner.find_new_log(&cp, opened_empty) {
                    // Write the gap record and move the checkpoint now, so that the new log
                    // verifies from its start; if writing fails, the next record retries.
                    if let Some(job) = self.inner.append_gap() {
                        self.inner.checkpoint(job).await;
                    }
                }
            }
            Ok(None) => self.inner.state().new_at_open = false,
            Err(e) => tracing::warn!(
                target: "heliosdb::tde::audit",
                "audit log {}: the checkpoint in the key store cannot be read: {e}",
                self.inner.path.display()
            ),
        }
        Ok(())
    }
}
