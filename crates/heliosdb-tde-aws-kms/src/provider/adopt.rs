//! Finding, adopting and creating the KMS key of an MEK version, and keeping KMS's view of a
//! key (enabled or disabled, its tags, its automatic rotation) in line with the version's state.

use super::AwsKmsMekProvider;
use crate::errors;
use crate::keys::{self, VersionKey, Versions};
use crate::settings::arn_region;
use aws_sdk_kms::types::{KeySpec, KeyState as KmsKeyState, KeyUsageType};
use heliosdb_tde_core::{
    KeyState, MekRef, MekVersion, Result, ServiceRotation, TdeError, Timestamp,
};

impl AwsKmsMekProvider {
    /// Resolves and checks the configured key: symmetric, for encryption, enabled, in region.
    pub(super) async fn check_key(&self, key_id: &str) -> Result<VersionKey> {
        let call = self.call("DescribeKey", key_id);
        let meta = self
            .client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| errors::map(&call, e))?
            .key_metadata
            .ok_or_else(|| keys::protocol(&call, "DescribeKey", "the answer has no KeyMetadata"))?;
        let arn = meta
            .arn()
            .ok_or_else(|| keys::protocol(&call, "DescribeKey", "the key has no ARN"))?
            .to_string();
        if let Some(region) = arn_region(&arn)
            && region != self.region
        {
            return Err(TdeError::config(
                "kms_config.key_id",
                format!(
                    "{arn} is in region {region} but kms_config.region is {}; use a key in {} or set the region to {region}",
                    self.region, self.region
                ),
            ));
        }
        let spec = meta.key_spec().map_or("SYMMETRIC_DEFAULT", KeySpec::as_str);
        let usage = meta
            .key_usage()
            .map_or("ENCRYPT_DECRYPT", KeyUsageType::as_str);
        if !symmetric_encryption_key(&meta) {
            return Err(TdeError::config(
                "kms_config.key_id",
                format!(
                    "{arn} is a {spec} key for {usage}; an MEK needs a SYMMETRIC_DEFAULT key with usage ENCRYPT_DECRYPT (`aws kms create-key --key-spec SYMMETRIC_DEFAULT --key-usage ENCRYPT_DECRYPT`)"
                ),
            ));
        }
        // Whether it must be enabled depends on its version's state: the caller checks.
        Ok(VersionKey {
            arn,
            state: None,
            kms_state: meta.key_state().cloned(),
            created_at: keys::timestamp(meta.creation_date()),
        })
    }

    /// An error when KMS does not have `key` enabled, with the state and the fix.
    pub(super) fn ensure_enabled(&self, key: &VersionKey, mek: &MekRef) -> Result<()> {
        match &key.kms_state {
            Some(KmsKeyState::Enabled) => Ok(()),
            Some(KmsKeyState::PendingDeletion) | Some(KmsKeyState::PendingReplicaDeletion) => {
                Err(TdeError::InvalidKeyState {
                    key: format!("mek:{mek}"),
                    state: KeyState::Deactivated,
                    operation: "use the active MEK version".into(),
                    hint: format!(
                        "its KMS key {} is PendingDeletion; cancel the deletion and enable it: `aws kms cancel-key-deletion --key-id {a}` then `aws kms enable-key --key-id {a}`",
                        key.arn,
                        a = key.arn
                    ),
                })
            }
            _ => Err(TdeError::InvalidKeyState {
                key: format!("mek:{mek}"),
                state: KeyState::Deactivated,
                operation: "use the active MEK version".into(),
                hint: format!(
                    "its KMS key {} is {}; enable it: `aws kms enable-key --key-id {}`",
                    key.arn,
                    key.kms_state_name(),
                    key.arn
                ),
            }),
        }
    }

    /// The key at the alias of `mek`, if an alias is there (made by an operator, or by an
    /// interrupted rotation).
    pub(super) async fn key_at_alias(&self, mek: &MekRef) -> Result<Option<VersionKey>> {
        let alias = self.alias_name(mek);
        let call = self.call("DescribeKey", &alias);
        match keys::describe(&self.client, &call, &alias).await {
            Ok(k) => Ok(Some(k)),
            Err(TdeError::KeyNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the KMS key of a new version: adopts a key already at its alias, else creates
    /// one (when allowed) with `policy_from`'s key policy, and puts the alias on it.
    pub(super) async fn new_version_key(
        &self,
        mek: &MekRef,
        policy_from: &str,
    ) -> Result<VersionKey> {
        if let Some(k) = self.key_at_alias(mek).await? {
            self.ensure_enabled(&k, mek)?;
            let call = self.call("DescribeKey", &k.arn);
            let meta = self
                .client
                .describe_key()
                .key_id(&k.arn)
                .send()
                .await
                .map_err(|e| errors::map(&call, e))?
                .key_metadata;
            let ok = meta.as_ref().is_some_and(symmetric_encryption_key);
            if !ok {
                return Err(TdeError::config(
                    "kms_config.alias_prefix",
                    format!(
                        "the key {} at alias {} is not a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key; point the alias at one",
                        k.arn,
                        self.alias_name(mek)
                    ),
                ));
            }
            tracing::info!(target: "heliosdb::tde::aws_kms", mek = %mek, arn = %k.arn, "adopting the key already at the version's alias");
            return Ok(k);
        }
        let alias = self.alias_name(mek);
        if !self.create_keys {
            return Err(TdeError::Provider {
                provider: self.description.clone(),
                message: format!(
                    "no KMS key is at alias {alias} and kms_config.create_keys is false"
                ),
                hint: format!(
                    "create the key and its alias, then run the command again: `aws kms create-key --region {r} --key-spec SYMMETRIC_DEFAULT --key-usage ENCRYPT_DECRYPT --description \"HeliosDB MEK {id} version {v}\"` and `aws kms create-alias --region {r} --alias-name {alias} --target-key-id <KeyId from create-key>`",
                    r = self.region,
                    id = mek.id,
                    v = mek.version.get()
                ),
            });
        }
        let policy = self
            .client
            .get_key_policy()
            .key_id(policy_from)
            .policy_name("default")
            .send()
            .await
            .map_err(|e| errors::map(&self.call("GetKeyPolicy", policy_from), e))?
            .policy;
        let created = self
            .client
            .create_key()
            .set_policy(policy)
            .description(format!(
                "HeliosDB MEK {} version {}",
                mek.id,
                mek.version.get()
            ))
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .set_tags(Some(keys::tags(mek, None)))
            .send()
            .await
            .map_err(|e| errors::map(&self.call("CreateKey", &alias), e))?;
        let meta = created.key_metadata.ok_or_else(|| {
            keys::protocol(
                &self.call("CreateKey", &alias),
                "CreateKey",
                "the answer has no KeyMetadata",
            )
        })?;
        let arn = meta
            .arn()
            .ok_or_else(|| {
                keys::protocol(
                    &self.call("CreateKey", &alias),
                    "CreateKey",
                    "the new key has no ARN",
                )
            })?
            .to_string();
        self.client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&arn)
            .send()
            .await
            .map_err(|e| errors::map(&self.call("CreateAlias", &alias), e))?;
        if self.enable_key_rotation {
            self.client
                .enable_key_rotation()
                .key_id(&arn)
                .set_rotation_period_in_days(
                    self.rotation_period_days
                        .and_then(|d| i32::try_from(d).ok()),
                )
                .send()
                .await
                .map_err(|e| errors::map(&self.call("EnableKeyRotation", &arn), e))?;
        }
        Ok(VersionKey {
            arn,
            state: None,
            kms_state: meta.key_state().cloned(),
            created_at: keys::timestamp(meta.creation_date()),
        })
    }

    /// Writes a version's state tag.
    pub(super) async fn tag_state(&self, mek: &MekRef, arn: &str, state: KeyState) -> Result<()> {
        self.client
            .tag_resource()
            .key_id(arn)
            .set_tags(Some(keys::tags(mek, Some(state))))
            .send()
            .await
            .map_err(|e| errors::map(&self.call("TagResource", arn), e))?;
        self.inventory.update(mek, |k| k.state = Some(state));
        Ok(())
    }

    /// Makes KMS's enabled/disabled state of a version's key follow its HeliosDB state:
    /// deactivated keys are disabled, every other state needs the key enabled.
    pub(super) async fn enforce(
        &self,
        mek: &MekRef,
        key: &VersionKey,
        state: KeyState,
    ) -> Result<()> {
        let disabled = key.kms_state == Some(KmsKeyState::Disabled);
        if state == KeyState::Deactivated && !disabled {
            if key.kms_state != Some(KmsKeyState::Enabled) {
                return Ok(());
            }
            self.client
                .disable_key()
                .key_id(keys::bare_key_id(&key.arn))
                .send()
                .await
                .map_err(|e| errors::map(&self.call("DisableKey", &key.arn), e))?;
            self.inventory
                .update(mek, |k| k.kms_state = Some(KmsKeyState::Disabled));
        } else if state != KeyState::Deactivated && disabled {
            self.client
                .enable_key()
                .key_id(keys::bare_key_id(&key.arn))
                .send()
                .await
                .map_err(|e| errors::map(&self.call("EnableKey", &key.arn), e))?;
            self.inventory
                .update(mek, |k| k.kms_state = Some(KmsKeyState::Enabled));
        }
        Ok(())
    }

    /// KMS's rotation of key material under one version's key.
    pub(super) async fn service_rotation(&self, arn: &str) -> Result<ServiceRotation> {
        let status = self
            .client
            .get_key_rotation_status()
            .key_id(arn)
            .send()
            .await
            .map_err(|e| errors::map(&self.call("GetKeyRotationStatus", arn), e))?;
        let mut last: Option<Timestamp> = None;
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_key_rotations()
                .key_id(arn)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| errors::map(&self.call("ListKeyRotations", arn), e))?;
            for r in page.rotations() {
                let t = keys::timestamp(r.rotation_date());
                if t.0 > 0 && last.is_none_or(|l| t > l) {
                    last = Some(t);
                }
            }
            match (page.truncated(), page.next_marker()) {
                (true, Some(m)) if !m.is_empty() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        let enabled = status.key_rotation_enabled();
        Ok(ServiceRotation::new(
            enabled,
            status
                .rotation_period_in_days()
                .and_then(|d| u32::try_from(d).ok())
                .filter(|_| enabled),
            last,
        ))
    }

    /// Version 1 of an MEK: `key_id` for the default MEK, else a new (or adopted) key.
    pub(super) async fn first_version(
        &self,
        mek: &MekRef,
        versions: &Versions,
    ) -> Result<VersionKey> {
        if mek.id == self.default_mek {
            if let Some(k) = versions.get(&MekVersion::FIRST) {
                if k.arn != self.default_key_arn {
                    return Err(self.v1_mismatch(&k.arn));
                }
                self.ensure_enabled(k, mek)?;
                return Ok(k.clone());
            }
            // The configured key becomes the active version 1: it must be usable before
            // the alias commits to it.
            let key = self.check_key(&self.default_key_arn).await?;
            self.ensure_enabled(&key, mek)?;
            let alias = self.alias_name(mek);
            self.client
                .create_alias()
                .alias_name(&alias)
                .target_key_id(&self.default_key_arn)
                .send()
                .await
                .map_err(|e| errors::map(&self.call("CreateAlias", &alias), e))?;
            return Ok(key);
        }
        if let Some(k) = versions.get(&MekVersion::FIRST) {
            self.ensure_enabled(k, mek)?;
            return Ok(k.clone());
        }
        self.new_version_key(mek, &self.default_key_arn).await
    }
}

/// Whether a key is a `SYMMETRIC_DEFAULT` key for `ENCRYPT_DECRYPT`. A field the answer leaves
/// out has KMS's default, which is that (AWS always sends both; moto leaves `KeyUsage` out for
/// a key created without it).
fn symmetric_encryption_key(meta: &aws_sdk_kms::types::KeyMetadata) -> bool {
    meta.key_spec()
        .is_none_or(|s| *s == KeySpec::SymmetricDefault)
        && meta
            .key_usage()
            .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt)
}
