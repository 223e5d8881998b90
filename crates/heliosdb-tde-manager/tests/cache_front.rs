//! The per-thread front of the TEK cache, over real parts (redb store, secure-file or in-memory
//! provider): repeat hits skip the shared cache, the counters stay exact across threads, keys
//! survive rotations correctly, and an evicted key is released once nobody holds it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{KeyStore, MekId, MekProvider, SecurityMode, TableId, TekId};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::{Arc, Barrier};

fn config(mode: SecurityMode, cache_limit: usize) -> KeyManagerConfig {
    KeyManagerConfig::new(MekId::new("master_key_001").unwrap(), mode).with_cache_limit(cache_limit)
}

fn store(dir: &std::path::Path) -> Arc<dyn KeyStore> {
    Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap())
}

/// A provider and store with `tables` table keys `t0`, `t1`, ... written by another manager,
/// and a manager over them with a cold cache of `cache_limit` keys.
async fn cold_manager(
    dir: &std::path::Path,
    tables: usize,
    cache_limit: usize,
) -> (Arc<dyn MekProvider>, Arc<dyn KeyStore>, KeyManager) {
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let st = store(dir);
    let writer = KeyManager::new(
        provider.clone(),
        st.clone(),
        config(SecurityMode::Development, tables.max(1)),
    )
    .unwrap();
    writer.ensure_default_mek().await.unwrap();
    for i in 0..tables {
        writer.create_table_key(&format!("t{i}")).await.unwrap();
    }
    let km = KeyManager::new(
        provider.clone(),
        st.clone(),
        config(SecurityMode::Development, cache_limit),
    )
    .unwrap();
    (provider, st, km)
}

fn tek(s: &str) -> TekId {
    s.parse().unwrap()
}

#[tokio::test]
async fn repeat_hits_are_answered_by_the_threads_front() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        KeyManager::new(
            Arc::new(common::secure_file_provider(&dir.path().join("mek"))),
            store(dir.path()),
            config(SecurityMode::Production, 10),
        )
        .unwrap()
    };
    let km = open();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("users").await.unwrap();
    drop(km);
    let km = open();
    let id = tek("users@v1");
    // The miss unwraps and fills this thread's front.
    let first = km.get_tek(&id).await.unwrap();
    let s = km.key_stats().await.unwrap().cache;
    assert_eq!((s.hits, s.front_hits, s.misses), (0, 0, 1), "{s:?}");
    for _ in 0..10 {
        assert!(Arc::ptr_eq(&km.get_cached_table_key(&id).unwrap(), &first));
    }
    let k = km.get_table_key("users", None).await.unwrap();
    assert!(Arc::ptr_eq(&k, &first));
    let s = km.key_stats().await.unwrap().cache;
    assert_eq!((s.hits, s.front_hits, s.misses), (11, 11, 1), "{s:?}");
    // Another thread's first hit goes through the shared cache, its next ones do not.
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for _ in 0..3 {
                assert!(Arc::ptr_eq(&km.get_cached_table_key(&id).unwrap(), &first));
            }
        });
    });
    let s = km.key_stats().await.unwrap().cache;
    assert_eq!((s.hits, s.front_hits, s.misses), (14, 13, 1), "{s:?}");
}

#[tokio::test]
async fn four_threads_count_every_hit_exactly() {
    const THREADS: usize = 4;
    const CALLS: usize = 20_000;
    const TABLES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, km) = cold_manager(dir.path(), TABLES, 64).await;
    let ids: Vec<TekId> = (0..TABLES).map(|i| tek(&format!("t{i}@v1"))).collect();
    for id in &ids {
        km.get_tek(id).await.unwrap();
    }
    let before = km.key_stats().await.unwrap().cache;
    assert_eq!(before.misses, TABLES as u64);
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (km, ids, barrier) = (&km, &ids, &barrier);
            s.spawn(move || {
                // The first lookup gives this thread its front and counters; only then wait for
                // the others, so that no thread can start after another ended and inherit its
                // slot (thread_local reuses the slots of exited threads).
                assert!(km.get_cached_table_key(&ids[t]).is_some());
                barrier.wait();
                for i in 0..CALLS {
                    let id = &ids[(i * 7 + t) % TABLES];
                    assert_eq!(km.get_cached_table_key(id).unwrap().id(), id);
                }
            });
        }
    });
    let after = km.key_stats().await.unwrap().cache;
    let calls = THREADS * (CALLS + 1);
    assert_eq!(after.hits - before.hits, calls as u64, "{after:?}");
    // Each thread met each key once in the shared cache; every other hit came from its front.
    assert_eq!(
        after.front_hits - before.front_hits,
        (calls - THREADS * TABLES) as u64,
        "{after:?}"
    );
    assert_eq!(after.misses, before.misses, "{after:?}");
    assert_eq!(after.evictions, 0, "{after:?}");
}

#[tokio::test]
async fn rotations_never_change_what_a_warm_front_serves_for_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, st, km) = cold_manager(dir.path(), 2, 16).await;
    let table: TableId = "t0".parse().unwrap();
    let v1 = km.get_table_key(&table, None).await.unwrap();
    let v1_bytes = *v1.bytes().expose_secret();
    assert!(km.get_cached_table_key(&tek("t0@v1")).is_some());

    // A table key rotation: the newest version is v2, v1 is decrypt-only and still served.
    km.rotate_table(&table).await.unwrap();
    let v2 = km.get_table_key(&table, None).await.unwrap();
    assert_eq!(v2.id(), &tek("t0@v2"));
    assert_ne!(v2.bytes().expose_secret(), &v1_bytes);
    assert_eq!(
        km.active_table_key(&table).await.unwrap().id(),
        &tek("t0@v2")
    );
    let again = km.get_cached_table_key(&tek("t0@v1")).unwrap();
    assert_eq!(again.bytes().expose_secret(), &v1_bytes);

    // An MEK rotation re-wraps the TEKs; their bytes, as served from the front, do not change,
    // and a cold manager unwraps the same bytes under the new MEK version.
    let t1 = km.get_tek(&tek("t1@v1")).await.unwrap();
    let t1_bytes = *t1.bytes().expose_secret();
    let result = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    assert_eq!(result.failed_total, 0);
    let served = km.get_cached_table_key(&tek("t1@v1")).unwrap();
    assert_eq!(served.bytes().expose_secret(), &t1_bytes);
    let rec = st.get_tek(&tek("t1@v1")).await.unwrap().unwrap();
    assert_eq!(rec.wrapped.mek, result.new_mek_id);
    let cold = KeyManager::new(provider, st, config(SecurityMode::Development, 16)).unwrap();
    let k = cold.get_tek(&tek("t1@v1")).await.unwrap();
    assert_eq!(k.bytes().expose_secret(), &t1_bytes);
}

#[tokio::test]
async fn after_an_emergency_rotation_every_front_agrees_with_the_shared_cache() {
    const TABLES: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let (provider, st, km) = cold_manager(dir.path(), TABLES, 16).await;
    // Warm this thread's front with every v1, and remember the bytes.
    let mut v1 = Vec::new();
    for i in 0..TABLES {
        let k = km.get_tek(&tek(&format!("t{i}@v1"))).await.unwrap();
        assert!(Arc::ptr_eq(&km.get_cached_table_key(k.id()).unwrap(), &k));
        v1.push(*k.bytes().expose_secret());
    }
    // New TEK versions for every table (cache inserts), the v1s marked compromised (a state
    // change in the store: they still decrypt), the MEK rotated.
    let e = km
        .emergency_rotate_mek("master_key_001", None)
        .await
        .unwrap();
    assert_eq!(e.tables_rotated.len(), TABLES);
    for (i, bytes) in v1.iter().enumerate() {
        let table: TableId = format!("t{i}").parse().unwrap();
        assert_eq!(
            km.active_table_key(&table)
                .await
                .unwrap()
                .id()
                .version
                .get(),
            2
        );
        for v in [1, 2] {
            let id = tek(&format!("t{i}@v{v}"));
            let here = km.get_tek(&id).await.unwrap();
            let again = km.get_cached_table_key(&id).unwrap();
            let elsewhere = std::thread::scope(|s| {
                s.spawn(|| km.get_cached_table_key(&id).unwrap())
                    .join()
                    .unwrap()
            });
            assert!(
                Arc::ptr_eq(&here, &again) && Arc::ptr_eq(&here, &elsewhere),
                "{id}"
            );
            if v == 1 {
                assert_eq!(here.bytes().expose_secret(), bytes, "{id}");
            } else {
                assert_ne!(here.bytes().expose_secret(), bytes, "{id}");
            }
        }
    }
    // A cold manager unwraps the same keys from the store.
    let cold = KeyManager::new(provider, st, config(SecurityMode::Development, 16)).unwrap();
    for (i, bytes) in v1.iter().enumerate() {
        let k = cold.get_tek(&tek(&format!("t{i}@v1"))).await.unwrap();
        assert_eq!(k.bytes().expose_secret(), bytes);
    }
}

#[tokio::test]
async fn an_evicted_key_is_served_while_held_and_released_once_dropped() {
    const TABLES: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, km) = cold_manager(dir.path(), TABLES, 8).await;
    let id0 = tek("t0@v1");
    // Another thread loads keys `range` (each once, none held).
    let load_on_another_thread = |range: std::ops::Range<usize>| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for i in range {
                    rt.block_on(km.get_tek(&tek(&format!("t{i}@v1")))).unwrap();
                }
            });
        });
    };
    // This thread takes its own front now, before any other thread exists: thread_local
    // hands the slot of an exited thread (and its full front) to the next new one.
    assert!(km.get_cached_table_key(&id0).is_none());
    // Fill the shared cache first: quick_cache admits the first keys of a cache that is
    // filling up as hot, and t0 must be an ordinary (cold) entry.
    load_on_another_thread(1..10);
    // This thread loads t0 and holds it; its front now has a weak reference to it.
    let held = km.get_tek(&id0).await.unwrap();
    let weak = Arc::downgrade(&held);
    // The other thread loads every remaining key: the shared cache (8 keys) evicts t0, which
    // nobody read through it since.
    load_on_another_thread(10..TABLES);
    let stats = km.key_stats().await.unwrap().cache;
    assert!(stats.entries <= 8, "{stats:?}");
    assert!(stats.evictions >= (TABLES - 8) as u64, "{stats:?}");
    // A third thread, with no front entry for t0, does not find it: the shared cache evicted it.
    std::thread::scope(|s| {
        s.spawn(|| assert!(km.get_cached_table_key(&id0).is_none()));
    });
    // This thread's front still serves it while it is held: eviction is not revocation. It does
    // so for at most 64 more hits, after which a check of the shared cache drops the entry.
    let front_before = km.key_stats().await.unwrap().cache.front_hits;
    let mut served = 0u64;
    while let Some(k) = km.get_cached_table_key(&id0) {
        assert!(Arc::ptr_eq(&k, &held));
        served += 1;
        assert!(
            served <= 64,
            "served from the front after the shared cache evicted it"
        );
    }
    assert!(served >= 1);
    assert_eq!(
        km.key_stats().await.unwrap().cache.front_hits - front_before,
        served
    );
    // The next read unwraps the key again into the shared cache (a new copy of the same
    // bytes). Once the caller drops the old copy nobody holds it: it is released (and its bytes
    // zeroized by KeyBytes' Drop), although a front once pointed at it.
    let reloaded = km.get_tek(&id0).await.unwrap();
    assert!(!Arc::ptr_eq(&reloaded, &held));
    assert_eq!(
        reloaded.bytes().expose_secret(),
        held.bytes().expose_secret()
    );
    drop(held);
    assert!(
        weak.upgrade().is_none(),
        "an evicted key nobody holds is released"
    );
}

#[tokio::test]
async fn an_evicted_key_nobody_holds_is_released_although_fronts_saw_it() {
    const TABLES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, km) = cold_manager(dir.path(), TABLES, 8).await;
    let mut weak = Vec::new();
    // Every key is read twice on this thread (the second read is a front hit), and once more on
    // another thread, so two fronts have seen it; none is held.
    for i in 0..TABLES {
        let id = tek(&format!("t{i}@v1"));
        let k = km.get_tek(&id).await.unwrap();
        assert!(km.get_cached_table_key(&id).is_some());
        std::thread::scope(|s| {
            s.spawn(|| assert!(km.get_cached_table_key(&id).is_some()));
        });
        weak.push(Arc::downgrade(&k));
    }
    let stats = km.key_stats().await.unwrap().cache;
    assert!(stats.evictions >= (TABLES - 8) as u64, "{stats:?}");
    let alive = weak.iter().filter(|w| w.upgrade().is_some()).count() as u64;
    assert_eq!(
        alive, stats.entries,
        "only keys the shared cache holds are alive"
    );
    // A front never revives a released key.
    for (i, w) in weak.iter().enumerate() {
        if w.upgrade().is_none() {
            let id = tek(&format!("t{i}@v1"));
            assert!(km.get_cached_table_key(&id).is_none(), "{id}");
        }
    }
}
