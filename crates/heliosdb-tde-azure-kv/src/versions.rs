//! The versions of one MEK's key as Key Vault lists them, and what they mean for HeliosDB:
//! tagged versions by number, versions made outside HeliosDB (no tags) numbered after them and
//! reported `DecryptOnly`. Reads are cached for at most [`CACHE_TTL`].

use crate::names::{TAG_MEK_ID, TAG_MEK_VERSION, TAG_STATE, kid_version, parse_state};
use azure_security_keyvault_keys::models::KeyProperties;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekLifecycle, MekRef, MekVersion, MekVersionInfo,
    TdeError, Timestamp,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a read of an MEK's versions is trusted.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(10);

/// One Key Vault version of a key, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyVersion {
    /// The Key Vault version id.
    pub(crate) id: String,
    /// The key id with the version.
    pub(crate) kid: String,
    /// Every tag of the version.
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) enabled: bool,
    /// When Key Vault created it (milliseconds; Key Vault keeps seconds).
    pub(crate) created: Timestamp,
    /// Key Vault's deletion recovery level (`Recoverable+Purgeable`...).
    pub(crate) recovery_level: Option<String>,
    /// Its position in the listing (orders versions created in the same second).
    pub(crate) index: usize,
}

impl KeyVersion {
    /// Reads one listed item; `None` when it has no versioned kid.
    pub(crate) fn from_properties(p: &KeyProperties, index: usize) -> Option<Self> {
        let kid = p.kid.clone()?;
        let id = kid_version(&kid)?.to_string();
        let attrs = p.attributes.as_ref();
        let created = attrs
            .and_then(|a| a.created)
            .map(|t| {
                let ms = t.unix_timestamp().saturating_mul(1000);
                Timestamp(u64::try_from(ms).unwrap_or(0))
            })
            .unwrap_or(Timestamp(0));
        Some(Self {
            id,
            kid,
            tags: p
                .tags
                .as_ref()
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            enabled: attrs.and_then(|a| a.enabled).unwrap_or(true),
            created,
            recovery_level: attrs
                .and_then(|a| a.recovery_level.as_ref())
                .map(|r| r.to_string()),
            index,
        })
    }

    /// What Key Vault records about this version, for `mek-info`: its id, enabled flag and
    /// tags.
    pub(crate) fn detail(&self) -> String {
        let enabled = if self.enabled { "enabled" } else { "disabled" };
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let tags = if tags.is_empty() {
            "no tags".to_string()
        } else {
            format!("tags {}", tags.join(", "))
        };
        let origin = if self.number().is_none() {
            " (made outside HeliosDB: no version tag)"
        } else {
            ""
        };
        format!("Key Vault version {}; {enabled}; {tags}{origin}", self.id)
    }

    pub(crate) fn mek_id_tag(&self) -> Option<&str> {
        self.tags.get(TAG_MEK_ID).map(String::as_str)
    }

    /// The MEK version number tag, if it is a valid number.
    pub(crate) fn number(&self) -> Option<MekVersion> {
        self.tags
            .get(TAG_MEK_VERSION)
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(|v| MekVersion::new(v).ok())
    }

    fn order(&self) -> (Timestamp, usize) {
        (self.created, self.index)
    }
}

/// The HeliosDB view of one MEK's key versions.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// Every version HeliosDB numbers: tagged ones by their tag, untagged ones after them.
    pub(crate) numbered: BTreeMap<MekVersion, Vec<KeyVersion>>,
    /// The numbers given to untagged versions (made outside HeliosDB), oldest first.
    pub(crate) untagged: Vec<MekVersion>,
    /// Every listed version, as listed.
    pub(crate) all: Vec<KeyVersion>,
}

impl View {
    /// Builds the view. Fails when a version is tagged for another MEK id: the key is not
    /// this MEK's.
    pub(crate) fn build(id: &MekId, key: &str, all: Vec<KeyVersion>) -> Result<Self, TdeError> {
        if let Some(other) = all
            .iter()
            .filter_map(KeyVersion::mek_id_tag)
            .find(|t| *t != id.as_str())
        {
            return Err(TdeError::config(
                "kms_config.key_name",
                format!(
                    "the Key Vault key {key} is tagged {TAG_MEK_ID}={other}, but it would hold MEK {id}; a key is never shared between MEKs: choose another key name (or fix the tag if it is wrong)"
                ),
            ));
        }
        let mut numbered: BTreeMap<MekVersion, Vec<KeyVersion>> = BTreeMap::new();
        let mut rest = Vec::new();
        for v in &all {
            match (v.mek_id_tag(), v.number()) {
                (Some(_), Some(n)) => numbered.entry(n).or_default().push(v.clone()),
                _ => rest.push(v.clone()),
            }
        }
        let mut untagged = Vec::new();
        // Before adoption there is no MEK version at all; afterwards, untagged versions older
        // than version 1 are the key's history from before HeliosDB adopted it.
        let first = numbered
            .values()
            .next()
            .and_then(|vs| vs.iter().map(KeyVersion::order).min());
        if let Some(first) = first {
            rest.retain(|v| v.order() > first);
            rest.sort_by_key(KeyVersion::order);
            let mut next = numbered.keys().next_back().copied();
            for v in rest {
                let Some(n) = next.and_then(|n| n.next().ok()) else {
                    break;
                };
                numbered.insert(n, vec![v]);
                untagged.push(n);
                next = Some(n);
            }
        }
        Ok(Self {
            numbered,
            untagged,
            all,
        })
    }

    /// Two versions tagged with the same number (two rotations at once), as an error naming
    /// both.
    pub(crate) fn duplicate(&self, id: &MekId, key: &str, provider: &str) -> Option<TdeError> {
        self.numbered.iter().find(|(_, vs)| vs.len() > 1).map(|(n, vs)| {
            let ids: Vec<&str> = vs.iter().map(|v| v.id.as_str()).collect();
            TdeError::Provider {
                provider: provider.to_string(),
                message: format!(
                    "two Key Vault versions of key {key} are tagged as version {n} of MEK {id}: {} (two rotations ran at once)",
                    ids.join(" and ")
                ),
                hint: format!(
                    "keep the one that wrapped TEKs (`heliosdb-cli security mek verify`) and remove the {TAG_MEK_VERSION} tag from the other (`az keyvault key set-attributes --name {key} --version <id> --tags {TAG_MEK_ID}={id}`); nothing was changed"
                ),
            }
        })
    }

    /// Whether `v` is a version HeliosDB has not tagged.
    pub(crate) fn is_untagged(&self, v: MekVersion) -> bool {
        self.untagged.contains(&v)
    }

    /// The (first) key version of MEK version `v`.
    pub(crate) fn get(&self, v: MekVersion) -> Option<&KeyVersion> {
        self.numbered.get(&v).and_then(|vs| vs.first())
    }

    /// The state of MEK version `v`: its tag (untagged versions are `DecryptOnly`; a tagged
    /// version without a readable state tag is `DecryptOnly` too).
    pub(crate) fn state(&self, v: MekVersion) -> Option<KeyState> {
        let kv = self.get(v)?;
        if self.is_untagged(v) {
            return Some(KeyState::DecryptOnly);
        }
        Some(
            kv.tags
                .get(TAG_STATE)
                .and_then(|s| parse_state(s))
                .unwrap_or(KeyState::DecryptOnly),
        )
    }

    /// The lifecycle of the MEK's versions, with at most one active (the newest).
    pub(crate) fn lifecycle(&self, id: &MekId) -> MekLifecycle {
        let mut lc = MekLifecycle::from_versions(self.numbered.iter().filter_map(|(n, vs)| {
            let kv = vs.first()?;
            let mut info = MekVersionInfo::new(
                MekRef::new(id.clone(), *n),
                self.state(*n)?,
                EncryptionAlgorithm::Aes256Gcm,
                kv.created,
            );
            info.key_location = Some(kv.kid.clone());
            info.service_detail = Some(kv.detail());
            Some(info)
        }));
        lc.normalize_active();
        lc
    }

    /// The newest version of the key in Key Vault (the "current version").
    pub(crate) fn newest(&self) -> Option<&KeyVersion> {
        self.all.iter().max_by_key(|v| v.order())
    }

    /// The version `generate_mek` adopts as version 1 when the key exists without HeliosDB
    /// tags: the newest enabled one.
    pub(crate) fn adoption_candidate(&self) -> Option<&KeyVersion> {
        self.all
            .iter()
            .filter(|v| v.enabled)
            .max_by_key(|v| v.order())
    }

    /// The Key Vault version ids tagged as MEK version `v` (unwrap accepts any of them).
    pub(crate) fn ids_of(&self, v: MekVersion) -> Vec<&str> {
        self.numbered
            .get(&v)
            .map(|vs| vs.iter().map(|k| k.id.as_str()).collect())
            .unwrap_or_default()
    }
}

/// Whether a recovery level means purge protection is on, and the detail for `mek_info`.
pub(crate) fn deletion_protection(level: &str) -> (bool, String) {
    let protected = !level.contains("Purgeable");
    let detail = if protected {
        format!(
            "recovery level {level}: purge protection is on; a deleted key can be recovered until its retention period ends"
        )
    } else {
        format!(
            "recovery level {level}: purge protection is off, so a deleted key can be purged for good; turn it on: `az keyvault update --name <vault> --enable-purge-protection true`"
        )
    };
    (protected, detail)
}

struct Cached {
    versions: Vec<KeyVersion>,
    at: Instant,
}

/// The cache of listed versions, by MEK id.
#[derive(Default)]
pub(crate) struct Inventory {
    cache: Mutex<HashMap<MekId, Cached>>,
}

impl Inventory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MekId, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached versions of `id`, if read less than [`CACHE_TTL`] ago.
    pub(crate) fn cached(&self, id: &MekId) -> Option<Vec<KeyVersion>> {
        self.lock()
            .get(id)
            .filter(|c| c.at.elapsed() < CACHE_TTL)
            .map(|c| c.versions.clone())
    }

    /// Replaces the cached versions of `id`.
    pub(crate) fn store(&self, id: &MekId, versions: Vec<KeyVersion>) {
        self.lock().insert(
            id.clone(),
            Cached {
                versions,
                at: Instant::now(),
            },
        );
    }

    /// Forgets the cached versions of `id`.
    pub(crate) fn forget(&self, id: &MekId) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
#[path = "versions_tests.rs"]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
