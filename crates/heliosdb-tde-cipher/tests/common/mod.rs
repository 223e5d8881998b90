//! Helpers shared by the cipher tests.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_cipher::Backend;

/// Every backend; the tests insist that all three are compiled in (the crate's dev-dependency
/// on itself enables them), so a missing backend fails instead of silently testing less.
pub fn all_backends() -> Vec<Backend> {
    let b = Backend::available();
    assert_eq!(
        b,
        vec![Backend::AwsLc, Backend::Ring, Backend::RustCrypto],
        "the cipher tests must run on every backend"
    );
    b
}

pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).expect("valid hex in test vector")
}
