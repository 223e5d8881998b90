//! KeyManager over real parts: the in-memory or secure-file provider and the redb store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use async_trait::async_trait;
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditSink, KeyId, KeyState, KeyStore, KeyType, MekId, MekProvider,
    Result, SecurityMode, TdeError, TekId,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(mode: SecurityMode, cache_limit: usize) -> KeyManagerConfig {
    KeyManagerConfig::new(MekId::new("master_key_001").unwrap(), mode).with_cache_limit(cache_limit)
}

fn store(dir: &std::path::Path) -> Arc<dyn KeyStore> {
    Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap())
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<AuditEvent>>);

#[async_trait]
impl AuditSink for Recorder {
    async fn record(&self, event: AuditEvent) -> Result<()> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

#[tokio::test]
async fn production_refuses_the_in_memory_provider_with_the_guides_message() {
    let dir = tempfile::tempdir().unwrap();
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store(dir.path()),
        config(SecurityMode::Production, 10),
    )
    .unwrap();
    let e = km.validate_security().unwrap_err();
    assert!(matches!(e, TdeError::InsecureProvider { .. }));
    assert!(e.to_string().starts_with(
        "Production mode requires a secure MEK provider. Current provider: In-Memory (INSECURE - \
         testing only) is NOT suitable for production."
    ));
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store(&dir.path().join("dev")),
        config(SecurityMode::Development, 10),
    )
    .unwrap();
    let warning = km.validate_security().unwrap().unwrap();
    assert!(warning.contains("development mode"), "{warning}");

    let file = common::secure_file_provider(&dir.path().join("mek"));
    let km = KeyManager::new(
        Arc::new(file),
        store(&dir.path().join("prod")),
        config(SecurityMode::Production, 10),
    )
    .unwrap();
    assert_eq!(km.validate_security().unwrap(), None);
}

#[tokio::test]
async fn create_get_rotate_list() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store(dir.path()),
        config(SecurityMode::Development, 100),
    )
    .unwrap()
    .with_audit(recorder.clone());
    let mek = km.ensure_default_mek().await.unwrap();
    assert_eq!(mek.to_string(), "master_key_001@v1");
    assert_eq!(km.ensure_default_mek().await.unwrap(), mek, "idempotent");

    let meta = km.create_table_key("public.users").await.unwrap();
    assert_eq!(meta.key_id.to_string(), "tek:public.users@v1");
    assert_eq!(meta.state, KeyState::Active);
    assert_eq!(meta.wrapped_by, Some(mek.clone()));
    let e = km.create_table_key("public.users").await.unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
    let e = km.create_table_key("bad/name").await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");

    let v1 = km.get_table_key("public.users", None).await.unwrap();
    assert_ne!(v1.bytes().expose_secret(), &[0u8; 32]);
    // Two tables never share key bytes.
    km.create_table_key("orders").await.unwrap();
    let other = km.get_table_key("orders", None).await.unwrap();
    assert_ne!(v1.bytes().expose_secret(), other.bytes().expose_secret());

    // Rotation: v2 becomes active, v1 decrypt-only, and both still load.
    let rotated = km
        .rotate_table_key(&"tek:public.users@v1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(rotated.key_id.to_string(), "tek:public.users@v2");
    let latest = km.get_table_key("public.users", None).await.unwrap();
    assert_eq!(
        latest.id().version.get(),
        2,
        "reads after rotation see the new version"
    );
    assert_eq!(
        km.active_table_key("public.users")
            .await
            .unwrap()
            .id()
            .version
            .get(),
        2
    );
    let old = km
        .get_table_key("public.users", Some(1u32.try_into().unwrap()))
        .await
        .unwrap();
    assert_eq!(old.bytes().expose_secret(), v1.bytes().expose_secret());
    let states: Vec<(String, KeyState)> = km
        .list_keys(Some(KeyType::Table))
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.key_id.to_string(), m.state))
        .collect();
    assert_eq!(
        states,
        [
            ("tek:orders@v1".to_string(), KeyState::Active),
            ("tek:public.users@v1".to_string(), KeyState::DecryptOnly),
            ("tek:public.users@v2".to_string(), KeyState::Active),
        ]
    );
    let masters = km.list_keys(Some(KeyType::Master)).await.unwrap();
    assert_eq!(masters.len(), 1);
    assert_eq!(km.list_keys(None).await.unwrap().len(), 4);
    let e = km.rotate_table_key(&KeyId::Master(mek)).await.unwrap_err();
    assert!(
        e.to_string().contains("rotate_mek_with_dual_encryption"),
        "{e}"
    );

    // Every operation, failures included; cache hits record nothing.
    let actions: Vec<(AuditAction, bool)> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.action, e.is_success()))
        .collect();
    assert_eq!(
        actions,
        [
            (AuditAction::MekGenerated, true),
            (AuditAction::TekCreated, true),
            (AuditAction::TekCreated, false),
            (AuditAction::TekCreated, false),
            (AuditAction::TekCreated, true),
            (AuditAction::TekRotated, true),
            (AuditAction::TekStateChanged, true),
            (AuditAction::TekRotated, false),
        ]
    );

    let stats = km.key_stats().await.unwrap();
    assert_eq!(stats.tables, 2);
    assert_eq!(stats.teks_by_state.get("active"), Some(&2));
    assert_eq!(stats.teks_by_state.get("decrypt-only"), Some(&1));
    assert!(stats.provider.calls >= 4);
    assert!(stats.cache.hits >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_cause_one_unwrap() {
    let dir = tempfile::tempdir().unwrap();
    // Unwraps are counted and slowed down so that concurrent misses overlap.
    let provider = Arc::new(Instrumented::new(Arc::new(InMemoryMekProvider::new())));
    provider.delay(Method::UnwrapTek, Duration::from_millis(50));
    let st = store(dir.path());
    let writer = KeyManager::new(
        provider.clone(),
        st.clone(),
        config(SecurityMode::Development, 100),
    )
    .unwrap();
    writer.ensure_default_mek().await.unwrap();
    writer.create_table_key("hot").await.unwrap();
    // A second manager over the same provider and store starts with a cold cache.
    let km = Arc::new(
        KeyManager::new(provider.clone(), st, config(SecurityMode::Development, 100)).unwrap(),
    );
    let id: TekId = "hot@v1".parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let km = km.clone();
        let id = id.clone();
        tasks.spawn(async move { km.get_tek(&id).await.map(|k| *k.bytes().expose_secret()) });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap().unwrap());
    }
    assert_eq!(results.len(), 1000);
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(provider.calls(Method::UnwrapTek), 1, "single flight");
}

#[tokio::test]
async fn the_cache_is_bounded_and_evicted_keys_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let st = store(dir.path());
    let writer = KeyManager::new(
        provider.clone(),
        st.clone(),
        config(SecurityMode::Development, 1000),
    )
    .unwrap();
    writer.ensure_default_mek().await.unwrap();
    for i in 0..60 {
        writer.create_table_key(&format!("t{i}")).await.unwrap();
    }
    let km = KeyManager::new(provider, st, config(SecurityMode::Development, 8)).unwrap();
    let mut weak = Vec::new();
    for i in 0..60 {
        let k = km.get_table_key(&format!("t{i}"), None).await.unwrap();
        weak.push(Arc::downgrade(&k));
    }
    let stats = km.key_stats().await.unwrap();
    assert!(stats.cache.entries <= 8, "{:?}", stats.cache);
    assert!(stats.cache.evictions >= 52, "{:?}", stats.cache);
    // We hold no strong reference, so a key is alive only while the cache holds it; every
    // evicted key has been dropped, and so zeroized by KeyBytes' Drop.
    let alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
    assert_eq!(
        alive as u64, stats.cache.entries,
        "evicted keys are still alive"
    );
}

#[tokio::test]
async fn the_hit_path_is_synchronous() {
    let dir = tempfile::tempdir().unwrap();
    let km = Arc::new(
        KeyManager::new(
            Arc::new(InMemoryMekProvider::new()),
            store(dir.path()),
            config(SecurityMode::Development, 10),
        )
        .unwrap(),
    );
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("t").await.unwrap();
    let km2 = km.clone();
    // A plain OS thread, no runtime: the hit path needs no await.
    let hit = std::thread::spawn(move || km2.get_cached_table_key(&"t@v1".parse().unwrap()))
        .join()
        .unwrap();
    assert!(hit.is_some());
    assert!(km.get_cached_table_key(&"t@v9".parse().unwrap()).is_none());
}

#[tokio::test]
async fn keys_survive_a_restart_with_the_file_provider() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let p = common::secure_file_provider(&dir.path().join("mek"));
        KeyManager::new(
            Arc::new(p),
            store(dir.path()),
            config(SecurityMode::Production, 10),
        )
        .unwrap()
    };
    let km = open();
    km.ensure_default_mek().await.unwrap();
    km.create_table_key("users").await.unwrap();
    km.rotate_table(&"users".parse().unwrap()).await.unwrap();
    let v2 = *km
        .get_table_key("users", None)
        .await
        .unwrap()
        .bytes()
        .expose_secret();
    drop(km);
    let km = open();
    km.ensure_default_mek().await.unwrap();
    let again = km.get_table_key("users", None).await.unwrap();
    assert_eq!(again.id().version.get(), 2);
    assert_eq!(again.bytes().expose_secret(), &v2);
    assert_eq!(km.mek_info().await.unwrap().versions.len(), 1);
}

#[tokio::test]
async fn missing_keys_and_bad_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store(dir.path()),
        config(SecurityMode::Development, 0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cache_limit"), "{e}");
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store(&dir.path().join("x")),
        config(SecurityMode::Development, 10),
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    let e = km.get_table_key("nobody", None).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("tek create"), "{e}");
    let e = km
        .rotate_table(&"nobody".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
}
