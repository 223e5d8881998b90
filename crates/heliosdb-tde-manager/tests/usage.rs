//! Nonce-budget accounting of pages sealed through the key manager (issue 9 items 4 and 11),
//! over the in-memory provider and the real redb store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_cipher::testing::force_salt;
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyStore, KeyType, MekId, MekProvider, SecurityMode, StoreBatch, TableKey,
    TdeError, TekRecord, WrapContext,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, TableSealer, UsagePolicy};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The nonce salt forced in tests that prove uniqueness from the invocation numbers alone.
const SALT: u64 = 0x5a17_5a17_5a17_5a17;

/// The in-memory provider, with wraps that fail while `fail_wraps` is set (a provider outage
/// at the moment a usage rotation needs a new TEK wrapped).
fn flaky_wraps() -> (Arc<Instrumented>, Arc<AtomicBool>) {
    let provider = Arc::new(Instrumented::new(Arc::new(InMemoryMekProvider::new())));
    let fail_wraps = Arc::new(AtomicBool::new(false));
    let flag = fail_wraps.clone();
    provider.fail_when(Method::WrapTek, move |_| {
        flag.load(Ordering::SeqCst)
            .then(|| TdeError::ProviderUnavailable {
                provider: "test".into(),
                reason: "outage".into(),
                retryable: true,
            })
    });
    (provider, fail_wraps)
}

fn config(soft_limit: u64, block: u64) -> KeyManagerConfig {
    KeyManagerConfig::new(
        MekId::new("master_key_001").unwrap(),
        SecurityMode::Development,
    )
    .with_usage(
        UsagePolicy::default()
            .with_soft_limit(soft_limit)
            .with_reservation_block(block),
    )
}

async fn recorded_encryptions(store: &dyn KeyStore) -> u64 {
    let mut total = 0;
    store
        .tek_pages(None, 100)
        .for_each(|page: Vec<TekRecord>| {
            total += page
                .iter()
                .map(|r| r.metadata.usage.encryptions)
                .sum::<u64>();
            Ok(())
        })
        .await
        .unwrap();
    total
}

/// Item 4: a page sealed when the key reaches its usage limit is returned even if the
/// automatic rotation fails; the failure is counted, and the rotation is retried later.
#[tokio::test]
async fn a_failed_usage_rotation_never_loses_the_sealed_page() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, fail_wraps) = flaky_wraps();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(provider.clone(), store, config(3, 2)).unwrap();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("public.users").await.unwrap();

    fail_wraps.store(true, Ordering::SeqCst);
    let mut sealed = Vec::new();
    for i in 0..6u32 {
        let page = format!("page {i}");
        let s = km
            .seal_page("public.users", &i.to_be_bytes(), page.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("seal {i} failed although the page was sealed: {e}"));
        sealed.push((i, page, s));
    }
    for (i, page, s) in &sealed {
        let opened = km
            .open_page("public.users", &i.to_be_bytes(), s)
            .await
            .unwrap();
        assert_eq!(opened, page.as_bytes());
    }
    let stats = km.key_stats().await.unwrap();
    assert!(stats.usage_rotation_failures >= 1, "{stats:?}");

    // Once the provider is back, the next seal rotates the key.
    fail_wraps.store(false, Ordering::SeqCst);
    km.seal_page("public.users", b"x", b"after").await.unwrap();
    let versions = km.list_keys(Some(KeyType::Table)).await.unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
}

/// Item 11: two managers over one store, sealing the same table at the same time, never
/// share a block of invocation numbers: the store's recorded usage covers every seal, and
/// (issue 14) with one constant nonce salt forced on every thread, no two pages share a nonce.
#[test]
fn two_managers_over_one_store_never_share_a_reservation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| force_salt(Some(SALT)))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
        let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
        let a =
            Arc::new(KeyManager::new(provider.clone(), store.clone(), config(1 << 30, 4)).unwrap());
        let b = Arc::new(KeyManager::new(provider, store.clone(), config(1 << 30, 4)).unwrap());
        a.ensure_default_mek().await.unwrap();
        b.ensure_default_mek().await.unwrap();
        a.create_table_key("public.users").await.unwrap();

        const SEALS: u64 = 200;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for km in [a, b] {
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let mut sealed = Vec::new();
                for i in 0..SEALS {
                    let s = km
                        .seal_page("public.users", &i.to_be_bytes(), b"row")
                        .await
                        .unwrap();
                    sealed.push(s);
                }
                sealed
            }));
        }
        let mut nonces = std::collections::HashSet::new();
        for t in tasks {
            for s in t.await.unwrap() {
                assert_eq!(salt(&s), SALT, "the forced salt is in the header");
                assert!(nonces.insert(nonce(&s)), "two pages share a nonce");
            }
        }
        let recorded = recorded_encryptions(store.as_ref()).await;
        assert!(
            recorded >= 2 * SEALS,
            "{recorded} encryptions recorded for {} seals: two sealers were handed the same \
             invocation numbers",
            2 * SEALS
        );
    });
}

/// Item 11 at the store: concurrent reservations are disjoint and contiguous, and stop at the
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_are_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let provider = InMemoryMekProvider::new();
    let store = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let mek = provider
        .generate_mek(&MekId::new("m").unwrap(), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let id: heliosdb_tde_core::TekId = "public.t@v1".parse().unwrap();
    let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let wrapped = provider
        .wrap_tek(&mek, &tek, &WrapContext::table_key(&id))
        .await
        .unwrap();
    let meta = heliosdb_tde_core::KeyMetadata::new_active(
        heliosdb_tde_core::KeyId::Table(id.clone()),
        EncryptionAlgorithm::Aes256Gcm,
        Some(mek),
    );
    store
        .apply(StoreBatch::new().insert(TekRecord::new(id.clone(), meta, wrapped).unwrap()))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (store, id) = (store.clone(), id.clone());
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(store.reserve_encryptions(&id, 3, 500).await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.retain(|r| !r.is_empty());
    all.sort_by_key(|r| r.start);
    let mut next = 0;
    for r in &all {
        assert_eq!(r.start, next, "blocks overlap or leave a gap: {all:?}");
        next = r.end;
    }
    assert_eq!(next, 500, "reservations stop at the limit");
}

/// The nonce of a sealed header (bytes 5..17: salt || invocation number).
fn nonce(header: &[u8]) -> [u8; 12] {
    header[5..17].try_into().unwrap()
}

/// The salt `S` of a sealed header's nonce (bytes 5..13).
fn salt(header: &[u8]) -> u64 {
    u64::from_be_bytes(header[5..13].try_into().unwrap())
}

/// The invocation number `N` of a sealed header's nonce (bytes 13..17).
fn invocation(header: &[u8]) -> u32 {
    u32::from_be_bytes(header[13..17].try_into().unwrap())
}

/// The TEK version a sealed header names (bytes 1..5).
fn version(header: &[u8]) -> u32 {
    u32::from_be_bytes(header[1..5].try_into().unwrap())
}

/// Issue 14 item 2: four threads sharing one sealing handle (tiny blocks, so that they meet in
/// the slow path too) get distinct nonces, every page opens, and the store's recorded usage
/// covers every seal.
#[test]
fn four_threads_sharing_one_sealer_get_distinct_nonces() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store.clone(),
        config(1 << 30, 7),
    )
    .unwrap();
    rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        km.create_table_key("public.users").await.unwrap();
    });
    let sealer = rt.block_on(km.table_sealer("public.users")).unwrap();
    assert_eq!(sealer.table().as_str(), "public.users");

    const THREADS: u32 = 4;
    const SEALS: u32 = 300;
    let sealed: Vec<Vec<u8>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (sealer, handle) = (&sealer, rt.handle().clone());
                s.spawn(move || {
                    force_salt(Some(SALT));
                    (0..SEALS)
                        .map(|i| {
                            let aad = (t * SEALS + i).to_be_bytes();
                            handle.block_on(sealer.seal(&aad, b"row")).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let total = u64::from(THREADS * SEALS);
    assert_eq!(sealed.len() as u64, total);
    let nonces: std::collections::HashSet<[u8; 12]> = sealed.iter().map(|s| nonce(s)).collect();
    assert_eq!(
        nonces.len() as u64,
        total,
        "two seals through one shared handle used the same nonce"
    );
    assert!(sealed.iter().all(|s| salt(s) == SALT));
    rt.block_on(async {
        for (i, s) in sealed.iter().enumerate() {
            let (t, k) = (i as u32 / SEALS, i as u32 % SEALS);
            let aad = (t * SEALS + k).to_be_bytes();
            assert_eq!(km.open_page("public.users", &aad, s).await.unwrap(), b"row");
        }
        let recorded = recorded_encryptions(store.as_ref()).await;
        assert!(
            recorded >= total,
            "{recorded} encryptions recorded for {total} seals"
        );
    });
    assert!(sealer.invocations().unwrap() <= recorded_now(&rt, store.as_ref()));
}

fn recorded_now(rt: &tokio::runtime::Runtime, store: &dyn KeyStore) -> u64 {
    rt.block_on(recorded_encryptions(store))
}

/// Seals `n` pages through `sealer`, checking that each names `expected_version`.
async fn seal_some(
    sealer: &TableSealer<'_>,
    n: u32,
    expected_version: u32,
    pages: &mut Vec<(u32, Vec<u8>)>,
) {
    for _ in 0..n {
        let i = pages.len() as u32;
        let s = sealer.seal(&i.to_be_bytes(), b"page").await.unwrap();
        assert_eq!(version(&s), expected_version, "page {i}");
        pages.push((i, s));
    }
}

/// Issue 14 item 2: a handle made once follows its table through spent blocks (a block of 3),
/// a normal and an emergency MEK rotation, and table rotations; every page it sealed opens.
#[tokio::test]
async fn the_sealer_follows_spent_blocks_and_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store.clone(),
        config(1 << 30, 3),
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("public.users").await.unwrap();
    force_salt(Some(SALT));
    let sealer = km.table_sealer("public.users").await.unwrap();
    let table: heliosdb_tde_core::TableId = "public.users".parse().unwrap();

    let mut pages = Vec::new();
    // Ten seals cross three spent blocks of 3.
    seal_some(&sealer, 10, 1, &mut pages).await;
    assert_eq!(sealer.invocations(), Some(10));
    let rec = store
        .get_tek(&"public.users@v1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.metadata.usage.encryptions, 12,
        "four blocks of 3 reserved"
    );

    km.rotate_table(&table).await.unwrap();
    seal_some(&sealer, 4, 2, &mut pages).await;

    // A normal MEK rotation re-wraps the TEK: the handle keeps sealing with version 2.
    km.rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    seal_some(&sealer, 4, 2, &mut pages).await;

    // An emergency rotation gives the table a new TEK version: the handle follows.
    let e = km
        .emergency_rotate_mek("master_key_001", None)
        .await
        .unwrap();
    assert!(e.tables_rotated.contains(&table), "{e:?}");
    seal_some(&sealer, 4, 3, &mut pages).await;

    let nonces: std::collections::HashSet<(u32, [u8; 12])> =
        pages.iter().map(|(_, s)| (version(s), nonce(s))).collect();
    assert_eq!(
        nonces.len(),
        pages.len(),
        "a nonce was used twice under one TEK"
    );
    for (i, s) in &pages {
        assert_eq!(
            km.open_page("public.users", &i.to_be_bytes(), s)
                .await
                .unwrap(),
            b"page"
        );
    }
}

/// The handle fails early for a table without a key, like the facade's `page_sealer`.
#[tokio::test]
async fn a_sealer_for_a_table_without_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store,
        config(1 << 30, 3),
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    let e = km.table_sealer("public.nothing").await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    let e = km.table_sealer("not a table!").await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");
}

/// Issue 14 item 1: a restart (here after a crash: nothing but the store survives) never
/// reuses an invocation number: the new process starts at the next reserved block, so with one
/// constant salt the nonces of both processes are still distinct.
#[tokio::test]
async fn a_restart_never_reuses_invocation_numbers() {
    force_salt(Some(SALT));
    let dir = tempfile::tempdir().unwrap();
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let open = || {
        let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
        KeyManager::new(provider.clone(), store, config(1 << 30, 4)).unwrap()
    };
    let km = open();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("public.users").await.unwrap();
    let mut sealed = Vec::new();
    for i in 0..10u32 {
        sealed.push(
            km.seal_page("public.users", &i.to_be_bytes(), b"before")
                .await
                .unwrap(),
        );
    }
    drop(km);
    let km = open();
    km.ensure_default_mek().await.unwrap(); // as at every start: loads the integrity key
    let sealer = km.table_sealer("public.users").await.unwrap();
    for i in 10..20u32 {
        sealed.push(sealer.seal(&i.to_be_bytes(), b"after").await.unwrap());
    }
    let numbers: Vec<u32> = sealed.iter().map(|s| invocation(s)).collect();
    // Blocks of 4: the first process reserved 0..12 and used 0..10; the second starts at 12.
    let expected: Vec<u32> = (0..10).chain(12..22).collect();
    assert_eq!(
        numbers, expected,
        "invocation numbers are absolute and never reused"
    );
    let nonces: std::collections::HashSet<[u8; 12]> = sealed.iter().map(|s| nonce(s)).collect();
    assert_eq!(nonces.len(), sealed.len());
    for (i, s) in sealed.iter().enumerate() {
        let page: &[u8] = if i < 10 { b"before" } else { b"after" };
        let aad = (i as u32).to_be_bytes();
        assert_eq!(km.open_page("public.users", &aad, s).await.unwrap(), page);
    }
}

/// Issue 14 item 1, the restore case: a key store restored from a copy hands out the same
/// invocation numbers again, but every reserved block seals under a fresh random salt, so the
/// nonces still differ (a collision needs equal 64-bit salts).
#[tokio::test]
async fn a_restored_store_differs_only_by_salt() {
    let dir = tempfile::tempdir().unwrap();
    let (live, backup) = (dir.path().join("live"), dir.path().join("backup"));
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let open = |path: &std::path::Path| {
        let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(path).unwrap());
        KeyManager::new(provider.clone(), store, config(1 << 30, 8)).unwrap()
    };
    let km = open(&live);
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("public.users").await.unwrap();
    drop(km);
    copy_dir(&live, &backup);

    let seal_five = async |path: &std::path::Path| {
        let km = open(path);
        km.ensure_default_mek().await.unwrap();
        let sealer = km.table_sealer("public.users").await.unwrap();
        let mut out = Vec::new();
        for i in 0..5u32 {
            out.push(sealer.seal(&i.to_be_bytes(), b"row").await.unwrap());
        }
        out
    };
    let before = seal_five(&live).await;
    // The restore: the live store is replaced by the backup taken before those seals.
    std::fs::remove_dir_all(&live).unwrap();
    copy_dir(&backup, &live);
    let after = seal_five(&live).await;

    let n = |v: &[Vec<u8>]| v.iter().map(|s| invocation(s)).collect::<Vec<_>>();
    assert_eq!(n(&before), [0, 1, 2, 3, 4]);
    assert_eq!(
        n(&after),
        n(&before),
        "the restored store hands out the same numbers"
    );
    assert_ne!(
        salt(&before[0]),
        salt(&after[0]),
        "each block has its own salt"
    );
    assert!(
        before.iter().all(|s| salt(s) == salt(&before[0])),
        "one salt per block"
    );
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(nonce(b), nonce(a));
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Issue 14 item 2: once the handle has its encryptor, a seal is ready at its first poll, from a
/// thread without a runtime (nothing on the common path awaits), and its future stays small:
/// the rare paths (reservation, rotation) are boxed, so no large state machine is moved per page.
#[test]
fn a_warm_seal_is_ready_at_the_first_poll_and_its_future_is_small() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store,
        config(1 << 30, 64),
    )
    .unwrap();
    let sealer = rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        km.create_table_key("public.users").await.unwrap();
        let sealer = km.table_sealer("public.users").await.unwrap();
        sealer.seal(b"warm", b"up").await.unwrap(); // reserves the first block
        sealer
    });
    drop(rt);
    let mut page = [7u8; 8192];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for i in 0..32u32 {
        let aad = i.to_be_bytes();
        let mut fut = std::pin::pin!(sealer.seal_in_place(&aad, &mut page));
        let size = std::mem::size_of_val(&*fut);
        // About 250 bytes on x86_64; with the rare paths inline it was about 1900.
        assert!(size <= 512, "the seal future is {size} bytes");
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => assert_eq!(version(&r.unwrap().header), 1),
            std::task::Poll::Pending => panic!("a warm seal suspended"),
        }
    }
    assert_eq!(sealer.invocations(), Some(33));
}

/// Issue 14 item 2: threads that reach the soft limit together through one handle rotate the
/// key once per limit: every version but the newest sealed at least the soft limit's worth of
/// pages (a double rotation would leave a version with next to none).
#[test]
fn concurrent_seals_at_the_soft_limit_rotate_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    const SOFT: u64 = 40;
    let km = KeyManager::new(Arc::new(InMemoryMekProvider::new()), store, config(SOFT, 7)).unwrap();
    let sealer = rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        km.create_table_key("public.users").await.unwrap();
        km.table_sealer("public.users").await.unwrap()
    });
    const THREADS: u32 = 4;
    const SEALS: u32 = 80;
    let versions: Vec<u32> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (sealer, handle) = (&sealer, rt.handle().clone());
                s.spawn(move || {
                    (0..SEALS)
                        .map(|i| {
                            version(
                                &handle
                                    .block_on(sealer.seal(&i.to_be_bytes(), b"r"))
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut per_version = std::collections::BTreeMap::new();
    for v in versions {
        *per_version.entry(v).or_insert(0u64) += 1;
    }
    let newest = *per_version.keys().last().unwrap();
    assert!(newest >= 2, "no usage rotation: {per_version:?}");
    for (v, n) in &per_version {
        if *v != newest {
            assert!(
                *n >= SOFT,
                "version {v} sealed only {n} pages: {per_version:?}"
            );
        }
    }
    let stats = rt.block_on(km.key_stats()).unwrap();
    assert_eq!(stats.usage_rotation_failures, 0);
    let rotated = rt
        .block_on(km.list_keys(Some(heliosdb_tde_core::KeyType::Table)))
        .unwrap();
    // The last seals may have rotated to a version nothing sealed with yet.
    let created = rotated.len() as u32;
    assert!(
        created == newest || created == newest + 1,
        "{created} versions created, {newest} used: {per_version:?}"
    );
}

/// Issue 14 item 2: sealing through a shared handle goes on while the table's key is rotated
/// again and again: no seal fails, no nonce repeats under a version, every page opens, and the
/// seals after the last rotation use the newest version.
#[test]
fn seals_go_on_during_table_rotations() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| force_salt(Some(SALT)))
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store,
        config(1 << 30, 3),
    )
    .unwrap();
    let table: heliosdb_tde_core::TableId = "public.users".parse().unwrap();
    let sealer = rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        km.create_table_key(&table).await.unwrap();
        km.table_sealer(&table).await.unwrap()
    });
    const ROTATIONS: u32 = 12;
    let done = AtomicBool::new(false);
    let sealed: Vec<(u32, Vec<u8>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u32)
            .map(|t| {
                let (sealer, done, handle) = (&sealer, &done, rt.handle().clone());
                s.spawn(move || {
                    force_salt(Some(SALT));
                    let mut out = Vec::new();
                    let mut i = t << 24;
                    while !done.load(Ordering::SeqCst) || out.len() < 50 {
                        let s = handle.block_on(sealer.seal(&i.to_be_bytes(), b"row"));
                        out.push((i, s.unwrap_or_else(|e| panic!("seal {i} failed: {e}"))));
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        for _ in 0..ROTATIONS {
            rt.block_on(km.rotate_table(&table)).unwrap();
        }
        done.store(true, Ordering::SeqCst);
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut nonces = std::collections::HashSet::new();
    rt.block_on(async {
        for (i, s) in &sealed {
            assert!(nonces.insert((version(s), nonce(s))), "a nonce repeated");
            let opened = km.open_page(&table, &i.to_be_bytes(), s).await.unwrap();
            assert_eq!(opened, b"row");
        }
        let after = sealer.seal(b"after", b"row").await.unwrap();
        assert_eq!(version(&after), ROTATIONS + 1);
    });
}

/// A manager whose known active version was rotated by another manager over the same store
/// seals its next block with the store's newest version instead of failing: the version it
/// knew is decrypt-only now.
#[tokio::test]
async fn a_rotation_by_another_manager_is_picked_up_at_the_next_block() {
    let dir = tempfile::tempdir().unwrap();
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let a = KeyManager::new(provider.clone(), store.clone(), config(1 << 30, 3)).unwrap();
    let b = KeyManager::new(provider, store, config(1 << 30, 3)).unwrap();
    a.ensure_default_mek().await.unwrap();
    b.ensure_default_mek().await.unwrap();
    a.create_table_key("public.users").await.unwrap();
    let sealer = a.table_sealer("public.users").await.unwrap();
    for i in 0..3u32 {
        let s = sealer.seal(&i.to_be_bytes(), b"row").await.unwrap();
        assert_eq!(version(&s), 1);
    }
    b.rotate_table(&"public.users".parse().unwrap())
        .await
        .unwrap();
    // The block of 3 is spent: the next seal reserves anew, with version 2.
    let s = sealer.seal(b"next", b"row").await.unwrap();
    assert_eq!(version(&s), 2);
    assert_eq!(
        a.open_page("public.users", b"next", &s).await.unwrap(),
        b"row"
    );
}

/// Issue 14 item 1, with blocks of 2^20: while the usage rotation keeps failing (a provider
/// outage), the encryptor goes on sealing from its reserved block (the key is over its soft
/// limit, not its hard one) instead of reserving, and wasting, a new block per seal.
#[tokio::test]
async fn a_failing_usage_rotation_wastes_no_reserved_block() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, fail_wraps) = flaky_wraps();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(provider, store.clone(), config(3, 100)).unwrap();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("public.users").await.unwrap();
    let sealer = km.table_sealer("public.users").await.unwrap();
    fail_wraps.store(true, Ordering::SeqCst);
    for i in 0..20u32 {
        let s = sealer.seal(&i.to_be_bytes(), b"row").await.unwrap();
        assert_eq!(invocation(&s), i, "one block, numbers in order");
    }
    let stats = km.key_stats().await.unwrap();
    assert_eq!(
        stats.usage_rotation_failures, 18,
        "seals 3..=20 each tried to rotate"
    );
    let rec = store
        .get_tek(&"public.users@v1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.metadata.usage.encryptions, 100, "one block reserved");

    fail_wraps.store(false, Ordering::SeqCst);
    let s = sealer.seal(b"x", b"rotates").await.unwrap();
    assert_eq!(version(&s), 1, "sealed, then rotated");
    let s = sealer.seal(b"y", b"after").await.unwrap();
    assert_eq!(version(&s), 2);
}
