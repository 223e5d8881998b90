//! The facade over a real OpenBao server (Vault Transit API), provisioned by `cargo xtask test`:
//! configuration from TOML, start-up while the server is unreachable, the lost-MEK guard, and a
//! key backup of references only, verified and restored into another key store directory.

#![cfg(feature = "vault")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::backup::{Expected, backup_verify_and_restore, three_table_keys};
use heliosdb_security::tde::{ProviderKind, TdeConfig, TdeError, TdeSubsystem};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::openbao::bao;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A name no other test (or earlier run against the same server) uses.
fn unique(tag: &str) -> String {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{tag}_{}_{n:x}", std::process::id())
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join("vault-token");
    std::fs::write(&p, token).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A development configuration (the dev server speaks plain HTTP) for `address`, as TOML.
fn config(dir: &Path, address: &str, token: &str, mek: &str, extra: &str) -> TdeConfig {
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "{mek}"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "vault"
            address = "{address}"
            token_file = "{token}"
            state_path = "heliosdb/{mek}/meks"
            {extra}
        "#,
        keys = dir.join("keys").display(),
        token = token_file(dir, token).display(),
    );
    TdeConfig::from_toml_str(&text).unwrap()
}

fn upstream(addr: &str) -> SocketAddr {
    addr.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_vault_configuration_from_toml_protects_pages() {
    let Some(bao) = bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("facade_mek");
    let tde = TdeSubsystem::new(config(dir.path(), &bao.addr, &bao.token, &mek, ""))
        .await
        .unwrap();
    let km = tde.key_manager();
    assert_eq!(km.mek_provider.kind(), ProviderKind::Vault);
    assert!(
        km.mek_provider.description().contains(&bao.addr),
        "{}",
        km.mek_provider.description()
    );
    km.create_table_key("public.users").await.unwrap();
    let sealer = tde.page_sealer("public.users").await.unwrap();
    let sealed = sealer.seal(b"page 1", b"row data").await.unwrap();
    let version = heliosdb_security::tde::sealed_tek_version(&sealed).unwrap();
    let opener = tde.page_opener("public.users", version).await.unwrap();
    assert_eq!(opener.open(b"page 1", &sealed).unwrap(), b"row data");
    let health = km.mek_provider.health().await.unwrap();
    assert!(health.healthy, "{}", health.detail);
}

#[tokio::test]
async fn a_first_start_with_the_server_down_creates_nothing() {
    let Some(bao) = bao() else { return };
    let proxy = FaultProxy::start_http(upstream(&bao.addr)).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("down_mek");
    let e = TdeSubsystem::new(config(dir.path(), &proxy.url(), &bao.token, &mek, ""))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&proxy.url()), "{e}");
    assert!(
        !dir.path().join("keys").exists(),
        "a start that could not reach the provider created the key store directory"
    );
}

#[tokio::test]
async fn a_start_waits_for_the_server_to_come_back() {
    let Some(bao) = bao() else { return };
    let proxy = FaultProxy::start_http(upstream(&bao.addr)).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("wait_mek");
    let mut config = config(dir.path(), &proxy.url(), &bao.token, &mek, "");
    // Far longer than the test needs: the start succeeds as soon as the proxy is restored.
    config.provider_startup_wait_secs = 300;
    let restore = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert!(proxy.is_cut(), "the start did not wait for the cut server");
        proxy.restore();
    };
    let (tde, ()) = tokio::join!(TdeSubsystem::new(config), restore);
    let tde = tde.unwrap();
    tde.key_manager().create_table_key("t").await.unwrap();
}

#[tokio::test]
async fn a_wrong_key_prefix_refuses_to_start_and_creates_no_key() {
    let Some(bao) = bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("guard_mek");
    {
        let tde = TdeSubsystem::new(config(dir.path(), &bao.addr, &bao.token, &mek, ""))
            .await
            .unwrap();
        tde.key_manager().create_table_key("a").await.unwrap();
        tde.key_manager().create_table_key("b").await.unwrap();
    }
    let wrong = config(
        dir.path(),
        &bao.addr,
        &bao.token,
        &mek,
        r#"key_prefix = "elsewhere-""#,
    );
    let e = TdeSubsystem::new(wrong).await.unwrap_err();
    assert!(matches!(e, TdeError::MekMissing { teks: 2, .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&mek), "{text}");

    // No Transit key was created under the wrong name: read it as the operator would.
    if let (Ok(bin), Ok(root)) = (
        std::env::var("HELIOSDB_TEST_BAO_BIN"),
        std::env::var("HELIOSDB_TEST_VAULT_ROOT_TOKEN"),
    ) {
        let out = Command::new(bin)
            .args(["read", &format!("transit/keys/elsewhere-{mek}")])
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", root)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a Transit key was created under the wrong prefix: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        panic!(
            "HELIOSDB_TEST_BAO_BIN and HELIOSDB_TEST_VAULT_ROOT_TOKEN are provisioned with the server"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_holds_transit_references_only_and_restores_into_a_new_key_store() {
    let Some(bao) = bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("backup_mek");
    let config = config(dir.path(), &bao.addr, &bao.token, &mek, "");
    let tde = TdeSubsystem::new(config.clone()).await.unwrap();
    let teks = three_table_keys(&tde).await;
    // Vault keeps the key: mek_info names the Transit key and its mount, not a key version.
    let info = tde.key_manager().mek_info().await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert!(
        info.location.contains(&format!("Transit key {mek} ")),
        "{}",
        info.location
    );

    let mut secrets = vec![("token", bao.token.clone())];
    if let Ok(root) = std::env::var("HELIOSDB_TEST_VAULT_ROOT_TOKEN") {
        secrets.push(("root token", root));
    }
    let expected = Expected {
        provider: "vault",
        mek: &mek,
        reference: &[format!("Transit key {mek} "), "mount transit".to_string()],
        secrets: &secrets,
    };
    backup_verify_and_restore(&tde, &config, dir.path(), "vault.hbk", &expected, &teks).await;
}
