//! The Security Checklist's MEK rotation schedule and MEK backup items, evaluated at chosen
//! times against a real secure file provider and redb key store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::file_config;
use heliosdb_security::tde::{
    CheckItem, CheckStatus, TdeConfig, TdeSubsystem, Timestamp, security_checklist,
    security_checklist_at,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const DAY_MS: u64 = 86_400_000;
const ROTATION: &str = "MEK rotation schedule defined";
const BACKUP: &str = "MEK backup procedure established";

fn no_mode_override() {
    assert!(
        std::env::var_os("HELIOSDB_SECURITY_MODE").is_none(),
        "these tests set the security mode through the configuration; unset \
         HELIOSDB_SECURITY_MODE to run them"
    );
}

fn find(checklist: &[CheckItem], name: &str) -> CheckItem {
    checklist
        .iter()
        .find(|c| c.item == name)
        .unwrap_or_else(|| panic!("no item {name}: {checklist:?}"))
        .clone()
}

async fn item_at(tde: &TdeSubsystem, name: &str, now: Timestamp) -> CheckItem {
    let checklist = security_checklist_at(tde, now).await;
    assert_eq!(checklist.len(), 10, "every item of the guide's checklist");
    find(&checklist, name)
}

fn assert_reason(item: &CheckItem, status: CheckStatus, words: &[&str]) {
    assert_eq!(item.status, status, "{}: {}", item.item, item.reason);
    for w in words {
        assert!(
            item.reason.contains(w),
            "{}: {:?} lacks {w:?}",
            item.item,
            item.reason
        );
    }
}

/// The UTC date of `t` as the checklist writes it.
fn date(t: Timestamp) -> String {
    t.to_string()[..10].to_string()
}

fn dev(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().dev()
}

/// Two writable directories on different filesystems (devices): the first for the key store,
/// the second for backups. Tempdirs are usually all on one filesystem, so the candidates are
/// the temp dir, /dev/shm, /run and the target dir; this machine must have such a pair for the
/// passing case to be tested at all.
fn two_filesystems() -> (PathBuf, PathBuf) {
    let candidates: Vec<PathBuf> = [
        std::env::temp_dir(),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/run"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ]
    .into_iter()
    .filter(|p| p.is_dir() && tempfile::tempdir_in(p).is_ok())
    .collect();
    for a in &candidates {
        for b in &candidates {
            if dev(a) != dev(b) {
                return (a.clone(), b.clone());
            }
        }
    }
    panic!(
        "no two writable directories on different filesystems among {candidates:?}; the \
         passing backup case needs one"
    );
}

/// A bundle at `path`, as `heliosdb-cli security backup --out` writes it; returns when it was
/// taken.
async fn take_backup(tde: &TdeSubsystem, path: &Path) -> Timestamp {
    let report = tde.backup(path).await.unwrap();
    assert_eq!(report.path, path);
    Timestamp(report.manifest.created_at_ms)
}

async fn active_mek_created(tde: &TdeSubsystem) -> Timestamp {
    let info = tde.key_manager().mek_info().await.unwrap();
    info.versions
        .iter()
        .rev()
        .find(|v| v.state.can_encrypt())
        .expect("an active MEK version")
        .created_at
}

#[tokio::test]
async fn the_rotation_schedule_follows_mek_rotation_days() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(file_config(dir.path(), "production"))
        .await
        .unwrap();
    let created = active_mek_created(&tde).await;

    // At creation: due after the default 365 days, on the date named.
    let due = Timestamp(created.as_millis() + 365 * DAY_MS);
    let pass = item_at(&tde, ROTATION, created).await;
    assert_reason(
        &pass,
        CheckStatus::Pass,
        &["created 0 days ago", &date(due), "365"],
    );
    // On the due date itself it still passes.
    assert_eq!(item_at(&tde, ROTATION, due).await.status, CheckStatus::Pass);

    // A day past the limit: overdue, with the age, the limit and the command.
    let late = Timestamp(created.as_millis() + 366 * DAY_MS);
    let fail = item_at(&tde, ROTATION, late).await;
    assert_reason(
        &fail,
        CheckStatus::Fail,
        &[
            "366 days ago",
            "mek_rotation_days (365)",
            "heliosdb-cli security mek rotate",
        ],
    );
    // The current-time entry point agrees with the explicit one at creation time.
    let now_item = find(&security_checklist(&tde).await, ROTATION);
    assert_eq!(now_item.status, CheckStatus::Pass, "{}", now_item.reason);
    drop(tde);

    // A shorter schedule from the configuration.
    let config = TdeConfig {
        mek_rotation_days: 90,
        ..file_config(dir.path(), "production")
    };
    let tde = TdeSubsystem::new(config).await.unwrap();
    let at_89 = Timestamp(created.as_millis() + 89 * DAY_MS);
    assert_reason(
        &item_at(&tde, ROTATION, at_89).await,
        CheckStatus::Pass,
        &[
            "89 days ago",
            &date(Timestamp(created.as_millis() + 90 * DAY_MS)),
        ],
    );
    let at_91 = Timestamp(created.as_millis() + 91 * DAY_MS);
    assert_reason(
        &item_at(&tde, ROTATION, at_91).await,
        CheckStatus::Fail,
        &["91 days ago", "mek_rotation_days (90)"],
    );
}

#[tokio::test]
async fn backup_fails_without_a_backup_dir() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(file_config(dir.path(), "production"))
        .await
        .unwrap();
    let item = item_at(&tde, BACKUP, Timestamp::now()).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &[
            "no backup_dir is configured",
            "heliosdb-cli security backup --out-dir",
        ],
    );
}

#[tokio::test]
async fn backup_fails_with_no_bundle_then_passes_and_goes_stale() {
    no_mode_override();
    let (keys_base, backup_base) = two_filesystems();
    let root = tempfile::tempdir_in(&keys_base).unwrap();
    let backups = tempfile::tempdir_in(&backup_base).unwrap();
    let config = TdeConfig {
        backup_dir: Some(backups.path().to_path_buf()),
        ..file_config(root.path(), "production")
    };
    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    km.create_table_key("public.users").await.unwrap();

    // An empty backup directory.
    let item = item_at(&tde, BACKUP, Timestamp::now()).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &[
            "no backup",
            &backups.path().display().to_string(),
            "heliosdb-cli security backup --out-dir",
        ],
    );

    // A fresh bundle on another filesystem passes, naming it.
    let bundle = backups.path().join("first.hbk");
    let created = take_backup(&tde, &bundle).await;
    let item = item_at(&tde, BACKUP, created).await;
    assert_reason(&item, CheckStatus::Pass, &["first.hbk"]);

    // Stale: a day past backup_max_age_days (7 by default).
    let stale = Timestamp(created.as_millis() + 8 * DAY_MS);
    let item = item_at(&tde, BACKUP, stale).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &["first.hbk", "8 days", "backup_max_age_days (7)"],
    );
    // Exactly at the limit it still passes.
    let limit = Timestamp(created.as_millis() + 7 * DAY_MS);
    assert_eq!(item_at(&tde, BACKUP, limit).await.status, CheckStatus::Pass);

    // A table key created after the bundle: the bundle misses it.
    km.create_table_key("public.orders").await.unwrap();
    let item = item_at(&tde, BACKUP, created).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &["created or rotated after the newest backup", "first.hbk"],
    );
    // So does a rotation after a new bundle. (Each bundle replaces the last, so which one is
    // the newest never depends on the clock's resolution.)
    std::fs::remove_file(&bundle).unwrap();
    let second = backups.path().join("second.hbk");
    let created = take_backup(&tde, &second).await;
    assert_reason(
        &item_at(&tde, BACKUP, created).await,
        CheckStatus::Pass,
        &["second.hbk"],
    );
    km.rotate_table(&"public.users".parse().unwrap())
        .await
        .unwrap();
    assert_reason(
        &item_at(&tde, BACKUP, created).await,
        CheckStatus::Fail,
        &["created or rotated after the newest backup"],
    );

    // A damaged newest bundle fails with the verifier's error.
    std::fs::remove_file(&second).unwrap();
    let third = backups.path().join("third.hbk");
    let created = take_backup(&tde, &third).await;
    let mut bytes = std::fs::read(&third).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&third, &bytes).unwrap();
    let item = item_at(&tde, BACKUP, created).await;
    assert_eq!(item.status, CheckStatus::Fail, "{}", item.reason);
    assert!(
        item.reason.contains("third.hbk") && item.reason.contains("damaged"),
        "{}",
        item.reason
    );
}

#[tokio::test]
async fn a_bundle_of_another_store_fails() {
    no_mode_override();
    let (keys_base, backup_base) = two_filesystems();
    let backups = tempfile::tempdir_in(&backup_base).unwrap();
    let other_root = tempfile::tempdir_in(&keys_base).unwrap();
    let other = TdeSubsystem::new(file_config(other_root.path(), "production"))
        .await
        .unwrap();
    let created = take_backup(&other, &backups.path().join("other.hbk")).await;
    drop(other);

    let root = tempfile::tempdir_in(&keys_base).unwrap();
    let config = TdeConfig {
        backup_dir: Some(backups.path().to_path_buf()),
        ..file_config(root.path(), "production")
    };
    let tde = TdeSubsystem::new(config).await.unwrap();
    let item = item_at(&tde, BACKUP, created).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &["other.hbk", "another key store"],
    );
}

#[tokio::test]
async fn a_backup_dir_on_the_key_stores_filesystem_fails() {
    no_mode_override();
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let config = TdeConfig {
        backup_dir: Some(backups.clone()),
        ..file_config(dir.path(), "production")
    };
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    // Even with a fresh bundle in it.
    let created = take_backup(&tde, &backups.join("fresh.hbk")).await;
    let item = item_at(&tde, BACKUP, created).await;
    assert_reason(
        &item,
        CheckStatus::Fail,
        &["same filesystem", "disk failure"],
    );
    drop(tde);

    // A backup_dir that does not exist yet is judged by its nearest existing ancestor.
    let config = TdeConfig {
        backup_dir: Some(dir.path().join("not").join("yet")),
        ..config
    };
    let tde = TdeSubsystem::new(config).await.unwrap();
    let item = item_at(&tde, BACKUP, created).await;
    assert_reason(&item, CheckStatus::Fail, &["same filesystem"]);
}
