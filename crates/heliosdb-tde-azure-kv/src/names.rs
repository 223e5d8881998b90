//! Key names and tags: how an MEK id maps to a Key Vault key, and the tags HeliosDB writes on
//! each key version.

use heliosdb_tde_core::{KeyState, MekId};
use sha2::{Digest, Sha256};

/// Tag naming the exact MEK id a key belongs to (on every version HeliosDB uses).
pub(crate) const TAG_MEK_ID: &str = "heliosdb-mek-id";
/// Tag holding the MEK version number of one key version.
pub(crate) const TAG_MEK_VERSION: &str = "heliosdb-mek-version";
/// Tag holding the HeliosDB lifecycle state of one key version.
pub(crate) const TAG_STATE: &str = "heliosdb-state";

/// The longest key name Key Vault accepts.
pub(crate) const MAX_KEY_NAME: usize = 127;

/// The Key Vault key name of `mek`: `default_key_name` for the default MEK, else
/// `heliosdb-<id lowercased, '_' and '.' written '-'>-<first 8 hex digits of SHA-256(id)>`.
///
/// Key Vault names allow `0-9 a-z A-Z -` only and compare case-insensitively, while MEK ids
/// allow `_` and `.` and are case-sensitive: the hash suffix keeps ids that differ only in case
/// or in `_`/`.`/`-` apart. Every key also carries the tag `heliosdb-mek-id=<exact id>`, checked
/// before the key is used.
///
/// ```
/// use heliosdb_tde_azure_kv::mek_key_name;
/// use heliosdb_tde_core::MekId;
/// let default = MekId::new("master_key_001").unwrap();
/// assert_eq!(mek_key_name("heliosdb-mek", &default, &default), "heliosdb-mek");
/// let other = MekId::new("Orders.Key_2").unwrap();
/// let name = mek_key_name("heliosdb-mek", &default, &other);
/// assert!(name.starts_with("heliosdb-orders-key-2-"), "{name}");
/// assert_eq!(name.len(), "heliosdb-orders-key-2-".len() + 8);
/// ```
pub fn mek_key_name(default_key_name: &str, default_mek: &MekId, mek: &MekId) -> String {
    if mek == default_mek {
        return default_key_name.to_string();
    }
    let digest = Sha256::digest(mek.as_str().as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let body: String = mek
        .as_str()
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c if c.is_ascii_alphanumeric() || c == '-' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    format!("heliosdb-{body}-{hex}")
}

/// Whether `name` is a valid Key Vault key name: 1-127 characters of `0-9 a-z A-Z -`.
pub(crate) fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The value of the state tag.
pub(crate) fn state_tag(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "Active",
        KeyState::DecryptOnly => "DecryptOnly",
        KeyState::Deactivated => "Deactivated",
        KeyState::Compromised => "Compromised",
        _ => "Destroyed",
    }
}

/// The state a state tag names, if it is one.
pub(crate) fn parse_state(tag: &str) -> Option<KeyState> {
    Some(match tag {
        "Active" => KeyState::Active,
        "DecryptOnly" => KeyState::DecryptOnly,
        "Deactivated" => KeyState::Deactivated,
        "Compromised" => KeyState::Compromised,
        _ => return None,
    })
}

/// The Key Vault version id inside a key id (`https://<vault>/keys/<name>/<version>`): the
/// last path segment after `keys/<name>/`; `None` when the kid has no version.
///
/// Parsed here rather than with the SDK's `ResourceExt`, which requires `keys` to be the first
/// path segment.
pub(crate) fn kid_version(kid: &str) -> Option<&str> {
    let path = kid.split(['?', '#']).next()?;
    let segs: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(3).collect();
    match segs.as_slice() {
        [version, _name, "keys"] if valid_version_id(version) => Some(version),
        _ => None,
    }
}

/// Whether `v` looks like a Key Vault version id: 1-64 ASCII alphanumerics (real ones are 32
/// lowercase hex digits).
pub(crate) fn valid_version_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> MekId {
        MekId::new(s).unwrap()
    }

    #[test]
    fn default_mek_uses_the_configured_name_and_others_a_derived_one() {
        let d = id("master_key_001");
        assert_eq!(mek_key_name("my-key", &d, &d), "my-key");
        let n = mek_key_name("my-key", &d, &id("tenant_A.key"));
        assert!(n.starts_with("heliosdb-tenant-a-key-"), "{n}");
        assert!(valid_key_name(&n), "{n}");
        // Ids that collapse to the same body differ by the hash.
        let a = mek_key_name("k", &d, &id("a_b"));
        let b = mek_key_name("k", &d, &id("a.b"));
        let c = mek_key_name("k", &d, &id("A_B"));
        assert_ne!(a, b);
        assert_ne!(a.to_ascii_lowercase(), c.to_ascii_lowercase());
        // Known answer: SHA-256("a_b") starts with these 4 bytes.
        let digest = Sha256::digest(b"a_b");
        assert!(a.ends_with(&format!(
            "{:02x}{:02x}{:02x}{:02x}",
            digest[0], digest[1], digest[2], digest[3]
        )));
    }

    #[test]
    fn the_longest_mek_id_still_makes_a_valid_name() {
        let long = "x".repeat(heliosdb_tde_core::ids::MAX_MEK_ID_LEN);
        let n = mek_key_name("k", &id("d"), &id(&long));
        assert!(valid_key_name(&n), "{} chars", n.len());
    }

    #[test]
    fn key_names_follow_key_vault_rules() {
        assert!(valid_key_name("heliosdb-mek-1"));
        assert!(!valid_key_name(""));
        assert!(!valid_key_name("a_b"));
        assert!(!valid_key_name("a.b"));
        assert!(!valid_key_name(&"a".repeat(128)));
        assert!(valid_key_name(&"a".repeat(127)));
    }

    #[test]
    fn state_tags_round_trip() {
        for s in [
            KeyState::Active,
            KeyState::DecryptOnly,
            KeyState::Deactivated,
            KeyState::Compromised,
        ] {
            assert_eq!(parse_state(state_tag(s)), Some(s));
        }
        assert_eq!(parse_state("active"), None);
    }

    #[test]
    fn version_ids_come_out_of_kids() {
        assert_eq!(
            kid_version("https://v.vault.azure.net/keys/k/0123abcd"),
            Some("0123abcd")
        );
        assert_eq!(
            kid_version("https://v.kv.localhost:8443/prefix/keys/k/ab12"),
            Some("ab12")
        );
        assert_eq!(kid_version("https://v.vault.azure.net/keys/k"), None);
        assert_eq!(kid_version("https://v.vault.azure.net/keys/k/"), None);
        assert_eq!(kid_version("garbage"), None);
    }
}
