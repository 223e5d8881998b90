//! `security status` and `security key-stats` report the memory protection in force in the
//! CLI process, which runs the database's start-up: locked, dump-excluded key pages, core
//! dumps disabled in production, the key arena's size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS, fails, ok, passphrase_file};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The heading of the status block: it says whose protections these are.
const HEADING: &str =
    "Memory protection (this heliosdb-cli process, which starts TDE as the database does):";

/// The keys of the `memory_protection` object of `security status --format json`.
const STATUS_KEYS: [&str; 11] = [
    "bytes_locked",
    "bytes_needed",
    "core_dumps_disabled",
    "core_limit_bytes",
    "dump_exclusion",
    "dumpable",
    "lock_beyond_limit",
    "locking",
    "memlock_limit_bytes",
    "scope",
    "wipe_on_fork",
];

/// Writes a secure-file configuration in `mode` under `dir`.
fn config(dir: &Path, mode: &str) -> PathBuf {
    passphrase_file(&dir.join("secrets/pass.txt"), PASS);
    let cfg = dir.join(format!("{mode}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\ndefault_mek_id = \"mem_mek\"\ncache_limit = 50\n\
             security_mode = \"{mode}\"\naudit_log_path = \"{d}/audit.log\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\n\
             passphrase_file = \"{d}/secrets/pass.txt\"\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    cfg
}

/// [`common::command`] without the memory-protection overrides of the caller's environment.
fn command(dir: &Path, cfg: &Path, args: &[&str]) -> Command {
    let mut c = common::command(dir, cfg, args);
    c.env_remove("HELIOSDB_TDE_LOCK_KEYS")
        .env_remove("HELIOSDB_TDE_DISABLE_CORE_DUMPS");
    c
}

/// The same command under `prlimit --core=unlimited` (so that a core limit of 0 inherited
/// from the test's environment does not pass for a protection); `None` when `prlimit` is
/// missing.
fn with_core_limit_raised(dir: &Path, cfg: &Path, args: &[&str]) -> Option<Output> {
    let inner = command(dir, cfg, args);
    let mut c = Command::new("prlimit");
    c.arg("--core=unlimited")
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(dir);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    match c.output() {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED (partly): prlimit is not installed; the raised core limit is not tested"
            );
            None
        }
        Err(e) => panic!("prlimit: {e}"),
    }
}

/// `security status --format json`'s `memory_protection` object (status exits 3 while a
/// checklist item fails, so only the document is checked).
fn status_json(o: &Output) -> Value {
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::text(o)));
    v["memory_protection"].clone()
}

/// Whether this test process (and so the CLI it starts) may lock beyond `RLIMIT_MEMLOCK`
/// (`CAP_IPC_LOCK`, as root has): then locking cannot fail for the limit.
fn can_lock_beyond_limit() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

fn state(p: &Value) -> &str {
    p["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no state: {p:#}"))
}

#[test]
fn development_status_shows_locked_dump_excluded_key_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "development");
    let o = command(dir.path(), &cfg, &["security", "status"])
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(t.contains(HEADING), "{t}");
    let locked = t
        .lines()
        .find_map(|l| l.strip_prefix("  Key pages locked in RAM:"))
        .unwrap_or_else(|| panic!("no locking line: {t}"))
        .trim();
    if can_lock_beyond_limit() {
        assert_eq!(locked, "active", "{t}");
    } else {
        // Without CAP_IPC_LOCK the limit of this machine decides.
        assert!(locked == "active" || locked.starts_with("FAILED: "), "{t}");
    }
    assert!(t.contains("\n  Left out of core dumps:   active\n"), "{t}");
    assert!(t.contains("\n  Wiped in forked children: "), "{t}");
    assert!(t.contains("\n  Core dumps disabled:      "), "{t}");
    assert!(t.contains("\n  RLIMIT_MEMLOCK:           "), "{t}");
    assert!(t.contains("\n  Key memory:               "), "{t}");

    let o = command(
        dir.path(),
        &cfg,
        &["--format", "json", "security", "status"],
    )
    .output()
    .unwrap();
    let m = status_json(&o);
    let mut keys: Vec<&str> = m
        .as_object()
        .unwrap_or_else(|| panic!("no memory_protection object: {}", common::text(&o)))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, STATUS_KEYS, "{m:#}");
    for p in [
        "locking",
        "dump_exclusion",
        "wipe_on_fork",
        "core_dumps_disabled",
    ] {
        let s = state(&m[p]);
        assert!(
            ["active", "off", "failed", "unavailable"].contains(&s),
            "{p}: {m:#}"
        );
        assert_eq!(m[p]["reason"].is_null(), s == "active", "{p}: {m:#}");
    }
    assert_eq!(state(&m["dump_exclusion"]), "active", "{m:#}");
    assert!(m["memlock_limit_bytes"].is_u64() || m["memlock_limit_bytes"].is_null());
    assert!(m["lock_beyond_limit"].is_boolean(), "{m:#}");
    let needed = m["bytes_needed"].as_u64().unwrap();
    let locked = m["bytes_locked"].as_u64().unwrap();
    assert!(needed > 0, "{m:#}");
    if can_lock_beyond_limit() {
        assert_eq!(state(&m["locking"]), "active", "{m:#}");
        assert_eq!(m["lock_beyond_limit"], true, "{m:#}");
    } else {
        assert!(
            ["active", "failed"].contains(&state(&m["locking"])),
            "{m:#}"
        );
    }
    if state(&m["locking"]) == "active" {
        // Start-up reserves the pages for the whole cache, and every one is locked.
        assert!(locked >= needed, "{m:#}");
    }
}

#[test]
fn lock_keys_false_shows_locking_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "development");
    let o = command(dir.path(), &cfg, &["security", "status"])
        .env("HELIOSDB_TDE_LOCK_KEYS", "false")
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(t.contains(HEADING), "{t}");
    assert!(
        t.contains("\n  Key pages locked in RAM:  off (by configuration"),
        "{t}"
    );
    // Switching locking off leaves the dump exclusion on.
    assert!(t.contains("\n  Left out of core dumps:   active\n"), "{t}");

    let o = command(
        dir.path(),
        &cfg,
        &["--format", "json", "security", "status"],
    )
    .env("HELIOSDB_TDE_LOCK_KEYS", "false")
    .output()
    .unwrap();
    let m = status_json(&o);
    assert_eq!(state(&m["locking"]), "off", "{m:#}");
    assert!(m["locking"]["reason"].is_string(), "{m:#}");
    assert_eq!(m["bytes_locked"], 0, "{m:#}");
    assert_eq!(state(&m["dump_exclusion"]), "active", "{m:#}");

    let o = command(
        dir.path(),
        &cfg,
        &["--format", "json", "security", "key-stats"],
    )
    .env("HELIOSDB_TDE_LOCK_KEYS", "false")
    .output()
    .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(state(&v["key_memory"]["locking"]), "off", "{v:#}");
    assert_eq!(v["key_memory"]["bytes_locked"], 0, "{v:#}");
}

#[test]
fn key_stats_shows_the_key_arena() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "development");
    let stats = |dir: &Path| {
        let o = command(dir, &cfg, &["--format", "json", "security", "key-stats"])
            .output()
            .unwrap();
        ok(&o);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["key_memory"].clone()
    };
    // No MEK yet: a read-only start creates none.
    let before = stats(dir.path());
    // Creates the MEK and the table's key; the next start unwraps the MEK into the arena.
    ok(&command(
        dir.path(),
        &cfg,
        &["security", "tek", "create", "public.users"],
    )
    .output()
    .unwrap());
    let after = stats(dir.path());
    for k in [
        "bytes_locked",
        "bytes_mapped",
        "slots_in_use",
        "slots_free",
        "pages",
        "page_size",
    ] {
        assert!(after[k].is_u64(), "{k}: {after:#}");
    }
    let n = |k: &str| after[k].as_u64().unwrap();
    assert!(n("slots_in_use") > 0, "{after:#}");
    assert!(
        n("slots_in_use") > before["slots_in_use"].as_u64().unwrap(),
        "the MEK is not in the arena: {before:#} {after:#}"
    );
    assert!(n("pages") > 0 && n("page_size") > 0, "{after:#}");
    assert_eq!(n("bytes_mapped"), n("pages") * n("page_size"), "{after:#}");
    assert_eq!(
        (n("slots_in_use") + n("slots_free")) * 32,
        n("bytes_mapped"),
        "{after:#}"
    );
    if can_lock_beyond_limit() {
        assert_eq!(state(&after["locking"]), "active", "{after:#}");
    }
    if state(&after["locking"]) == "active" {
        assert!(n("bytes_locked") > 0, "{after:#}");
        assert_eq!(n("bytes_locked"), n("bytes_mapped"), "{after:#}");
    }

    let o = command(dir.path(), &cfg, &["security", "key-stats"])
        .output()
        .unwrap();
    let t = ok(&o);
    let line = t
        .lines()
        .find(|l| l.starts_with("Key memory:    "))
        .unwrap_or_else(|| panic!("no key memory line: {t}"));
    for s in [
        "locked of",
        "mapped, locking ",
        &format!("{} slots in use", n("slots_in_use")),
        " free; ",
        &format!("page(s) of {} bytes", n("page_size")),
    ] {
        assert!(line.contains(s), "{s:?} missing: {line}");
    }
}

#[test]
fn production_status_shows_core_dumps_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "production");
    let o = command(dir.path(), &cfg, &["security", "status"])
        .output()
        .unwrap();
    let t = fails(&o);
    assert!(t.contains(HEADING), "{t}");
    assert!(
        t.contains("\n  Core dumps disabled:      active (non-dumpable, core limit 0"),
        "{t}"
    );
    let m = status_json(
        &command(
            dir.path(),
            &cfg,
            &["--format", "json", "security", "status"],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(state(&m["core_dumps_disabled"]), "active", "{m:#}");
    assert_eq!(m["dumpable"], false, "{m:#}");
    assert_eq!(m["core_limit_bytes"], 0, "{m:#}");
    // Development does not disable them, whatever core limit it inherited.
    let o = command(
        dir.path(),
        &config(dir.path(), "development"),
        &["--format", "json", "security", "status"],
    )
    .output()
    .unwrap();
    assert_eq!(state(&status_json(&o)["core_dumps_disabled"]), "off");

    // With the core limit raised first, so that only start-up can have disabled them:
    // production does, development (by default) does not.
    let Some(o) = with_core_limit_raised(
        dir.path(),
        &cfg,
        &["--format", "json", "security", "status"],
    ) else {
        return;
    };
    let m = status_json(&o);
    assert_eq!(state(&m["core_dumps_disabled"]), "active", "{m:#}");
    let dev = config(dir.path(), "development");
    let o = with_core_limit_raised(
        dir.path(),
        &dev,
        &["--format", "json", "security", "status"],
    )
    .unwrap();
    let m = status_json(&o);
    assert_eq!(state(&m["core_dumps_disabled"]), "off", "{m:#}");
    assert_eq!(m["dumpable"], true, "{m:#}");
    assert_eq!(
        m["core_limit_bytes"],
        serde_json::Value::Null,
        "unlimited: {m:#}"
    );
    let o = with_core_limit_raised(dir.path(), &dev, &["security", "status"]).unwrap();
    let t = common::text(&o);
    assert!(
        t.contains("\n  Core dumps disabled:      off (the development-mode default"),
        "{t}"
    );
}

/// The unprivileged user the lock-limit test runs the CLI as: root is not bound by
/// `RLIMIT_MEMLOCK` (`CAP_IPC_LOCK`).
const NOBODY: u32 = 65534;

/// `command` as `nobody`, under `prlimit --memlock=LIMIT:LIMIT`, from a copy of the CLI in
/// `dir` (the build directory may not be reachable by `nobody`).
fn limited_command(dir: &Path, cfg: &Path, limit: u64, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let inner = command(dir, cfg, args);
    let bin = dir.join("bin").join("heliosdb-cli");
    let mut c = Command::new("prlimit");
    c.arg(format!("--memlock={limit}:{limit}"))
        .arg("--")
        .arg(&bin)
        .args(inner.get_args())
        .current_dir(dir)
        .env("HOME", dir)
        .uid(NOBODY)
        .gid(NOBODY);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

#[test]
fn a_lock_limit_too_small_warns_in_development_and_key_stats_shows_what_is_locked() {
    use std::os::unix::fs::PermissionsExt;
    // /proc/self belongs to the effective user of this (dumpable) process.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !root {
        eprintln!(
            "SKIPPED: the CLI must run as uid {NOBODY} (root is not bound by RLIMIT_MEMLOCK), \
             which needs root to switch to"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "development");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(common::BIN, bin.join("heliosdb-cli")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fn chown_all(p: &Path) {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                chown_all(&e.unwrap().path());
            }
        }
    }
    chown_all(dir.path());
    // cache_limit 50 + 256 reserved keys need 10 pages (40 KiB); 8 KiB locks 2 of them.
    let limit = 8192;
    let run = |args: &[&str]| {
        limited_command(dir.path(), &cfg, limit, args)
            .output()
            .unwrap()
    };
    let o = run(&["security", "tek", "create", "public.users"]);
    let t = ok(&o);
    assert!(t.contains("key memory is not fully locked"), "{t}");
    assert!(t.contains("RLIMIT_MEMLOCK"), "{t}");

    let o = run(&["--format", "json", "security", "key-stats"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["key_memory"];
    assert_eq!(state(&m["locking"]), "failed", "{m:#}");
    let reason = m["locking"]["reason"].as_str().unwrap();
    assert!(reason.contains("could not be locked"), "{reason}");
    let locked = m["bytes_locked"].as_u64().unwrap();
    assert!(
        locked > 0 && locked <= limit,
        "what fits is locked, and reported: {m:#}"
    );
    assert!(m["bytes_mapped"].as_u64().unwrap() > locked, "{m:#}");
    assert!(m["slots_in_use"].as_u64().unwrap() > 0, "{m:#}");

    let o = run(&["security", "key-stats"]);
    let t = ok(&o);
    let line = t
        .lines()
        .find(|l| l.starts_with("Key memory:    "))
        .unwrap_or_else(|| panic!("no key memory line: {t}"));
    assert!(
        line.contains(&format!("{locked} bytes")) && line.contains("locking FAILED"),
        "{line}"
    );
}
