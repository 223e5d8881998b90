//! Audit log verification against tampering: logs are built here with the line format's own
//! sealing (`audit::format`), written as file sets by hand, damaged, and verified. Each kind of
//! damage is reported with the right file and line; what the structure-only check cannot see
//! (a file rewritten with a recomputed SHA-256 chain) is asserted too, so that the limitation
//! stays documented. Also: the bounded current-file check, and reading the newest records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};
use heliosdb_tde_manager::audit::format::{AuditRecord, ZERO, rotated_path};
use heliosdb_tde_manager::audit::verify::{
    AuditFilter, AuditKeys, AuditVerification, AuditVerifyOptions, read_audit_tail,
    verify_audit_log, verify_audit_log_with,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const KEY1: [u8; 32] = [0x11; 32];
const KEY2: [u8; 32] = [0x22; 32];

/// How one record is written.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Format 1 (no MAC).
    V1,
    /// Format 2 without the audit key.
    Unkeyed,
    /// Format 2 with the MAC under audit key version `akv` made with `key`.
    Keyed(u32, [u8; 32]),
}

const K1: Kind = Kind::Keyed(1, KEY1);

fn table_key(bytes: [u8; 32]) -> Arc<TableKey> {
    Arc::new(TableKey::new(
        "_heliosdb.audit@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&bytes).unwrap(),
    ))
}

fn keys() -> AuditKeys {
    AuditKeys::new()
        .with_version(1, table_key(KEY1))
        .with_version(2, table_key(KEY2))
}

fn with_keys() -> AuditVerifyOptions {
    AuditVerifyOptions::new().with_keys(keys())
}

const ACTIONS: [&str; 3] = ["tek.created", "tek.unwrapped", "mek.rotated"];

fn record(seq: u64, kind: Kind) -> AuditRecord {
    let mut r = AuditRecord::default();
    r.v = if matches!(kind, Kind::V1) { 1 } else { 2 };
    r.seq = seq;
    r.at = "2026-12-02T00:00:00Z".into();
    r.at_ms = 1_795_000_000_000 + seq;
    r.action = ACTIONS[(seq % 3) as usize].into();
    r.key = Some(format!("tek:t{}@v1", seq % 4));
    r.outcome = "success".into();
    r.detail = format!("record {seq}");
    if !matches!(kind, Kind::V1) {
        r.pid = Some(42);
        r.host = Some("db1".into());
    }
    r
}

/// Seals `records` in order from the start of a log (hashes and MACs recomputed), the way the
/// writer does; `kinds[i]` says how record i is keyed.
fn seal_all(records: &mut [AuditRecord], kinds: &[Kind]) {
    reseal_from(records, kinds, 0);
}

/// Seals `records[from..]` again after the chain state of `records[..from]`: what someone who
/// rewrites the log from there does. A keyed record keeps its `akv`/`mac` as they are (the
/// rewriter has no key) unless `kinds` asks for an (other) key.
fn reseal_from(records: &mut [AuditRecord], kinds: &[Kind], from: usize) {
    let mut prev = ZERO.to_string();
    let mut prev_mac = ZERO.to_string();
    for (i, r) in records.iter_mut().enumerate() {
        if i >= from {
            match kinds[i] {
                Kind::V1 | Kind::Unkeyed => r.seal(&prev, None),
                Kind::Keyed(akv, key) => r.seal(&prev, Some((akv, &key, &prev_mac))),
            }
        }
        prev = r.hash.clone();
        if let Some(m) = &r.mac {
            prev_mac = m.clone();
        }
    }
}

/// Recomputes only the hashes of `records[from..]` (SHA-256 chain), keeping every `akv` and
/// `mac` as it is: what someone without the audit key can do.
fn rehash_from(records: &mut [AuditRecord], from: usize) {
    let mut prev = if from == 0 {
        ZERO.to_string()
    } else {
        records[from - 1].hash.clone()
    };
    for r in &mut records[from..] {
        r.prev = prev;
        r.hash = String::new();
        r.hash = r.digest();
        prev = r.hash.clone();
    }
}

fn chain(kinds: &[Kind]) -> Vec<AuditRecord> {
    let mut records: Vec<AuditRecord> = (1..=kinds.len() as u64)
        .map(|s| record(s, kinds[(s - 1) as usize]))
        .collect();
    seal_all(&mut records, kinds);
    records
}

fn line(r: &AuditRecord) -> String {
    format!("{}\n", serde_json::to_string(r).unwrap())
}

/// A log's file set in a temporary directory.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    records: Vec<AuditRecord>,
    /// The records of each file (rotated files first, the current file last).
    sizes: Vec<usize>,
}

impl Log {
    /// `records` split into rotated files of `sizes` records each, the rest in the current file.
    fn new(records: Vec<AuditRecord>, sizes: &[usize]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut all = sizes.to_vec();
        all.push(records.len() - sizes.iter().sum::<usize>());
        let log = Self {
            _dir: dir,
            path,
            records,
            sizes: all,
        };
        log.write();
        log
    }

    /// The file holding file index `i` (the current file is the last index).
    fn file(&self, i: usize) -> PathBuf {
        if i + 1 == self.sizes.len() {
            return self.path.clone();
        }
        let first = self.sizes[..i].iter().sum::<usize>() as u64 + 1;
        rotated_path(&self.path, first, first + self.sizes[i] as u64 - 1)
    }

    /// Writes every file from `records`.
    fn write(&self) {
        let mut start = 0;
        for (i, n) in self.sizes.iter().enumerate() {
            let text: String = self.records[start..start + n].iter().map(line).collect();
            std::fs::write(self.file(i), text).unwrap();
            start += n;
        }
    }

    /// The lines of file `i`.
    fn lines(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.file(i))
            .unwrap()
            .lines()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn set_lines(&self, i: usize, lines: &[String]) {
        std::fs::write(self.file(i), lines.concat()).unwrap();
    }

    fn verify(&self) -> AuditVerification {
        verify_audit_log(&self.path).unwrap()
    }

    fn verify_with(&self, opts: &AuditVerifyOptions) -> AuditVerification {
        verify_audit_log_with(&self.path, opts).unwrap()
    }

    /// Asserts that verifying with `opts` fails at `location` (a file and `line n`, or a file
    /// alone when `line` is `None`) with a message containing every one of `needles`.
    fn fails(&self, opts: &AuditVerifyOptions, file: &Path, line: Option<u64>, needles: &[&str]) {
        let e = verify_audit_log_with(&self.path, opts)
            .unwrap_err()
            .to_string();
        let location = match line {
            Some(n) => format!("{} line {n}:", file.display()),
            None => format!("{}:", file.display()),
        };
        assert!(e.contains(&location), "expected {location} in: {e}");
        for n in needles {
            assert!(e.contains(n), "expected {n:?} in: {e}");
        }
    }
}

/// `n` keyed records (audit key version 1) across `k` files of `n / k` records each (the
/// current file takes the rest).
fn keyed_log(n: usize, k: usize) -> Log {
    let records = chain(&vec![K1; n]);
    Log::new(records, &vec![n / k; k - 1])
}

#[test]
fn a_keyed_set_of_three_files_verifies_as_one_chain() {
    let log = keyed_log(30, 3);
    let v = log.verify_with(&with_keys());
    assert_eq!(v.lines, 30);
    assert_eq!(v.last_seq, 30);
    assert_eq!(v.last_hash, log.records[29].hash);
    assert_eq!(v.last_mac, log.records[29].mac);
    assert_eq!(v.macs_checked, 30);
    assert_eq!(v.unauthenticated_tail, 0);
    assert_eq!(v.format1_lines, 0);
    assert_eq!(v.checkpoint, None);
    assert_eq!(v.files, vec![log.file(0), log.file(1), log.file(2)]);
    // Without keys: the structure only, no MAC checked.
    let s = log.verify();
    assert_eq!((s.lines, s.macs_checked), (30, 0));
    assert_eq!(s.last_mac, log.records[29].mac);
}

#[test]
fn an_empty_current_file_after_rotation_and_a_missing_one_verify() {
    let log = keyed_log(20, 3);
    assert_eq!(log.sizes, vec![6, 6, 8]);
    let log = Log::new(chain(&[K1; 12]), &[6, 6]);
    let v = log.verify_with(&with_keys());
    assert_eq!((v.lines, v.last_seq, v.files.len()), (12, 12, 3));
    std::fs::remove_file(&log.path).unwrap();
    let v = log.verify_with(&with_keys());
    assert_eq!((v.lines, v.last_seq, v.files.len()), (12, 12, 2));
    // A log that does not exist at all is an error.
    let dir = tempfile::tempdir().unwrap();
    assert!(verify_audit_log(&dir.path().join("none.log")).is_err());
}

#[test]
fn a_changed_byte_is_reported_at_its_file_and_line() {
    let log = keyed_log(30, 3);
    let mut lines = log.lines(1);
    lines[3] = lines[3].replace("record 14", "record 94");
    log.set_lines(1, &lines);
    let file = log.file(1);
    for opts in [AuditVerifyOptions::new(), with_keys()] {
        log.fails(&opts, &file, Some(4), &["hash does not match its content"]);
    }
    // A byte that makes the line unparsable.
    lines[3] = lines[3].replacen('{', "[", 1);
    log.set_lines(1, &lines);
    log.fails(&with_keys(), &file, Some(4), &["not an audit record"]);
}

#[test]
fn a_deleted_line_is_reported_where_the_sequence_jumps() {
    let log = keyed_log(30, 3);
    let mut lines = log.lines(0);
    lines.remove(4);
    log.set_lines(0, &lines);
    log.fails(
        &with_keys(),
        &log.file(0),
        Some(5),
        &["sequence 6 where 5 was expected"],
    );
    // The last line of a rotated file: its name says more than it holds.
    let log = keyed_log(30, 3);
    let mut lines = log.lines(1);
    lines.pop();
    log.set_lines(1, &lines);
    log.fails(
        &AuditVerifyOptions::new(),
        &log.file(1),
        Some(10),
        &["records 20..20 were removed from its end"],
    );
    // The first line of the log.
    let log = Log::new(chain(&[K1; 5]), &[]);
    let mut lines = log.lines(0);
    lines.remove(0);
    log.set_lines(0, &lines);
    log.fails(
        &with_keys(),
        &log.path,
        Some(1),
        &["records 1..1 are missing"],
    );
}

#[test]
fn two_swapped_lines_are_reported_at_the_first() {
    let log = keyed_log(30, 3);
    let mut lines = log.lines(1);
    lines.swap(2, 3);
    log.set_lines(1, &lines);
    log.fails(
        &AuditVerifyOptions::new(),
        &log.file(1),
        Some(3),
        &["sequence 14 where 13 was expected"],
    );
    // Across a file boundary: the last line of file 1 and the first of file 2.
    let log = keyed_log(30, 3);
    let (mut a, mut b) = (log.lines(0), log.lines(1));
    std::mem::swap(a.last_mut().unwrap(), &mut b[0]);
    log.set_lines(0, &a);
    log.set_lines(1, &b);
    log.fails(
        &AuditVerifyOptions::new(),
        &log.file(0),
        Some(10),
        &["sequence 11 where 10 was expected"],
    );
}

#[test]
fn a_deleted_rotated_file_is_named() {
    let log = keyed_log(30, 3);
    std::fs::remove_file(log.file(1)).unwrap();
    log.fails(
        &AuditVerifyOptions::new(),
        &log.file(1),
        None,
        &[
            "records 11..20 are missing: file audit.log.11-20 was removed",
            "restore",
        ],
    );
    // The oldest file.
    let log = keyed_log(30, 3);
    std::fs::remove_file(log.file(0)).unwrap();
    log.fails(
        &with_keys(),
        &log.file(0),
        None,
        &["records 1..10 are missing: file audit.log.1-10 was removed"],
    );
    // The newest rotated file: the current file starts after the gap.
    let log = keyed_log(30, 3);
    std::fs::remove_file(log.file(1)).unwrap();
    std::fs::remove_file(log.file(0)).unwrap();
    log.fails(
        &with_keys(),
        &log.path,
        Some(1),
        &["records 1..20 are missing", "audit.log.1-20"],
    );
}

#[test]
fn an_extra_file_is_named() {
    // Overlapping: a copy of records 5..8.
    let log = keyed_log(30, 3);
    let extra = rotated_path(&log.path, 5, 8);
    std::fs::write(&extra, log.lines(0)[4..8].concat()).unwrap();
    log.fails(
        &AuditVerifyOptions::new(),
        &extra,
        None,
        &["audit.log.5-8", "overlap", "audit.log.1-10"],
    );
    std::fs::remove_file(&extra).unwrap();
    // After the rotated files, while the current file continues from record 21.
    let extra = rotated_path(&log.path, 40, 45);
    std::fs::write(&extra, log.lines(0)[..6].concat()).unwrap();
    log.fails(
        &AuditVerifyOptions::new(),
        &extra,
        None,
        &["audit.log.40-45 is extra"],
    );
    std::fs::remove_file(&extra).unwrap();
    // A copy of the current file's first records under a rotated name.
    let extra = rotated_path(&log.path, 21, 25);
    std::fs::write(&extra, log.lines(2)[..5].concat()).unwrap();
    log.fails(
        &AuditVerifyOptions::new(),
        &log.path,
        Some(1),
        &["starts at record 21, which file audit.log.21-25 already covers"],
    );
    std::fs::remove_file(&extra).unwrap();
    // A name that is not a range.
    let extra = rotated_path(&log.path, 31, 30);
    std::fs::write(&extra, "").unwrap();
    log.fails(&AuditVerifyOptions::new(), &extra, None, &["not a range"]);
    std::fs::remove_file(&extra).unwrap();
    log.verify_with(&with_keys());
}

#[test]
fn a_log_cut_before_the_checkpoint_is_reported() {
    let log = keyed_log(30, 3);
    let cp = &log.records[27];
    let opts = with_keys().with_checkpoint(28, cp.hash.clone(), cp.mac.clone());
    assert_eq!(log.verify_with(&opts).checkpoint, Some(28));
    // Records 26..30 cut from the current file.
    let lines = log.lines(2);
    log.set_lines(2, &lines[..5]);
    let cut = "records were removed from the end of the log: the key store's checkpoint is at \
               record 28, the log ends at record 25";
    log.fails(&opts, &log.path, Some(6), &[cut]);
    // The structure alone does not see it (no checkpoint).
    assert_eq!(log.verify_with(&with_keys()).last_seq, 25);
    // The whole current file removed.
    std::fs::remove_file(&log.path).unwrap();
    log.fails(&opts, &log.path, Some(1), &["the log ends at record 20"]);
    // The bounded check sees it too.
    let bounded = opts.clone().current_file_only();
    log.fails(&bounded, &log.path, Some(1), &["the log ends at record 20"]);
}

#[test]
fn a_line_at_the_checkpoint_with_another_hash_or_mac_is_reported() {
    let log = keyed_log(30, 3);
    let cp = log.records[24].clone();
    let other = log.records[23].hash.clone();
    let opts = with_keys().with_checkpoint(25, other, cp.mac.clone());
    log.fails(
        &opts,
        &log.path,
        Some(5),
        &["record at the key store's checkpoint (record 25) has another hash"],
    );
    let opts = with_keys().with_checkpoint(25, cp.hash.clone(), log.records[23].mac.clone());
    log.fails(
        &opts,
        &log.path,
        Some(5),
        &["newest MAC at the key store's checkpoint"],
    );
    // Without a MAC in the checkpoint only the hash is compared.
    let opts = AuditVerifyOptions::new().with_checkpoint(25, cp.hash.clone(), None);
    assert_eq!(log.verify_with(&opts).checkpoint, Some(25));
    // A checkpoint in a rotated file is compared there.
    let cp = &log.records[14];
    let opts = with_keys().with_checkpoint(15, log.records[13].hash.clone(), cp.mac.clone());
    log.fails(&opts, &log.file(1), Some(5), &["another hash"]);
}

#[test]
fn a_file_rewritten_with_a_recomputed_sha256_chain_is_caught_only_by_the_macs() {
    let mut log = keyed_log(30, 3);
    // Record 23 (current file, line 3) changed and every hash from there recomputed: the MACs
    // stay as they were, since the rewriter has no audit key.
    log.records[22].detail = "nothing happened here".into();
    log.records[22].outcome = "failure".into();
    rehash_from(&mut log.records, 22);
    log.write();
    // The structure-only check passes it: the documented limitation.
    let v = log.verify();
    assert_eq!(
        (v.lines, v.last_hash.as_str()),
        (30, log.records[29].hash.as_str())
    );
    // The MACs catch it, at the first rewritten line.
    log.fails(
        &with_keys(),
        &log.path,
        Some(3),
        &["MAC (audit key version 1) does not match"],
    );
    // Whole files: every record of files 2 and 3 rewritten.
    let mut log = keyed_log(30, 3);
    for r in &mut log.records[10..] {
        r.detail = format!("forged {}", r.seq);
    }
    rehash_from(&mut log.records, 10);
    log.write();
    assert_eq!(log.verify().lines, 30);
    log.fails(&with_keys(), &log.file(1), Some(1), &["does not match"]);
}

#[test]
fn a_rewrite_that_strips_the_macs_is_an_unauthenticated_tail_and_fails_the_checkpoint() {
    let mut log = keyed_log(30, 3);
    let cp = log.records[29].clone();
    // The last 8 records rewritten as lines without the audit key.
    let mut kinds = vec![K1; 30];
    for k in &mut kinds[22..] {
        *k = Kind::Unkeyed;
    }
    for r in &mut log.records[22..] {
        r.detail = "forged".into();
    }
    reseal_from(&mut log.records, &kinds, 22);
    log.write();
    let v = log.verify_with(&with_keys());
    assert_eq!(v.unauthenticated_tail, 8);
    assert_eq!(v.macs_checked, 22);
    assert_eq!(v.last_mac, log.records[21].mac);
    let opts = with_keys().with_checkpoint(30, cp.hash, cp.mac);
    log.fails(&opts, &log.path, Some(10), &["another hash"]);
}

#[test]
fn a_mac_made_with_the_wrong_key_is_reported() {
    let mut kinds = vec![K1; 12];
    // Line 7 claims version 1 but was made with version 2's key.
    kinds[6] = Kind::Keyed(1, KEY2);
    let log = Log::new(chain(&kinds), &[5]);
    log.fails(
        &with_keys(),
        &log.path,
        Some(2),
        &["MAC (audit key version 1) does not match"],
    );
    assert_eq!(log.verify().lines, 12);
    // Version 2 made with version 2's key is fine, and the chain goes on across versions.
    kinds[6] = Kind::Keyed(2, KEY2);
    let log = Log::new(chain(&kinds), &[5]);
    let v = log.verify_with(&with_keys());
    assert_eq!(v.macs_checked, 12);
}

#[test]
fn an_unknown_audit_key_version_is_named() {
    let mut kinds = vec![K1; 8];
    kinds[5] = Kind::Keyed(7, [0x77; 32]);
    let log = Log::new(chain(&kinds), &[4]);
    log.fails(
        &with_keys(),
        &log.path,
        Some(2),
        &["audit key version 7", "holds versions 1, 2"],
    );
    // Without keys, a MAC is not checked.
    assert_eq!(log.verify().lines, 8);
    // With an empty key set every keyed line is unknown.
    log.fails(
        &AuditVerifyOptions::new().with_keys(AuditKeys::new()),
        &log.file(0),
        Some(1),
        &["audit key version 1", "holds versions none"],
    );
}

#[test]
fn unkeyed_lines_are_covered_by_the_next_keyed_line_or_counted_as_the_tail() {
    use Kind::Unkeyed as U;
    let kinds = [K1, K1, K1, U, U, K1, K1, U, U, U];
    let mut log = Log::new(chain(&kinds), &[5]);
    let v = log.verify_with(&with_keys());
    assert_eq!(v.macs_checked, 5);
    assert_eq!(v.unauthenticated_tail, 3);
    assert_eq!(v.last_mac, log.records[6].mac);
    // An unkeyed line edited and rehashed: the next keyed line's MAC no longer matches.
    log.records[3].detail = "edited".into();
    rehash_from(&mut log.records, 3);
    log.write();
    assert_eq!(log.verify().lines, 10);
    log.fails(
        &with_keys(),
        &log.path,
        Some(1),
        &["MAC (audit key version 1)"],
    );
    // A line with a version but no MAC.
    let log = Log::new(chain(&[K1, K1]), &[]);
    let mut lines = log.lines(0);
    let mut r: AuditRecord = serde_json::from_str(&lines[1]).unwrap();
    r.mac = None;
    r.hash = String::new();
    r.hash = r.digest();
    lines[1] = line(&r);
    log.set_lines(0, &lines);
    log.fails(
        &AuditVerifyOptions::new(),
        &log.path,
        Some(2),
        &["without a MAC"],
    );
}

#[test]
fn a_format_1_log_followed_by_format_2_lines_verifies() {
    use Kind::{Unkeyed as U, V1};
    let kinds = [V1, V1, V1, V1, U, K1, K1];
    let log = Log::new(chain(&kinds), &[3]);
    assert!(log.lines(0)[0].starts_with("{\"seq\":1,"));
    let v = log.verify_with(&with_keys());
    assert_eq!(v.lines, 7);
    assert_eq!(v.format1_lines, 4);
    assert_eq!(v.macs_checked, 2);
    assert_eq!(v.unauthenticated_tail, 0);
    // A format 1 log alone: nothing is authenticated.
    let log = Log::new(chain(&[V1; 4]), &[]);
    let v = log.verify_with(&with_keys());
    assert_eq!(
        (v.format1_lines, v.unauthenticated_tail, v.last_mac),
        (4, 4, None)
    );
    // A format 1 line after format 2 lines is not something the writer does.
    let log = Log::new(chain(&[V1, K1, V1]), &[]);
    log.fails(
        &AuditVerifyOptions::new(),
        &log.path,
        Some(3),
        &["format 1 line after"],
    );
}

#[test]
fn the_current_file_check_sees_the_current_file_only() {
    let log = keyed_log(30, 3);
    // A damaged rotated file.
    let mut lines = log.lines(0);
    lines[2] = lines[2].replace("record 3", "record 8");
    log.set_lines(0, &lines);
    let bounded = with_keys().current_file_only();
    let v = log.verify_with(&bounded);
    assert_eq!(v.files, vec![log.path.clone()]);
    assert_eq!((v.lines, v.last_seq, v.macs_checked), (10, 30, 10));
    assert_eq!(v.last_hash, log.records[29].hash);
    // The full check sees it.
    log.fails(
        &with_keys(),
        &log.file(0),
        Some(3),
        &["hash does not match"],
    );
    // The bounded check chains the current file to the newest rotated file's last line.
    let mut lines = log.lines(2);
    lines.remove(0);
    log.set_lines(2, &lines);
    log.fails(
        &bounded,
        &log.path,
        Some(1),
        &["starts at record 22", "audit.log.11-20 ends at record 20"],
    );
    // And checks the current file's MACs, the first one after the rotated file's last MAC.
    let mut log = keyed_log(30, 3);
    log.records[20].detail = "forged".into();
    rehash_from(&mut log.records, 20);
    log.write();
    assert_eq!(
        log.verify_with(&AuditVerifyOptions::new().current_file_only())
            .lines,
        10
    );
    log.fails(&bounded, &log.path, Some(1), &["does not match"]);
}

#[test]
fn the_current_file_check_reads_back_past_unkeyed_lines_of_the_rotated_file() {
    use Kind::Unkeyed as U;
    // Records 8..10 (the end of the rotated file 6-10) and 11 are unkeyed; 12 needs record 7's
    // MAC, which the bounded check finds by reading the rotated file backwards, and file 1-5 is
    // never read.
    let kinds = [K1, K1, K1, K1, K1, K1, K1, U, U, U, U, K1, U];
    let log = Log::new(chain(&kinds), &[5, 5]);
    std::fs::write(log.file(0), "garbage\n").unwrap();
    let cp = &log.records[9];
    let bounded = with_keys()
        .with_checkpoint(10, cp.hash.clone(), log.records[6].mac.clone())
        .current_file_only();
    let v = log.verify_with(&bounded);
    assert_eq!((v.lines, v.last_seq, v.macs_checked), (3, 13, 1));
    assert_eq!(v.unauthenticated_tail, 1);
    assert_eq!(v.checkpoint, Some(10));
    // With the rotated file's tail all unkeyed, it reads on into the older file.
    let kinds = [K1, K1, K1, U, U, U, U, U, K1];
    let log = Log::new(chain(&kinds), &[4, 4]);
    let v = log.verify_with(&with_keys().current_file_only());
    assert_eq!((v.lines, v.macs_checked, v.unauthenticated_tail), (1, 1, 0));
    let v = log.verify_with(&AuditVerifyOptions::new().current_file_only());
    assert_eq!(v.last_mac, log.records[8].mac);
    // A checkpoint in the current file is compared there.
    let cp = &log.records[8];
    let wrong = with_keys()
        .with_checkpoint(9, log.records[7].hash.clone(), cp.mac.clone())
        .current_file_only();
    log.fails(&wrong, &log.path, Some(1), &["another hash"]);
}

#[test]
fn a_torn_last_line_is_reported_as_torn() {
    let log = keyed_log(10, 2);
    let mut text = log.lines(1).concat();
    text.push_str("{\"v\":2,\"seq\":11,\"at\":\"2026");
    std::fs::write(&log.path, text).unwrap();
    log.fails(
        &AuditVerifyOptions::new(),
        &log.path,
        Some(6),
        &["no newline", "torn"],
    );
    // A complete last record without its newline is fine.
    log.write();
    let text = log.lines(1).concat();
    std::fs::write(&log.path, text.trim_end()).unwrap();
    assert_eq!(log.verify_with(&with_keys()).lines, 10);
}

fn seqs(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn the_tail_is_the_newest_records_oldest_first_across_files() {
    let log = keyed_log(30, 3);
    let all = AuditFilter::new();
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 5, &all).unwrap()),
        (26..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 15, &all).unwrap()),
        (16..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 100, &all).unwrap()),
        (1..=30).collect::<Vec<_>>()
    );
    assert!(read_audit_tail(&log.path, 0, &all).unwrap().is_empty());
    // The records are the ones written.
    assert_eq!(
        read_audit_tail(&log.path, 1, &all).unwrap()[0],
        log.records[29]
    );
    // Reading stops once it has enough: a damaged older file is not read.
    std::fs::write(log.file(0), "garbage\n").unwrap();
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 12, &all).unwrap()),
        (19..=30).collect::<Vec<_>>()
    );
    let e = read_audit_tail(&log.path, 30, &all)
        .unwrap_err()
        .to_string();
    assert!(e.contains("audit.log.1-10 line 1 from the end"), "{e}");
}

#[test]
fn the_tail_filters_by_action_and_key() {
    let log = keyed_log(30, 3);
    let unwraps = AuditFilter::new().with_action("tek.unwrapped".into());
    // seq % 3 == 1: 1, 4, ..., 28.
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 4, &unwraps).unwrap()),
        vec![19, 22, 25, 28]
    );
    let tek = AuditFilter::new().with_action("tek".into());
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 3, &tek).unwrap()),
        vec![27, 28, 30]
    );
    // seq % 4 == 2: key tek:t2@v1.
    let t2 = AuditFilter::new().with_key("t2".into());
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 100, &t2).unwrap()),
        vec![2, 6, 10, 14, 18, 22, 26, 30]
    );
    let both = AuditFilter::new()
        .with_key("tek:t2@v1".into())
        .with_action("tek.unwrapped".into());
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 100, &both).unwrap()),
        vec![10, 22]
    );
    let none = AuditFilter::new().with_action("backup.written".into());
    assert!(read_audit_tail(&log.path, 10, &none).unwrap().is_empty());
}

#[test]
fn the_tail_skips_a_torn_last_line_and_reads_a_log_without_rotation() {
    let log = Log::new(chain(&[K1; 4]), &[]);
    let mut text = log.lines(0).concat();
    text.push_str("{\"v\":2,\"se");
    std::fs::write(&log.path, text).unwrap();
    let all = AuditFilter::new();
    assert_eq!(
        seqs(&read_audit_tail(&log.path, 2, &all).unwrap()),
        vec![3, 4]
    );
    // A damaged line that is not the torn last one is an error.
    log.write();
    let mut lines = log.lines(0);
    lines[2] = "garbage\n".into();
    log.set_lines(0, &lines);
    let e = read_audit_tail(&log.path, 4, &all).unwrap_err().to_string();
    assert!(e.contains("audit.log line 2 from the end"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    assert!(read_audit_tail(&dir.path().join("none.log"), 1, &all).is_err());
}

/// The audit key of the `audit_log` fuzz check (`AUDIT_FUZZ_KEY` in `fuzz/src/checks.rs`).
const FUZZ_KEY: [u8; 32] = [0x5a; 32];

/// Separates the files of an `audit_log` fuzz input (`AUDIT_FILE_SEPARATOR`).
const FUZZ_FILE_SEPARATOR: u8 = 0x1e;

/// Writes the `audit_log` fuzz seeds, sealed under the fuzz check's key (version 1), so that
/// the fuzzer starts from logs that verify with it:
/// `cargo test -p heliosdb-tde-manager --test audit_tamper -- --ignored write_audit_log_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/audit_log; run it when the line format changes"]
fn write_audit_log_seeds() {
    use Kind::{Unkeyed as U, V1};
    let f = Kind::Keyed(1, FUZZ_KEY);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/audit_log");
    let seal = |kinds: &[Kind]| {
        let mut records: Vec<AuditRecord> = (1..=kinds.len() as u64)
            .map(|s| {
                let mut r = record(s, kinds[(s - 1) as usize]);
                if r.v == 2 {
                    r.uid = Some(1000);
                    r.user = Some("heliosdb".into());
                    r.exe = Some("/usr/bin/heliosdb".into());
                    r.mode = Some("production".into());
                    r.provider = Some("secure-file".into());
                }
                if s == 2 {
                    r.outcome = "failure".into();
                    r.error = Some("authentication failed".into());
                    if r.v == 2 {
                        r.error_kind = Some("authentication_failed".into());
                    }
                }
                r
            })
            .collect();
        seal_all(&mut records, kinds);
        records
    };
    let text = |records: &[AuditRecord]| records.iter().map(line).collect::<String>();
    let files = |records: &[AuditRecord], sizes: &[usize]| {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, n) in sizes.iter().enumerate() {
            if i > 0 {
                out.push(FUZZ_FILE_SEPARATOR);
            }
            out.extend_from_slice(text(&records[start..start + n]).as_bytes());
            start += n;
        }
        out
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("v1-chain", text(&seal(&[V1, V1, V1])).into_bytes()),
        ("v2-keyed", text(&seal(&[f, f, f, f])).into_bytes()),
        (
            "v2-unkeyed-lines",
            text(&seal(&[f, U, U, f, U])).into_bytes(),
        ),
        (
            "v1-then-v2-file-set",
            files(&seal(&[V1, V1, f, f, U, f, f]), &[3, 2, 2]),
        ),
        ("v2-torn-tail", {
            let mut t = text(&seal(&[f, f]));
            t.push_str("{\"v\":2,\"seq\":3,\"at\":\"2026-12-");
            t.into_bytes()
        }),
    ];
    for (name, bytes) in seeds {
        assert!(bytes.len() < 4096, "{name} is {} bytes", bytes.len());
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
