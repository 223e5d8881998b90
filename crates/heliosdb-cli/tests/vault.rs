//! The heliosdb-cli binary against a real OpenBao server (Vault Transit API), provisioned by
//! `cargo xtask test`: the whole MEK lifecycle, and exit code 5 while the server is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::openbao::bao;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

fn unique(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}_{}_{n:x}", std::process::id())
}

/// A configuration file for the server at `address` (development mode: the dev server speaks
/// plain HTTP), with the token in a 0600 file.
fn write_config(dir: &Path, address: &str, token: &str, mek: &str) -> PathBuf {
    let token_file = dir.join("vault-token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
key_storage_path = "{keys}"
default_mek_id = "{mek}"
security_mode = "development"
rotation_grace_days = 0
provider_startup_wait_secs = 0
audit_log_path = "{audit}"

[kms_config]
provider = "vault"
address = "{address}"
token_file = "{token_file}"
state_path = "heliosdb/{mek}/meks"
"#,
            keys = dir.join("keys").display(),
            audit = dir.join("audit/tde-audit.log").display(),
            token_file = token_file.display(),
        ),
    )
    .unwrap();
    cfg
}

fn cli(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn the_mek_lifecycle_against_openbao() {
    let Some(bao) = bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("cli_mek");
    let cfg = write_config(dir.path(), &bao.addr, &bao.token, &mek);
    let d = dir.path();

    for t in ["public.users", "public.orders"] {
        let out = cli(d, &cfg, &["security", "tek", "create", t]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }

    let out = cli(d, &cfg, &["security", "status"]);
    let t = text(&out);
    assert!(t.contains("HashiCorp Vault Transit at"), "{t}");
    assert!(t.contains("Provider health: healthy"), "{t}");
    let out = cli(d, &cfg, &["--format", "json", "security", "status"]);
    // Only the backup item fails (no backup_dir is configured), which makes status exit 3.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failing: Vec<&str> = status["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["item"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["MEK backup procedure established"], "{status:#}");
    assert_eq!(status["provider_kind"], "vault", "{status:#}");
    assert_eq!(status["provider_health"]["healthy"], true, "{status:#}");

    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    assert_eq!(info["active_version"], 1, "{info:#}");
    let t = text(&cli(d, &cfg, &["security", "mek-info"]));
    assert!(t.contains(&mek), "{t}");

    let rotated = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "mek", "rotate"],
    ));
    // Two table keys and the audit log's key.
    assert_eq!(rotated["keys_reencrypted"], 3, "{rotated:#}");
    assert!(
        rotated["new_mek_id"].as_str().unwrap().ends_with("@v2"),
        "{rotated:#}"
    );
    let out = cli(d, &cfg, &["--format", "json", "security", "mek", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cli(
        d,
        &cfg,
        &["--format", "json", "security", "mek", "deactivate"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    assert_eq!(info["active_version"], 2, "{info:#}");
    let list = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "tek", "list"],
    ));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list:#}");
}

#[tokio::test]
async fn an_unreachable_server_is_exit_code_5_and_creates_nothing() {
    let Some(bao) = bao() else { return };
    let upstream = bao.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("cut_mek");
    let cfg = write_config(dir.path(), &proxy.url(), &bao.token, &mek);
    let d = dir.path().to_path_buf();
    let out =
        tokio::task::spawn_blocking(move || cli(&d, &cfg, &["security", "tek", "create", "t"]))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains(&proxy.url()), "{}", text(&out));
    assert!(
        !dir.path().join("keys").exists(),
        "the failed start created the key store"
    );
}
