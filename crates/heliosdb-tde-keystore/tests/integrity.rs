//! Issue 9 item 12: records are authenticated under the store integrity key. Someone who can
//! write the file but does not hold the key (which only a holder of the MEK can unwrap) cannot
//! reset counters or reservations, revive a version, or strip the authentication.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{KeyBytes, KeyState, KeyStore, StoreBatch, TdeError, TekRecord};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME, record};
use redb::{ReadableDatabase, TableDefinition};

const TEKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("teks");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

fn key(b: u8) -> KeyBytes {
    KeyBytes::from_slice(&[b; 32]).unwrap()
}

/// A store with two authenticated records: users@v1 (decrypt-only, 5000 encryptions) and
/// users@v2 (active).
async fn authenticated_store(dir: &std::path::Path) -> (std::path::PathBuf, TekRecord) {
    let path = dir.join(STORE_FILE_NAME);
    let store = RedbKeyStore::open(&path).unwrap();
    let (_, mut v1) = common::record("users@v1");
    v1.metadata.state = KeyState::DecryptOnly;
    v1.metadata.usage.encryptions = 5000;
    let (_, v2) = common::record("users@v2");
    store
        .apply(StoreBatch::new().insert(v1.clone()).insert(v2))
        .await
        .unwrap();
    // The key manager loads the key with the first key check value: every record is
    // authenticated from then on.
    store
        .set_integrity_key(key(7), Some(("keycheck/m@v1".into(), b"wrapped".to_vec())))
        .await
        .unwrap();
    (path, v1)
}

/// Writes `value` under `id`'s key directly with the storage engine, as an attacker with write
/// access to the file would.
fn raw_put(path: &std::path::Path, id: &heliosdb_tde_core::TekId, value: &[u8]) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(TEKS).unwrap();
        t.insert(record::tek_key(id).as_slice(), value).unwrap();
    }
    txn.commit().unwrap();
}

async fn reopen(path: &std::path::Path) -> RedbKeyStore {
    let s = RedbKeyStore::open_existing(path).unwrap();
    s.set_integrity_key(key(7), None).await.unwrap();
    s
}

#[tokio::test]
async fn records_are_verified_and_written_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, v1) = authenticated_store(dir.path()).await;
    let s = reopen(&path).await;
    assert_eq!(s.get_tek(&v1.id).await.unwrap().unwrap(), v1);
    drop(s);
    // Stored as version 3.
    let db = redb::ReadOnlyDatabase::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(TEKS).unwrap();
    let raw = t.get(record::tek_key(&v1.id).as_slice()).unwrap().unwrap();
    assert_eq!(raw.value()[0], record::AUTHENTICATED_RECORD_VERSION);
}

#[tokio::test]
async fn a_reset_counter_or_a_revived_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, v1) = authenticated_store(dir.path()).await;
    // Reset the counter and revive the version, re-encoded with a valid checksum: without the
    // key, as version 2 (no MAC) and as version 3 under a guessed key.
    let mut forged = v1.clone();
    forged.metadata.usage.encryptions = 0;
    forged.metadata.state = KeyState::Active;
    for bytes in [
        record::encode(&forged),
        record::encode_with(&forged, Some(&key(8))),
    ] {
        raw_put(&path, &v1.id, &bytes);
        let s = reopen(&path).await;
        let e = s.get_tek(&v1.id).await.unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("users@v1"), "{e}");
        let e = s.scan_teks(None, 10).await.unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        // Nothing is written over a record that fails.
        let write = s
            .apply(
                StoreBatch::new().push(heliosdb_tde_core::StoreOp::ReserveEncryptions {
                    id: v1.id.clone(),
                    at_least: 10,
                }),
            )
            .await;
        assert!(write.is_err());
    }
}

#[tokio::test]
async fn clearing_the_authenticated_flag_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, v1) = authenticated_store(dir.path()).await;
    let mut forged = v1.clone();
    forged.metadata.usage.encryptions = 0;
    raw_put(&path, &v1.id, &record::encode(&forged));
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("authenticated", 0)
            .unwrap();
        txn.commit().unwrap();
    }
    let s = RedbKeyStore::open_existing(&path).unwrap();
    let e = s.set_integrity_key(key(7), None).await.unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("cleared"), "{e}");
}

#[tokio::test]
async fn without_the_key_an_authenticated_store_refuses_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = authenticated_store(dir.path()).await;
    let s = RedbKeyStore::open_existing(&path).unwrap();
    let e = s
        .apply(StoreBatch::new().insert(common::record("orders@v1").1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("integrity key"), "{e}");
}

#[tokio::test]
async fn an_older_store_is_authenticated_once_by_a_holder_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE_NAME);
    let store = RedbKeyStore::open(&path).unwrap();
    let (_, rec) = common::record("users@v1");
    store
        .apply(StoreBatch::new().insert(rec.clone()))
        .await
        .unwrap();
    assert_eq!(store.get_tek(&rec.id).await.unwrap().unwrap(), rec);
    store
        .set_integrity_key(key(7), Some(("keycheck/m@v1".into(), b"w".to_vec())))
        .await
        .unwrap();
    drop(store);
    let s = reopen(&path).await;
    assert_eq!(s.get_tek(&rec.id).await.unwrap().unwrap(), rec);
    // The wrong key fails every record.
    drop(s);
    let s = RedbKeyStore::open_existing(&path).unwrap();
    s.set_integrity_key(key(9), None).await.unwrap();
    assert!(s.get_tek(&rec.id).await.is_err());
}
