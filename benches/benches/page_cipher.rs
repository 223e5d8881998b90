//! Page sealing through `TableCipher` against the raw backend call on the same key, per
//! backend and page size. The ratio is the cost of our format (header, nonce draw, counter).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use heliosdb_benches::bench_tek;
use heliosdb_tde_cipher::{AeadKey, Backend, TableCipher, UsageLimits};
use std::hint::black_box;

fn page_seal(c: &mut Criterion) {
    let tek = bench_tek();
    for backend in Backend::available() {
        let mut group = c.benchmark_group(format!("page_seal/{backend}"));
        for size in [4096usize, 8192, 16384, 1 << 20] {
            group.throughput(Throughput::Bytes(size as u64));
            let raw = AeadKey::new(backend, tek.bytes().expose_secret())
                .unwrap_or_else(|e| panic!("{e}"));
            let cipher = TableCipher::new(&tek, backend, UsageLimits::default())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut page = vec![0u8; size];
            let nonce = [7u8; 12];
            group.bench_function(BenchmarkId::new("raw", size), |b| {
                b.iter(|| raw.seal_detached(&nonce, black_box(b"tbl/page/1"), &mut page))
            });
            group.bench_function(BenchmarkId::new("table_cipher", size), |b| {
                b.iter(|| cipher.seal_in_place(black_box(b"tbl/page/1"), &mut page))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, page_seal);
criterion_main!(benches);
