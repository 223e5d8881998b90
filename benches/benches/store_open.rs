//! Opening the key store with 1,000,000 TEKs (no key is unwrapped at open) against opening an
//! empty store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyId, KeyMetadata, KeyStore, ProviderKind, StoreBatch, TekId, TekRecord,
    WrappedTek,
};
use heliosdb_tde_keystore::RedbKeyStore;
use std::path::{Path, PathBuf};
use std::time::Duration;

const N: usize = 1_000_000;

/// A store with N records, built once and kept under target/ for later runs.
fn big_store() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data/store-1m");
    let done = dir.join("complete");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = RedbKeyStore::open_dir(&dir).unwrap();
    rt.block_on(async {
        let mek: heliosdb_tde_core::MekRef = "bench_mek@v1".parse().unwrap();
        for chunk in 0..(N / 10_000) {
            let mut batch = StoreBatch::new();
            for i in 0..10_000 {
                let id: TekId = format!("t{:07}@v1", chunk * 10_000 + i).parse().unwrap();
                let meta = KeyMetadata::new_active(
                    KeyId::Table(id.clone()),
                    EncryptionAlgorithm::Aes256Gcm,
                    Some(mek.clone()),
                );
                let wrapped = WrappedTek::new(
                    EncryptionAlgorithm::Aes256Gcm,
                    ProviderKind::SecureFile,
                    mek.clone(),
                    vec![0xAB; 60],
                );
                batch = batch.insert(TekRecord::new(id, meta, wrapped).unwrap());
            }
            store.apply(batch).await.unwrap();
        }
        assert_eq!(store.count_teks().await.unwrap(), N as u64);
    });
    drop(store);
    std::fs::write(&done, b"").unwrap();
    dir
}

fn open(c: &mut Criterion) {
    let big = big_store();
    let empty_dir = tempfile::tempdir().unwrap();
    drop(RedbKeyStore::open_dir(empty_dir.path()).unwrap());
    let mut g = c.benchmark_group("store_open");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(200));
    g.bench_function("baseline_empty", |b| {
        b.iter(|| RedbKeyStore::open_dir(empty_dir.path()).unwrap())
    });
    g.bench_function("ours_1m_teks", |b| {
        b.iter(|| RedbKeyStore::open_dir(&big).unwrap())
    });
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
