//! Helpers shared by the facade tests against remote providers.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod backup;

use heliosdb_security::tde::{SecureFileConfig, TdeConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The secure-file configuration under `root` (key store `keys`, MEKs `mek`, the passphrase in
/// a 0600 file) in security mode `mode`.
pub fn file_config(root: &Path, mode: &str) -> TdeConfig {
    let pass = root.join("secrets").join("mek-passphrase.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, "a long and sufficiently random passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut sf = SecureFileConfig::new(root.join("mek"));
    sf.passphrase_file = Some(pass);
    TdeConfig {
        key_storage_path: root.join("keys"),
        secure_file_config: Some(sf),
        security_mode: Some(mode.into()),
        cache_limit: 100,
        ..Default::default()
    }
}

/// [`file_config`] in development mode with the audit log at `root/audit/tde-audit.log`.
pub fn audited_config(root: &Path) -> TdeConfig {
    TdeConfig {
        audit_log_path: Some(root.join("audit").join("tde-audit.log")),
        ..file_config(root, "development")
    }
}

/// Every record of the audit log at `log` (its whole file set), as JSON.
pub fn audit_records(log: &Path) -> Vec<serde_json::Value> {
    heliosdb_security::tde::audit_tail(log, usize::MAX, &Default::default())
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}
