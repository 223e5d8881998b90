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

/// A child process holds a copy of every open descriptor of this process from its fork until
/// its exec, and with it the `flock` of any provider open at that moment: for that instant the
/// MEK directory stays locked after the provider is dropped. Tests that reopen a directory
/// right after dropping a provider must therefore not overlap a test that spawns a process:
/// spawning tests hold [`exclusive`], every other test [`shared`].
static FORKS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held for its whole run by a test that opens providers and spawns no process.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(|e| e.into_inner())
}

/// Held for its whole run by a test that spawns processes.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    FORKS.write().unwrap_or_else(|e| e.into_inner())
}
