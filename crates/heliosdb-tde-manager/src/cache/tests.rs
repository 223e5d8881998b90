//! The invalidation epoch over a real manager (in-memory provider, redb store): a key replaced
//! in the cache on purpose is never served from a front, even while the old key is still held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{KeyManager, KeyManagerConfig};
use heliosdb_tde_core::{EncryptionAlgorithm, MekId, SecurityMode, TableKey, TekId};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

async fn manager(dir: &std::path::Path) -> KeyManager {
    let config = KeyManagerConfig::new(
        MekId::new("master_key_001").unwrap(),
        SecurityMode::Development,
    )
    .with_cache_limit(16);
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap()),
        config,
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    km
}

fn replacement(id: &TekId) -> Arc<TableKey> {
    Arc::new(TableKey::generate(id.clone(), EncryptionAlgorithm::default()).unwrap())
}

fn same(a: &TableKey, b: &TableKey) -> bool {
    a.bytes().expose_secret() == b.bytes().expose_secret()
}

#[tokio::test]
async fn a_replaced_key_is_never_served_from_any_front() {
    let dir = tempfile::tempdir().unwrap();
    let km = manager(dir.path()).await;
    km.create_table_key("t").await.unwrap();
    let id: TekId = "t@v1".parse().unwrap();
    // Warm this thread's front and another thread's; keep the old key alive.
    let old = km.get_tek(&id).await.unwrap();
    assert!(same(&km.get_cached_table_key(&id).unwrap(), &old));
    let other = |km: &KeyManager| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let a = km.get_cached_table_key(&id).unwrap();
                let b = km.get_cached_table_key(&id).unwrap();
                assert!(Arc::ptr_eq(&a, &b));
                b
            })
            .join()
            .unwrap()
        })
    };
    assert!(same(&other(&km), &old));
    let front_hits = km.cache.counts().front_hits;
    assert!(front_hits >= 2, "{front_hits}");

    let new = replacement(&id);
    km.cache.insert(id.clone(), new.clone());
    // The old key is still held (by `old`), yet neither front serves it.
    let here = km.get_cached_table_key(&id).unwrap();
    assert!(Arc::ptr_eq(&here, &new) && !same(&here, &old));
    assert!(Arc::ptr_eq(&km.get_tek(&id).await.unwrap(), &new));
    assert!(Arc::ptr_eq(&other(&km), &new));
    assert!(Arc::ptr_eq(&km.get_cached_table_key(&id).unwrap(), &new));
}

#[tokio::test]
async fn a_load_that_raced_with_a_replacement_stays_out_of_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let km = manager(dir.path()).await;
    km.create_table_key("t").await.unwrap();
    let id: TekId = "t@v1".parse().unwrap();
    let old = km.get_tek(&id).await.unwrap();
    // A lookup loads the epoch, reads `old` from the shared cache; the replacement lands; then
    // the lookup fills its front with what it read.
    let epoch = km.cache.epoch();
    let new = replacement(&id);
    km.cache.insert(id.clone(), new.clone());
    km.cache.fill_front(&id, &old, epoch);
    let before = km.cache.counts();
    assert!(Arc::ptr_eq(&km.get_cached_table_key(&id).unwrap(), &new));
    let after = km.cache.counts();
    assert_eq!(after.front_hits, before.front_hits, "not from the front");
    assert_eq!(after.shared_hits, before.shared_hits + 1);
    // The next lookup is a front hit on the new key.
    assert!(Arc::ptr_eq(&km.get_cached_table_key(&id).unwrap(), &new));
    assert_eq!(km.cache.counts().front_hits, before.front_hits + 1);
    drop(old);
}
