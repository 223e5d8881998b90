//! `security audit verify`, `security audit tail`, the audit section of `key-stats`, the
//! `credential.changed` record of `mek change-passphrase`, and a failing audit write seen by
//! `security status`, with the real binary, the secure-file provider and a real key store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS, command, fails, ok, passphrase_file, text};
use std::path::{Path, PathBuf};
use std::process::Output;

fn cli(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    command(dir, cfg, args)
        .env_remove("FAILPOINTS")
        .output()
        .unwrap()
}

/// A production configuration under `dir` with the audit log at `dir/audit/audit.log`,
/// backups in `dir/backups`, `extra` lines appended at the top level.
fn config_with(dir: &Path, extra: &str) -> PathBuf {
    config_backups(dir, &dir.join("backups"), extra)
}

/// [`config_with`], with backups in `backups`.
fn config_backups(dir: &Path, backups: &Path, extra: &str) -> PathBuf {
    let file = dir.join("secrets/pass.txt");
    passphrase_file(&file, PASS);
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\nsecurity_mode = \"production\"\n\
             audit_log_path = \"{d}/audit/audit.log\"\nbackup_dir = \"{b}\"\n{extra}\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            b = backups.display(),
            p = file.display()
        ),
    )
    .unwrap();
    cfg
}

fn log(dir: &Path) -> PathBuf {
    dir.join("audit/audit.log")
}

/// Tables created and rotated, an MEK rotation, and a backup (so that `status` passes).
fn populated(dir: &Path, extra: &str) -> PathBuf {
    populated_backups(dir, &dir.join("backups"), extra)
}

/// [`populated`], with backups in `backups`.
fn populated_backups(dir: &Path, backups: &Path, extra: &str) -> PathBuf {
    let cfg = config_backups(dir, backups, extra);
    for t in ["public.users", "public.orders", "sales"] {
        ok(&cli(dir, &cfg, &["security", "tek", "create", t]));
    }
    ok(&cli(dir, &cfg, &["security", "tek", "rotate", "sales"]));
    ok(&cli(dir, &cfg, &["security", "mek", "rotate"]));
    std::fs::create_dir_all(backups).unwrap();
    ok(&cli(
        dir,
        &cfg,
        &["security", "backup", "--out-dir", backups.to_str().unwrap()],
    ));
    cfg
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn the_audit_help_lists_verify_and_tail_and_the_old_name_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), "");
    let help = ok(&cli(dir.path(), &cfg, &["security", "audit", "--help"]));
    assert!(help.contains("verify") && help.contains("tail"), "{help}");
    ok(&cli(dir.path(), &cfg, &["security", "tek", "create", "t1"]));
    let alias = ok(&cli(dir.path(), &cfg, &["security", "audit-verify"]));
    assert!(alias.contains("verified"), "{alias}");
}

#[test]
fn verify_checks_macs_and_checkpoint_and_reports_the_first_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = populated(d, "");
    let good = ok(&cli(d, &cfg, &["security", "audit", "verify"]));
    assert!(
        good.contains("verified") && good.contains("MACs checked"),
        "{good}"
    );
    let v = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "audit", "verify"],
    ));
    assert_eq!(v["verified"], true);
    assert!(v["macs_checked"].as_u64().unwrap() > 5, "{v}");
    assert!(v["checkpoint"].as_u64().is_some(), "{v}");
    assert_eq!(v["last_seq"], v["records"]);

    let path = log(d);
    let original = std::fs::read_to_string(&path).unwrap();
    let restore = || std::fs::write(&path, &original).unwrap();

    // A changed byte.
    std::fs::write(
        &path,
        original.replacen("public.orders", "public.ordert", 1),
    )
    .unwrap();
    let t = fails(&cli(d, &cfg, &["security", "audit", "verify"]));
    assert!(t.contains("audit.log line"), "{t}");
    restore();

    // The whole file rewritten with a correctly recomputed SHA-256 chain: the structure check
    // passes it (its documented limit), the MACs do not.
    let rewritten = rechain(&original, |l| l.replace("public.orders", "public.ordert"));
    std::fs::write(&path, rewritten).unwrap();
    let s = ok(&cli(
        d,
        &cfg,
        &["security", "audit", "verify", "--structure-only"],
    ));
    assert!(s.contains("structure only"), "{s}");
    let t = fails(&cli(d, &cfg, &["security", "audit", "verify"]));
    assert!(
        t.contains("audit.log line") && t.to_lowercase().contains("mac"),
        "{t}"
    );
    restore();

    // Cut before the checkpoint: the last records removed.
    let lines: Vec<&str> = original.lines().collect();
    let cut: String = lines[..lines.len() - 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, cut).unwrap();
    let t = fails(&cli(d, &cfg, &["security", "audit", "verify"]));
    assert!(t.contains("removed from the end"), "{t}");
    // The structure alone is intact.
    ok(&cli(
        d,
        &cfg,
        &["security", "audit", "verify", "--structure-only"],
    ));
    restore();
    ok(&cli(d, &cfg, &["security", "audit", "verify"]));
}

/// Recomputes every `prev`/`hash` of `text` after `edit`, as someone without the MEK could:
/// a line is its canonical form (the fields in the writer's order) with `"hash"` last.
fn rechain(text: &str, edit: impl Fn(&str) -> String) -> String {
    use sha2::{Digest, Sha256};
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in text.lines() {
        let line = edit(line);
        let (body, _) = line.rsplit_once(",\"hash\":\"").unwrap();
        let at = body.find("\"prev\":\"").unwrap() + 8;
        let body = format!("{}{}{}", &body[..at], prev, &body[at + 64..]);
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(format!("{body}}}").as_bytes());
        let hash = hex::encode(h.finalize());
        out.push_str(&format!("{body},\"hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    out
}

#[test]
fn a_deleted_rotated_file_is_named_and_tail_reads_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = populated(d, "audit_max_file_bytes = 4096\n");
    for i in 0..6 {
        ok(&cli(
            d,
            &cfg,
            &["security", "tek", "create", &format!("more{i}")],
        ));
    }
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(d.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("audit.log.")
                && n[10..].split('-').count() == 2
                && n[10..]
                    .split('-')
                    .all(|x| x.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 2, "{rotated:?}");
    let v = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "audit", "verify"],
    ));
    assert_eq!(
        v["files"].as_array().unwrap().len(),
        rotated.len() + 1,
        "{v}"
    );

    // tail: the newest records, oldest first, filtered, across files.
    let t = json(&cli(
        d,
        &cfg,
        &[
            "--format",
            "json",
            "security",
            "audit",
            "tail",
            "-n",
            "8",
            "--action",
            "tek.created",
        ],
    ));
    let recs = t.as_array().unwrap();
    assert_eq!(recs.len(), 8, "{t}");
    assert!(recs.iter().all(|r| r["action"] == "tek.created"));
    assert_eq!(recs.last().unwrap()["key"], "tek:more5@v1");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let k = ok(&cli(
        d,
        &cfg,
        &["security", "audit", "tail", "--key", "tek:sales@v2"],
    ));
    assert!(
        k.contains("tek.created") || k.contains("tek.rotated"),
        "{k}"
    );
    assert!(!k.contains("tek:public.users"), "{k}");
    let bad = fails(&cli(
        d,
        &cfg,
        &["security", "audit", "tail", "--action", "tek.eaten"],
    ));
    assert!(bad.contains("tek.unwrapped"), "{bad}");

    // A rotated file removed: named by its records.
    let gone = &rotated[0];
    std::fs::remove_file(gone).unwrap();
    let t = fails(&cli(
        d,
        &cfg,
        &["security", "audit", "verify", "--structure-only"],
    ));
    assert!(t.contains("missing"), "{t}");
}

#[test]
fn change_passphrase_records_credential_changed_without_the_passphrases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config_with(d, "");
    ok(&cli(d, &cfg, &["security", "tek", "create", "t1"]));
    let new_pass = "a brand new cli test passphrase, also long enough";
    passphrase_file(&d.join("secrets/pass.txt"), new_pass);
    let o = command(d, &cfg, &["security", "mek", "change-passphrase"])
        .env("HELIOSDB_MEK_PASSPHRASE_OLD", PASS)
        .output()
        .unwrap();
    ok(&o);
    // A second run with a wrong old passphrase fails, and that is recorded too.
    let o = command(d, &cfg, &["security", "mek", "change-passphrase"])
        .env(
            "HELIOSDB_MEK_PASSPHRASE_OLD",
            "not the old passphrase at all, sorry",
        )
        .output()
        .unwrap();
    let _ = text(&o);
    let t = json(&cli(
        d,
        &cfg,
        &[
            "--format",
            "json",
            "security",
            "audit",
            "tail",
            "--action",
            "credential.changed",
        ],
    ));
    let recs = t.as_array().unwrap();
    assert!(!recs.is_empty(), "{t}");
    assert_eq!(recs[0]["outcome"], "success");
    assert_eq!(recs[0]["provider"], "secure-file");
    let whole = std::fs::read_to_string(log(d)).unwrap();
    assert!(!whole.contains(PASS) && !whole.contains(new_pass));
    // The next start's authenticated records cover the record written without the key.
    ok(&cli(d, &cfg, &["security", "tek", "create", "t2"]));
    let v = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "audit", "verify"],
    ));
    assert_eq!(v["unauthenticated_tail"], 0, "{v}");
}

/// Two writable directories on different filesystems, so that every other checklist item
/// passes (backups must not share the key store's disk).
fn two_filesystems() -> (PathBuf, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let candidates: Vec<PathBuf> = [
        std::env::temp_dir(),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/run"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ]
    .into_iter()
    .filter(|p| p.is_dir() && tempfile::tempdir_in(p).is_ok())
    .collect();
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    for a in &candidates {
        for b in &candidates {
            if dev(a) != dev(b) {
                return (a.clone(), b.clone());
            }
        }
    }
    panic!("no two writable directories on different filesystems among {candidates:?}");
}

#[test]
fn a_failed_audit_write_keeps_the_operation_and_fails_status_until_a_gap_is_recorded() {
    let (fs_a, fs_b) = two_filesystems();
    let dir = tempfile::tempdir_in(fs_a).unwrap();
    let backups = tempfile::tempdir_in(fs_b).unwrap();
    let d = dir.path();
    let cfg = populated_backups(d, backups.path(), "");
    let status_item = |d: &Path| {
        let o = cli(d, &cfg, &["--format", "json", "security", "status"]);
        let v = json(&o);
        let item = v["checklist"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["item"] == "Audit logging enabled")
            .cloned()
            .unwrap();
        let failing: Vec<_> = v["checklist"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "fail" && i["item"] != "Audit logging enabled")
            .cloned()
            .collect();
        assert!(failing.is_empty(), "{failing:#?}");
        (o.status.code(), item)
    };
    let (code, item) = status_item(d);
    assert_eq!(item["status"], "pass", "{item}");
    assert_eq!(code, Some(0), "{item}");

    // Every audit write of this command fails; the key operation still succeeds.
    let o = command(d, &cfg, &["security", "tek", "create", "lost1"])
        .env("FAILPOINTS", "audit::write=return")
        .output()
        .unwrap();
    ok(&o);
    // A backup of the new key, so that the backup item passes and only the audit item fails.
    let n = std::cell::Cell::new(0);
    let backup = || {
        n.set(n.get() + 1);
        let out = backups.path().join(format!("after-{}.hbk", n.get()));
        ok(&cli(
            d,
            &cfg,
            &["security", "backup", "--out", out.to_str().unwrap()],
        ))
    };
    backup();
    let (code, item) = status_item(d);
    assert_eq!(code, Some(3), "{item}");
    assert_eq!(item["status"], "fail", "{item}");
    assert!(item["reason"].as_str().unwrap().contains("lost"), "{item}");
    let stats = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "key-stats"],
    ));
    assert!(
        stats["audit"]["lost_pending"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // The next writer records the gap first, and status passes again.
    ok(&cli(d, &cfg, &["security", "tek", "create", "after"]));
    let t = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "audit", "tail", "-n", "50"],
    ));
    let recs = t.as_array().unwrap();
    let gap = recs
        .iter()
        .position(|r| r["action"] == "audit.gap")
        .unwrap();
    assert!(
        recs[gap]["detail"]
            .as_str()
            .unwrap()
            .contains("tek.created"),
        "{:#}",
        recs[gap]
    );
    assert!(!recs.iter().any(|r| r["key"] == "tek:lost1@v1"));
    backup();
    let (code, item) = status_item(d);
    assert_eq!(item["status"], "pass", "{item}");
    assert_eq!(code, Some(0), "{item}");
    ok(&cli(d, &cfg, &["security", "audit", "verify"]));
}
