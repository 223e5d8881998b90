//! MEK rotation of 1,000,000 TEKs with the file provider and the durable redb store (one pass),
//! its peak memory, and the baseline: unwrap + wrap of 1,000,000 keys in memory, in chunks of
//! 10,000 (so the baseline never holds them all).
//!
//! `harness = false`: criterion's ten-sample minimum would take many minutes. The results go to
//! `target/bench-extra/rotation_1m.json`: `mek_rotation_1m/{ours_file_provider_durable,
//! baseline_unwrap_wrap_in_memory}` in ns, and `mek_rotation_1m/{peak_rss,rss_before}` in
//! bytes. The peak is this process's `VmHWM` after the pass, reset to the resident set just
//! before it through `/proc/self/clear_refs`; `rss_before` is `VmRSS` at that moment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_benches::extra::{Args, Extra, proc_status_bytes, reset_peak_rss, write};
use heliosdb_benches::{file_provider, manager};
use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, MasterKey, ProviderKind, TableKey, TekId, WrapContext,
};
use std::time::{Duration, Instant};

const N: usize = 1_000_000;
const CHUNK: usize = 10_000;
const IDS: [&str; 4] = [
    "mek_rotation_1m/ours_file_provider_durable",
    "mek_rotation_1m/baseline_unwrap_wrap_in_memory",
    "mek_rotation_1m/peak_rss",
    "mek_rotation_1m/rss_before",
];

/// Unwrap + wrap of `N` keys under two in-memory master keys, timed chunk by chunk (the wraps
/// under the old key are made outside the timer).
fn baseline() -> Duration {
    let master = |v: &str| {
        MasterKey::new(
            v.parse().unwrap(),
            EncryptionAlgorithm::Aes256Gcm,
            KeyBytes::generate().unwrap(),
        )
    };
    let (old, new) = (master("b@v1"), master("b@v2"));
    let mut total = Duration::ZERO;
    for chunk in 0..N / CHUNK {
        let wrapped: Vec<_> = (0..CHUNK)
            .map(|i| {
                let id: TekId = format!("t{:07}@v1", chunk * CHUNK + i).parse().unwrap();
                let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
                let ctx = WrapContext::table_key(&id);
                let w =
                    wrap::wrap_tek(Backend::default(), &old, ProviderKind::InMemory, &tek, &ctx)
                        .unwrap();
                (ctx, w)
            })
            .collect();
        let start = Instant::now();
        for (ctx, w) in &wrapped {
            let k = wrap::unwrap_tek(Backend::default(), &old, w, ctx).unwrap();
            std::hint::black_box(
                wrap::wrap_tek(Backend::default(), &new, ProviderKind::InMemory, &k, ctx).unwrap(),
            );
        }
        total += start.elapsed();
    }
    total
}

fn main() {
    let args = Args::from_env();
    if !args.bench {
        eprintln!("rotation_1m: not run as a benchmark (cargo bench passes --bench); skipped");
        return;
    }
    if !args.selects(&IDS) {
        return;
    }
    let base = baseline();
    eprintln!("rotation_1m: baseline {base:?}; building the store of {N} TEKs");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let built = Instant::now();
    let km = manager(&rt, dir.path(), file_provider(dir.path()), 1000, N, true);
    eprintln!(
        "rotation_1m: store built in {:?}; rotating",
        built.elapsed()
    );

    reset_peak_rss();
    let rss_before = proc_status_bytes("VmRSS");
    let start = Instant::now();
    let r = rt
        .block_on(km.rotate_mek_with_dual_encryption("bench_mek"))
        .unwrap();
    let took = start.elapsed();
    let peak = proc_status_bytes("VmHWM");
    assert_eq!(r.keys_reencrypted as usize, N);
    write(
        "rotation_1m",
        &[
            Extra::ns(IDS[0], took.as_nanos() as f64),
            Extra::ns(IDS[1], base.as_nanos() as f64),
            Extra::bytes(IDS[2], peak),
            Extra::bytes(IDS[3], rss_before),
        ],
    );
}
