//! Shared fixtures for the criterion benchmarks in `benches/benches/`.
//!
//! Every benchmark measures its baseline in the same run (the machines are noisy), so results
//! are read as ratios: see `docs/benchmarks.md`.

#![allow(clippy::panic)]

use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};

/// A table key with fixed bytes, for benchmarks only.
pub fn bench_tek() -> TableKey {
    TableKey::new(
        "bench.table@v1".parse().unwrap_or_else(|e| panic!("{e}")),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&[0x42; 32]).unwrap_or_else(|e| panic!("{e}")),
    )
}
