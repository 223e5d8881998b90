//! The MEK versions KMS holds for this provider: one KMS key per version, found through its
//! alias, its lifecycle state in a tag on the key. Reads are cached for at most
//! [`CACHE_TTL`]; this process's own changes update the cache at once.

use crate::errors::{self, Call};
use crate::settings::{alias_dir, parse_alias};
use aws_sdk_kms::Client;
use aws_sdk_kms::types::{KeyState as KmsKeyState, Tag};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekLifecycle, MekRef, MekVersion, MekVersionInfo, Result,
    TdeError, Timestamp,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a read of an MEK's versions is trusted.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(10);

/// Tag keys on each version's KMS key.
pub(crate) const TAG_MEK_ID: &str = "heliosdb:mek_id";
pub(crate) const TAG_MEK_VERSION: &str = "heliosdb:mek_version";
pub(crate) const TAG_STATE: &str = "heliosdb:state";

/// One version's KMS key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VersionKey {
    /// The key's ARN.
    pub(crate) arn: String,
    /// Its HeliosDB state, from the tag; `None` for a key at an alias that HeliosDB has not
    /// adopted yet (made by an operator, or left by an interrupted rotation).
    pub(crate) state: Option<KeyState>,
    /// KMS's own state of the key (`Enabled`, `Disabled`, `PendingDeletion`...).
    pub(crate) kms_state: Option<KmsKeyState>,
    /// When KMS created the key.
    pub(crate) created_at: Timestamp,
}

impl VersionKey {
    pub(crate) fn kms_state_name(&self) -> &str {
        self.kms_state
            .as_ref()
            .map_or("unknown", KmsKeyState::as_str)
    }
}

/// The versions of one MEK, by version number.
pub(crate) type Versions = BTreeMap<MekVersion, VersionKey>;

/// The lifecycle view of an MEK's adopted versions, with at most one active (the newest).
pub(crate) fn lifecycle(id: &MekId, versions: &Versions) -> MekLifecycle {
    let mut lc = MekLifecycle::from_versions(versions.iter().filter_map(|(v, k)| {
        let state = k.state?;
        let mut info = MekVersionInfo::new(
            MekRef::new(id.clone(), *v),
            state,
            EncryptionAlgorithm::Aes256Gcm,
            k.created_at,
        );
        info.key_location = Some(k.arn.clone());
        Some(info)
    }));
    // Two active versions are what a crash between activating a new version and demoting the
    // old one leaves: the newest wins, as the next rotation step would have made it.
    lc.normalize_active();
    lc
}

/// The key id inside a key ARN (`arn:...:key/<id>`); the input itself when it is not one. AWS
/// takes either form everywhere; some KMS-compatible servers (moto) answer `DisableKey` and
/// `EnableKey` only for the bare id.
pub(crate) fn bare_key_id(arn: &str) -> &str {
    match arn.rsplit_once(":key/") {
        Some((_, id)) if arn.starts_with("arn:") && !id.is_empty() => id,
        _ => arn,
    }
}

pub(crate) fn timestamp(t: Option<&aws_sdk_kms::primitives::DateTime>) -> Timestamp {
    t.map_or(Timestamp(0), |t| {
        let secs = u64::try_from(t.secs()).unwrap_or(0);
        Timestamp(secs.saturating_mul(1000) + u64::from(t.subsec_nanos() / 1_000_000))
    })
}

pub(crate) fn state_tag(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::DecryptOnly => "decrypt_only",
        KeyState::Deactivated => "deactivated",
        KeyState::Compromised => "compromised",
        _ => "destroyed",
    }
}

fn parse_state(tag: &str) -> Option<KeyState> {
    Some(match tag {
        "active" => KeyState::Active,
        "decrypt_only" => KeyState::DecryptOnly,
        "deactivated" => KeyState::Deactivated,
        "compromised" => KeyState::Compromised,
        "destroyed" => KeyState::Destroyed,
        _ => return None,
    })
}

/// The tags written on a version's key: its identity, and its state when `state` is given.
///
/// A new key is created with its identity only; the state tag is written last, once the alias
/// is in place, so it is the commit point of a new version: a key at an alias without a state
/// tag (an interrupted rotation, or a key an operator made) is adopted by the next rotation.
pub(crate) fn tags(mek: &MekRef, state: Option<KeyState>) -> Vec<Tag> {
    [
        Some((TAG_MEK_ID, mek.id.to_string())),
        Some((TAG_MEK_VERSION, mek.version.get().to_string())),
        state.map(|s| (TAG_STATE, state_tag(s).to_string())),
    ]
    .into_iter()
    .flatten()
    .filter_map(|(k, v)| Tag::builder().tag_key(k).tag_value(v).build().ok())
    .collect()
}

struct Cached {
    versions: Versions,
    at: Instant,
}

/// Reads and caches MEK versions from KMS.
pub(crate) struct Inventory {
    cache: Mutex<HashMap<MekId, Cached>>,
}

impl Inventory {
    pub(crate) fn new() -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MekId, Cached>> {
        // A panic elsewhere never leaves the map inconsistent: entries are replaced whole.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached versions of `id`, if read less than [`CACHE_TTL`] ago.
    pub(crate) fn cached(&self, id: &MekId) -> Option<Versions> {
        self.lock()
            .get(id)
            .filter(|c| c.at.elapsed() < CACHE_TTL)
            .map(|c| c.versions.clone())
    }

    /// Replaces the cached versions of `id` (after a read, or after this process changed them).
    pub(crate) fn store(&self, id: &MekId, versions: Versions) {
        self.lock().insert(
            id.clone(),
            Cached {
                versions,
                at: Instant::now(),
            },
        );
    }

    /// Updates one cached version in place, if `id` is cached.
    pub(crate) fn update(&self, mek: &MekRef, f: impl FnOnce(&mut VersionKey)) {
        if let Some(c) = self.lock().get_mut(&mek.id)
            && let Some(k) = c.versions.get_mut(&mek.version)
        {
            f(k);
        }
    }

    /// Forgets the cached versions of `id`.
    pub(crate) fn forget(&self, id: &MekId) {
        self.lock().remove(id);
    }
}

/// Every alias under `prefix`, with its target key id: `ListAliases`, every page.
pub(crate) async fn aliases(
    client: &Client,
    call: &Call<'_>,
    prefix: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = client
            .list_aliases()
            .limit(100)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| {
                errors::map(
                    &Call {
                        action: "ListAliases",
                        ..*call
                    },
                    e,
                )
            })?;
        for a in page.aliases() {
            if let Some(name) = a.alias_name()
                && name.starts_with(prefix)
            {
                out.push((name.to_string(), a.target_key_id().map(str::to_string)));
            }
        }
        match (page.truncated(), page.next_marker()) {
            (true, Some(m)) if !m.is_empty() => marker = Some(m.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// Reads the versions of one MEK from KMS: its aliases, and for each the key (`DescribeKey`)
/// and its tags (`ListResourceTags`).
pub(crate) async fn read(
    client: &Client,
    call: &Call<'_>,
    prefix: &str,
    id: &MekId,
) -> Result<Versions> {
    let dir = alias_dir(prefix, id);
    let mut versions = Versions::new();
    for (alias, _) in aliases(client, call, &dir).await? {
        let Some(mek) = parse_alias(prefix, &alias) else {
            continue;
        };
        if &mek.id != id {
            continue;
        }
        let key = describe(client, call, &alias).await?;
        versions.insert(mek.version, key);
    }
    Ok(versions)
}

/// One key, by alias, ARN or id: its ARN, KMS state, creation time and HeliosDB state tag.
pub(crate) async fn describe(client: &Client, call: &Call<'_>, key: &str) -> Result<VersionKey> {
    let meta = client
        .describe_key()
        .key_id(key)
        .send()
        .await
        .map_err(|e| {
            errors::map(
                &Call {
                    action: "DescribeKey",
                    target: key,
                    ..*call
                },
                e,
            )
        })?
        .key_metadata
        .ok_or_else(|| protocol(call, "DescribeKey", "the answer has no KeyMetadata"))?;
    let arn = meta
        .arn()
        .ok_or_else(|| protocol(call, "DescribeKey", "the key has no ARN"))?
        .to_string();
    let tags = client
        .list_resource_tags()
        .key_id(&arn)
        .send()
        .await
        .map_err(|e| {
            errors::map(
                &Call {
                    action: "ListResourceTags",
                    target: &arn,
                    ..*call
                },
                e,
            )
        })?;
    let state = tags
        .tags()
        .iter()
        .find(|t| t.tag_key() == TAG_STATE)
        .and_then(|t| parse_state(t.tag_value()));
    Ok(VersionKey {
        arn,
        state,
        kms_state: meta.key_state().cloned(),
        created_at: timestamp(meta.creation_date()),
    })
}

pub(crate) fn protocol(call: &Call<'_>, action: &str, what: &str) -> TdeError {
    TdeError::Provider {
        provider: call.provider.to_string(),
        message: format!("{action}: {what}"),
        hint: "check that kms_config.endpoint is a KMS endpoint (or leave it out for AWS's own)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_key_ids_come_out_of_key_arns_only() {
        assert_eq!(
            bare_key_id("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab"),
            "1234abcd-12ab"
        );
        assert_eq!(bare_key_id("1234abcd-12ab"), "1234abcd-12ab");
        assert_eq!(bare_key_id("alias/x"), "alias/x");
        assert_eq!(
            bare_key_id("arn:aws:kms:us-east-1:111122223333:alias/x"),
            "arn:aws:kms:us-east-1:111122223333:alias/x"
        );
    }
}
