//! The audit log's writer (`FileAuditSink`): torn tails, SIGKILL, rotation, fsync policies,
//! write failures, the checkpoint and the keyed chain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditSink, EncryptionAlgorithm, KeyId, KeyStore, ProviderKind,
    StoreBatch, TableId, TableKey, TdeError, TekId, TekVersion,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::audit::format::{self, AuditRecord, ZERO};
use heliosdb_tde_manager::audit::verify::{AuditKeys, AuditVerifyOptions, verify_audit_log_with};
use heliosdb_tde_manager::audit::{
    AUDIT_HEAD_ENTRY, AuditCheckpoint, AuditFsync, AuditLogOptions, FileAuditSink, verify_lines,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

/// The fail point `audit::write` is process-wide: tests that write a log run one at a time.
static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn audit_key(version: u32) -> Arc<TableKey> {
    let id = TekId::new(TableId::audit(), TekVersion::new(version).unwrap());
    Arc::new(TableKey::generate(id, EncryptionAlgorithm::Aes256Gcm).unwrap())
}

fn key_bytes(keys: &[&Arc<TableKey>]) -> HashMap<u32, Vec<u8>> {
    keys.iter()
        .map(|k| (k.id().version.get(), k.bytes().expose_secret().to_vec()))
        .collect()
}

fn store(dir: &Path) -> Arc<dyn KeyStore> {
    Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap())
}

fn created(i: usize) -> AuditEvent {
    let key: KeyId = format!("tek:t{i}@v1").parse().unwrap();
    AuditEvent::success(AuditAction::TekCreated, Some(key), format!("e{i}"))
        .with_provider(ProviderKind::SecureFile)
}

fn unwrapped(i: usize) -> AuditEvent {
    let key: KeyId = format!("tek:t{i}@v1").parse().unwrap();
    AuditEvent::success(AuditAction::TekUnwrapped, Some(key), "miss")
}

fn records(path: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, l)| format::parse_record(l, path, i as u64 + 1).unwrap())
        .collect()
}

/// Every record of the log's file set, oldest first, with each file's records.
fn file_set(log: &Path) -> Vec<(PathBuf, Vec<AuditRecord>)> {
    let mut out: Vec<(PathBuf, Vec<AuditRecord>)> = format::rotated_files(log)
        .unwrap()
        .into_iter()
        .map(|f| {
            let r = records(&f.path);
            (f.path, r)
        })
        .collect();
    out.push((log.to_path_buf(), records(log)));
    out
}

/// The hash chain over `recs` (from the first record of the log) and the MAC chain under
/// `keys` (by audit key version): every keyed line's MAC recomputes.
fn check_chain(recs: &[AuditRecord], keys: &HashMap<u32, Vec<u8>>) {
    let mut prev = ZERO.to_string();
    let mut prev_mac = ZERO.to_string();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "{r:?}");
        assert_eq!(r.prev, prev, "seq {}", r.seq);
        assert_eq!(r.digest(), r.hash, "seq {}", r.seq);
        if let Some(mac) = &r.mac {
            let key = &keys[&r.akv.unwrap()];
            assert_eq!(&r.compute_mac(key, &prev_mac), mac, "seq {}", r.seq);
            prev_mac = mac.clone();
        } else {
            assert_eq!(r.akv, None);
        }
        prev = r.hash.clone();
    }
}

/// The verifier's view of the whole file set, with the MACs under `keys` and the store's
/// checkpoint: the writer and the verifier agree.
async fn verify_set(log: &Path, keys: &[&Arc<TableKey>], store: &Arc<dyn KeyStore>) -> u64 {
    let mut held = AuditKeys::new();
    for k in keys {
        held = held.with_version(k.id().version.get(), Arc::clone(k));
    }
    let mut opts = AuditVerifyOptions::new().with_keys(held);
    if let Some(cp) = AuditCheckpoint::read(&**store).await.unwrap() {
        opts = opts.with_checkpoint(cp.seq, cp.hash, cp.mac);
    }
    let v = verify_audit_log_with(log, &opts).unwrap();
    assert_eq!(v.checkpoint.is_some(), opts_has_checkpoint(store).await);
    v.last_seq
}

async fn opts_has_checkpoint(store: &Arc<dyn KeyStore>) -> bool {
    AuditCheckpoint::read(&**store)
        .await
        .unwrap()
        .is_some_and(|cp| cp.seq > 0)
}

fn verify_file(path: &Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    verify_lines(BufReader::new(file), path).unwrap().lines
}

#[tokio::test]
async fn a_last_line_cut_at_every_offset_reopens_sets_it_aside_and_verifies() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let keys = key_bytes(&[&key]);
    let base = dir.path().join("base.log");
    {
        let sink = FileAuditSink::open(&base).unwrap();
        sink.attach_key(key.clone(), store.clone()).await.unwrap();
        for i in 0..5 {
            sink.record(created(i)).await.unwrap();
        }
    }
    let bytes = std::fs::read(&base).unwrap();
    let original = records(&base);
    let start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let (prefix, line) = bytes.split_at(start);
    for cut in 0..line.len() {
        let sub = dir.path().join(format!("cut{cut}"));
        std::fs::create_dir(&sub).unwrap();
        let log = sub.join("audit.log");
        std::fs::write(&log, [prefix, &line[..cut]].concat()).unwrap();
        let sink = FileAuditSink::open(&log).unwrap();
        let torn: Vec<PathBuf> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".torn-"))
            .collect();
        // Cut at 0 nothing is torn; cut just before the newline the line is whole.
        let whole = cut == line.len() - 1;
        let is_torn = cut > 0 && !whole;
        if is_torn {
            assert_eq!(torn.len(), 1, "cut {cut}");
            assert_eq!(std::fs::read(&torn[0]).unwrap(), &line[..cut], "cut {cut}");
        } else {
            assert!(torn.is_empty(), "cut {cut}: {torn:?}");
        }
        sink.attach_key(key.clone(), store.clone()).await.unwrap();
        sink.record(created(100)).await.unwrap();
        drop(sink);

        let recs = records(&log);
        let kept = if whole { 5 } else { 4 };
        assert_eq!(&recs[..kept], &original[..kept], "cut {cut}");
        let mut next = kept;
        if is_torn {
            let gap = &recs[next];
            assert_eq!(gap.action, "audit.gap", "cut {cut}");
            let name = torn[0].file_name().unwrap().to_string_lossy().into_owned();
            assert!(gap.detail.contains(&name), "{}", gap.detail);
            assert!(
                gap.detail.contains(&format!("({cut} bytes)")),
                "{}",
                gap.detail
            );
            next += 1;
        }
        assert_eq!(recs[next].action, "tek.created", "cut {cut}");
        assert_eq!(recs[next].detail, "e100");
        assert_eq!(recs.len(), next + 1, "cut {cut}");
        assert_eq!(verify_file(&log), recs.len() as u64);
        check_chain(&recs, &keys);
    }
}

const CHILD_LOG: &str = "HELIOSDB_AUDIT_WRITER_CHILD_LOG";

/// Run by `a_writer_killed_at_random_moments_loses_no_acknowledged_record` in a child
/// process: records state-changing events forever, printing `ack <seq>` after each.
#[test]
#[ignore = "run as a child process by the SIGKILL test"]
fn sigkill_child() {
    use std::io::Write;
    let Ok(log) = std::env::var(CHILD_LOG) else {
        return;
    };
    let log = PathBuf::from(log);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = FileAuditSink::open(&log).unwrap();
        let dir = log.parent().unwrap();
        sink.attach_key(fixed_key(), store(dir)).await.unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            sink.record(created(i)).await.unwrap();
            writeln!(out, "ack {}", sink.stats().last_seq).unwrap();
            out.flush().unwrap();
        }
    });
}

fn fixed_key() -> Arc<TableKey> {
    let id = TekId::new(TableId::audit(), TekVersion::new(1).unwrap());
    let bytes = heliosdb_tde_core::KeyBytes::from_slice(&[0x5a; 32]).unwrap();
    Arc::new(TableKey::new(id, EncryptionAlgorithm::Aes256Gcm, bytes))
}

/// A small deterministic generator (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn a_writer_killed_at_random_moments_loses_no_acknowledged_record() {
    use std::process::{Command, Stdio};
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let keys = key_bytes(&[&fixed_key()]);
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..50 {
        let want = 1 + rng.below(40) as usize;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sigkill_child", "--nocapture", "--ignored"])
            .env(CHILD_LOG, &log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut got = 0;
        while got < want {
            let Some(line) = lines.next() else {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "round {round}: the child ended after {got} acknowledgements: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            if let Some(seq) = line.unwrap().strip_prefix("ack ") {
                acked.push(seq.parse().unwrap());
                got += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        // Reopening succeeds, every acknowledged record is there, the chain verifies and the
        // checkpoint never names a record the log does not have.
        let sink = FileAuditSink::open(&log).unwrap();
        let last = sink.stats().last_seq;
        drop(sink);
        let recs = records(&log);
        assert_eq!(recs.len() as u64, last, "round {round}");
        assert!(
            acked.iter().all(|s| *s <= last),
            "round {round}: acknowledged {:?}, log ends at {last}",
            acked.iter().max()
        );
        assert_eq!(verify_file(&log), last, "round {round}");
        check_chain(&recs, &keys);
        let store = store(dir.path());
        assert_eq!(verify_set(&log, &[&fixed_key()], &store).await, last);
        if let Some(cp) = AuditCheckpoint::read(&*store).await.unwrap() {
            assert!(
                cp.seq <= last,
                "round {round}: checkpoint {} > {last}",
                cp.seq
            );
            let named = &recs[cp.seq as usize - 1];
            assert_eq!(named.hash, cp.hash, "round {round}");
            assert_eq!(named.mac, cp.mac, "round {round}");
        }
    }
}

#[tokio::test]
async fn full_files_are_renamed_by_range_and_the_chain_continues_across_them() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let keys = key_bytes(&[&key]);
    let log = dir.path().join("audit.log");
    let options = AuditLogOptions::new().with_max_file_bytes(3_000);
    // Two writers, as two processes: they take turns, one keyed and one not.
    let a = FileAuditSink::open_with(&log, options.clone()).unwrap();
    a.attach_key(key.clone(), store.clone()).await.unwrap();
    let b = FileAuditSink::open_with(&log, options.clone()).unwrap();
    for i in 0..50 {
        let sink = if i % 4 == 3 { &b } else { &a };
        sink.record(created(i)).await.unwrap();
    }
    drop((a, b));
    let set = file_set(&log);
    assert!(set.len() >= 4, "{} files", set.len());
    let rotated = format::rotated_files(&log).unwrap();
    assert_eq!(rotated.len(), set.len() - 1);
    let mut expect_first = 1;
    for (f, (path, recs)) in rotated.iter().zip(&set) {
        assert_eq!(&f.path, path);
        assert_eq!(f.first, expect_first, "{}", path.display());
        assert_eq!(recs.first().unwrap().seq, f.first);
        assert_eq!(recs.last().unwrap().seq, f.last);
        assert!(std::fs::metadata(path).unwrap().len() >= 3_000);
        expect_first = f.last + 1;
    }
    for pair in set.windows(2) {
        let (prev, next) = (&pair[0].1, &pair[1].1);
        if let Some(first) = next.first() {
            assert_eq!(first.prev, prev.last().unwrap().hash);
        }
    }
    let all: Vec<AuditRecord> = set.into_iter().flat_map(|(_, r)| r).collect();
    assert_eq!(all.len(), 50);
    check_chain(&all, &keys);
    assert_eq!(verify_set(&log, &[&key], &store).await, 50);

    // A rotation interrupted after the rename (no current file): a reopened writer creates
    // an empty one and continues the chain from the newest rotated file.
    let current = records(&log);
    let last_rotated = all.last().unwrap().clone();
    if let Some(first) = current.first() {
        let target = format::rotated_path(&log, first.seq, last_rotated.seq);
        std::fs::rename(&log, target).unwrap();
    }
    let c = FileAuditSink::open_with(&log, options).unwrap();
    assert_eq!(c.stats().last_seq, last_rotated.seq);
    assert_eq!(c.last_akv_in_log(), Some(1));
    c.attach_key(key.clone(), store.clone()).await.unwrap();
    c.record(created(99)).await.unwrap();
    let first = &records(&log)[0];
    assert_eq!(first.seq, last_rotated.seq + 1);
    assert_eq!(first.prev, last_rotated.hash);
    drop(c);
    assert_eq!(last_rotated.seq, 50);
    assert_eq!(verify_set(&log, &[&key], &store).await, 51);
}

/// Threads of this process running a group commit (tests run one at a time).
fn sync_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with("heliosdb-audit"))
        })
        .count()
}

#[tokio::test]
async fn batched_and_always_both_keep_every_record_and_count_them() {
    let _serial = serial().await;
    for fsync in [AuditFsync::Batched, AuditFsync::Always] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let sink =
            FileAuditSink::open_with(&log, AuditLogOptions::new().with_fsync(fsync)).unwrap();
        assert_eq!(sink.options().fsync, fsync);
        for i in 0..30 {
            if i % 3 == 0 {
                sink.record(created(i)).await.unwrap();
            } else {
                sink.record(unwrapped(i)).await.unwrap();
            }
        }
        sink.flush().unwrap();
        let threads = if fsync == AuditFsync::Batched { 1 } else { 0 };
        assert_eq!(sync_threads(), threads, "{fsync}");
        let stats = sink.stats();
        assert_eq!(stats.written, 30, "{fsync}");
        assert_eq!(stats.write_failures, 0);
        assert_eq!(stats.last_seq, 30);
        assert!(!stats.keyed);
        assert_eq!(stats.akv, None);
        assert_eq!(stats.last_checkpoint, None);
        assert_eq!(verify_file(&log), 30, "{fsync}");
        let recs = records(&log);
        let unwraps = recs.iter().filter(|r| r.action == "tek.unwrapped").count();
        assert_eq!(unwraps, 20);
        // Format 2 lines with the event's and the process's facts.
        let r = &recs[0];
        assert_eq!(r.v, format::FORMAT_VERSION);
        assert_eq!(r.provider.as_deref(), Some("secure-file"));
        assert_eq!(r.pid, Some(std::process::id()));
        assert!(r.uid.is_some() && r.exe.is_some());
        drop(sink);
        assert_eq!(sync_threads(), 0, "the group commit ends with its sink");
        assert_eq!(verify_file(&log), 30);
    }
}

#[tokio::test]
async fn failed_writes_are_counted_and_reported_by_a_gap_record() {
    let _serial = serial().await;
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(created(0)).await.unwrap();
    fail::cfg("audit::write", "3*return->off").unwrap();
    let failing = [created(1), unwrapped(2), created(3)];
    for e in failing {
        let err = sink.record(e).await.unwrap_err();
        assert!(matches!(err, TdeError::Io { .. }), "{err}");
    }
    assert_eq!(sink.stats().write_failures, 3);
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(cp.lost, 3);
    assert_eq!(cp.lost_actions, vec!["tek.created", "tek.unwrapped"]);
    assert_eq!(cp.seq, 1);

    sink.record(created(4)).await.unwrap();
    scenario.teardown();
    let recs = records(&log);
    assert_eq!(recs.len(), 3);
    let gap = &recs[1];
    assert_eq!(gap.action, "audit.gap");
    assert!(gap.detail.contains("3 records lost"), "{}", gap.detail);
    assert!(
        gap.detail.contains("tek.created (2)") && gap.detail.contains("tek.unwrapped (1)"),
        "{}",
        gap.detail
    );
    assert_eq!(recs[2].detail, "e4");
    let stats = sink.stats();
    assert_eq!((stats.written, stats.write_failures), (3, 3));
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!((cp.lost, cp.lost_actions.len()), (0, 0));
    assert_eq!(cp.seq, 3);
    check_chain(&recs, &key_bytes(&[&key]));
    assert_eq!(verify_set(&log, &[&key], &store).await, 3);

    // Lost records another process left in the checkpoint are reported by the next writer
    // that attaches the key.
    drop(sink);
    let mut left = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    left.lost = 2;
    left.lost_actions = vec!["mek.rotated".into()];
    let old = store.get_journal(AUDIT_HEAD_ENTRY).await.unwrap();
    store
        .apply(
            StoreBatch::new()
                .check_journal(AUDIT_HEAD_ENTRY, old)
                .put_journal(AUDIT_HEAD_ENTRY, serde_json::to_vec(&left).unwrap()),
        )
        .await
        .unwrap();
    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(unwrapped(5)).await.unwrap();
    let recs = records(&log);
    assert_eq!(recs[3].action, "audit.gap");
    assert!(
        recs[3].detail.contains("2 records lost by another writer")
            && recs[3].detail.contains("mek.rotated"),
        "{}",
        recs[3].detail
    );
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(cp.lost, 0);
}

#[tokio::test]
async fn the_checkpoint_follows_state_changes_and_never_moves_backwards() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    // The time limit is set far away, so that only the record count moves the checkpoint.
    let hour = std::time::Duration::from_secs(3_600);
    let options = AuditLogOptions::new().with_checkpoint_every(1_000, hour);
    let sink = FileAuditSink::open_with(&log, options).unwrap();
    // Unkeyed: no checkpoint.
    sink.record(created(0)).await.unwrap();
    assert_eq!(AuditCheckpoint::read(&*store).await.unwrap(), None);
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(created(1)).await.unwrap();
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    let recs = records(&log);
    assert_eq!(cp.seq, 2);
    assert_eq!(cp.hash, recs[1].hash);
    assert_eq!(cp.mac, recs[1].mac);
    assert!(cp.mac.is_some());
    assert_eq!(sink.stats().last_checkpoint, Some(2));

    // Unwraps alone move it every 1,000 records.
    for i in 0..999 {
        sink.record(unwrapped(i)).await.unwrap();
    }
    assert_eq!(
        AuditCheckpoint::read(&*store).await.unwrap().unwrap().seq,
        2
    );
    sink.record(unwrapped(999)).await.unwrap();
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(cp.seq, 1_002);
    assert_eq!(sink.stats().last_checkpoint, Some(1_002));
    // An interval of zero checkpoints every unwrap.
    drop(sink);
    let options = AuditLogOptions::new().with_checkpoint_every(1_000, std::time::Duration::ZERO);
    let quick = FileAuditSink::open_with(&log, options).unwrap();
    quick.attach_key(key.clone(), store.clone()).await.unwrap();
    quick.record(unwrapped(0)).await.unwrap();
    assert_eq!(
        AuditCheckpoint::read(&*store).await.unwrap().unwrap().seq,
        1_003
    );
    drop(quick);

    // Two writers on one log and one store: it ends at the newest record.
    let a = FileAuditSink::open(&log).unwrap();
    let b = FileAuditSink::open(&log).unwrap();
    a.attach_key(key.clone(), store.clone()).await.unwrap();
    b.attach_key(key.clone(), store.clone()).await.unwrap();
    for i in 0..10 {
        let sink = if i % 2 == 0 { &a } else { &b };
        sink.record(created(i)).await.unwrap();
        let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
        assert_eq!(cp.seq, sink.stats().last_seq);
    }
    // A checkpoint ahead of the log (another writer's, read later) is never moved back.
    let mut ahead = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    ahead.seq = 1_000_000;
    let old = store.get_journal(AUDIT_HEAD_ENTRY).await.unwrap();
    store
        .apply(
            StoreBatch::new()
                .check_journal(AUDIT_HEAD_ENTRY, old)
                .put_journal(AUDIT_HEAD_ENTRY, serde_json::to_vec(&ahead).unwrap()),
        )
        .await
        .unwrap();
    a.record(created(20)).await.unwrap();
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(cp.seq, 1_000_000);
    assert_eq!(a.stats().last_checkpoint, Some(1_000_000));
}

#[tokio::test]
async fn lines_get_macs_once_the_key_is_attached_and_a_new_key_version_continues_the_chain() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (k1, k2) = (audit_key(1), audit_key(2));
    let keys = key_bytes(&[&k1, &k2]);
    let log = dir.path().join("audit.log");

    // A log begun by the first release (format 1) is continued in format 2.
    let mut prev = ZERO.to_string();
    let mut v1 = String::new();
    for seq in 1..=2 {
        let mut r = AuditRecord::default();
        r.v = 1;
        r.seq = seq;
        r.at = "2026-01-01T00:00:00Z".into();
        r.action = "tek.created".into();
        r.outcome = "success".into();
        r.detail = "old".into();
        r.seal(&prev, None);
        prev = r.hash.clone();
        v1.push_str(&serde_json::to_string(&r).unwrap());
        v1.push('\n');
    }
    std::fs::write(&log, v1).unwrap();

    let sink = FileAuditSink::open(&log).unwrap();
    assert_eq!(sink.last_akv_in_log(), None);
    sink.record(created(0)).await.unwrap();
    sink.attach_key(k1.clone(), store.clone()).await.unwrap();
    assert!(sink.stats().keyed);
    assert_eq!(sink.stats().akv, Some(1));
    sink.record(created(1)).await.unwrap();
    sink.record(unwrapped(2)).await.unwrap();
    sink.attach_key(k2.clone(), store.clone()).await.unwrap();
    assert_eq!(sink.stats().akv, Some(2));
    sink.record(created(3)).await.unwrap();
    drop(sink);
    // A writer without the key (a CLI command) adds an unkeyed line; the keyed chain
    // continues over it.
    let cli = FileAuditSink::open(&log).unwrap();
    assert_eq!(cli.last_akv_in_log(), Some(2));
    cli.record(created(4)).await.unwrap();
    drop(cli);
    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(k2.clone(), store.clone()).await.unwrap();
    sink.record(created(5)).await.unwrap();
    drop(sink);

    let recs = records(&log);
    let shape: Vec<(u32, Option<u32>, bool)> =
        recs.iter().map(|r| (r.v, r.akv, r.mac.is_some())).collect();
    assert_eq!(
        shape,
        vec![
            (1, None, false),
            (1, None, false),
            (2, None, false),
            (2, Some(1), true),
            (2, Some(1), true),
            (2, Some(2), true),
            (2, None, false),
            (2, Some(2), true),
        ]
    );
    check_chain(&recs, &keys);
    assert_eq!(verify_file(&log), 8);
    assert_eq!(verify_set(&log, &[&k1, &k2], &store).await, 8);
    // The MAC chain links across the key change: the first v2-keyed MAC follows the last
    // v1-keyed one.
    assert_eq!(
        recs[5].compute_mac(&keys[&2], recs[4].mac.as_ref().unwrap()),
        *recs[5].mac.as_ref().unwrap()
    );
    // No key material in the log.
    let text = std::fs::read_to_string(&log).unwrap();
    for k in keys.values() {
        assert!(!text.contains(&hex::encode(k)));
    }

    // A log moved aside while a writer has it open: the writer begins a new log, whose MAC
    // chain starts again from zero.
    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(k2.clone(), store.clone()).await.unwrap();
    std::fs::rename(&log, dir.path().join("old.log")).unwrap();
    sink.record(created(6)).await.unwrap();
    sink.record(created(7)).await.unwrap();
    assert_eq!(sink.stats().last_seq, 2);
    assert_eq!(sink.last_akv_in_log(), Some(2));
    let fresh = records(&log);
    assert_eq!(fresh.len(), 2);
    check_chain(&fresh, &keys);
}

#[tokio::test]
async fn damage_other_than_a_torn_tail_still_refuses_to_open() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    {
        let sink = FileAuditSink::open(&log).unwrap();
        for i in 0..3 {
            sink.record(created(i)).await.unwrap();
        }
    }
    let good = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, good.replace("\"e1\"", "\"e9\"")).unwrap();
    let e = FileAuditSink::open(&log).unwrap_err().to_string();
    assert!(
        e.contains("line 2") && e.contains("security audit verify") && e.contains("aside"),
        "{e}"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("torn")),
        "nothing set aside"
    );
}

#[tokio::test]
async fn an_open_writer_repairs_a_torn_line_and_an_interrupted_rotation_left_by_others() {
    use std::io::Write;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    for i in 0..3 {
        sink.record(created(i)).await.unwrap();
    }
    // Another process died in the middle of an append.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"v\":2,\"seq\":4,\"at\":\"20")
        .unwrap();
    sink.record(created(3)).await.unwrap();
    let recs = records(&log);
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[3].action, "audit.gap");
    assert!(recs[3].detail.contains("(23 bytes)"), "{}", recs[3].detail);
    assert_eq!(recs[4].detail, "e3");
    drop(sink);

    // Another process linked the full file to its rotated name and died before removing the
    // old name: the next writer completes the rotation.
    std::fs::hard_link(&log, format::rotated_path(&log, 1, 5)).unwrap();
    let options = AuditLogOptions::new().with_max_file_bytes(1);
    let sink = FileAuditSink::open_with(&log, options).unwrap();
    sink.record(created(4)).await.unwrap();
    let rotated = format::rotated_files(&log).unwrap();
    let ranges: Vec<(u64, u64)> = rotated.iter().map(|f| (f.first, f.last)).collect();
    assert_eq!(ranges, vec![(1, 5), (6, 6)]);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    drop(sink);
    assert_eq!(verify_set(&log, &[&key], &store).await, 6);
}

/// A keyed log of `n` `tek.created` records at `log`; the checkpoint ends at record `n`.
async fn keyed_log(log: &Path, key: &Arc<TableKey>, store: &Arc<dyn KeyStore>, n: usize) {
    let sink = FileAuditSink::open(log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    for i in 0..n {
        sink.record(created(i)).await.unwrap();
    }
    let cp = AuditCheckpoint::read(&**store).await.unwrap().unwrap();
    assert_eq!(cp.seq, n as u64);
}

/// The verifier with the audit keys and the store's checkpoint.
async fn verify_with_checkpoint(
    log: &Path,
    key: &Arc<TableKey>,
    store: &Arc<dyn KeyStore>,
) -> heliosdb_tde_core::Result<heliosdb_tde_manager::audit::AuditVerification> {
    let cp = AuditCheckpoint::read(&**store).await.unwrap().unwrap();
    let opts = AuditVerifyOptions::new()
        .with_keys(AuditKeys::new().with_version(key.id().version.get(), key.clone()))
        .with_checkpoint(cp.seq, cp.hash, cp.mac);
    heliosdb_tde_manager::audit::verify_audit_log_with(log, &opts)
}

#[tokio::test]
async fn a_log_moved_aside_starts_a_new_log_whose_gap_record_replaces_the_checkpoint() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    keyed_log(&log, &key, &store, 5).await;
    let old = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    std::fs::rename(&log, dir.path().join("audit.log.moved")).unwrap();

    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    // Written at attach_key, before any other record.
    let recs = records(&log);
    assert_eq!(recs.len(), 1);
    let gap = &recs[0];
    assert_eq!((gap.seq, gap.action.as_str()), (1, "audit.gap"));
    assert_eq!(gap.outcome, "failure");
    assert_eq!(gap.error_kind.as_deref(), Some("corrupt"));
    let error = gap.error.as_deref().unwrap();
    assert!(error.contains(log.to_str().unwrap()), "{error}");
    assert!(
        gap.detail.contains(&format!(
            "a new audit log was started: the key store's checkpoint was at record 5 (hash {})",
            old.hash
        )) && gap
            .detail
            .contains("(moved aside or deleted); records 1..5 of that log are not in this one"),
        "{}",
        gap.detail
    );
    assert!(gap.mac.is_some());
    // The checkpoint moved back to it.
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!((cp.seq, &cp.hash, &cp.mac), (1, &gap.hash, &gap.mac));
    assert_eq!(sink.stats().last_checkpoint, Some(1));
    let v = verify_with_checkpoint(&log, &key, &store).await.unwrap();
    assert_eq!((v.last_seq, v.checkpoint), (1, Some(1)));

    // The log continues and the checkpoint moves forward from there.
    sink.record(created(9)).await.unwrap();
    drop(sink);
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(cp.seq, 2);
    // A later writer finds a log that is not new: no second gap record.
    let again = FileAuditSink::open(&log).unwrap();
    again.attach_key(key.clone(), store.clone()).await.unwrap();
    again.record(created(10)).await.unwrap();
    drop(again);
    let recs = records(&log);
    let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, vec!["audit.gap", "tek.created", "tek.created"]);
    check_chain(&recs, &key_bytes(&[&key]));
    let v = verify_with_checkpoint(&log, &key, &store).await.unwrap();
    assert_eq!((v.last_seq, v.checkpoint), (3, Some(3)));
    assert_eq!(verify_set(&log, &[&key], &store).await, 3);
}

#[tokio::test]
async fn a_log_truncated_in_place_keeps_the_checkpoint_and_still_fails_verification() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    keyed_log(&log, &key, &store, 6).await;
    let before = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();

    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(created(7)).await.unwrap();
    drop(sink);
    let recs = records(&log);
    assert_eq!(recs.len(), 4);
    assert!(recs.iter().all(|r| r.action != "audit.gap"));
    assert_eq!(
        AuditCheckpoint::read(&*store).await.unwrap().unwrap(),
        before
    );
    let e = verify_with_checkpoint(&log, &key, &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("records were removed from the end of the log")
            && e.contains("checkpoint is at record 6"),
        "{e}"
    );
}

#[tokio::test]
async fn a_deleted_log_with_rotated_files_left_is_not_new_and_keeps_the_checkpoint() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    {
        // Records 1 and 2 end up in rotated files, 3..5 in the current file.
        let sink =
            FileAuditSink::open_with(&log, AuditLogOptions::new().with_max_file_bytes(1)).unwrap();
        sink.attach_key(key.clone(), store.clone()).await.unwrap();
        sink.record(created(0)).await.unwrap();
        sink.record(created(1)).await.unwrap();
    }
    {
        let sink = FileAuditSink::open(&log).unwrap();
        sink.attach_key(key.clone(), store.clone()).await.unwrap();
        for i in 2..5 {
            sink.record(created(i)).await.unwrap();
        }
    }
    let before = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!(before.seq, 5);
    assert_eq!(format::rotated_files(&log).unwrap().len(), 2);
    std::fs::remove_file(&log).unwrap();

    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(created(5)).await.unwrap();
    assert_eq!(sink.stats().last_checkpoint, Some(5));
    drop(sink);
    let recs = records(&log);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].seq, recs[0].action.as_str()), (3, "tek.created"));
    assert_eq!(
        AuditCheckpoint::read(&*store).await.unwrap().unwrap(),
        before
    );
    let e = verify_with_checkpoint(&log, &key, &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("records were removed from the end of the log"),
        "{e}"
    );
}

/// A keyed log with its checkpoint at record 5 is moved aside; a writer without the audit key
/// (a CLI command run without the subsystem) writes `unkeyed` records to the new log; then a
/// keyed writer attaches. Its `audit.gap` failure follows the unkeyed lines, the checkpoint is
/// replaced by it, and the whole log verifies with the keys and the checkpoint.
async fn unkeyed_lines_then_a_keyed_writer_start_a_new_log(unkeyed: usize) {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    keyed_log(&log, &key, &store, 5).await;
    let old = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert!(old.mac.is_some());
    std::fs::rename(&log, dir.path().join("audit.log.moved")).unwrap();

    {
        let cli = FileAuditSink::open(&log).unwrap();
        for i in 0..unkeyed {
            cli.record(unwrapped(i)).await.unwrap();
        }
    }
    assert!(records(&log).iter().all(|r| r.mac.is_none()));
    // The writer without the key left the checkpoint alone.
    assert_eq!(AuditCheckpoint::read(&*store).await.unwrap().unwrap(), old);

    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    let recs = records(&log);
    assert_eq!(recs.len(), unkeyed + 1);
    assert!(recs[..unkeyed].iter().all(|r| r.action == "tek.unwrapped"));
    let gap = &recs[unkeyed];
    assert_eq!(
        (gap.seq, gap.action.as_str(), gap.outcome.as_str()),
        (unkeyed as u64 + 1, "audit.gap", "failure")
    );
    assert_eq!(gap.error_kind.as_deref(), Some("corrupt"));
    assert!(
        gap.detail.contains(&format!(
            "a new audit log was started: the key store's checkpoint was at record 5 (hash {})",
            old.hash
        )),
        "{}",
        gap.detail
    );
    // The first keyed line of the log.
    assert!(gap.mac.is_some() && recs[..unkeyed].iter().all(|r| r.mac.is_none()));
    let cp = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    assert_eq!((cp.seq, &cp.hash, &cp.mac), (gap.seq, &gap.hash, &gap.mac));
    assert_eq!(sink.stats().last_checkpoint, Some(gap.seq));
    let v = verify_with_checkpoint(&log, &key, &store).await.unwrap();
    assert_eq!((v.last_seq, v.checkpoint), (gap.seq, Some(gap.seq)));

    // The log continues; a later keyed writer finds a keyed log: no second gap record.
    sink.record(created(9)).await.unwrap();
    drop(sink);
    let again = FileAuditSink::open(&log).unwrap();
    again.attach_key(key.clone(), store.clone()).await.unwrap();
    again.record(created(10)).await.unwrap();
    drop(again);
    let recs = records(&log);
    assert_eq!(recs.len(), unkeyed + 3);
    assert_eq!(
        recs.iter().filter(|r| r.action == "audit.gap").count(),
        1,
        "{recs:?}"
    );
    check_chain(&recs, &key_bytes(&[&key]));
    let last = unkeyed as u64 + 3;
    let v = verify_with_checkpoint(&log, &key, &store).await.unwrap();
    assert_eq!((v.last_seq, v.checkpoint), (last, Some(last)));
    assert_eq!(verify_set(&log, &[&key], &store).await, last);
}

#[tokio::test]
async fn unkeyed_lines_written_to_a_moved_log_before_the_checkpoint_still_start_a_new_log() {
    // 2 unkeyed records: the log ends before the checkpoint's record 5.
    unkeyed_lines_then_a_keyed_writer_start_a_new_log(2).await;
}

#[tokio::test]
async fn unkeyed_lines_written_past_the_checkpoint_start_a_new_log_as_the_hash_there_differs() {
    // 7 unkeyed records: the log holds a record 5, with another hash than the checkpoint's.
    unkeyed_lines_then_a_keyed_writer_start_a_new_log(7).await;
}

#[tokio::test]
async fn a_keyed_log_cut_in_place_and_continued_without_the_key_keeps_the_checkpoint() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = audit_key(1);
    let log = dir.path().join("audit.log");
    keyed_log(&log, &key, &store, 6).await;
    let before = AuditCheckpoint::read(&*store).await.unwrap().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    {
        // Records 3 and 4, without the key: still before the checkpoint's record 6.
        let cli = FileAuditSink::open(&log).unwrap();
        for i in 0..2 {
            cli.record(unwrapped(i)).await.unwrap();
        }
    }

    let sink = FileAuditSink::open(&log).unwrap();
    sink.attach_key(key.clone(), store.clone()).await.unwrap();
    sink.record(created(7)).await.unwrap();
    drop(sink);
    let recs = records(&log);
    assert_eq!(recs.len(), 5);
    assert!(recs.iter().all(|r| r.action != "audit.gap"));
    assert_eq!(
        AuditCheckpoint::read(&*store).await.unwrap().unwrap(),
        before
    );
    let e = verify_with_checkpoint(&log, &key, &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("records were removed from the end of the log")
            && e.contains("checkpoint is at record 6"),
        "{e}"
    );
}
