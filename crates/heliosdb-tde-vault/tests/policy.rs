//! The documented policy is sufficient (every other test runs with it); a policy missing a
//! path fails at `open()` with an error listing that path.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::SecurityMode;
use heliosdb_tde_vault::VaultMekProvider;

const POLICY: &str = include_str!("../../../docs/providers/vault-policy.hcl");

/// The documented policy without the block of `path`.
fn without(path: &str) -> String {
    let start = POLICY.find(&format!("path \"{path}\"")).unwrap();
    let end = start + POLICY[start..].find('}').unwrap() + 1;
    format!("{}{}", &POLICY[..start], &POLICY[end..])
}

async fn open_with_policy_lacking(s: &common::Server, path: &str) -> String {
    let name = format!("heliosdb-{}", common::fresh("nopolicy"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.hcl");
    std::fs::write(&file, without(path)).unwrap();
    s.bao(&["policy", "write", &name, file.to_str().unwrap()])
        .unwrap();
    let token = s.token(&[&name], &["-no-default-policy"]);
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = s.config();
    c.token_file = Some(token_path.to_string_lossy().into_owned());
    match VaultMekProvider::open(&c, SecurityMode::Development).await {
        Ok(_) => panic!("open succeeded without {path}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_policy_without_rewrap_fails_at_open_naming_the_path() {
    let Some(s) = common::server() else { return };
    let e = open_with_policy_lacking(&s, "transit/rewrap/+").await;
    assert!(e.contains("transit/rewrap/"), "{e}");
    assert!(
        !e.contains("transit/decrypt/"),
        "only the missing path is listed: {e}"
    );
}

#[tokio::test]
async fn a_policy_without_decrypt_fails_at_open_naming_the_path() {
    let Some(s) = common::server() else { return };
    let e = open_with_policy_lacking(&s, "transit/decrypt/+").await;
    assert!(e.contains("transit/decrypt/"), "{e}");
}

#[tokio::test]
async fn the_documented_policy_alone_is_enough() {
    let Some(s) = common::server() else { return };
    let token = s.token(&["heliosdb"], &["-no-default-policy"]);
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = s.config();
    c.token_file = Some(token_path.to_string_lossy().into_owned());
    let p = VaultMekProvider::open(&c, SecurityMode::Development)
        .await
        .unwrap();
    heliosdb_tde_conformance::provider::versions(&p).await;
}
