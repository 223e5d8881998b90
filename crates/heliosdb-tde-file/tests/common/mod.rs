//! Helpers for the secure file provider tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use heliosdb_tde_core::{KdfParams, SecureFileConfig, SecurityMode};
use heliosdb_tde_file::SecureFileMekProvider;
use secrecy::SecretString;
use std::path::Path;

pub const PASS_A: &str = "correct horse battery staple 2026 alpha";
pub const PASS_B: &str = "a different passphrase, also long enough";

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// The Argon2id parameters most tests write files with: OWASP's minimum (19 MiB, 2 passes),
/// which production mode accepts when configured, at a fifth of the default's cost. Tests of
/// the default parameters (`DEFAULT_KDF`) use `SecureFileConfig::new` directly.
pub const TEST_KDF: KdfParams = KdfParams::OWASP_MINIMUM;

pub fn config(dir: &Path) -> SecureFileConfig {
    let mut c = SecureFileConfig::new(dir);
    c.kdf = Some(TEST_KDF);
    c
}

pub fn open(
    dir: &Path,
    pass: &str,
    mode: SecurityMode,
) -> heliosdb_tde_core::Result<SecureFileMekProvider> {
    SecureFileMekProvider::open_with_passphrase(&config(dir), mode, secret(pass), Vec::new())
}

/// Every file name and its bytes, sorted.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}
