//! Issue 9 items 1 and 18 with the real binary: the MEK directory moved (a wrong mount, a
//! typo) is never answered with a new MEK; `security status` lists the tables that cannot be
//! read and exits 3; read-only commands leave every file byte-identical, failed ones every file
//! but the audit log, which records the failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS, Unreadable, cli, fails, ok, passphrase_file, text};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A production configuration whose MEK directory is `dir/<mek>`.
fn config(dir: &Path, mek: &str) -> PathBuf {
    let pass = dir.join("secrets/pass.txt");
    passphrase_file(&pass, PASS);
    let cfg = dir.join(format!("tde-{mek}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\nsecurity_mode = \"production\"\n\
             audit_log_path = \"{d}/audit/audit.log\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/{mek}\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            p = pass.display()
        ),
    )
    .unwrap();
    cfg
}

/// Every file under `dir` (key store, MEK directories with their lock files, audit log), with
/// its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::snapshot(&[dir.to_path_buf()], Unreadable::Fail)
}

fn same(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> Result<(), String> {
    if a.keys().ne(b.keys()) {
        return Err(format!(
            "files differ: {:?} vs {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
    }
    for (p, bytes) in a {
        if b[p] != *bytes {
            return Err(format!("{} changed", p.display()));
        }
    }
    Ok(())
}

#[test]
fn a_moved_mek_directory_is_reported_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "mek-a");
    for table in ["public.users", "public.orders"] {
        ok(&cli(dir.path(), &a, &["security", "tek", "create", table]));
    }
    let b = config(dir.path(), "mek-b");
    std::fs::create_dir_all(dir.path().join("mek-b")).unwrap();
    std::fs::set_permissions(
        dir.path().join("mek-b"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let before = snapshot(dir.path());

    // status: exit 3, the unreadable tables named, in table and JSON output.
    let o = cli(dir.path(), &b, &["security", "status"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("CANNOT BE READ"), "{t}");
    assert!(t.contains("unreadable table: public.users"), "{t}");
    assert!(t.contains("unreadable table: public.orders"), "{t}");
    assert!(t.contains("master_key_001"), "{t}");
    assert!(
        t.contains("tek-store.redb (id "),
        "the store's identity: {t}"
    );
    let o = cli(dir.path(), &b, &["--format", "json", "security", "status"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys = &v["key_availability"];
    assert_eq!(keys["all_readable"], false, "{v}");
    let mut tables: Vec<&str> = keys["unreadable_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tables.sort();
    assert_eq!(tables, ["public.orders", "public.users"]);

    // tek create: refused, naming the MEK, the provider's location and the dependent keys.
    let t = fails(&cli(
        dir.path(),
        &b,
        &["security", "tek", "create", "public.items"],
    ));
    assert!(t.contains("master_key_001"), "{t}");
    assert!(t.contains("mek-b"), "{t}");
    assert!(t.contains("2 table key version(s) of 2 table(s)"), "{t}");
    // Nothing changed but the audit log, which recorded the refused start.
    let without_log = |mut m: BTreeMap<PathBuf, Vec<u8>>| {
        m.remove(&dir.path().join("audit/audit.log"));
        m
    };
    same(
        &without_log(before.clone()),
        &without_log(snapshot(dir.path())),
    )
    .unwrap();
    let log = std::fs::read_to_string(dir.path().join("audit/audit.log")).unwrap();
    let last = log.lines().last().unwrap();
    assert!(
        last.contains("\"action\":\"security.validated\"")
            && last.contains("\"error_kind\":\"mek_missing\""),
        "{last}"
    );

    // With the right directory everything is readable, and status says so.
    let o = cli(dir.path(), &a, &["security", "status"]);
    assert!(text(&o).contains("every table key unwraps"), "{}", text(&o));
}

#[test]
fn read_only_and_failed_commands_change_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "mek-a");
    ok(&cli(
        dir.path(),
        &a,
        &["security", "tek", "create", "public.users"],
    ));
    let mut before = snapshot(dir.path());
    let log = dir.path().join("audit/audit.log");
    for args in [
        &["security", "status"][..],
        &["security", "tek", "list"],
        &["security", "mek-info"],
        &["security", "key-stats"],
        &["security", "mek", "rotation-status"],
        &["--format", "json", "security", "tek", "list"],
    ] {
        let o = cli(dir.path(), &a, args);
        if let Err(e) = same(&before, &snapshot(dir.path())) {
            panic!("`{}` changed files: {e}\n{}", args.join(" "), text(&o));
        }
    }
    // Failed commands change no key file; the audit log only grows by the start's record and
    // the failure it exists to record.
    for (args, action) in [
        (
            &["security", "tek", "rotate", "public.nosuch"][..],
            "tek.rotated",
        ),
        (
            &["security", "tek", "create", "public.users"],
            "tek.created",
        ),
    ] {
        let log_before = before.remove(&log).unwrap();
        let o = cli(dir.path(), &a, args);
        let mut after = snapshot(dir.path());
        let log_after = after.remove(&log).unwrap();
        if let Err(e) = same(&before, &after) {
            panic!("`{}` changed files: {e}\n{}", args.join(" "), text(&o));
        }
        assert!(
            log_after.starts_with(&log_before),
            "the log was only appended to"
        );
        let added = String::from_utf8_lossy(&log_after[log_before.len()..]).to_string();
        assert!(
            added.contains(&format!("\"action\":\"{action}\","))
                && added.contains("\"outcome\":\"failure\""),
            "`{}`: {added}",
            args.join(" ")
        );
        before.insert(log.clone(), log_after);
    }
}
