//! MEK rotation of 100,000 TEKs with the file provider and the durable redb store, against
//! unwrap + wrap of 100,000 keys in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use heliosdb_benches::{file_provider, manager};
use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, MasterKey, ProviderKind, TableKey, TekId, WrapContext,
};
use std::time::{Duration, Instant};

const N: usize = 100_000;

fn rotation(c: &mut Criterion) {
    let mut g = c.benchmark_group("mek_rotation_100k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_millis(1));

    // Baseline: unwrap + wrap of 100,000 keys under two in-memory master keys.
    let old = MasterKey::new(
        "b@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    );
    let new = MasterKey::new(
        "b@v2".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    );
    let wrapped: Vec<_> = (0..N)
        .map(|i| {
            let id: TekId = format!("t{i:07}@v1").parse().unwrap();
            let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
            let ctx = WrapContext::table_key(&id);
            (
                ctx.clone(),
                wrap::wrap_tek(Backend::default(), &old, ProviderKind::InMemory, &tek, &ctx)
                    .unwrap(),
            )
        })
        .collect();
    g.bench_function("baseline_unwrap_wrap_in_memory", |b| {
        b.iter(|| {
            for (ctx, w) in &wrapped {
                let k = wrap::unwrap_tek(Backend::default(), &old, w, ctx).unwrap();
                std::hint::black_box(
                    wrap::wrap_tek(Backend::default(), &new, ProviderKind::InMemory, &k, ctx)
                        .unwrap(),
                );
            }
        })
    });

    // The same with the self-check every local provider now runs on a new wrap (one more
    // unwrap and a compare): its cost, against the baseline above in the same run.
    g.bench_function("wrap_self_check_unwrap_wrap_check_in_memory", |b| {
        b.iter(|| {
            for (ctx, w) in &wrapped {
                let k = wrap::unwrap_tek(Backend::default(), &old, w, ctx).unwrap();
                let n = wrap::wrap_tek(Backend::default(), &new, ProviderKind::InMemory, &k, ctx)
                    .unwrap();
                assert!(wrap::wrap_gives_back(Backend::default(), &new, &n, &k, ctx));
                std::hint::black_box(n);
            }
        })
    });

    // Ours: a full rotation pass (prepare + re-wrap, durable commits). Between samples the old
    // version is deactivated (grace period zero), which is not timed.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let km = manager(&rt, dir.path(), file_provider(dir.path()), 1000, N, true);
    g.bench_function("ours_file_provider_durable", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = rt
                    .block_on(km.rotate_mek_with_dual_encryption("bench_mek"))
                    .unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_reencrypted as usize, N);
                rt.block_on(km.deactivate_old_mek("bench_mek")).unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, rotation);
criterion_main!(benches);
