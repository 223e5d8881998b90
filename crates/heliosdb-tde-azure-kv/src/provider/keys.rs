//! Key Vault calls on keys and versions: list, get, create, update, and the checks of a key
//! against the wrap algorithm.

use super::AzureKvMekProvider;
use crate::errors::Op;
use crate::names::{TAG_MEK_ID, TAG_MEK_VERSION, TAG_STATE, kid_version, state_tag};
use crate::versions::KeyVersion;
use azure_core::error::ErrorKind;
use azure_core::http::StatusCode;
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, Key, KeyAttributes, KeyClientGetKeyOptions,
    KeyClientUpdateKeyPropertiesOptions, KeyOperation, KeyType, UpdateKeyPropertiesParameters,
};
use futures_util::TryStreamExt as _;
use heliosdb_tde_core::{KeyState, MekId, MekRef, Result, TdeError, Timestamp};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr as _;

/// What a new version copies from the version before it.
#[derive(Clone, Debug)]
pub(crate) struct KeyShape {
    pub(crate) kty: KeyType,
    pub(crate) size: Option<i32>,
}

/// The outcome of creating or tagging a version.
pub(crate) struct Made {
    pub(crate) kid: String,
    pub(crate) created: Timestamp,
}

fn is_404(e: &azure_core::Error) -> bool {
    e.http_status() == Some(StatusCode::NotFound)
        || matches!(e.kind(), ErrorKind::HttpResponse { status, .. } if *status == StatusCode::NotFound)
}

fn ops_strings(ops: &[&str]) -> Vec<KeyOperation> {
    ops.iter()
        .map(|o| KeyOperation::from_str(o).unwrap_or_else(|e| match e {}))
        .collect()
}

fn made(key: &Key) -> Made {
    let kid = key
        .key
        .as_ref()
        .and_then(|k| k.kid.clone())
        .unwrap_or_default();
    let created = key
        .attributes
        .as_ref()
        .and_then(|a| a.created)
        .map(|t| Timestamp(u64::try_from(t.unix_timestamp().saturating_mul(1000)).unwrap_or(0)))
        .unwrap_or_else(Timestamp::now);
    Made { kid, created }
}

impl AzureKvMekProvider {
    /// Every version of key `name`, with its tags (`list_key_properties_versions`, every page);
    /// empty when the key does not exist.
    pub(crate) async fn list_versions(&self, name: &str) -> Result<Vec<KeyVersion>> {
        let fut = async {
            let mut pager = self.client.list_key_properties_versions(name, None)?;
            let mut out = Vec::new();
            while let Some(p) = pager.try_next().await? {
                if let Some(v) = KeyVersion::from_properties(&p, out.len()) {
                    out.push(v);
                }
            }
            azure_core::Result::Ok(out)
        };
        let fut = async {
            match fut.await {
                Err(e) if is_404(&e) => Ok(Vec::new()),
                other => other,
            }
        };
        self.run(Op::List, name, fut).await
    }

    /// One version of key `name` (never "latest": `version` must be set).
    pub(crate) async fn get_key(&self, name: &str, version: &str) -> Result<Key> {
        let version = self.explicit(name, version)?;
        self.run(Op::Get, name, async {
            self.client
                .get_key(
                    name,
                    Some(KeyClientGetKeyOptions {
                        key_version: Some(version.to_string()),
                        ..Default::default()
                    }),
                )
                .await?
                .into_model()
        })
        .await
    }

    /// Refuses an empty version id before any call: the SDK would use the latest version.
    pub(crate) fn explicit<'a>(&self, name: &str, version: &'a str) -> Result<&'a str> {
        if version.is_empty() {
            return Err(TdeError::InvalidArgument(format!(
                "no Key Vault version id for key {name}: HeliosDB never lets the vault pick the latest version"
            )));
        }
        Ok(version)
    }

    /// Checks a key version against the wrap algorithm: its type, RSA size, operations (it
    /// must allow what an active version needs), and, in production, that it is not
    /// exportable. Returns its shape.
    pub(crate) fn check_key(&self, name: &str, key: &Key, version: &str) -> Result<KeyShape> {
        let alg = self.settings.algorithm;
        let jwk = key.key.as_ref();
        let kty = jwk.and_then(|k| k.kty.clone());
        let kty_name = kty
            .as_ref()
            .map_or("unknown".to_string(), |k| k.to_string());
        let fits = match &kty {
            Some(KeyType::Rsa | KeyType::RsaHsm) => alg.is_rsa(),
            Some(KeyType::Oct | KeyType::OctHsm) => !alg.is_rsa(),
            _ => false,
        };
        if !fits {
            let need = if alg.is_rsa() {
                "an RSA or RSA-HSM key"
            } else {
                "an oct-HSM key (Managed HSM)"
            };
            return Err(TdeError::config(
                "kms_config.wrap_algorithm",
                format!(
                    "the Key Vault key {name} (version {version}) has key type {kty_name}, but kms_config.wrap_algorithm {alg} needs {need}; choose another key name or algorithm"
                ),
            ));
        }
        let mut size = None;
        if alg.is_rsa() {
            let n = jwk.and_then(|k| k.n.as_ref());
            let bits = n.map_or(0, |n| {
                let lead = n.iter().take_while(|b| **b == 0).count();
                let rest = &n[lead..];
                rest.first().map_or(0, |b| {
                    (rest.len() - 1) * 8 + (8 - b.leading_zeros() as usize)
                })
            });
            if bits < 2048 {
                return Err(TdeError::config(
                    "kms_config.key_name",
                    format!(
                        "the Key Vault key {name} (version {version}) is RSA with {bits} bits; HeliosDB needs at least 2048 (3072 recommended): create a larger key or choose another key name"
                    ),
                ));
            }
            size = i32::try_from(bits.div_ceil(8) * 8).ok();
        }
        let have: BTreeSet<String> = jwk
            .and_then(|k| k.key_ops.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let missing: Vec<&str> = alg
            .active_ops()
            .into_iter()
            .filter(|o| !have.contains(*o))
            .collect();
        if !missing.is_empty() {
            return Err(TdeError::config(
                "kms_config.key_name",
                format!(
                    "the Key Vault key {name} (version {version}) does not allow the operations {} that {alg} needs (it allows: {}); add them (`az keyvault key set-attributes --ops {}`) or choose another key name",
                    missing.join(", "),
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.iter().cloned().collect::<Vec<_>>().join(", ")
                    },
                    alg.active_ops().join(" ")
                ),
            ));
        }
        let exportable = key
            .attributes
            .as_ref()
            .and_then(|a| a.exportable)
            .unwrap_or(false);
        if exportable && self.mode.is_production() {
            return Err(TdeError::config(
                "kms_config.key_name",
                format!(
                    "the Key Vault key {name} (version {version}) is exportable; production mode needs a key whose material cannot leave the vault"
                ),
            ));
        }
        Ok(KeyShape {
            kty: kty.unwrap_or(KeyType::Rsa),
            size,
        })
    }

    /// The shape of a key HeliosDB creates from scratch.
    pub(crate) fn new_shape(&self) -> KeyShape {
        if self.settings.algorithm.is_rsa() {
            KeyShape {
                kty: if self.settings.hsm_protected {
                    KeyType::RsaHsm
                } else {
                    KeyType::Rsa
                },
                size: i32::try_from(self.settings.key_size).ok(),
            }
        } else {
            KeyShape {
                kty: KeyType::OctHsm,
                size: Some(256),
            }
        }
    }

    /// The tags of MEK version `mek` in `state`, over the version's other tags.
    pub(crate) fn tags(
        mek: &MekRef,
        state: KeyState,
        others: &BTreeMap<String, String>,
    ) -> HashMap<String, String> {
        let mut t: HashMap<String, String> =
            others.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        t.insert(TAG_MEK_ID.into(), mek.id.to_string());
        t.insert(TAG_MEK_VERSION.into(), mek.version.get().to_string());
        t.insert(TAG_STATE.into(), state_tag(state).into());
        t
    }

    /// The operations a version in `state` keeps: both for an active version, the unwrapping
    /// one otherwise.
    pub(crate) fn ops_for(&self, state: KeyState) -> Vec<KeyOperation> {
        let alg = self.settings.algorithm;
        if state == KeyState::Active {
            ops_strings(&alg.active_ops())
        } else {
            ops_strings(&[alg.unwrap_op()])
        }
    }

    /// Creates a new version of `name` (a new key if there is none) for `mek`, active.
    pub(crate) async fn create_version(
        &self,
        name: &str,
        mek: &MekRef,
        shape: &KeyShape,
    ) -> Result<Made> {
        let params = CreateKeyParameters {
            kty: Some(shape.kty.clone()),
            key_size: shape.size,
            key_ops: Some(self.ops_for(KeyState::Active)),
            key_attributes: Some(KeyAttributes {
                enabled: Some(true),
                ..Default::default()
            }),
            tags: Some(Self::tags(mek, KeyState::Active, &BTreeMap::new())),
            ..Default::default()
        };
        let key = self
            .run(Op::Create, name, async {
                self.client
                    .create_key(name, params.try_into()?, None)
                    .await?
                    .into_model()
            })
            .await?;
        let m = made(&key);
        if kid_version(&m.kid).is_none() {
            return Err(self.protocol(name, "create", "the new key has no versioned kid"));
        }
        Ok(m)
    }

    /// Sets a version's tags (its MEK version and `state`, over its other tags), operations and
    /// enabled flag in one update.
    pub(crate) async fn put_state(
        &self,
        name: &str,
        version: &KeyVersion,
        mek: &MekRef,
        state: KeyState,
    ) -> Result<Made> {
        let v = self.explicit(name, &version.id)?;
        let params = UpdateKeyPropertiesParameters {
            key_ops: Some(self.ops_for(state)),
            key_attributes: Some(KeyAttributes {
                enabled: Some(state != KeyState::Deactivated),
                ..Default::default()
            }),
            tags: Some(Self::tags(mek, state, &version.tags)),
            ..Default::default()
        };
        let key = self
            .run(Op::Update, name, async {
                self.client
                    .update_key_properties(
                        name,
                        params.try_into()?,
                        Some(KeyClientUpdateKeyPropertiesOptions {
                            key_version: Some(v.to_string()),
                            ..Default::default()
                        }),
                    )
                    .await?
                    .into_model()
            })
            .await?;
        let mut m = made(&key);
        if m.kid.is_empty() {
            m.kid = version.kid.clone();
        }
        m.created = version.created;
        Ok(m)
    }

    pub(crate) fn protocol(&self, name: &str, op: &str, what: &str) -> TdeError {
        TdeError::Provider {
            provider: self.description.clone(),
            message: format!("{op} of key {name}: {what}"),
            hint: "check that kms_config.vault_url is an Azure Key Vault or Managed HSM".into(),
        }
    }

    /// Every MEK id with a key in the vault: keys tagged `heliosdb-mek-id`, the default MEK's
    /// key, and `heliosdb-*` keys whose newest version is untagged but an older one is tagged.
    pub(crate) async fn list_mek_ids(&self) -> Result<Vec<MekId>> {
        let vault = self.settings.vault_url.clone();
        let keys = self
            .run(Op::List, &vault, async {
                let mut pager = self.client.list_key_properties(None)?;
                let mut out = Vec::new();
                while let Some(p) = pager.try_next().await? {
                    let name = p
                        .kid
                        .as_deref()
                        .and_then(|k| k.trim_end_matches('/').rsplit('/').next())
                        .unwrap_or_default()
                        .to_string();
                    let tag = p.tags.as_ref().and_then(|t| t.get(TAG_MEK_ID).cloned());
                    out.push((name, tag));
                }
                azure_core::Result::Ok(out)
            })
            .await?;
        let mut ids = BTreeSet::new();
        for (name, tag) in keys {
            let id = match tag {
                Some(t) => MekId::new(t).ok(),
                None if name.eq_ignore_ascii_case(&self.settings.key_name)
                    || name.starts_with("heliosdb-") =>
                {
                    self.list_versions(&name)
                        .await?
                        .iter()
                        .find_map(|v| v.mek_id_tag().map(str::to_string))
                        .and_then(|t| MekId::new(t).ok())
                }
                None => None,
            };
            if let Some(id) = id
                && self.key_name_for(&id).eq_ignore_ascii_case(&name)
                && self
                    .view(&id, false)
                    .await
                    .is_ok_and(|v| !v.numbered.is_empty())
            {
                ids.insert(id);
            }
        }
        Ok(ids.into_iter().collect())
    }
}
