//! Checks that drive a provider through [`KeyManager`] over a redb key store (feature
//! `manager`): MEK rotation with dual encryption, single-flight unwraps on a cold cache, and,
//! for remote providers behind a [`FaultProxy`], outages.
//!
//! They live apart from [`crate::provider`] so that the provider suite stays free of the
//! manager: a provider crate enables this feature in its dev-dependencies only.
//!
//! ```toml
//! [dev-dependencies]
//! heliosdb-tde-conformance = { workspace = true, features = ["manager"] }
//! ```
//!
//! The proxy-based checks expect `p` to reach its server through `proxy` (configured with
//! [`FaultProxy::url`] or [`FaultProxy::addr`] as its address), with short timeouts and few
//! retries, so that a failing call returns in seconds.

use crate::fault::FaultProxy;
use crate::instrumented::{Instrumented, Method};
use crate::provider::fresh_mek_id;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, KeyStore, MekId, MekProvider, Result, SecurityMode, TableKey,
    TdeError, TekId, WrapContext,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long one call may take during an outage before the check calls it hung. Generous: it
/// catches a provider that waits forever, it does not measure the configured timeout.
pub const OUTAGE_DEADLINE: Duration = Duration::from_secs(120);

/// A key manager over `p` and a fresh redb store in a temporary directory (kept alive by the
/// returned guard), with `mek` as its default MEK.
fn manager(
    p: Arc<dyn MekProvider>,
    mek: &MekId,
    rotation: RotationConfig,
) -> (tempfile::TempDir, KeyManager) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn KeyStore> =
        Arc::new(RedbKeyStore::open_dir(dir.path()).expect("a new redb key store"));
    let config =
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development).with_rotation(rotation);
    let km = KeyManager::new(p, store, config).expect("key manager");
    (dir, km)
}

/// A second, cold manager over the same provider and store.
fn cold(p: Arc<dyn MekProvider>, km: &KeyManager, mek: &MekId) -> KeyManager {
    KeyManager::new(
        p,
        km.store().clone(),
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development),
    )
    .expect("key manager")
}

async fn key_bytes(km: &KeyManager, table: &str) -> [u8; 32] {
    *km.get_table_key(table, None)
        .await
        .unwrap_or_else(|e| panic!("get_table_key({table}) failed: {e}"))
        .bytes()
        .expose_secret()
}

/// MEK rotation with dual encryption through the key manager: TEKs created under the first
/// version, a rotation re-wraps them all with the provider, both versions unwrap during the dual
/// period, and after verification the old version can be deactivated.
pub async fn rotation_with_manager(p: Arc<dyn MekProvider>) {
    let mek = fresh_mek_id("conf_rot");
    let rotation = RotationConfig::default().with_grace_period(Duration::ZERO);
    let (_dir, km) = manager(p.clone(), &mek, rotation);
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..40).map(|i| format!("rot_t{i}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    let mut before = Vec::new();
    for t in &tables {
        before.push(key_bytes(&km, t).await);
    }
    let r = km
        .rotate_mek_with_dual_encryption(mek.as_str())
        .await
        .unwrap();
    assert_eq!(r.keys_reencrypted, 40);
    assert!(r.failed_keys.is_empty(), "{:?}", r.failed_keys);
    assert_eq!(r.new_mek_id.version.get(), 2);
    // A cold manager over the same parts unwraps every TEK under the new version.
    let c = cold(p.clone(), &km, &mek);
    for (t, b) in tables.iter().zip(&before) {
        assert_eq!(&key_bytes(&c, t).await, b, "{t}");
    }
    assert_eq!(
        km.verify_mek_rotation(mek.as_str()).await.unwrap().stranded,
        0
    );
    km.deactivate_old_mek(mek.as_str()).await.unwrap();
    let info = p.mek_info(&mek).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);
    let c = cold(p, &km, &mek);
    for (t, b) in tables.iter().zip(&before) {
        assert_eq!(&key_bytes(&c, t).await, b, "{t}");
    }
}

/// 500 concurrent `get_table_key` calls over 20 cold TEKs cost exactly 20 unwraps (single
/// flight), counted by an [`Instrumented`] decorator around `p`; every caller gets the right key.
pub async fn single_flight_cold_cache(p: Arc<dyn MekProvider>) {
    let counted = Arc::new(Instrumented::new(p));
    let mek = fresh_mek_id("conf_sf");
    let (_dir, km) = manager(counted.clone(), &mek, RotationConfig::default());
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..20).map(|i| format!("sf_t{i}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    let mut expected = Vec::new();
    for t in &tables {
        expected.push(key_bytes(&km, t).await);
    }
    let c = Arc::new(cold(counted.clone(), &km, &mek));
    // Unwraps overlap, so that concurrent callers of one key really meet.
    counted.delay(Method::UnwrapTek, Duration::from_millis(20));
    counted.reset_counts();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let c = c.clone();
        let table = tables[i % tables.len()].clone();
        let want = expected[i % tables.len()];
        tasks.spawn(async move {
            assert_eq!(key_bytes(&c, &table).await, want, "{table}");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap_or_else(|e| panic!("a get_table_key task failed: {e}"));
    }
    counted.clear(Method::UnwrapTek);
    assert_eq!(
        counted.calls(Method::UnwrapTek),
        20,
        "500 concurrent reads of 20 cold TEKs must cost exactly one unwrap each"
    );
}

/// Awaits `f`, failing the check if it takes longer than [`OUTAGE_DEADLINE`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(OUTAGE_DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {OUTAGE_DEADLINE:?}"))
}

fn assert_outage<T>(what: &str, r: Result<T>) {
    match r {
        Err(TdeError::ProviderUnavailable {
            retryable: true, ..
        }) => {}
        Err(other) => panic!(
            "{what} during an outage: expected ProviderUnavailable {{ retryable: true }}, got: \
             {other:?}"
        ),
        Ok(_) => panic!("{what} succeeded while the provider was cut off"),
    }
}

/// While `proxy` is cut, wrap and unwrap fail with `ProviderUnavailable { retryable: true }`
/// (each within [`OUTAGE_DEADLINE`]), and so does a TEK that is not cached; a [`KeyManager`]
/// keeps serving the TEKs it has cached; after [`FaultProxy::restore`] everything works again.
pub async fn outage_and_recovery(p: Arc<dyn MekProvider>, proxy: &FaultProxy) {
    let mek = fresh_mek_id("conf_out");
    let (_dir, km) = manager(p.clone(), &mek, RotationConfig::default());
    let mek_ref = km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..6).map(|i| format!("out_t{i}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    km.create_table_keys(&refs).await.unwrap();
    // A manager whose cache holds the first five TEKs, not the sixth.
    let warm = cold(p.clone(), &km, &mek);
    let mut cached = Vec::new();
    for t in &tables[..5] {
        cached.push(key_bytes(&warm, t).await);
    }
    let id: TekId = "out_direct@v1".parse().unwrap();
    let ctx = WrapContext::table_key(&id);
    let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let wrapped = p.wrap_tek(&mek_ref, &tek, &ctx).await.unwrap();

    proxy.cut();
    assert_outage(
        "wrap_tek",
        within("wrap_tek", p.wrap_tek(&mek_ref, &tek, &ctx)).await,
    );
    assert_outage(
        "unwrap_tek",
        within("unwrap_tek", p.unwrap_tek(&wrapped, &ctx)).await,
    );
    for (t, b) in tables.iter().zip(&cached) {
        let k = within("a cached get_table_key", warm.get_table_key(t, None))
            .await
            .unwrap_or_else(|e| panic!("a cached TEK ({t}) failed during an outage: {e}"));
        assert_eq!(k.bytes().expose_secret(), b, "{t}");
    }
    assert_outage(
        "get_table_key of a TEK not cached",
        within("get_table_key", warm.get_table_key(&tables[5], None)).await,
    );

    proxy.restore();
    let back = within("unwrap_tek after restore", p.unwrap_tek(&wrapped, &ctx))
        .await
        .unwrap_or_else(|e| panic!("unwrap_tek after restore failed: {e}"));
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    within("wrap_tek after restore", p.wrap_tek(&mek_ref, &tek, &ctx))
        .await
        .unwrap_or_else(|e| panic!("wrap_tek after restore failed: {e}"));
    key_bytes(&warm, &tables[5]).await;
}

/// The TEKs [`rotation_survives_outage`] rotates.
pub const OUTAGE_ROTATION_TEKS: usize = 200;

/// A rotation of [`OUTAGE_ROTATION_TEKS`] TEKs through [`KeyManager`] is cut mid-pass (the
/// proxy lets 100 requests through after the rotation starts, so the provider must make about
/// one request per re-wrap), returns the paused error (`ProviderUnavailable`, retryable,
/// "paused"), then finishes when run again after [`FaultProxy::restore`]: every TEK unwraps to
/// its bytes under the new version, none is lost, and none is re-wrapped twice (the journal
/// counts exactly 200).
pub async fn rotation_survives_outage(p: Arc<dyn MekProvider>, proxy: &FaultProxy) {
    let mek = fresh_mek_id("conf_rso");
    let rotation = RotationConfig::default()
        .with_batch_size(25)
        .with_concurrency(4)
        .with_max_attempts(3)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .with_abort_after_consecutive_failures(8)
        .with_grace_period(Duration::ZERO);
    let (_dir, km) = manager(p.clone(), &mek, rotation);
    km.ensure_default_mek().await.unwrap();
    let tables: Vec<String> = (0..OUTAGE_ROTATION_TEKS)
        .map(|i| format!("rso_t{i:03}"))
        .collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    for chunk in refs.chunks(50) {
        km.create_table_keys(chunk).await.unwrap();
    }
    let mut before = Vec::new();
    for t in &tables {
        before.push(key_bytes(&km, t).await);
    }

    proxy.cut_after_requests(100);
    let e = within(
        "the interrupted rotation",
        km.rotate_mek_with_dual_encryption(mek.as_str()),
    )
    .await
    .expect_err("a rotation cut off mid-pass must not succeed");
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "expected the paused error, got: {e:?}"
    );
    assert!(e.to_string().contains("paused"), "{e}");
    assert!(proxy.is_cut(), "the rotation made fewer than 100 requests");

    proxy.restore();
    let r = within(
        "the resumed rotation",
        km.rotate_mek_with_dual_encryption(mek.as_str()),
    )
    .await
    .unwrap_or_else(|e| panic!("the resumed rotation failed: {e}"));
    assert!(r.failed_keys.is_empty(), "{:?}", r.failed_keys);
    assert_eq!(
        r.keys_reencrypted, OUTAGE_ROTATION_TEKS as u64,
        "each TEK is re-wrapped exactly once across the two passes"
    );
    let new = r.new_mek_id.clone();
    let records = km
        .store()
        .scan_teks(None, usize::MAX)
        .await
        .expect("scan the store");
    assert_eq!(
        records.len(),
        OUTAGE_ROTATION_TEKS,
        "TEKs were lost or invented"
    );
    for rec in &records {
        assert_eq!(
            rec.wrapped.mek, new,
            "{} is not under the new version",
            rec.id
        );
    }
    let c = cold(p, &km, &mek);
    for (t, b) in tables.iter().zip(&before) {
        assert_eq!(&key_bytes(&c, t).await, b, "{t}");
    }
    assert_eq!(
        km.verify_mek_rotation(mek.as_str()).await.unwrap().stranded,
        0
    );
}
