//! Issue 9 items 1, 2, 17, 18 and 20 through the facade: a missing MEK or key store is never
//! silently replaced, read-only starts write nothing, a busy store says so, and every page the
//! facade seals is counted in the key store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{
    KeyType, SecureFileConfig, TdeConfig, TdeError, TdeSubsystem, sealed_tek_version,
};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn file_config(root: &Path, mek_dir: &str) -> TdeConfig {
    let pass = root.join("secrets").join("mek-passphrase.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, "a long and sufficiently random passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut sf = SecureFileConfig::new(root.join(mek_dir));
    sf.passphrase_file = Some(pass);
    TdeConfig {
        key_storage_path: root.join("keys"),
        secure_file_config: Some(sf),
        security_mode: Some("development".into()),
        cache_limit: 100,
        ..Default::default()
    }
}

/// Every file under `root` (the MEK directory's lock file included) with a digest of its bytes
/// and its length.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut h);
                out.insert(
                    p.clone(),
                    (bytes.len() as u64, std::hash::Hasher::finish(&h)),
                );
            }
        }
    }
    out
}

/// Item 1: the MEK directory moves (a wrong mount, a typo): start-up refuses, names the MEK,
/// the provider's location and the dependent keys, and creates nothing.
#[tokio::test]
async fn a_missing_mek_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(file_config(dir.path(), "mek-a"))
        .await
        .unwrap();
    tde.key_manager()
        .create_table_key("public.users")
        .await
        .unwrap();
    tde.key_manager()
        .create_table_key("public.orders")
        .await
        .unwrap();
    drop(tde);

    let wrong = file_config(dir.path(), "mek-b");
    std::fs::create_dir_all(dir.path().join("mek-b")).unwrap();
    std::fs::set_permissions(
        dir.path().join("mek-b"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let before = snapshot(dir.path());
    let e = TdeSubsystem::new(wrong.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::MekMissing {
                teks: 2,
                tables: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("master_key_001"), "{text}");
    assert!(text.contains("mek-b"), "the provider's location: {text}");
    assert!(text.contains("backup"), "{text}");
    // A read-only start (security status) reports it and lists the unreadable tables.
    let ro = TdeSubsystem::open_read_only(wrong).await.unwrap();
    assert!(
        ro.warnings()
            .iter()
            .any(|w| w.contains("missing from the MEK provider")),
        "{:?}",
        ro.warnings()
    );
    let avail = ro.key_manager().key_availability().await.unwrap();
    assert!(!avail.all_readable());
    let mut unreadable: Vec<String> = avail
        .unreadable_tables
        .iter()
        .map(|t| t.to_string())
        .collect();
    unreadable.sort();
    assert_eq!(unreadable, ["public.orders", "public.users"]);
    assert!(avail.meks.iter().all(|m| !m.present && !m.unwraps));
    drop(ro);
    assert_eq!(
        before,
        snapshot(dir.path()),
        "a refused start changed files"
    );

    // The right directory still works, and both tables are readable.
    let tde = TdeSubsystem::new(file_config(dir.path(), "mek-a"))
        .await
        .unwrap();
    let avail = tde.key_manager().key_availability().await.unwrap();
    assert!(avail.all_readable(), "{avail:?}");
}

/// Item 1: a provider holding an MEK of the same name but other bytes is refused by the key
/// check value, instead of wrapping new keys under an incompatible key.
#[tokio::test]
async fn an_mek_with_the_same_name_but_other_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(file_config(dir.path(), "mek-a"))
        .await
        .unwrap();
    tde.key_manager()
        .create_table_key("public.users")
        .await
        .unwrap();
    drop(tde);

    // Another installation's MEK of the same name, in the directory the config points at.
    let other = tempfile::tempdir().unwrap();
    let tde_other = TdeSubsystem::new(file_config(other.path(), "mek-a"))
        .await
        .unwrap();
    drop(tde_other);
    let mek_a = dir.path().join("mek-a");
    for e in std::fs::read_dir(&mek_a).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "mek") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    for e in std::fs::read_dir(other.path().join("mek-a")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "mek") {
            let to = mek_a.join(p.file_name().unwrap());
            std::fs::copy(&p, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let before = snapshot(dir.path());
    let e = TdeSubsystem::new(file_config(dir.path(), "mek-a"))
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::MekMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("master_key_001@v1"), "{e}");
    assert_eq!(
        before,
        snapshot(dir.path()),
        "a refused start changed files"
    );
}

/// Items 1 and 17: a missing or empty key-store file is never re-created while the provider
/// holds the MEK; the error names both places.
#[tokio::test]
async fn a_missing_or_empty_key_store_is_never_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "mek");
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    tde.key_manager()
        .create_table_key("public.users")
        .await
        .unwrap();
    drop(tde);
    let store = dir.path().join("keys").join("tek-store.redb");

    // Emptied (a truncated copy, a full disk).
    let saved = std::fs::read(&store).unwrap();
    std::fs::write(&store, b"").unwrap();
    for read_only in [false, true] {
        let e = if read_only {
            TdeSubsystem::open_read_only(config.clone()).await
        } else {
            TdeSubsystem::new(config.clone()).await
        }
        .unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("tek-store.redb"), "{e}");
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(std::fs::metadata(&store).unwrap().len(), 0);
    }

    // Missing.
    std::fs::remove_file(&store).unwrap();
    let e = TdeSubsystem::new(config.clone()).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    assert!(text.contains("tek-store.redb"), "{text}");
    assert!(
        text.contains(&dir.path().join("mek").display().to_string()),
        "{text}"
    );
    assert!(!store.exists(), "the store was re-created");

    // Restored from the backup, everything is back.
    std::fs::write(&store, saved).unwrap();
    let tde = TdeSubsystem::new(config).await.unwrap();
    tde.key_manager()
        .get_table_key("public.users", None)
        .await
        .unwrap();
}

/// Item 18: read-only starts and reads leave every file byte-identical, and a failed write
/// command too.
#[tokio::test]
async fn read_only_commands_and_failed_commands_change_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = file_config(dir.path(), "mek");
    config.audit_log_path = Some(dir.path().join("audit").join("audit.log"));
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    tde.key_manager()
        .create_table_key("public.users")
        .await
        .unwrap();
    drop(tde);
    let before = snapshot(dir.path());

    let tde = TdeSubsystem::open_read_only(config.clone()).await.unwrap();
    let km = tde.key_manager();
    assert_eq!(km.list_keys(Some(KeyType::Table)).await.unwrap().len(), 1);
    km.key_stats().await.unwrap();
    km.mek_info().await.unwrap();
    assert!(km.key_availability().await.unwrap().all_readable());
    km.get_table_key("public.users", None).await.unwrap();
    // Writing through a read-only start is refused, and changes nothing.
    assert!(km.create_table_key("public.other").await.is_err());
    drop(tde);
    assert_eq!(
        before,
        snapshot(dir.path()),
        "a read-only start changed files"
    );

    // A failed write command (no such table) changes no key file either; only the audit log
    // grows, by the start's `security.validated` and the failure it exists to record.
    let log = dir.path().join("audit").join("audit.log");
    let log_before = std::fs::read(&log).unwrap();
    let tde = TdeSubsystem::new(config).await.unwrap();
    let e = tde
        .key_manager()
        .rotate_table(&"public.nosuch".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    drop(tde);
    let without_log = |mut m: BTreeMap<PathBuf, (u64, u64)>| {
        m.remove(&log);
        m
    };
    assert_eq!(
        without_log(before),
        without_log(snapshot(dir.path())),
        "a failed command changed files"
    );
    let log_after = std::fs::read(&log).unwrap();
    assert!(
        log_after.starts_with(&log_before),
        "the log was only appended to"
    );
    let added = String::from_utf8_lossy(&log_after[log_before.len()..]).to_string();
    assert!(
        added.contains("\"action\":\"tek.rotated\"")
            && added.contains("\"error_kind\":\"key_not_found\""),
        "{added}"
    );
}

/// Item 20: a store held by another writer is "in use", not corrupt. (The in-memory provider
/// takes no lock of its own, so the key store's lock is the one that answers.)
#[tokio::test]
async fn a_busy_store_is_in_use_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let config = TdeConfig {
        key_storage_path: dir.path().join("keys"),
        security_mode: Some("development".into()),
        ..Default::default()
    };
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    for second in [
        TdeSubsystem::new(config.clone()).await,
        TdeSubsystem::open_read_only(config.clone()).await,
    ] {
        let e = second.unwrap_err();
        assert!(matches!(e, TdeError::InUse { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("in use by another process"), "{text}");
        assert!(text.contains("is HeliosDB running?"), "{text}");
        assert!(text.contains("tek-store.redb"), "{text}");
        assert!(!text.contains("backup"), "{text}");
    }
    drop(tde);
}

/// Item 2: pages sealed through the facade, in three handles and across a restart, are all
/// covered by the usage recorded in the key store.
#[tokio::test]
async fn every_page_sealed_through_the_facade_is_counted_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "mek");
    let mut seals = 0u64;
    let mut sealed_pages = Vec::new();
    for _restart in 0..2 {
        let tde = TdeSubsystem::new(config.clone()).await.unwrap();
        let km = tde.key_manager();
        if km.list_keys(Some(KeyType::Table)).await.unwrap().is_empty() {
            km.create_table_key("public.users").await.unwrap();
        }
        for handle in 0..3 {
            let sealer = tde.page_sealer("public.users").await.unwrap();
            for page in 0..5u32 {
                let aad = format!("public.users/{handle}/{page}");
                let mut buf = vec![7u8; 512];
                let parts = sealer
                    .seal_in_place(aad.as_bytes(), &mut buf)
                    .await
                    .unwrap();
                seals += 1;
                let v = sealed_tek_version(&parts.header).unwrap();
                let opener = tde.page_opener("public.users", v).await.unwrap();
                opener
                    .open_in_place(&parts, aad.as_bytes(), &mut buf)
                    .unwrap();
                assert_eq!(buf, vec![7u8; 512]);
                sealed_pages.push(sealer.seal(aad.as_bytes(), b"row").await.unwrap());
                seals += 1;
            }
        }
        drop(tde);
        let tde = TdeSubsystem::open_read_only(config.clone()).await.unwrap();
        let recorded: u64 = tde
            .key_manager()
            .list_keys(Some(KeyType::Table))
            .await
            .unwrap()
            .iter()
            .map(|m| m.usage.encryptions)
            .sum();
        assert!(
            recorded >= seals,
            "the store records {recorded} encryptions, {seals} seals were made"
        );
    }
    assert_eq!(sealed_pages.len(), 30);
}
