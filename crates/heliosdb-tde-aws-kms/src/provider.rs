//! [`AwsKmsMekProvider`]: the [`MekProvider`] over AWS KMS.

use crate::errors::Call;
use crate::keys::{self, Inventory, VersionKey, Versions};
use crate::settings::{self, alias_name, check_config, parse_alias};
mod adopt;
mod wrap;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::types::KeyState as KmsKeyState;
use heliosdb_tde_core::lifecycle::{Transition, mek_not_found};
use heliosdb_tde_core::{
    AwsKmsConfig, EncryptionAlgorithm, KeyState, MekId, MekInfo, MekProvider, MekRef, MekVersion,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, SecurityMode, TableKey, TdeError,
    WrapContext, WrappedTek,
};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

/// An MEK provider that keeps every MEK version in AWS KMS, one KMS key per version.
///
/// * Versions are found through aliases `<alias_prefix>/<mek id>/v<N>` (`.` in an id is
///   written `/`); version 1 of the default MEK is the configured `key_id`.
/// * A version's lifecycle state is a tag on its key (`heliosdb:state`); deactivation also
///   disables the key in KMS, reactivation enables it.
/// * TEKs are wrapped with `Encrypt` under the version's key, bound to their identity by an
///   encryption context ([`WrapContext::context_map`]), and re-wrapped with `ReEncrypt` during
///   a rotation, so their plaintext stays inside KMS.
///
/// Build it inside the Tokio runtime that uses it: the SDK's connection pool belongs to that
/// runtime.
pub struct AwsKmsMekProvider {
    client: Client,
    region: String,
    endpoint: Option<String>,
    endpoint_label: String,
    alias_prefix: String,
    create_keys: bool,
    enable_key_rotation: bool,
    rotation_period_days: Option<u32>,
    timeout_secs: u64,
    default_mek: MekId,
    default_key_arn: String,
    description: String,
    warnings: Vec<String>,
    inventory: Inventory,
    /// Serialises this process's changes (generate, rotate, state changes).
    changes: tokio::sync::Mutex<()>,
}

impl fmt::Debug for AwsKmsMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsMekProvider")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("alias_prefix", &self.alias_prefix)
            .field("default_mek", &self.default_mek)
            .field("default_key_arn", &self.default_key_arn)
            .finish_non_exhaustive()
    }
}

impl AwsKmsMekProvider {
    /// Connects to KMS and checks the configuration: resolves `key_id` to its ARN and checks
    /// that it is an enabled `SYMMETRIC_DEFAULT` `ENCRYPT_DECRYPT` key in `region`, and reads the
    /// versions of `default_mek` (whose version 1 is `key_id`), so a bad configuration fails
    /// here, not at the first cache miss. It creates nothing: `generate_mek` of the default id
    /// adopts `key_id` as version 1.
    pub async fn open(
        config: &AwsKmsConfig,
        default_mek: &MekId,
        mode: SecurityMode,
    ) -> Result<Self> {
        check_config(config, mode)?;
        let client = settings::client(config).await?;
        let description = format!("AWS KMS ({}, {})", config.region, config.alias_prefix);
        let mut warnings = Vec::new();
        if let Some(ep) = &config.endpoint
            && ep.starts_with("http://")
        {
            warnings.push(format!(
                "kms_config.endpoint {ep} is plain HTTP: table keys cross the network in the clear (development mode only; production mode refuses it)"
            ));
        }
        let mut provider = Self {
            client,
            region: config.region.clone(),
            endpoint: config.endpoint.clone(),
            endpoint_label: config
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", config.region)),
            alias_prefix: config.alias_prefix.clone(),
            create_keys: config.create_keys,
            enable_key_rotation: config.enable_key_rotation,
            rotation_period_days: config.rotation_period_days,
            timeout_secs: config.timeout_secs,
            default_mek: default_mek.clone(),
            default_key_arn: String::new(),
            description,
            warnings,
            inventory: Inventory::new(),
            changes: tokio::sync::Mutex::new(()),
        };
        let key = provider.check_key(&config.key_id).await?;
        provider.default_key_arn = key.arn.clone();
        let versions = provider.refresh(default_mek).await?;
        if let Some(v1) = versions.get(&MekVersion::FIRST)
            && v1.arn != key.arn
        {
            return Err(provider.v1_mismatch(&v1.arn));
        }
        // The key that serves new wraps must be usable: the active version's, or the
        // configured key while it is not adopted yet. A deactivated version's key is disabled on
        // purpose and is not checked.
        let lc = keys::lifecycle(default_mek, &versions);
        if lc.versions(default_mek).next().is_none() {
            provider.ensure_enabled(&key, &MekRef::new(default_mek.clone(), MekVersion::FIRST))?;
        } else if let Some(active) = lc
            .versions(default_mek)
            .find(|v| v.state == KeyState::Active)
            && let Some(k) = versions.get(&active.mek.version)
        {
            provider.ensure_enabled(k, &active.mek)?;
        }
        Ok(provider)
    }

    /// Warnings about the configuration that development mode accepts (a plain-HTTP endpoint).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The custom endpoint, if one is configured.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The alias prefix.
    pub fn alias_prefix(&self) -> &str {
        &self.alias_prefix
    }

    /// The ARN of the configured `key_id` (version 1 of the default MEK).
    pub fn default_key_arn(&self) -> &str {
        &self.default_key_arn
    }

    /// The alias of one MEK version: `<alias_prefix>/<mek id, '.' written '/'>/v<N>`.
    pub fn alias_name(&self, mek: &MekRef) -> String {
        alias_name(&self.alias_prefix, mek)
    }

    fn call<'a>(&'a self, action: &'a str, target: &'a str) -> Call<'a> {
        Call {
            provider: &self.description,
            action,
            target,
            region: &self.region,
            endpoint: &self.endpoint_label,
            timeout_secs: self.timeout_secs,
        }
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        mek_not_found(
            mek,
            format!(
                "KMS in region {} has no alias for it under {}; check kms_config.alias_prefix and kms_config.region, or create the MEK with `heliosdb-cli security mek generate`",
                self.region, self.alias_prefix
            ),
        )
    }

    fn v1_mismatch(&self, alias_target: &str) -> TdeError {
        TdeError::config(
            "kms_config.key_id",
            format!(
                "the alias {} points at {alias_target}, but kms_config.key_id is {}; version 1 of MEK {} cannot be both. Fix kms_config.key_id, or the alias (`aws kms update-alias`) if it is wrong",
                self.alias_name(&MekRef::new(self.default_mek.clone(), MekVersion::FIRST)),
                self.default_key_arn,
                self.default_mek
            ),
        )
    }

    /// Reads the versions of `id` from KMS and caches them.
    async fn refresh(&self, id: &MekId) -> Result<Versions> {
        let versions = keys::read(
            &self.client,
            &self.call("ListAliases", &self.alias_prefix),
            &self.alias_prefix,
            id,
        )
        .await?;
        self.inventory.store(id, versions.clone());
        Ok(versions)
    }

    /// The versions of `id`: cached if read recently, else read.
    async fn versions(&self, id: &MekId) -> Result<Versions> {
        match self.inventory.cached(id) {
            Some(v) => Ok(v),
            None => self.refresh(id).await,
        }
    }

    /// One adopted version: its key and state (read again once if the cache does not know it,
    /// for a version another process made).
    async fn version(&self, mek: &MekRef) -> Result<(VersionKey, KeyState)> {
        for fresh in [false, true] {
            let versions = if fresh {
                self.refresh(&mek.id).await?
            } else {
                self.versions(&mek.id).await?
            };
            let lc = keys::lifecycle(&mek.id, &versions);
            if let (Some(k), Some(state)) = (versions.get(&mek.version), lc.state(mek)) {
                return Ok((k.clone(), state));
            }
        }
        Err(self.not_found(mek))
    }
}

#[async_trait]
impl MekProvider for AwsKmsMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn description(&self) -> String {
        self.description.clone()
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
                hint: "AWS KMS MEKs are SYMMETRIC_DEFAULT (AES-256-GCM) keys; use AES-256-GCM"
                    .into(),
            });
        }
        let _changes = self.changes.lock().await;
        let versions = self.refresh(mek_id).await?;
        let lc = keys::lifecycle(mek_id, &versions);
        let mek = lc.plan_generate(mek_id)?;
        if let Some((v, _)) = versions.iter().find(|(v, _)| **v != MekVersion::FIRST) {
            // Aliases of later versions without version 1: not a layout this provider makes.
            return Err(TdeError::Provider {
                provider: self.description.clone(),
                message: format!(
                    "MEK {mek_id} has an alias for version {v} but none adopted for version 1"
                ),
                hint: format!(
                    "check the aliases under {}; nothing was created",
                    settings::alias_dir(&self.alias_prefix, mek_id)
                ),
            });
        }
        let key = self.first_version(&mek, &versions).await?;
        self.tag_state(&mek, &key.arn, KeyState::Active).await?;
        self.inventory.forget(mek_id);
        let mut info = MekVersionInfo::active(mek, algorithm, key.created_at);
        info.key_location = Some(key.arn);
        Ok(info)
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.kms_encrypt(mek, tek, ctx).await
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.kms_decrypt(wrapped, ctx).await
    }

    async fn rewrap_tek(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        self.kms_re_encrypt(wrapped, ctx, new_mek).await
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let versions = self.refresh(mek_id).await?;
        let lc = keys::lifecycle(mek_id, &versions);
        let mut info = lc
            .mek_info(
                mek_id,
                ProviderKind::AwsKms,
                format!(
                    "AWS KMS {} aliases {}",
                    self.region,
                    settings::alias_dir(&self.alias_prefix, mek_id)
                ),
            )
            .ok_or_else(|| self.not_found(mek_id))?;
        for v in &mut info.versions {
            if let Some(k) = versions.get(&v.mek.version)
                && k.kms_state != Some(KmsKeyState::PendingDeletion)
            {
                v.service_rotation = Some(self.service_rotation(&k.arn).await?);
            }
        }
        Ok(info)
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let call = self.call("ListAliases", &self.alias_prefix);
        let prefix = format!("{}/", self.alias_prefix);
        let ids: BTreeSet<MekId> = keys::aliases(&self.client, &call, &prefix)
            .await?
            .into_iter()
            .filter_map(|(alias, _)| parse_alias(&self.alias_prefix, &alias))
            .map(|m| m.id)
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let _changes = self.changes.lock().await;
        let versions = self.refresh(mek_id).await?;
        let lc = keys::lifecycle(mek_id, &versions);
        let rotation = lc
            .plan_rotation(mek_id)
            .ok_or_else(|| self.not_found(mek_id))??;
        let previous = versions
            .get(&rotation.previous)
            .ok_or_else(|| self.not_found(mek_id))?;
        let key = self.new_version_key(&rotation.next, &previous.arn).await?;
        // The new version first, then the old ones demoted: a crash in between leaves two
        // active versions, and the newest wins when they are read.
        self.tag_state(&rotation.next, &key.arn, KeyState::Active)
            .await?;
        for old in &rotation.demote {
            if let Some(k) = versions.get(&old.version) {
                self.tag_state(old, &k.arn, KeyState::DecryptOnly).await?;
            }
        }
        self.inventory.forget(mek_id);
        let mut info = rotation.new_version(key.created_at);
        info.key_location = Some(key.arn);
        Ok(info)
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        if next == KeyState::Destroyed {
            return Err(TdeError::Unsupported {
                what: format!("destroying MEK version {mek} in AWS KMS"),
                hint: format!(
                    "deactivate it, check that no TEK depends on it (`heliosdb-cli security mek verify`), then schedule its key's deletion: `aws kms schedule-key-deletion --key-id <ARN from mek-info> --pending-window-in-days 30` (7 to 30 days; see docs/providers/aws-kms.md). Its alias is {}",
                    self.alias_name(mek)
                ),
            });
        }
        let _changes = self.changes.lock().await;
        let versions = self.refresh(&mek.id).await?;
        let lc = keys::lifecycle(&mek.id, &versions);
        let transition = lc
            .plan_transition(mek, next)
            .ok_or_else(|| self.not_found(mek))??;
        let key = versions
            .get(&mek.version)
            .ok_or_else(|| self.not_found(mek))?;
        match transition {
            Transition::Unchanged => {
                // The tag may be right while KMS is not (a crash between the two): finish.
                self.enforce(mek, key, next).await?;
            }
            _ if next == KeyState::Deactivated => {
                // Tag first: once the tag says deactivated the provider refuses the version,
                // whatever KMS does next.
                self.tag_state(mek, &key.arn, next).await?;
                self.enforce(mek, key, next).await?;
            }
            _ => {
                // Enable first: the tag makes the version usable only once KMS can serve it.
                self.enforce(mek, key, next).await?;
                self.tag_state(mek, &key.arn, next).await?;
            }
        }
        self.inventory.forget(&mek.id);
        Ok(())
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let target = match self.refresh(&self.default_mek).await {
            Ok(versions) => {
                let lc = keys::lifecycle(&self.default_mek, &versions);
                lc.versions(&self.default_mek)
                    .find(|v| v.state == KeyState::Active)
                    .and_then(|v| {
                        versions
                            .get(&v.mek.version)
                            .map(|k| (v.mek.clone(), k.arn.clone()))
                    })
            }
            Err(e) => {
                return Ok(ProviderHealth {
                    healthy: false,
                    latency: start.elapsed(),
                    detail: format!("{}: {e}", self.description),
                });
            }
        };
        let (mek, arn) = target.unwrap_or_else(|| {
            (
                MekRef::new(self.default_mek.clone(), MekVersion::FIRST),
                self.default_key_arn.clone(),
            )
        });
        let call = self.call("DescribeKey", &arn);
        let (healthy, detail) = match keys::describe(&self.client, &call, &arn).await {
            Ok(k) => match self.ensure_enabled(&k, &mek) {
                Ok(()) => (
                    true,
                    format!(
                        "{}: active key {} (MEK {mek}) is {}",
                        self.description,
                        k.arn,
                        k.kms_state_name()
                    ),
                ),
                Err(e) => (false, format!("{}: {e}", self.description)),
            },
            Err(e) => (false, format!("{}: {e}", self.description)),
        };
        Ok(ProviderHealth {
            healthy,
            latency: start.elapsed(),
            detail,
        })
    }
}
