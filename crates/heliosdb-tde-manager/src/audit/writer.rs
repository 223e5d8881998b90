//! The writer of the audit log: [`FileAuditSink`].

use super::checkpoint::{self, AuditCheckpoint, CheckpointUpdate};
use super::files::{self, ChainTail, Scan};
use super::format::{self, AuditRecord, FORMAT_VERSION};
use super::process::ProcessFacts;
use super::{AuditFsync, AuditLogOptions, AuditSinkStats, GROUP_COMMIT_DELAY};
use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditOutcome, AuditSink, KeyStore, Result, TableKey, TdeError,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// The audit key and the key store, once attached.
struct Attached {
    key: Arc<TableKey>,
    akv: u32,
    store: Arc<dyn KeyStore>,
}

/// What the next `audit.gap` record must report.
#[derive(Default)]
struct Gap {
    /// Torn last lines set aside.
    torn: Vec<String>,
    /// Records this sink failed to write, by action.
    lost: BTreeMap<String, u64>,
    /// Records another writer lost, from the checkpoint.
    foreign: u64,
    foreign_actions: Vec<String>,
}

impl Gap {
    fn is_empty(&self) -> bool {
        self.torn.is_empty() && self.lost.is_empty() && self.foreign == 0
    }

    fn lost_count(&self) -> u64 {
        self.lost.values().sum()
    }

    fn detail(&self) -> String {
        let mut parts = self.torn.clone();
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

/// The sink's view of the log, under its mutex.
struct State {
    file: Arc<File>,
    id: (u64, u64),
    len: u64,
    lines: u64,
    first_seq: Option<u64>,
    tail: ChainTail,
    /// Lines written but not yet fsynced.
    dirty: bool,
    key: Option<Attached>,
    gap: Gap,
    /// Lost records an `audit.gap` record reported, to clear from the checkpoint.
    clear_lost: u64,
    since_checkpoint: u64,
    checkpoint_at: Instant,
    written: u64,
    write_failures: u64,
    last_checkpoint: Option<u64>,
    last_akv_in_log: Option<u32>,
}

/// The group commit's flags (batched fsync).
#[derive(Default)]
struct SyncFlags {
    dirty_since: Option<Instant>,
    stop: bool,
}

#[derive(Default)]
struct Syncer {
    flags: Mutex<SyncFlags>,
    wake: Condvar,
}

impl Syncer {
    fn flags(&self) -> MutexGuard<'_, SyncFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self) {
        let mut f = self.flags();
        if f.dirty_since.is_none() {
            f.dirty_since = Some(Instant::now());
            self.wake.notify_all();
        }
    }

    fn stop(&self) {
        self.flags().stop = true;
        self.wake.notify_all();
    }

    /// The group-commit thread: fsyncs the log at most [`GROUP_COMMIT_DELAY`] after a line
    /// was left unsynced; ends when the sink is dropped.
    fn run(self: Arc<Self>, inner: Weak<Inner>) {
        let mut f = self.flags();
        loop {
            if f.stop {
                return;
            }
            let Some(since) = f.dirty_since else {
                f = self.wake.wait(f).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let deadline = since + GROUP_COMMIT_DELAY;
            let now = Instant::now();
            if now < deadline {
                f = self
                    .wake
                    .wait_timeout(f, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            f.dirty_since = None;
            drop(f);
            match inner.upgrade() {
                Some(inner) => inner.sync_pending(),
                None => return,
            }
            f = self.flags();
        }
    }
}

struct Inner {
    path: PathBuf,
    options: AuditLogOptions,
    facts: ProcessFacts,
    /// `<log>.lock`, flocked for every append, rotation and scan.
    lock: File,
    state: Mutex<State>,
    syncer: Option<Arc<Syncer>>,
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

/// Holds the cross-process lock; released on drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn take(file: &'a File, path: &Path) -> Result<Self> {
        file.lock()
            .map_err(|e| TdeError::io(files::lock_path(path), e))?;
        Ok(Self(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Writes one line; the fail point `audit::write` makes it fail in tests.
fn write_line(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    fail::fail_point!("audit::write", |_| Err(std::io::Error::other(
        "injected by the fail point audit::write"
    )));
    let mut f = file;
    f.write_all(bytes)
}

/// The current file as loaded by a full scan.
struct Loaded {
    file: File,
    id: (u64, u64),
    len: u64,
    lines: u64,
    first_seq: Option<u64>,
    tail: ChainTail,
}

/// Repairs the bytes after the last newline of a scanned file: a whole record gets its
/// newline; anything else is set aside as a torn line and cut off, and remembered in `gap`.
fn repair_tail(path: &Path, file: &File, scan: &mut Scan, gap: &mut Gap) -> Result<()> {
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
    let torn = files::set_aside_torn(path, &partial)?;
    file.set_len(scan.complete_len)
        .and_then(|()| file.sync_all())
        .map_err(|e| TdeError::io(path, e))?;
    let name = torn
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
    gap.torn.push(format!(
        "an incomplete last line ({} bytes) was moved to {name}",
        partial.len()
    ));
    Ok(())
}

/// Opens and scans the current file of `path` (verifying its chain, repairing a torn tail),
/// taking what it lacks from the rotated files: the tail when it is empty, the newest MAC when
/// it has none newer than `known`.
fn load(path: &Path, known: &ChainTail, gap: &mut Gap) -> Result<Loaded> {
    let file = files::open_current(path)?;
    let rotated = format::rotated_files(path)?;
    let start = rotated.is_empty().then(|| (0, format::ZERO.to_string()));
    let mut scan = files::scan(&file, path, 0, 0, start)?;
    repair_tail(path, &file, &mut scan, gap)?;
    let last = if scan.lines > 0 {
        scan.last.clone()
    } else if rotated.is_empty() {
        None
    } else {
        files::rotated_tail(path, u64::MAX, true)?.0
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
        None if !rotated.is_empty() => files::rotated_tail(path, tail.seq, false)?.1,
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
        id: files::identity(&meta),
        file,
        len: scan.complete_len,
        lines: scan.lines,
        first_seq: scan.first_seq,
        tail,
    })
}

fn record_of(event: AuditEvent) -> AuditRecord {
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

/// A checkpoint change to apply after the state lock is released.
type Job = (Arc<dyn KeyStore>, CheckpointUpdate);

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
        let loaded = {
            let _flock = Flock::take(&lock, path)?;
            load(path, &ChainTail::default(), &mut gap)?
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
            }),
            syncer: syncer.clone(),
        });
        let thread = match syncer {
            Some(s) => {
                let weak = Arc::downgrade(&inner);
                Some(
                    std::thread::Builder::new()
                        .name("heliosdb-audit-sync".into())
                        .spawn(move || s.run(weak))
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
    fn state(&self) -> MutexGuard<'_, State> {
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
    fn refresh(&self, st: &mut State) -> Result<()> {
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
            let loaded = load(path, &st.tail, &mut st.gap)?;
            self.install(st, loaded);
        } else {
            let len = on_disk.map(|m| m.len()).unwrap_or(0);
            if len < st.len {
                let loaded = load(path, &ChainTail::default(), &mut st.gap)?;
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
                repair_tail(path, &file, &mut scan, &mut st.gap)?;
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
    fn rotate(&self, st: &mut State) {
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
    fn append(&self, event: AuditEvent) -> (Result<()>, Option<Job>) {
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
    async fn checkpoint(&self, job: Job) {
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
                let mut st = self.inner.state();
                if st.last_checkpoint.is_none_or(|s| cp.seq > s) {
                    st.last_checkpoint = Some(cp.seq);
                }
                if first && cp.lost > 0 {
                    st.gap.foreign += cp.lost;
                    st.gap.foreign_actions = cp.lost_actions;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                target: "heliosdb::tde::audit",
                "audit log {}: the checkpoint in the key store cannot be read: {e}",
                self.inner.path.display()
            ),
        }
        Ok(())
    }
}
