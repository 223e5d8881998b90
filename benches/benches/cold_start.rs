//! Cold start: open the MEK provider, the key store and the key manager, check the default MEK
//! and unwrap 10,000 TEKs (`get_tek`, every one a miss), through the file provider and through
//! SoftHSM2 (when `cargo xtask bench` provisioned a token), against 10,000 raw unwraps of the
//! same kind; and the file provider's open alone (its Argon2id derivation).
//!
//! SoftHSM2's `C_Initialize` is process-wide and never finalised, so after the first sample
//! every start is warm at the module level: the library is loaded and initialised.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use heliosdb_benches::file_provider;
use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyStore, MasterKey, MekId, MekProvider, ProviderKind,
    SecurityMode, TableKey, TekId, WrapContext,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 10_000;

fn ids() -> Vec<TekId> {
    (0..N)
        .map(|i| format!("t{i:07}@v1").parse().unwrap())
        .collect()
}

/// A manager over `provider` and the store in `dir/keys`, whose default MEK is `mek`, with a
/// cache that holds all `N` keys.
fn open_manager(dir: &Path, provider: Arc<dyn MekProvider>, mek: &MekId) -> KeyManager {
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(&dir.join("keys")).unwrap());
    let config =
        KeyManagerConfig::new(mek.clone(), SecurityMode::Development).with_cache_limit(2 * N);
    KeyManager::new(provider, store, config).unwrap()
}

/// Creates the store in `dir` with `N` TEKs under `provider`'s MEK `mek`.
fn build(rt: &tokio::runtime::Runtime, dir: &Path, provider: Arc<dyn MekProvider>, mek: &MekId) {
    let km = open_manager(dir, provider, mek);
    rt.block_on(async {
        km.ensure_default_mek().await.unwrap();
        let names: Vec<String> = (0..N).map(|i| format!("t{i:07}")).collect();
        for chunk in names.chunks(5000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            km.create_table_keys(&refs).await.unwrap();
        }
    });
}

/// One cold start: `open` the provider, then the store and the manager, check the default MEK
/// and unwrap every TEK. The manager is dropped (closing the store) outside the timer.
fn start(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    mek: &MekId,
    ids: &[TekId],
    open: &dyn Fn() -> Arc<dyn MekProvider>,
) -> Duration {
    let t = Instant::now();
    let km = open_manager(dir, open(), mek);
    rt.block_on(async {
        km.check_default_mek().await.unwrap();
        for id in ids {
            std::hint::black_box(km.get_tek(id).await.unwrap());
        }
    });
    let took = t.elapsed();
    drop(km);
    took
}

fn cold_start(c: &mut Criterion) {
    // The setup (two stores of 10,000 TEKs) is skipped when the filter selects none of these.
    let args = heliosdb_benches::extra::Args::from_env();
    if !args.selects(&[
        "cold_start/raw_file_10k",
        "cold_start/file_provider_open",
        "cold_start/ours_file_10k",
        "cold_start/raw_softhsm_10k",
        "cold_start/ours_softhsm_10k",
    ]) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("cold_start");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_millis(1));
    let ids = ids();

    // Raw: 10,000 local unwraps under an equal master key.
    let master = MasterKey::new(
        "raw@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    );
    let wrapped: Vec<_> = ids
        .iter()
        .map(|id| {
            let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
            let ctx = WrapContext::table_key(id);
            let w = wrap::wrap_tek(
                Backend::default(),
                &master,
                ProviderKind::SecureFile,
                &tek,
                &ctx,
            )
            .unwrap();
            (ctx, w)
        })
        .collect();
    g.bench_function("raw_file_10k", |b| {
        b.iter(|| {
            for (ctx, w) in &wrapped {
                std::hint::black_box(
                    wrap::unwrap_tek(Backend::default(), &master, w, ctx).unwrap(),
                );
            }
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let mek = MekId::new("bench_mek").unwrap();
    build(&rt, dir.path(), file_provider(dir.path()), &mek);
    g.bench_function("file_provider_open", |b| {
        b.iter(|| file_provider(dir.path()))
    });
    g.bench_function("ours_file_10k", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| start(&rt, dir.path(), &mek, &ids, &|| file_provider(dir.path())))
                .sum()
        })
    });
    softhsm(&rt, &mut g, &ids);
    g.finish();
}

/// The PKCS#11 provider on SoftHSM2, against 10,000 raw `C_Decrypt` calls on a token key made
/// with the MEK template.
fn softhsm(
    rt: &tokio::runtime::Runtime,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ids: &[TekId],
) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::aead::GcmParams;
    use heliosdb_tde_conformance::softhsm;
    if std::env::var_os(softhsm::CONF_ENV).is_none() {
        eprintln!(
            "SoftHSM2 not provisioned: skipping the PKCS#11 cold start (run `cargo xtask bench`)"
        );
        return;
    }
    let pin = softhsm::pin();
    let settings = heliosdb_benches::softhsm_settings(
        softhsm::module_path(),
        softhsm::token_label(),
        &pin,
        Duration::from_secs(softhsm::TIMEOUT_SECS),
    );
    let open = || -> Arc<dyn MekProvider> {
        Arc::new(
            rt.block_on(heliosdb_tde_pkcs11::Pkcs11MekProvider::open(
                settings.clone(),
            ))
            .unwrap(),
        )
    };

    // The first provider initialises the module for the process (C_Initialize), as in a
    // database; the raw module handle below then shares it.
    let first = open();

    // Raw: 10,000 decrypts of 32-byte wraps on one session, with a token key like the MEK.
    let (_module, session) = heliosdb_benches::raw_softhsm_session(&settings, &pin);
    let label = format!("bench_cold_raw_{}", std::process::id());
    let key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &heliosdb_tde_pkcs11::mek_template(label.as_bytes()),
        )
        .unwrap();
    let aad = [9u8; 64];
    let cts: Vec<Vec<u8>> = (0..ids.len())
        .map(|_| {
            let mut iv = [5u8; 12];
            let m = Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap());
            session.encrypt(&m, key, &[7u8; 32]).unwrap()
        })
        .collect();
    g.bench_function("raw_softhsm_10k", |b| {
        b.iter(|| {
            for ct in &cts {
                let mut iv = [5u8; 12];
                let m = Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap());
                std::hint::black_box(session.decrypt(&m, key, ct).unwrap());
            }
        })
    });
    if let Err(e) = session.destroy_object(key) {
        eprintln!("could not destroy the benchmark's token key {label}: {e}");
    }

    // Ours: a store of 10,000 TEKs under a default MEK private to this process.
    let dir = tempfile::tempdir().unwrap();
    let mek = MekId::new(format!("bench_cold_{}", std::process::id())).unwrap();
    build(rt, dir.path(), first, &mek);
    g.bench_function("ours_softhsm_10k", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| start(rt, dir.path(), &mek, ids, &open))
                .sum()
        })
    });
}

criterion_group!(benches, cold_start);
criterion_main!(benches);
