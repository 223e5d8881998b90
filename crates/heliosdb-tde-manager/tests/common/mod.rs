//! Shared helpers of the manager's tests.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use heliosdb_tde_core::{SecureFileConfig, SecurityMode};
use heliosdb_tde_file::SecureFileMekProvider;

/// The secure file provider in `dir`, in production mode, with a fixed test passphrase (so a
/// second call over the same directory reopens the same MEKs).
pub fn secure_file_provider(dir: &std::path::Path) -> SecureFileMekProvider {
    let pass = secrecy::SecretString::from("a passphrase of sufficient length!".to_string());
    SecureFileMekProvider::open_with_passphrase(
        &SecureFileConfig::new(dir.to_path_buf()),
        SecurityMode::Production,
        pass,
        vec![],
    )
    .unwrap()
}
