//! The heliosdb-cli binary against the HTTPS Key Vault test server that `cargo xtask test`
//! provisions: status, MEK information, TEK creation and the whole MEK rotation, in table and
//! JSON form, and exit code 5 while the vault is unreachable.
//!
//! The binary resolves host names itself, so it uses the server's shared vault by IP
//! (`https://127.0.0.1:<port>`) with `verify_challenge_resource = false` in development mode,
//! and a key name of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::azure::{self, AzureTestEnv, fresh_label};
use heliosdb_tde_conformance::fault::FaultProxy;
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

/// A development configuration for the key `key` in the vault at `vault_url` (the server, or a
/// proxy in front of it), signing in with the test client secret from the variable
/// `HELIOSDB_TEST_SECRET` (set by [`cli`]).
fn write_config(dir: &Path, env: &AzureTestEnv, vault_url: &str, key: &str, mek: &str) -> PathBuf {
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
provider = "azure"
vault_url = "{vault_url}"
key_name = "{key}"
key_size = 2048
credential = "client_secret"
tenant_id = "{tenant}"
client_id = "{client}"
client_secret_env_var = "HELIOSDB_TEST_SECRET"
authority_host = "{authority}"
ca_cert = "{ca}"
verify_challenge_resource = false
max_retries = 1
"#,
            keys = dir.join("keys").display(),
            audit = dir.join("audit/tde-audit.log").display(),
            tenant = env.tenant(),
            client = env.client_id(),
            authority = env.authority_url(),
            ca = env.ca_path().display(),
        ),
    )
    .unwrap();
    cfg
}

fn cli(env: &AzureTestEnv, dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("AZURE_KEYVAULT_URL")
        .env("HELIOSDB_TEST_SECRET", env.client_secret().expose_secret())
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

fn ok(o: Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    text(&o)
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn the_mek_lifecycle_against_the_key_vault_test_server() {
    let Some(env) = azure::azure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mek = "cli_azure";
    let key = format!("cli-{}", fresh_label());
    let cfg = write_config(d, &env, &env.ip_url(), &key, mek);
    let run = |args: &[&str]| cli(&env, d, &cfg, args);

    // The first start creates the key as version 1 of the default MEK.
    let created = json(&run(&[
        "--format",
        "json",
        "security",
        "tek",
        "create",
        "public.users",
    ]));
    assert_eq!(created[0]["wrapped_by"]["id"], mek, "{created:#}");
    assert_eq!(created[0]["wrapped_by"]["version"], 1, "{created:#}");
    let t = ok(run(&["security", "tek", "create", "public.orders"]));
    assert!(t.contains("tek:public.orders@v1"), "{t}");

    // status: vault, key, algorithm, credential, purge protection and the RSA limitation.
    let t = text(&run(&["security", "status"]));
    assert!(t.contains("Provider health: healthy"), "{t}");
    assert!(
        t.contains(&format!("Azure vault:     {}", env.ip_url())),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "Azure key:       {key} (RSA-OAEP-256; credential client_secret)"
        )),
        "{t}"
    );
    assert!(t.contains("Purge protection: OFF"), "{t}");
    assert!(t.contains("--enable-purge-protection"), "{t}");
    assert!(t.contains("RSA limitation:"), "{t}");
    assert!(
        t.contains("verify_challenge_resource"),
        "the development warning is not shown: {t}"
    );
    assert!(
        !t.contains(env.client_secret().expose_secret()),
        "status shows the client secret"
    );
    let out = run(&["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["provider_kind"], "azure-kv", "{status:#}");
    let a = &status["azure_key_vault"];
    assert_eq!(a["vault_url"], env.ip_url().as_str(), "{status:#}");
    assert_eq!(a["key_name"], key.as_str(), "{status:#}");
    assert_eq!(a["wrap_algorithm"], "RSA-OAEP-256", "{status:#}");
    assert_eq!(a["credential"], "client_secret", "{status:#}");
    assert_eq!(a["purge_protection"]["protected"], false, "{status:#}");
    assert!(a["rsa_limitation"].is_string(), "{status:#}");
    let v1_kid = a["active_key"].as_str().unwrap().to_string();
    assert!(v1_kid.contains(&format!("/keys/{key}/")), "{status:#}");
    let backup = status["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["item"] == "MEK backup procedure established")
        .unwrap();
    assert_eq!(backup["status"], "fail", "{backup:#}");

    // mek-info: each version's Key Vault id, tags, state and enabled flag.
    let info = json(&run(&["--format", "json", "security", "mek-info"]));
    assert_eq!(info["provider"], "azure-kv", "{info:#}");
    assert_eq!(info["active_version"], 1, "{info:#}");
    assert_eq!(
        info["versions"][0]["key_location"],
        v1_kid.as_str(),
        "{info:#}"
    );
    assert_eq!(info["versions"][0]["state"], "active", "{info:#}");
    let detail = info["versions"][0]["service_detail"].as_str().unwrap();
    assert!(detail.contains("heliosdb-mek-version=1"), "{detail}");
    assert!(detail.contains("enabled"), "{detail}");
    assert_eq!(info["deletion_protection"]["protected"], false, "{info:#}");
    let t = ok(run(&["security", "mek-info"]));
    assert!(t.contains(&v1_kid), "{t}");
    assert!(t.contains("heliosdb-state=Active"), "{t}");
    assert!(t.contains("Deletion protection: OFF"), "{t}");

    // Rotation: a new key version, every TEK re-wrapped under it.
    let rotated = json(&run(&["--format", "json", "security", "mek", "rotate"]));
    // Two table keys and the audit log's key.
    assert_eq!(rotated["keys_reencrypted"], 3, "{rotated:#}");
    assert_eq!(rotated["old_mek_id"], format!("{mek}@v1"), "{rotated:#}");
    assert_eq!(rotated["new_mek_id"], format!("{mek}@v2"), "{rotated:#}");
    let info = json(&run(&["--format", "json", "security", "mek-info"]));
    assert_eq!(info["active_version"], 2, "{info:#}");
    let v2_kid = info["versions"][1]["key_location"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v2_kid.contains(&format!("/keys/{key}/")), "{info:#}");
    assert_ne!(v2_kid, v1_kid, "version 2 must be another key version");
    // The old version may only unwrap now: the vault itself refuses new wraps under it.
    let detail = info["versions"][0]["service_detail"].as_str().unwrap();
    assert!(detail.contains("heliosdb-state=DecryptOnly"), "{detail}");

    let verified = json(&run(&["--format", "json", "security", "mek", "verify"]));
    assert_eq!(verified["phase"], "verified", "{verified:#}");
    assert_eq!(verified["stranded"], 0, "{verified:#}");

    let msg = json(&run(&["--format", "json", "security", "mek", "deactivate"]));
    assert_eq!(
        msg["message"],
        format!("{mek}@v1 is deactivated; every TEK is wrapped under {mek}@v2"),
        "{msg:#}"
    );
    // Deactivation disables the old key version in the vault; the new one stays enabled.
    let info = json(&run(&["--format", "json", "security", "mek-info"]));
    assert_eq!(info["versions"][0]["state"], "deactivated", "{info:#}");
    assert_eq!(info["versions"][1]["state"], "active", "{info:#}");
    let old = info["versions"][0]["service_detail"].as_str().unwrap();
    assert!(old.contains("disabled"), "{old}");
    let new = info["versions"][1]["service_detail"].as_str().unwrap();
    assert!(
        new.contains("enabled") && !new.contains("disabled"),
        "{new}"
    );

    // Every table key still reads, now under v2 only.
    let list = json(&run(&["--format", "json", "security", "tek", "list"]));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list:#}");
    for k in list.as_array().unwrap() {
        assert_eq!(k["wrapped_by"]["version"], 2, "{list:#}");
    }
    let out = run(&["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["key_availability"]["all_readable"], true,
        "{status:#}"
    );
    assert_eq!(
        status["azure_key_vault"]["active_key"],
        v2_kid.as_str(),
        "{status:#}"
    );
}

#[tokio::test]
async fn a_cut_vault_is_exit_code_5_and_creates_nothing() {
    let Some(env) = azure::azure() else { return };
    let upstream = format!("127.0.0.1:{}", env.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let url = format!("https://127.0.0.1:{}", proxy.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let key = format!("cli-cut-{}", fresh_label());
    let cfg = write_config(dir.path(), &env, &url, &key, "cli_azure_cut");
    proxy.cut();
    let run = |args: &'static [&'static str]| {
        let (env, d, c) = (env.clone(), dir.path().to_path_buf(), cfg.clone());
        tokio::task::spawn_blocking(move || cli(&env, &d, &c, args))
    };
    for (args, what) in [
        (&["security", "tek", "create", "t"][..], "tek create"),
        (&["security", "status"][..], "status"),
        (
            &["--format", "json", "security", "mek-info"][..],
            "mek-info",
        ),
    ] {
        let out = run(args).await.unwrap();
        assert_eq!(out.status.code(), Some(5), "{what}: {}", text(&out));
        assert!(text(&out).contains(&url), "{what}: {}", text(&out));
    }
    assert!(
        !dir.path().join("keys").exists(),
        "a start that could not reach the vault created the key store"
    );

    // Restored, the same command works.
    proxy.restore();
    let out = run(&["security", "tek", "create", "t"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Cut again after the first start: a command that needs the vault is exit code 5 too, in
    // JSON with the provider_unavailable kind.
    proxy.cut();
    let out = run(&["--format", "json", "security", "tek", "rotate", "t"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .or_else(|_| serde_json::from_slice(&out.stderr))
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["error"]["kind"], "provider_unavailable", "{v:#}");
}
