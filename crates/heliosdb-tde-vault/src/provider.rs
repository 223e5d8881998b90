//! [`VaultMekProvider`]: the [`MekProvider`] over Vault / OpenBao Transit, with lifecycle
//! records in KV version 2 and the decisions of core's [`MekLifecycle`].

mod wrap;

use crate::client::{CallError, Client, PROVIDER};
use crate::records::{Cache, Stored};
use crate::settings::Settings;
use async_trait::async_trait;
use heliosdb_tde_core::lifecycle::Transition;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekInfo, MekProvider, MekRef, MekVersion, MekVersionInfo,
    ProviderHealth, ProviderKind, Result, SecurityMode, TableKey, TdeError, Timestamp,
    VaultTransitConfig, WrapContext, WrappedTek,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Master keys in Vault (or OpenBao) Transit. See the crate documentation.
///
/// Build it inside the Tokio runtime that uses it: its connection pool belongs to that
/// runtime.
pub struct VaultMekProvider {
    pub(crate) client: Client,
    pub(crate) cache: Cache,
    pub(crate) warnings: Mutex<Vec<String>>,
}

impl fmt::Debug for VaultMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultMekProvider")
            .field("settings", &self.client.settings)
            .finish_non_exhaustive()
    }
}

impl VaultMekProvider {
    /// Connects to the server in `config` (used as given: the facade applies `VAULT_ADDR`,
    /// `VAULT_NAMESPACE` and `VAULT_CACERT` first) with the token from `token_env_var` or
    /// `token_file`, and checks before returning: the token (`auth/token/lookup-self`), every
    /// capability the provider needs (one `sys/capabilities-self`), and that the Transit and
    /// KV version 2 mounts exist. Production mode refuses `http://` and a token file others
    /// can read.
    pub async fn open(config: &VaultTransitConfig, mode: SecurityMode) -> Result<Self> {
        let settings = Settings::from_config(config, mode)?;
        let (client, token_warning) = Client::new(settings)?;
        let mut warnings: Vec<String> = token_warning.into_iter().collect();
        if client.settings.address.starts_with("http://") {
            warnings.push(format!(
                "kms_config.address {} is plain http://: the token and TEKs cross the network unencrypted (development mode only)",
                client.settings.address
            ));
        }
        let p = Self {
            client,
            cache: Cache::default(),
            warnings: Mutex::new(warnings),
        };
        p.check_token().await?;
        p.check_capabilities().await?;
        p.check_mounts().await?;
        Ok(p)
    }

    /// Development-mode warnings: a plain-http address, an exportable key, a token file others
    /// can read.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server address.
    pub fn address(&self) -> &str {
        &self.client.settings.address
    }

    pub(crate) fn warn(&self, w: String) {
        let mut ws = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        if !ws.contains(&w) {
            tracing::warn!(target: "heliosdb::tde::vault", "{w}");
            ws.push(w);
        }
    }

    pub(crate) fn fail(&self, what: &str, e: CallError) -> TdeError {
        self.client.error(what, e)
    }
}

#[async_trait]
impl MekProvider for VaultMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vault
    }

    fn description(&self) -> String {
        format!(
            "HashiCorp Vault Transit at {} (mount {})",
            self.address(),
            self.client.settings.mount
        )
    }

    fn is_secure(&self) -> bool {
        true
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        if algorithm != EncryptionAlgorithm::Aes256Gcm {
            return Err(TdeError::Unsupported {
                what: format!("MEK algorithm {}", algorithm.name()),
                hint: "Vault Transit MEKs are aes256-gcm96 keys; use AES-256-GCM".into(),
            });
        }
        let stored = self.fetch(mek_id).await?;
        if stored.key.is_some() {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{mek_id}"),
            });
        }
        if !stored.record.versions.is_empty() {
            return Err(TdeError::Provider {
                provider: format!("{PROVIDER} at {}", self.address()),
                message: format!(
                    "MEK {mek_id} has a lifecycle record at {} but no Transit key {:?} under mount {:?}",
                    self.record_path(mek_id),
                    self.name(mek_id),
                    self.client.settings.mount
                ),
                hint: "kms_config.mount or kms_config.key_prefix probably changed; nothing was created. Fix the configuration, or delete the stale record if the key is really gone".into(),
            });
        }
        let path = format!("{}/keys/{}", self.client.settings.mount, self.name(mek_id));
        let body = json!({
            "type": "aes256-gcm96",
            "derived": true,
            "convergent_encryption": false,
            "exportable": false,
            "allow_plaintext_backup": false,
        });
        self.client
            .call(Method::POST, &path, Some(&body))
            .await
            .map_err(|e| self.fail("creating a Transit key", e))?;
        let stored = self
            .update(mek_id, |rec, _| {
                if rec.versions.is_empty() {
                    rec.set(1, KeyState::Active, None);
                }
                Ok(())
            })
            .await?;
        let created = stored
            .record
            .versions
            .get(&1)
            .map_or_else(Timestamp::now, |r| Timestamp(r.created_at));
        Ok(MekVersionInfo::active(
            MekRef::new(mek_id.clone(), MekVersion::FIRST),
            algorithm,
            created,
        ))
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.transit_encrypt(mek, tek, ctx).await
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.transit_decrypt(wrapped, ctx).await
    }

    async fn rewrap_tek(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        self.transit_rewrap(wrapped, ctx, new_mek).await
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let stored = self.load(mek_id).await?;
        let location = format!(
            "Transit key {} (mount {} at {})",
            self.name(mek_id),
            self.client.settings.mount,
            self.address()
        );
        let mut info = self
            .lifecycle(mek_id, &stored)
            .mek_info(mek_id, ProviderKind::Vault, location)
            .ok_or_else(|| self.not_found(mek_id))?;
        info.deletion_protection = stored
            .key
            .as_ref()
            .map(|k| crate::transit::deletion_protection(&self.name(mek_id), k));
        Ok(info)
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let st = &self.client.settings;
        let path = format!("{}/metadata/{}?list=true", st.state_mount, st.state_path);
        match self.client.call(Method::GET, &path, None).await {
            Ok(v) => {
                let mut ids: Vec<MekId> = v["data"]["keys"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter_map(|k| MekId::new(k).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                ids.sort();
                Ok(ids)
            }
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(self.fail("listing the MEK lifecycle records", e)),
        }
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let stored = self.load(mek_id).await?;
        let (Some(key), false) = (&stored.key, stored.record.versions.is_empty()) else {
            return Err(self.not_found(mek_id));
        };
        let recorded_max = stored.record.versions.keys().max().copied().unwrap_or(0);
        let key_max = key.versions.keys().max().copied().unwrap_or(0);
        // A version Vault created outside HeliosDB is adopted instead of creating another.
        let target = if key_max > recorded_max {
            key_max
        } else {
            self.lifecycle(mek_id, &stored)
                .plan_rotation(mek_id)
                .ok_or_else(|| self.not_found(mek_id))??;
            let path = format!(
                "{}/keys/{}/rotate",
                self.client.settings.mount,
                self.name(mek_id)
            );
            // Not retried: a rotation that timed out may have been applied. The key is read
            // back either way, and a new version there is the rotation's result.
            let sent = self
                .client
                .call_once(Method::POST, &path, Some(&json!({})))
                .await;
            let key = self
                .read_key(mek_id)
                .await?
                .ok_or_else(|| self.not_found(mek_id))?;
            let new_max = key.versions.keys().max().copied().unwrap_or(0);
            if new_max <= key_max {
                sent.map_err(|e| self.fail("rotating a Transit key", e))?;
                return Err(self.fail(
                    "rotating a Transit key",
                    CallError::Protocol(
                        "Vault accepted the rotation but shows no new version".into(),
                    ),
                ));
            }
            new_max
        };
        let stored = self
            .update(mek_id, |rec, key| {
                for r in rec.versions.values_mut() {
                    if r.state == KeyState::Active {
                        r.state = KeyState::DecryptOnly;
                        r.changed_at = Timestamp::now().as_millis();
                    }
                }
                if let Some(k) = key {
                    for (&v, &t) in &k.versions {
                        if v < target && !rec.versions.contains_key(&v) {
                            rec.set(v, KeyState::DecryptOnly, Some(t.saturating_mul(1000)));
                        }
                    }
                }
                let created = key
                    .and_then(|k| k.versions.get(&target))
                    .map(|t| t.saturating_mul(1000));
                rec.set(target, KeyState::Active, created);
                Ok(())
            })
            .await?;
        self.enforce(mek_id, &stored).await?;
        let version = MekVersion::new(target)?;
        let created = stored
            .record
            .versions
            .get(&target)
            .map_or_else(Timestamp::now, |r| Timestamp(r.created_at));
        Ok(MekVersionInfo::active(
            MekRef::new(mek_id.clone(), version),
            EncryptionAlgorithm::Aes256Gcm,
            created,
        ))
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        if next == KeyState::Destroyed {
            return Err(TdeError::Unsupported {
                what: format!("destroying MEK version {mek} in Vault Transit"),
                hint: format!(
                    "Transit destroys versions only by trimming every older one: once no TEK depends on them, an operator runs `bao write {}/keys/{}/trim min_available_version=<N>` (see docs/providers/vault.md)",
                    self.client.settings.mount,
                    self.name(&mek.id)
                ),
            });
        }
        let stored = self.load(&mek.id).await?;
        let transition = self
            .lifecycle(&mek.id, &stored)
            .plan_transition(mek, next)
            .ok_or_else(|| self.not_found(mek))??;
        if transition == Transition::Unchanged {
            return Ok(());
        }
        let v = mek.version.get();
        let stored = self
            .update(&mek.id, |rec, key| {
                let lc = self.lifecycle(
                    &mek.id,
                    &Stored {
                        record: rec.clone(),
                        kv_version: 0,
                        key: key.cloned(),
                    },
                );
                lc.plan_transition(mek, next)
                    .ok_or_else(|| self.not_found(mek))??;
                let created = key
                    .and_then(|k| k.versions.get(&v))
                    .map(|t| t.saturating_mul(1000));
                rec.set(v, next, created);
                Ok(())
            })
            .await?;
        self.enforce(&mek.id, &stored).await
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let r = self.client.call_unauthenticated("sys/health").await;
        let addr = self.address();
        let (healthy, detail) = match r {
            Ok(_) => (
                true,
                format!("Vault at {addr}: initialised, unsealed, active"),
            ),
            Err(CallError::Status(s, _)) => match s.as_u16() {
                429 | 473 => (
                    true,
                    format!(
                        "Vault at {addr}: unsealed standby node (requests are forwarded to the active node)"
                    ),
                ),
                503 => (
                    false,
                    format!("Vault at {addr} is sealed; unseal it with `bao operator unseal`"),
                ),
                501 => (
                    false,
                    format!("Vault at {addr} is not initialised; run `bao operator init`"),
                ),
                other => (
                    false,
                    format!("Vault at {addr}: sys/health answered HTTP {other}"),
                ),
            },
            Err(e) => (
                false,
                format!("Vault at {addr} is unreachable: {}", e.text()),
            ),
        };
        Ok(ProviderHealth {
            healthy,
            latency: start.elapsed(),
            detail,
        })
    }
}
