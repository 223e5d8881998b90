//! The OpenBao test server, as `cargo xtask test` provisions it, and helpers shared by the
//! tests: every test takes the server through `services::require`.
#![allow(dead_code, unreachable_pub)]

use heliosdb_tde_conformance::provider::fresh_mek_id;
use heliosdb_tde_conformance::services;
use heliosdb_tde_core::{
    EncryptionAlgorithm, MekId, SecurityMode, TableKey, TekId, VaultTransitConfig, WrapContext,
};
use heliosdb_tde_vault::VaultMekProvider;
use std::process::Command;

pub const ADDR_ENV: &str = "HELIOSDB_TEST_VAULT_ADDR";
pub const TOKEN_ENV: &str = "HELIOSDB_TEST_VAULT_TOKEN";
pub const ROOT_TOKEN_ENV: &str = "HELIOSDB_TEST_VAULT_ROOT_TOKEN";
pub const BAO_BIN_ENV: &str = "HELIOSDB_TEST_BAO_BIN";
pub const SERVICE: &str = "OpenBao server";

/// The shared server: its address, or `None` after a loud skip (a panic under
/// `HELIOSDB_REQUIRE_SERVICES=1`).
pub fn server() -> Option<Server> {
    let probe = (|| {
        let addr = std::env::var(ADDR_ENV).map_err(|_| format!("{ADDR_ENV} is not set"))?;
        std::env::var(TOKEN_ENV).map_err(|_| format!("{TOKEN_ENV} is not set"))?;
        let root =
            std::env::var(ROOT_TOKEN_ENV).map_err(|_| format!("{ROOT_TOKEN_ENV} is not set"))?;
        let bao = std::env::var(BAO_BIN_ENV).map_err(|_| format!("{BAO_BIN_ENV} is not set"))?;
        Ok::<_, String>(Server { addr, root, bao })
    })();
    services::require(SERVICE, probe)
}

/// The shared OpenBao dev server.
pub struct Server {
    pub addr: String,
    pub root: String,
    pub bao: String,
}

impl Server {
    /// Settings for the limited test token, with a fresh state path for this test.
    pub fn config(&self) -> VaultTransitConfig {
        let mut c = VaultTransitConfig::new(self.addr.clone());
        c.token_env_var = Some(TOKEN_ENV.into());
        c.state_path = format!("heliosdb/{}", fresh_mek_id("t"));
        c
    }

    /// A provider (development mode: the dev server speaks http://) with a fresh state path.
    pub async fn provider(&self) -> VaultMekProvider {
        VaultMekProvider::open(&self.config(), SecurityMode::Development)
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"))
    }

    /// Runs the `bao` CLI as an operator (root token); returns stdout, or stderr as the error.
    pub fn bao(&self, args: &[&str]) -> Result<String, String> {
        self.bao_with(&self.root, args)
    }

    /// Runs the `bao` CLI with `token`.
    pub fn bao_with(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bao)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A token with only the `heliosdb` policy plus `extra` policies, renewable.
    pub fn token(&self, policies: &[&str], extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "-field=token", "-renewable=true"];
        let ps: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
        args.extend(ps.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.bao(&args).unwrap()
    }

    /// Reads one field of a Transit key as the operator.
    pub fn key_field(&self, key: &str, field: &str) -> String {
        self.bao(&[
            "read",
            &format!("-field={field}"),
            &format!("transit/keys/{key}"),
        ])
        .unwrap()
    }
}

pub fn tek(id: &str) -> TableKey {
    TableKey::generate(id.parse::<TekId>().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap()
}

pub fn ctx(id: &str) -> WrapContext {
    WrapContext::table_key(&id.parse::<TekId>().unwrap())
}

pub fn fresh(prefix: &str) -> MekId {
    fresh_mek_id(prefix)
}
