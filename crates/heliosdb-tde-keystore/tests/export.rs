//! The store identity, the key generation, and the export / import a backup and a restore are
//! built on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{ExportItem, ImportItem, KeyStore, StoreBatch, StoreIdentity, TdeError};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};

async fn populated(dir: &std::path::Path, n: usize) -> RedbKeyStore {
    let store = RedbKeyStore::open_dir(dir).unwrap();
    let mut batch = StoreBatch::new();
    for i in 0..n {
        batch = batch.insert(common::record(&format!("t{i:04}@v1")).1);
    }
    store
        .apply(batch.put_journal("mek_rotation/m", b"state".to_vec()))
        .await
        .unwrap();
    store
}

/// Everything an export yields, owned, in order.
fn export_all(store: &RedbKeyStore) -> (Vec<ImportItem>, heliosdb_tde_core::ExportSummary) {
    let mut items = Vec::new();
    let summary = store
        .export_blocking(&mut |item| {
            items.push(match item {
                ExportItem::Tek { key, value, record } => {
                    assert_eq!(heliosdb_tde_keystore::record::tek_key(&record.id), key);
                    ImportItem::Tek {
                        key: key.to_vec(),
                        value: value.to_vec(),
                    }
                }
                ExportItem::Journal { name, value } => ImportItem::Journal {
                    name: name.to_string(),
                    value: value.to_vec(),
                },
                other => panic!("unexpected {other:?}"),
            });
            Ok(())
        })
        .unwrap();
    (items, summary)
}

fn import(
    store: &RedbKeyStore,
    identity: StoreIdentity,
    items: Vec<ImportItem>,
) -> Result<u64, TdeError> {
    let mut it = items.into_iter();
    store.import_blocking(identity, &mut || Ok(it.next()))
}

#[tokio::test]
async fn every_apply_raises_the_key_generation_and_reservations_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path(), 3).await;
    let a = store.identity().await.unwrap();
    assert_eq!(a.id_hex().len(), 32);
    assert_ne!(a.id, [0; 16]);
    let id: heliosdb_tde_core::TekId = "t0000@v1".parse().unwrap();
    store
        .reserve_encryptions(&id, 100, 1_000_000)
        .await
        .unwrap();
    let b = store.identity().await.unwrap();
    assert_eq!(a, b, "a nonce reservation changes no key");
    store
        .apply(StoreBatch::new().put_journal("x", vec![1]))
        .await
        .unwrap();
    let c = store.identity().await.unwrap();
    assert_eq!(c.id, a.id);
    assert_eq!(c.generation, a.generation + 1);
    // The audit log's checkpoint is not key state: writing it leaves the generation alone (a
    // backup taken before it is not stale); a batch mixing it with key state raises it.
    store
        .apply(StoreBatch::new().put_journal("audit/head", vec![2]))
        .await
        .unwrap();
    assert_eq!(store.identity().await.unwrap(), c);
    assert_eq!(
        store.get_journal("audit/head").await.unwrap(),
        Some(vec![2])
    );
    store
        .apply(
            StoreBatch::new()
                .put_journal("audit/head", vec![3])
                .put_journal("y", vec![1]),
        )
        .await
        .unwrap();
    assert_eq!(store.identity().await.unwrap().generation, c.generation + 1);
    store
        .apply(StoreBatch::new().put_journal("audit/head", vec![2]))
        .await
        .unwrap();
    let c = store.identity().await.unwrap();
    assert_eq!(StoreIdentity::parse_id(&c.id_hex()), Some(c.id));
    assert_eq!(StoreIdentity::parse_id("zz"), None);

    let other = tempfile::tempdir().unwrap();
    let other = RedbKeyStore::open_dir(other.path()).unwrap();
    assert_ne!(other.identity().await.unwrap().id, a.id, "ids are random");
}

#[tokio::test]
async fn an_export_imported_into_an_empty_store_gives_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path(), 200).await;
    let (items, summary) = export_all(&store);
    assert_eq!(summary.teks, 200);
    // The journal holds the store id and the rotation entry.
    assert_eq!(summary.journal, 2);
    assert_eq!(summary.identity, store.identity().await.unwrap());

    let target = tempfile::tempdir().unwrap();
    let restored = RedbKeyStore::open_dir(target.path()).unwrap();
    assert_eq!(import(&restored, summary.identity, items).unwrap(), 200);
    assert_eq!(restored.identity().await.unwrap(), summary.identity);
    assert_eq!(
        restored.scan_teks(None, usize::MAX).await.unwrap(),
        store.scan_teks(None, usize::MAX).await.unwrap()
    );
    assert_eq!(
        restored
            .get_journal("mek_rotation/m")
            .await
            .unwrap()
            .unwrap(),
        b"state"
    );
    // Reopened from disk, it is the same.
    drop(restored);
    let reopened = RedbKeyStore::open_existing(&target.path().join(STORE_FILE_NAME)).unwrap();
    assert_eq!(reopened.count_teks().await.unwrap(), 200);
    assert_eq!(reopened.identity().await.unwrap(), summary.identity);
}

#[tokio::test]
async fn an_import_is_refused_by_a_store_that_holds_keys_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path(), 5).await;
    let (items, summary) = export_all(&store);
    let target = tempfile::tempdir().unwrap();
    let busy = populated(target.path(), 2).await;
    let before = busy.identity().await.unwrap();
    let e = import(&busy, summary.identity, items).unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
    assert!(e.to_string().contains("empty store"), "{e}");
    assert_eq!(busy.count_teks().await.unwrap(), 2);
    assert_eq!(busy.identity().await.unwrap(), before);
}

#[tokio::test]
async fn a_damaged_record_fails_the_whole_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path(), 20).await;
    let (mut items, summary) = export_all(&store);
    // Flip a byte in the last TEK record.
    let last = items
        .iter_mut()
        .filter_map(|i| match i {
            ImportItem::Tek { value, .. } => Some(value),
            _ => None,
        })
        .next_back()
        .unwrap();
    last[3] ^= 0x40;
    let target = tempfile::tempdir().unwrap();
    let restored = RedbKeyStore::open_dir(target.path()).unwrap();
    let own = restored.identity().await.unwrap();
    let e = import(&restored, summary.identity, items).unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
    assert_eq!(
        restored.count_teks().await.unwrap(),
        0,
        "nothing was stored"
    );
    assert_eq!(restored.identity().await.unwrap(), own);
}

#[tokio::test]
async fn an_export_is_one_point_in_time_even_while_keys_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(populated(dir.path(), 300).await);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                store
                    .apply(StoreBatch::new().insert(common::record(&format!("u{i:04}@v1")).1))
                    .await
                    .unwrap();
            }
        })
    };
    // Each export sees the generation it reports and exactly the keys written by then: 300
    // plus one per commit after the first (every commit here inserts one key).
    for _ in 0..5 {
        let s = store.clone();
        let (items, summary) = tokio::task::spawn_blocking(move || export_all(&s))
            .await
            .unwrap();
        let teks = items
            .iter()
            .filter(|i| matches!(i, ImportItem::Tek { .. }))
            .count() as u64;
        assert_eq!(teks, summary.teks);
        assert_eq!(teks - 300, summary.identity.generation - 1);
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn a_store_without_an_id_gets_one_at_its_next_write() {
    // A store written before stores had an id: its entry is gone.
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path(), 2).await;
    store
        .apply(StoreBatch::new().delete_journal("store/id"))
        .await
        .unwrap();
    let e = store.identity().await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("start HeliosDB"), "{e}");
    // The next write adds a fresh one, which then stays.
    store
        .apply(StoreBatch::new().put_journal("x", vec![1]))
        .await
        .unwrap();
    let a = store.identity().await.unwrap();
    assert_ne!(a.id, [0; 16]);
    store
        .apply(StoreBatch::new().put_journal("y", vec![2]))
        .await
        .unwrap();
    assert_eq!(store.identity().await.unwrap().id, a.id);
}
