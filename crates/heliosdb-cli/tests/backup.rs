//! `security backup`, `security backup verify` and `security restore` with the real binary, a
//! real secure-file provider and a real redb store: round trip, refusals that change nothing,
//! a crash at each step of a restore followed by a second run, and the lost-MEK report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS, Unreadable, command, fails, ok, passphrase_file, text};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The binary run with `env` set and without a restore fail point from the outside.
fn cli_env(dir: &Path, cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = command(dir, cfg, args);
    c.env_remove("HELIOSDB_TEST_RESTORE_CRASH");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn cli(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    cli_env(dir, cfg, args, &[])
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Asserts that `security status` finds every table key readable; `context` leads the failure.
fn assert_all_readable(dir: &Path, cfg: &Path, context: &str) {
    let t = text(&cli(dir, cfg, &["security", "status"]));
    assert!(!t.contains("CANNOT BE READ"), "{context}{t}");
}

/// A production configuration under `dir` (key store `keys`, MEKs `mek`, backups `backups`),
/// with the passphrase `pass` in a file.
fn config_with(dir: &Path, name: &str, pass: &str) -> PathBuf {
    let file = dir.join(format!("secrets/{name}.txt"));
    passphrase_file(&file, pass);
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\nsecurity_mode = \"production\"\n\
             audit_log_path = \"{d}/audit/audit.log\"\nbackup_dir = \"{d}/backups\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            p = file.display()
        ),
    )
    .unwrap();
    cfg
}

fn config(dir: &Path) -> PathBuf {
    config_with(dir, "tde", PASS)
}

/// Every file under the key store and MEK directories, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::snapshot(&[dir.join("keys"), dir.join("mek")], Unreadable::Skip)
}

/// Four tables, one rotated, and a bundle of them at `dir/backups/b.hbk`.
fn populated(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = config(dir);
    for t in ["public.a", "public.b", "public.c", "public.d"] {
        ok(&cli(dir, &cfg, &["security", "tek", "create", t]));
    }
    ok(&cli(dir, &cfg, &["security", "tek", "rotate", "public.b"]));
    std::fs::create_dir_all(dir.join("backups")).unwrap();
    let bundle = dir.join("backups/b.hbk");
    let bundle_arg = bundle.to_str().unwrap();
    let t = ok(&cli(
        dir,
        &cfg,
        &["security", "backup", "--out", bundle_arg],
    ));
    // Five table keys and the audit log's key.
    assert!(t.contains("6 keys (4 tables)"), "{t}");
    (cfg, bundle)
}

fn active_versions(dir: &Path, cfg: &Path) -> BTreeMap<String, u64> {
    let o = cli(dir, cfg, &["--format", "json", "security", "tek", "list"]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let mut out = BTreeMap::new();
    for k in v.as_array().unwrap() {
        let id = &k["key_id"]["id"];
        let table = id["table"].as_str().unwrap().to_string();
        let ver = id["version"].as_u64().unwrap();
        let e = out.entry(table).or_insert(0);
        *e = (*e).max(ver);
    }
    out
}

#[test]
fn backup_wipe_restore_and_every_key_reads_with_a_new_active_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, bundle) = populated(d);
    let bundle_arg = bundle.to_str().unwrap();
    let before = active_versions(d, &cfg);
    assert_eq!(before.len(), 4, "{before:?}");
    assert_eq!(mode(&bundle), 0o600);
    // An existing file is not overwritten without --force.
    let t = fails(&cli(d, &cfg, &["security", "backup", "--out", bundle_arg]));
    assert!(t.contains("--force"), "{t}");
    // --out-dir names the file after the store and the time.
    let t = ok(&cli(
        d,
        &cfg,
        &[
            "security",
            "backup",
            "--out-dir",
            d.join("backups").to_str().unwrap(),
        ],
    ));
    assert!(t.contains("heliosdb-keys-") && t.contains(".hbk"), "{t}");
    let t = ok(&cli(d, &cfg, &["security", "backup", "verify", bundle_arg]));
    assert!(t.contains("verified"), "{t}");
    let t = ok(&cli(
        d,
        &cfg,
        &[
            "security",
            "backup",
            "verify",
            bundle_arg,
            "--with-provider",
        ],
    ));
    // The five table keys and the audit log's key.
    assert!(t.contains("all 6 table keys unwrap"), "{t}");

    // Lose everything, then restore.
    std::fs::remove_dir_all(d.join("keys")).unwrap();
    std::fs::remove_dir_all(d.join("mek")).unwrap();
    let t = ok(&cli(d, &cfg, &["security", "restore", bundle_arg]));
    assert!(t.contains("restored"), "{t}");
    assert_eq!(mode(&d.join("keys")), 0o700);
    assert_eq!(mode(&d.join("mek")), 0o700);
    assert_eq!(mode(&d.join("mek/master_key_001.v1.mek")), 0o600);
    // Every table got a new active version; the status passes the key availability check.
    let after = active_versions(d, &cfg);
    for (t, v) in &before {
        assert_eq!(after[t], v + 1, "{t}: {after:?}");
    }
    assert_all_readable(d, &cfg, "");
    // The audit log has the three events.
    let log = std::fs::read_to_string(d.join("audit/audit.log")).unwrap();
    for e in ["backup.written", "backup.verified", "backup.restored"] {
        assert!(log.contains(e), "{e} missing from the audit log");
    }
    // No passphrase in any bundle.
    for e in std::fs::read_dir(d.join("backups")).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!b.windows(PASS.len()).any(|w| w == PASS.as_bytes()));
    }
}

#[test]
fn no_rotate_keeps_the_versions_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, bundle) = populated(d);
    let bundle_arg = bundle.to_str().unwrap();
    let before = active_versions(d, &cfg);
    std::fs::remove_dir_all(d.join("keys")).unwrap();
    let t = ok(&cli(
        d,
        &cfg,
        &["security", "restore", bundle_arg, "--no-rotate"],
    ));
    assert!(t.contains("warning") && t.contains("--no-rotate"), "{t}");
    assert_eq!(active_versions(d, &cfg), before);
}

#[test]
fn restore_over_a_populated_store_needs_force_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, bundle) = populated(d);
    let bundle_arg = bundle.to_str().unwrap();
    ok(&cli(
        d,
        &cfg,
        &["security", "tek", "create", "public.after"],
    ));
    let before = snapshot(d);
    let t = fails(&cli(d, &cfg, &["security", "restore", bundle_arg]));
    assert!(
        t.contains("--force") && t.contains("holds 7 table keys"),
        "{t}"
    );
    assert_eq!(snapshot(d), before, "a refused restore changes nothing");
    let t = ok(&cli(
        d,
        &cfg,
        &["security", "restore", bundle_arg, "--force"],
    ));
    assert!(t.contains("moved aside"), "{t}");
    let aside: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("keys.pre-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // The old store still opens: point a configuration at it.
    let old_cfg = d.join("old.toml");
    std::fs::write(
        &old_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!("{}/keys", d.display()), aside[0].to_str().unwrap()),
    )
    .unwrap();
    let old = active_versions(d, &old_cfg);
    assert!(old.contains_key("public.after"), "{old:?}");
    assert!(!active_versions(d, &cfg).contains_key("public.after"));
}

#[test]
fn a_bundle_of_another_deployment_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, foreign) = populated(dir.path());
    let mine = tempfile::tempdir().unwrap();
    let d = mine.path();
    let cfg = config_with(d, "tde", "another deployment's passphrase, long enough");
    ok(&cli(d, &cfg, &["security", "tek", "create", "public.x"]));
    let before = snapshot(d);
    let t = fails(&cli(
        d,
        &cfg,
        &["security", "restore", foreign.to_str().unwrap()],
    ));
    assert!(t.contains("another store"), "{t}");
    assert_eq!(snapshot(d), before);
    // verify --with-provider with this deployment's passphrase: a clear failure.
    fails(&cli(
        d,
        &cfg,
        &[
            "security",
            "backup",
            "verify",
            foreign.to_str().unwrap(),
            "--with-provider",
        ],
    ));
    assert_eq!(snapshot(d), before);
}

#[test]
fn a_wrong_passphrase_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, bundle) = populated(d);
    let bundle_arg = bundle.to_str().unwrap();
    std::fs::remove_dir_all(d.join("keys")).unwrap();
    let wrong = config_with(d, "wrong", "this is not the passphrase, but long enough");
    let before = snapshot(d);
    for args in [
        vec![
            "security",
            "backup",
            "verify",
            bundle_arg,
            "--with-provider",
        ],
        vec!["security", "restore", bundle_arg],
    ] {
        let t = fails(&cli(d, &wrong, &args));
        assert!(t.to_lowercase().contains("passphrase"), "{t}");
        assert_eq!(snapshot(d), before, "{args:?}");
        assert!(!d.join("keys.restore-tmp").exists());
    }
}

#[test]
fn damaged_bundles_are_refused_by_section_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, bundle) = populated(d);
    std::fs::remove_dir_all(d.join("keys")).unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    let before = snapshot(d);
    let bad = d.join("bad.hbk");
    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("flipped", {
            let mut b = bytes.clone();
            let i = b.len() - 40;
            b[i] ^= 1;
            b
        }),
    ] {
        std::fs::write(&bad, &damaged).unwrap();
        for args in [
            vec!["security", "backup", "verify", bad.to_str().unwrap()],
            vec!["security", "restore", bad.to_str().unwrap()],
        ] {
            let o = cli(d, &cfg, &args);
            let t = text(&o);
            assert!(!o.status.success(), "{name}: {t}");
            assert!(
                t.contains("section") || t.contains("trailer"),
                "{name}: {t}"
            );
            assert_eq!(snapshot(d), before, "{name} {args:?}");
        }
    }
}

#[test]
fn a_crash_at_each_step_of_a_restore_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, bundle) = populated(d);
    let bundle_arg = bundle.to_str().unwrap();
    let before = active_versions(d, &cfg);
    for step in [
        "after-scratch-store",
        "after-mek-files",
        "after-store-swap",
        "after-store-in-place",
        "during-rotation",
    ] {
        std::fs::remove_dir_all(d.join("keys")).unwrap();
        std::fs::remove_dir_all(d.join("mek")).unwrap();
        // An existing (empty) key store directory makes the restore exchange directories,
        // which the step after-store-swap interrupts.
        std::fs::create_dir(d.join("keys")).unwrap();
        std::fs::set_permissions(d.join("keys"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let o = cli_env(
            d,
            &cfg,
            &["security", "restore", bundle_arg],
            &[("HELIOSDB_TEST_RESTORE_CRASH", step)],
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{step}: the fail point did not kill it: {}",
            text(&o)
        );
        // Old (nothing) or new, never mixed: when a store is in place it opens.
        if d.join("keys/tek-store.redb").exists() {
            let o = cli(d, &cfg, &["security", "tek", "list"]);
            assert!(o.status.success(), "{step}: {}", text(&o));
            // A start says the restore has a step left.
            let o = cli(d, &cfg, &["security", "status"]);
            assert!(
                text(&o).contains("did not finish its last step"),
                "{step}: {}",
                text(&o)
            );
        }
        let t = ok(&cli(d, &cfg, &["security", "restore", bundle_arg]));
        assert!(t.contains("restored"), "{step}: {t}");
        // Nothing is left under a scratch name: an old directory is kept aside instead.
        assert!(!d.join("keys.restore-tmp").exists(), "{step}");
        assert!(!d.join("mek.restore-tmp").exists(), "{step}");
        let after = active_versions(d, &cfg);
        for (table, v) in &before {
            assert!(after[table] > *v, "{step}: {table} {after:?}");
        }
        assert_all_readable(d, &cfg, &format!("{step}: "));
    }
}

#[test]
fn a_lost_mek_names_the_bundle_that_holds_it_and_a_restore_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, _bundle) = populated(d);
    std::fs::remove_file(d.join("mek/master_key_001.v1.mek")).unwrap();
    let o = cli(d, &cfg, &["security", "status"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("unreadable table: public.a"), "{t}");
    assert!(
        t.contains("lost MEK") && t.contains("b.hbk") && t.contains("security restore"),
        "{t}"
    );
    let o = cli(d, &cfg, &["--format", "json", "security", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["lost_mek"].as_str().unwrap().contains("b.hbk"), "{v}");
    // Start-up never generates a replacement.
    fails(&cli(d, &cfg, &["security", "tek", "create", "public.z"]));
    assert!(!d.join("mek/master_key_001.v1.mek").exists());
    // Without any bundle, it says the data is lost.
    std::fs::rename(d.join("backups"), d.join("elsewhere")).unwrap();
    let t = text(&cli(d, &cfg, &["security", "status"]));
    assert!(t.contains("is lost"), "{t}");
    std::fs::rename(d.join("elsewhere"), d.join("backups")).unwrap();
    // The restore over the same store puts the missing MEK file back.
    let bundle = d.join("backups/b.hbk");
    let bundle_arg = bundle.to_str().unwrap();
    let t = ok(&cli(
        d,
        &cfg,
        &["security", "restore", bundle_arg, "--force"],
    ));
    assert!(t.contains("master_key_001.v1.mek"), "{t}");
    assert_all_readable(d, &cfg, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_refuse_a_store_held_by_a_running_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (cfg, bundle) = populated(&d);
    let mut config = heliosdb_security::tde::TdeConfig::from_toml_file(&cfg).unwrap();
    config.apply_env().unwrap();
    let holder = heliosdb_security::tde::TdeSubsystem::new(config)
        .await
        .unwrap();
    holder
        .key_manager()
        .create_table_key("public.live")
        .await
        .unwrap();
    let out = d.join("backups/held.hbk");
    let (d2, cfg2, b2, out2) = (d.clone(), cfg.clone(), bundle.clone(), out.clone());
    let (o1, o2) = tokio::task::spawn_blocking(move || {
        (
            cli(
                &d2,
                &cfg2,
                &["security", "backup", "--out", out2.to_str().unwrap()],
            ),
            cli(
                &d2,
                &cfg2,
                &["security", "restore", b2.to_str().unwrap(), "--force"],
            ),
        )
    })
    .await
    .unwrap();
    let t = fails(&o1);
    assert!(t.contains("database is running"), "{t}");
    assert!(!t.to_lowercase().contains("redb"), "{t}");
    assert!(!out.exists());
    let t = fails(&o2);
    assert!(t.contains("stop HeliosDB first"), "{t}");
    // The running database takes its backup through the API.
    let r = holder.backup(&out).await.unwrap();
    assert_eq!(
        r.manifest.counts.teks, 7,
        "six table keys and the audit key"
    );
}

#[test]
fn verify_with_a_provider_that_lacks_the_mek_names_every_key_and_table() {
    // A provider that holds none of the bundle's MEKs: a development configuration with no
    // provider section, so the in-memory provider, which starts empty.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, bundle) = populated(d);
    let other = d.join("other.toml");
    std::fs::write(
        &other,
        format!(
            "key_storage_path = \"{}/other-keys\"\nsecurity_mode = \"development\"\n",
            d.display()
        ),
    )
    .unwrap();
    let o = cli(
        d,
        &other,
        &[
            "security",
            "backup",
            "verify",
            bundle.to_str().unwrap(),
            "--with-provider",
        ],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("NOT verified") && t.contains("6 of 6 table keys"),
        "{t}"
    );
    for table in ["public.a", "public.b", "public.c", "public.d"] {
        assert!(t.contains(&format!("table key {table}@v1")), "{table}: {t}");
    }
    assert!(
        t.contains("tables affected: public.a, public.b, public.c, public.d"),
        "{t}"
    );
    assert!(t.contains("MEK version master_key_001@v1"), "{t}");
    assert!(
        !d.join("other-keys").exists(),
        "the check touched no key store"
    );
}
