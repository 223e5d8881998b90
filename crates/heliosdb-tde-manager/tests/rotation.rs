//! MEK rotation through the KeyManager, online; emergency rotation; usage-driven TEK rotation
//! with nonce-budget reservations that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{KeyState, KeyStore, KeyType, MekId, MekProvider, SecurityMode};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, Phase, RotationConfig, UsagePolicy};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Parts {
    _dir: tempfile::TempDir,
    provider: Arc<dyn MekProvider>,
    store: Arc<dyn KeyStore>,
}

fn parts() -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    Parts {
        _dir: dir,
        provider: Arc::new(InMemoryMekProvider::new()),
        store,
    }
}

fn manager(p: &Parts, tweak: impl FnOnce(KeyManagerConfig) -> KeyManagerConfig) -> KeyManager {
    let c = KeyManagerConfig::new(
        MekId::new("master_key_001").unwrap(),
        SecurityMode::Development,
    );
    KeyManager::new(p.provider.clone(), p.store.clone(), tweak(c)).unwrap()
}

#[tokio::test]
async fn rotation_result_has_the_guides_fields_and_new_teks_use_the_new_mek() {
    let p = parts();
    let km = manager(&p, |c| c);
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    let r = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    assert_eq!(r.old_mek_id.to_string(), "master_key_001@v1");
    assert_eq!(r.new_mek_id.to_string(), "master_key_001@v2");
    assert_eq!(r.keys_reencrypted, 100);
    assert!(r.failed_keys.is_empty());
    assert_eq!(r.phase, Phase::DualActive);
    let meta = km.create_table_key("after").await.unwrap();
    assert_eq!(meta.wrapped_by, Some(r.new_mek_id.clone()));
    // Idempotent: running it again changes nothing and reports the same rotation.
    let again = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    assert_eq!(
        (again.old_mek_id, again.new_mek_id),
        (r.old_mek_id, r.new_mek_id)
    );
    assert_eq!(km.mek_info().await.unwrap().versions.len(), 2);
    assert_eq!(
        km.mek_rotation_status("master_key_001")
            .await
            .unwrap()
            .unwrap()
            .phase,
        Phase::DualActive
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_encryptions_go_on_during_a_rotation() {
    let p = parts();
    let km = Arc::new(manager(&p, |c| {
        // Most reads miss and unwrap through the provider mid-rotation.
        c.with_cache_limit(64)
            .with_rotation(RotationConfig::default().with_batch_size(128))
    }));
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..3000).map(|i| format!("tbl{i:04}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4u64 {
        let km = km.clone();
        let done = done.clone();
        let ops = ops.clone();
        workers.spawn(async move {
            let mut i = w * 7919;
            while !done.load(Ordering::SeqCst) || ops.load(Ordering::SeqCst) < 200 {
                i = (i * 31 + 17) % 3000;
                let table = format!("tbl{i:04}");
                km.get_table_key(&table, None)
                    .await
                    .unwrap_or_else(|e| panic!("read {table}: {e}"));
                let aad = format!("{table}/page/{i}");
                let sealed = km
                    .seal_page(&table, aad.as_bytes(), b"row data")
                    .await
                    .unwrap_or_else(|e| panic!("seal {table}: {e}"));
                let opened = km
                    .open_page(&table, aad.as_bytes(), &sealed)
                    .await
                    .unwrap_or_else(|e| panic!("open {table}: {e}"));
                assert_eq!(opened, b"row data");
                ops.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let r = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    done.store(true, Ordering::SeqCst);
    while let Some(res) = workers.join_next().await {
        res.unwrap(); // any error above panicked its worker
    }
    assert_eq!(r.keys_reencrypted, 3000);
    assert!(r.failed_keys.is_empty());
    assert!(ops.load(Ordering::SeqCst) >= 200);
    let v = km.verify_mek_rotation("master_key_001").await.unwrap();
    assert_eq!(v.stranded, 0);
}

#[tokio::test]
async fn emergency_rotation_gives_every_table_a_new_tek() {
    let p = parts();
    let km = manager(&p, |c| c);
    km.ensure_default_mek().await.unwrap();
    km.create_table_keys(&["a", "b", "c"]).await.unwrap();
    let sealed = km.seal_page("a", b"a/1", b"secret").await.unwrap();
    let e = km
        .emergency_rotate_mek("master_key_001", None)
        .await
        .unwrap();
    let names: Vec<String> = e
        .tables_needing_reencryption
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(e.rotation.old_mek_id.to_string(), "master_key_001@v1");
    let info = km.mek_info().await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Compromised);
    let keys = km.list_keys(Some(KeyType::Table)).await.unwrap();
    for t in ["a", "b", "c"] {
        let versions: Vec<(String, KeyState)> = keys
            .iter()
            .filter(|k| k.key_id.to_string().starts_with(&format!("tek:{t}@")))
            .map(|k| (k.key_id.to_string(), k.state))
            .collect();
        assert_eq!(
            versions,
            [
                (format!("tek:{t}@v1"), KeyState::Compromised),
                (format!("tek:{t}@v2"), KeyState::Active)
            ]
        );
    }
    // Old data still opens; new data uses the new TEK version.
    assert_eq!(km.open_page("a", b"a/1", &sealed).await.unwrap(), b"secret");
    let fresh = km.seal_page("a", b"a/2", b"x").await.unwrap();
    assert_eq!(heliosdb_tde_cipher_version(&fresh), 2);
}

fn heliosdb_tde_cipher_version(sealed: &[u8]) -> u32 {
    u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]])
}

#[tokio::test]
async fn usage_limits_rotate_table_keys_automatically() {
    let p = parts();
    let km = manager(&p, |c| {
        c.with_usage(
            UsagePolicy::default()
                .with_soft_limit(100)
                .with_reservation_block(32),
        )
    });
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("hot").await.unwrap();
    let mut sealed = Vec::new();
    for i in 0..250u32 {
        let aad = format!("hot/{i}");
        sealed.push((
            aad.clone(),
            km.seal_page("hot", aad.as_bytes(), &i.to_be_bytes())
                .await
                .unwrap(),
        ));
    }
    let versions: Vec<(String, KeyState, u64)> = p
        .store
        .table_teks(&"hot".parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.id.to_string(),
                r.metadata.state,
                r.metadata.usage.encryptions,
            )
        })
        .collect();
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(versions[0].1, KeyState::DecryptOnly);
    assert_eq!(versions[1].1, KeyState::DecryptOnly);
    assert_eq!(versions[2].1, KeyState::Active);
    // Each retired version used exactly its soft limit, and its persisted count covers that.
    assert!(versions[0].2 >= 100 && versions[1].2 >= 100, "{versions:?}");
    for (i, (aad, s)) in sealed.iter().enumerate() {
        let expect_version = 1 + (i as u32) / 100;
        assert_eq!(heliosdb_tde_cipher_version(s), expect_version, "page {i}");
        assert_eq!(
            km.open_page("hot", aad.as_bytes(), s).await.unwrap(),
            (i as u32).to_be_bytes()
        );
    }
}

#[tokio::test]
async fn a_restart_never_lowers_the_nonce_budget_count() {
    let p = parts();
    let tweak =
        |c: KeyManagerConfig| c.with_usage(UsagePolicy::default().with_reservation_block(32));
    let km = manager(&p, tweak);
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("t").await.unwrap();
    for i in 0..50u32 {
        km.seal_page("t", b"", &i.to_be_bytes()).await.unwrap();
    }
    assert_eq!(km.sealer_invocations("t"), Some(50));
    drop(km); // no shutdown hook: what was persisted is all a restart sees, as after a crash

    let km = manager(&p, tweak);
    km.seal_page("t", b"", b"after restart").await.unwrap();
    let count = km.sealer_invocations("t").unwrap();
    assert!(
        count > 50,
        "the count restarted below what was used: {count}"
    );
    assert_eq!(
        count, 65,
        "it resumes at the reservation (64) and counts on"
    );
    let rec = p
        .store
        .get_tek(&"t@v1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.metadata.usage.encryptions, 96,
        "the next block is reserved ahead of use"
    );
}

/// Issue 9 item 3 through the manager: an emergency request on a rotation that is already past
/// its first phase (here: dual-active) ends with the old version compromised, and rollback is
/// refused from then on.
#[tokio::test]
async fn an_emergency_request_on_a_finished_normal_rotation_compromises_the_old_version() {
    let p = parts();
    let km = manager(&p, |c| c);
    km.ensure_default_mek().await.unwrap();
    km.create_table_keys(&["a", "b"]).await.unwrap();
    let r = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();
    assert_eq!(r.phase, Phase::DualActive);
    let e = km
        .emergency_rotate_mek("master_key_001", None)
        .await
        .unwrap();
    assert_eq!(e.rotation.old_mek_id.to_string(), "master_key_001@v1");
    let info = km.mek_info().await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Compromised);
    assert!(
        km.rollback_mek_rotation("master_key_001", None)
            .await
            .is_err(),
        "rollback to a compromised MEK version must be refused"
    );
    let st = km.mek_rotation_status("master_key_001").await.unwrap();
    assert!(st.is_some_and(|s| s.emergency));
}
