//! The redb key store against a real file on disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{record, unwrap};
use heliosdb_tde_core::{KeyState, KeyStore, StoreBatch, TdeError};
use heliosdb_tde_keystore::RedbKeyStore;

#[tokio::test]
async fn put_get_latest_and_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbKeyStore::open_dir(&dir.path().join("keys")).unwrap();
    let mut batch = StoreBatch::new();
    let mut keys = Vec::new();
    for id in [
        "users@v1",
        "users@v2",
        "users@v10",
        "orders@v1",
        "users.archive@v1",
    ] {
        let (tek, rec) = record(id);
        keys.push((id, tek));
        batch = batch.insert(rec);
    }
    store.apply(batch).await.unwrap();
    assert_eq!(store.count_teks().await.unwrap(), 5);

    for (id, tek) in &keys {
        let rec = store.get_tek(&id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(
            unwrap(&rec).bytes().expose_secret(),
            tek.bytes().expose_secret()
        );
    }
    let users = "users".parse().unwrap();
    let latest = store.latest_tek(&users).await.unwrap().unwrap();
    assert_eq!(
        latest.id.to_string(),
        "users@v10",
        "numeric, not lexical, order"
    );
    let all: Vec<String> = store
        .table_teks(&users)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(all, ["users@v1", "users@v2", "users@v10"]);
    assert!(
        store
            .latest_tek(&"nobody".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_tek(&"users@v3".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Paging through everything with a cursor visits each key once, in order.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan_teks(cursor.as_ref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|r| r.id.clone());
        seen.extend(page.into_iter().map(|r| r.id.to_string()));
    }
    assert_eq!(
        seen,
        [
            "orders@v1",
            "users@v1",
            "users@v2",
            "users@v10",
            "users.archive@v1"
        ]
    );
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbKeyStore::open_dir(dir.path()).unwrap();
    let (_, a) = record("a@v1");
    store
        .apply(StoreBatch::new().insert(a.clone()))
        .await
        .unwrap();

    // The second insert of a@v1 fails, so b@v1 and the journal write must not land either.
    let (_, b) = record("b@v1");
    let e = store
        .apply(
            StoreBatch::new()
                .insert(b)
                .put_journal("rotation", b"state".to_vec())
                .insert(a.clone()),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
    assert!(
        store
            .get_tek(&"b@v1".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_journal("rotation").await.unwrap().is_none());
    assert_eq!(store.count_teks().await.unwrap(), 1);

    // Upsert replaces; journal put and delete.
    let mut changed = a.clone();
    changed.metadata.transition(KeyState::DecryptOnly).unwrap();
    store
        .apply(
            StoreBatch::new()
                .upsert(changed)
                .put_journal("rotation", b"v1".to_vec()),
        )
        .await
        .unwrap();
    let got = store.get_tek(&a.id).await.unwrap().unwrap();
    assert_eq!(got.metadata.state, KeyState::DecryptOnly);
    assert_eq!(store.get_journal("rotation").await.unwrap().unwrap(), b"v1");
    store
        .apply(StoreBatch::new().delete_journal("rotation"))
        .await
        .unwrap();
    assert!(store.get_journal("rotation").await.unwrap().is_none());
}

#[tokio::test]
async fn data_survives_reopen_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (tek, rec) = record("t@v1");
    {
        let store = RedbKeyStore::open_dir(&keys).unwrap();
        store.apply(StoreBatch::new().insert(rec)).await.unwrap();
    }
    let store = RedbKeyStore::open_dir(&keys).unwrap();
    let got = store
        .get_tek(&"t@v1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        unwrap(&got).bytes().expose_secret(),
        tek.bytes().expose_secret()
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(store.path()), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..25 {
                let (_, rec) = record(&format!("w{w}_t{i}@v1"));
                store.apply(StoreBatch::new().insert(rec)).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(store.count_teks().await.unwrap(), 100);
}

#[tokio::test]
async fn read_modify_write_operations() {
    use heliosdb_tde_core::StoreOp;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbKeyStore::open_dir(dir.path()).unwrap();
    let (_, rec) = record("t@v1");
    let id = rec.id.clone();
    store
        .apply(StoreBatch::new().insert(rec.clone()))
        .await
        .unwrap();

    // Rewrap keeps the old form as previous_wrap and follows the new MEK in the metadata.
    let mut new_wrap = rec.wrapped.clone();
    new_wrap.mek = "store_test_mek@v2".parse().unwrap();
    let op = |expect: &str, keep| StoreOp::Rewrap {
        id: id.clone(),
        expect: expect.parse().unwrap(),
        wrapped: new_wrap.clone(),
        keep_previous: keep,
    };
    store
        .apply(StoreBatch::new().push(op("store_test_mek@v1", true)))
        .await
        .unwrap();
    let got = store.get_tek(&id).await.unwrap().unwrap();
    assert_eq!(got.wrapped.mek.to_string(), "store_test_mek@v2");
    assert_eq!(got.previous_wrap.as_ref().unwrap(), &rec.wrapped);
    assert_eq!(
        got.metadata.wrapped_by.unwrap().to_string(),
        "store_test_mek@v2"
    );
    // A rewrap whose expectation no longer holds is skipped, not applied twice.
    let mut other = new_wrap.clone();
    other.payload[0] ^= 1;
    store
        .apply(StoreBatch::new().push(StoreOp::Rewrap {
            id: id.clone(),
            expect: "store_test_mek@v1".parse().unwrap(),
            wrapped: other,
            keep_previous: false,
        }))
        .await
        .unwrap();
    assert_eq!(store.get_tek(&id).await.unwrap().unwrap().wrapped, new_wrap);

    // State changes follow the lifecycle; a refused one fails the whole batch.
    store
        .apply(StoreBatch::new().push(StoreOp::SetState {
            id: id.clone(),
            state: KeyState::DecryptOnly,
        }))
        .await
        .unwrap();
    let e = store
        .apply(
            StoreBatch::new()
                .put_journal("x", vec![1])
                .push(StoreOp::SetState {
                    id: id.clone(),
                    state: KeyState::Destroyed,
                }),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    assert!(store.get_journal("x").await.unwrap().is_none());

    // Reservations only ever raise the count.
    for v in [100, 50, 300] {
        store
            .apply(StoreBatch::new().push(StoreOp::ReserveEncryptions {
                id: id.clone(),
                at_least: v,
            }))
            .await
            .unwrap();
    }
    let got = store.get_tek(&id).await.unwrap().unwrap();
    assert_eq!(got.metadata.usage.encryptions, 300);
    assert_eq!(
        got.metadata.state,
        KeyState::DecryptOnly,
        "no update was lost"
    );
    assert!(got.previous_wrap.is_some());
    store
        .apply(StoreBatch::new().push(StoreOp::ClearPreviousWrap { id: id.clone() }))
        .await
        .unwrap();
    assert!(
        store
            .get_tek(&id)
            .await
            .unwrap()
            .unwrap()
            .previous_wrap
            .is_none()
    );
}
