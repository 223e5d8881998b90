//! The checks `VaultMekProvider::open` makes before returning: the token, the capabilities
//! the provider needs, and the mounts.

use crate::client::{CallError, PROVIDER};
use crate::provider::VaultMekProvider;
use heliosdb_tde_core::{Result, TdeError};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

impl VaultMekProvider {
    pub(crate) async fn check_token(&self) -> Result<()> {
        match self
            .client
            .call(Method::GET, "auth/token/lookup-self", None)
            .await
        {
            Ok(v) => {
                let ttl = v["data"]["ttl"].as_u64().unwrap_or(0);
                let renewable = v["data"]["renewable"].as_bool().unwrap_or(false);
                self.client.schedule_renewal(renewable, ttl).await;
                Ok(())
            }
            Err(CallError::Status(s, _)) if s == StatusCode::FORBIDDEN => Err(TdeError::Provider {
                provider: format!("{PROVIDER} at {}", self.address()),
                message: "the Vault token is invalid or expired".into(),
                hint: "check VAULT_TOKEN (kms_config.token_env_var) or kms_config.token_file"
                    .into(),
            }),
            Err(e) => Err(self.fail("looking up the Vault token", e)),
        }
    }

    /// The paths and capabilities the provider needs, for a probe key and record.
    pub(crate) fn required_paths(&self) -> Vec<(String, &'static [&'static str])> {
        let st = &self.client.settings;
        let m = &st.mount;
        let k = format!("{}capability-check", st.key_prefix);
        let data = format!("{}/data/{}/capability-check", st.state_mount, st.state_path);
        let meta = format!("{}/metadata/{}", st.state_mount, st.state_path);
        vec![
            (format!("{m}/encrypt/{k}"), &["update"]),
            (format!("{m}/decrypt/{k}"), &["update"]),
            (format!("{m}/keys/{k}"), &["read", "create", "update"]),
            (format!("{m}/keys/{k}/rotate"), &["update"]),
            (format!("{m}/keys/{k}/config"), &["update"]),
            (format!("{m}/rewrap/{k}"), &["update"]),
            (data, &["read", "create", "update"]),
            (meta, &["list"]),
        ]
    }

    pub(crate) async fn check_capabilities(&self) -> Result<()> {
        let paths = self.required_paths();
        let names: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
        let v = self
            .client
            .call(
                Method::POST,
                "sys/capabilities-self",
                Some(&json!({ "paths": names })),
            )
            .await
            .map_err(|e| self.fail("checking the token's capabilities", e))?;
        let mut missing = Vec::new();
        for (path, need) in &paths {
            let have: Vec<&str> = v["data"][path]
                .as_array()
                .or_else(|| v[path].as_array())
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if have.contains(&"root") {
                continue;
            }
            let lacking: Vec<&str> = need
                .iter()
                .copied()
                .filter(|c| !have.contains(c) || have.contains(&"deny"))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!("{path} ({})", lacking.join(", ")));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(TdeError::Provider {
            provider: format!("{PROVIDER} at {}", self.address()),
            message: format!(
                "the token's policy lacks capabilities on: {}",
                missing.join("; ")
            ),
            hint: "grant them as docs/providers/vault-policy.hcl does (`bao policy write heliosdb docs/providers/vault-policy.hcl`)".into(),
        })
    }

    pub(crate) async fn check_mounts(&self) -> Result<()> {
        let st = &self.client.settings;
        let transit = self.mount_info(&st.mount).await?;
        if transit.as_ref().and_then(|d| d["type"].as_str()) != Some("transit") {
            return Err(TdeError::InvalidConfig {
                field: "kms_config.mount".into(),
                reason: format!(
                    "no Transit secrets engine is mounted at {:?} on {}: enable it with `bao secrets enable -path={} transit`, or set kms_config.mount",
                    st.mount, st.address, st.mount
                ),
            });
        }
        let kv = self.mount_info(&st.state_mount).await?;
        let is_kv2 = kv.as_ref().is_some_and(|d| {
            d["type"].as_str() == Some("kv") && d["options"]["version"].as_str() == Some("2")
        });
        if !is_kv2 {
            return Err(TdeError::InvalidConfig {
                field: "kms_config.state_mount".into(),
                reason: format!(
                    "no KV version 2 secrets engine is mounted at {:?} on {} for the MEK lifecycle records: enable it with `bao secrets enable -path={} -version=2 kv`, or set kms_config.state_mount",
                    st.state_mount, st.address, st.state_mount
                ),
            });
        }
        Ok(())
    }

    pub(crate) async fn mount_info(&self, mount: &str) -> Result<Option<Value>> {
        match self
            .client
            .call(
                Method::GET,
                &format!("sys/internal/ui/mounts/{mount}"),
                None,
            )
            .await
        {
            Ok(v) => Ok(Some(v["data"].clone())),
            Err(CallError::Status(s, _)) if s.is_client_error() => Ok(None),
            Err(e) => Err(self.fail("checking the mounts", e)),
        }
    }
}
