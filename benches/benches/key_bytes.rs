//! One `KeyBytes` allocated and freed in the locked key arena (a slot taken from the arena's
//! free list under its mutex, filled, then zeroed and returned) against a `Box<[u8; 32]>`
//! allocated, filled, zeroized and freed by the global allocator. Both sides copy the same
//! constant 32 bytes: `KeyBytes::generate` would be dominated by `getrandom`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use heliosdb_tde_core::{KEY_LEN, KeyBytes, memory};
use secrecy::zeroize::Zeroize;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

const SRC: [u8; KEY_LEN] = [7u8; KEY_LEN];

fn alloc_free(c: &mut Criterion) {
    // Map (and lock) the first page before measuring, and say what is in force: the row is
    // named for a locked arena.
    let stats = memory::reserve(1);
    if !stats.locking.is_active() {
        eprintln!(
            "key_bytes: the arena's pages are not locked ({}); the row measures an unlocked arena",
            stats.locking.describe()
        );
    }
    let mut g = c.benchmark_group("key_bytes");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("baseline_box_alloc_free", |b| {
        b.iter(|| {
            let mut key = Box::new(*black_box(&SRC));
            black_box(&mut key);
            key.zeroize();
            drop(key);
        })
    });
    g.bench_function("ours_locked_arena_alloc_free", |b| {
        b.iter(|| {
            let key = KeyBytes::try_fill_with(|bytes| {
                bytes.copy_from_slice(black_box(&SRC));
                Ok::<(), Infallible>(())
            })
            .unwrap();
            black_box(&key);
            drop(key);
        })
    });
    g.finish();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
