//! Transit keys: their properties, the adoption rules, and the `vault:v<N>:` payload.

use heliosdb_tde_core::{DeletionProtection, MekId, Result, SecurityMode, TdeError};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a Transit key read (`GET transit/keys/<name>`) says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyProps {
    pub(crate) key_type: String,
    pub(crate) derived: bool,
    pub(crate) convergent: bool,
    pub(crate) exportable: bool,
    pub(crate) plaintext_backup: bool,
    /// `deletion_allowed`: whoever may delete the key may destroy every table key under it.
    pub(crate) deletion_allowed: bool,
    /// Version number to its creation time (Unix seconds).
    pub(crate) versions: BTreeMap<u32, u64>,
    pub(crate) min_decryption_version: u32,
    pub(crate) min_encryption_version: u32,
}

/// Whether Vault would let someone delete the Transit key `name`, and so every table key
/// wrapped under it.
pub(crate) fn deletion_protection(name: &str, key: &KeyProps) -> DeletionProtection {
    if key.deletion_allowed {
        DeletionProtection::new(
            false,
            format!(
                "the Transit key {name:?} has deletion_allowed=true; turn it off with \
                 `vault write transit/keys/{name}/config deletion_allowed=false`"
            ),
        )
    } else {
        DeletionProtection::new(
            true,
            format!("the Transit key {name:?} has deletion_allowed=false"),
        )
    }
}

fn flag(d: &Value, name: &str) -> bool {
    d[name].as_bool().unwrap_or(false)
}

fn number(d: &Value, name: &str) -> u32 {
    d[name]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

impl KeyProps {
    /// Parses the `data` of a key read; `None` if it is not a Transit key read.
    pub(crate) fn parse(v: &Value) -> Option<Self> {
        let d = &v["data"];
        let versions = d["keys"]
            .as_object()?
            .iter()
            .filter_map(|(k, t)| Some((k.parse().ok()?, t.as_u64().unwrap_or(0))))
            .collect();
        Some(Self {
            key_type: d["type"].as_str()?.to_string(),
            derived: flag(d, "derived"),
            convergent: flag(d, "convergent_encryption"),
            exportable: flag(d, "exportable"),
            plaintext_backup: flag(d, "allow_plaintext_backup"),
            deletion_allowed: flag(d, "deletion_allowed"),
            versions,
            min_decryption_version: number(d, "min_decryption_version"),
            min_encryption_version: number(d, "min_encryption_version"),
        })
    }

    /// The adoption rules: a key that cannot bind TEKs to their identity is refused; an
    /// exportable key (or one with plaintext backup) is refused in production and returns a
    /// warning in development.
    pub(crate) fn check(&self, name: &str, mode: SecurityMode) -> Result<Option<String>> {
        let refuse = |what: String| {
            Err(TdeError::SecurityPolicy(format!(
                "the Transit key {name:?} {what}"
            )))
        };
        if self.key_type != "aes256-gcm96" {
            return refuse(format!(
                "has type {}, not aes256-gcm96; create a new derived aes256-gcm96 key under another MEK id and migrate (`heliosdb-cli security mek rotate` cannot change a key's type)",
                self.key_type
            ));
        }
        if !self.derived {
            return refuse("was created with derived=false, so it cannot bind TEKs to their table and version, and Vault cannot change that; create a new key with derived=true (`bao write transit/keys/<name> type=aes256-gcm96 derived=true`) under another MEK id and migrate".into());
        }
        if self.convergent {
            return refuse("uses convergent_encryption=true, which makes equal TEKs under one context produce equal ciphertexts; create a new derived key with convergent_encryption=false under another MEK id and migrate".into());
        }
        if self.exportable || self.plaintext_backup {
            let what = if self.exportable {
                "exportable=true"
            } else {
                "allow_plaintext_backup=true"
            };
            let msg = format!(
                "the Transit key {name:?} has {what}: its MEK can leave Vault. Production mode refuses it; create a non-exportable derived key under another MEK id and migrate"
            );
            if mode.is_production() {
                return Err(TdeError::SecurityPolicy(msg));
            }
            return Ok(Some(msg));
        }
        if self.deletion_allowed {
            let msg = format!(
                "the Transit key {name:?} has deletion_allowed=true: deleting it would destroy \
                 every table key it wraps. Production mode refuses it; set it back with `bao \
                 write transit/keys/{name}/config deletion_allowed=false`"
            );
            if mode.is_production() {
                return Err(TdeError::SecurityPolicy(msg));
            }
            return Ok(Some(msg));
        }
        Ok(None)
    }
}

/// The version a Transit ciphertext names (`vault:v<N>:<base64>`), or a description of what is
/// wrong with it.
pub(crate) fn payload_version(payload: &[u8]) -> std::result::Result<u32, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_string())?;
    let rest = text
        .strip_prefix("vault:v")
        .ok_or_else(|| "the payload does not start with \"vault:v\"".to_string())?;
    let (n, b64) = rest
        .split_once(':')
        .ok_or_else(|| "the payload has no ':' after its version".to_string())?;
    let version: u32 = n
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("bad version {n:?} in the payload"))?;
    // 12-byte nonce + 32-byte TEK + 16-byte tag = 60 bytes = 80 base64 characters.
    if b64.len() != 80
        || !b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
    {
        return Err(format!(
            "the ciphertext after \"vault:v{version}:\" is {} characters, not the 80 base64 characters of a wrapped TEK",
            b64.len()
        ));
    }
    Ok(version)
}

/// The Transit key name of an MEK.
pub(crate) fn key_name(prefix: &str, id: &MekId) -> String {
    format!("{prefix}{id}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn props() -> KeyProps {
        KeyProps {
            key_type: "aes256-gcm96".into(),
            derived: true,
            convergent: false,
            exportable: false,
            plaintext_backup: false,
            deletion_allowed: false,
            versions: BTreeMap::from([(1, 0)]),
            min_decryption_version: 1,
            min_encryption_version: 0,
        }
    }

    #[test]
    fn adoption_rules() {
        let dev = SecurityMode::Development;
        let prod = SecurityMode::Production;
        assert_eq!(props().check("k", prod).unwrap(), None);
        let e = KeyProps {
            derived: false,
            ..props()
        }
        .check("k", dev)
        .unwrap_err();
        assert!(e.to_string().contains("derived=false"), "{e}");
        let e = KeyProps {
            convergent: true,
            ..props()
        }
        .check("k", dev)
        .unwrap_err();
        assert!(e.to_string().contains("convergent_encryption"), "{e}");
        let e = KeyProps {
            key_type: "rsa-4096".into(),
            ..props()
        }
        .check("k", dev)
        .unwrap_err();
        assert!(e.to_string().contains("rsa-4096"), "{e}");
        let exp = KeyProps {
            exportable: true,
            ..props()
        };
        assert!(exp.check("k", prod).is_err());
        assert!(
            exp.check("k", dev)
                .unwrap()
                .unwrap()
                .contains("exportable=true")
        );
        let backup = KeyProps {
            plaintext_backup: true,
            ..props()
        };
        assert!(backup.check("k", prod).is_err());
        assert!(backup.check("k", dev).unwrap().is_some());
        let deletable = KeyProps {
            deletion_allowed: true,
            ..props()
        };
        let e = deletable.check("k", prod).unwrap_err().to_string();
        assert!(e.contains("deletion_allowed=true"), "{e}");
        assert!(
            deletable
                .check("k", dev)
                .unwrap()
                .unwrap()
                .contains("deletion_allowed=false")
        );
    }

    #[test]
    fn payload_versions() {
        let good = format!("vault:v2:{}", "A".repeat(80));
        assert_eq!(payload_version(good.as_bytes()), Ok(2));
        assert!(payload_version(b"vault:v2:AAAA").is_err());
        assert!(payload_version(b"vaulx:v2:AAAA").is_err());
        assert!(payload_version(&[0xff, 0xfe]).is_err());
        assert!(payload_version(format!("vault:v0:{}", "A".repeat(80)).as_bytes()).is_err());
        assert!(payload_version(format!("vault:v1:{}", "!".repeat(80)).as_bytes()).is_err());
    }

    #[test]
    fn deletion_protection_follows_deletion_allowed() {
        let p = deletion_protection("heliosdb-mek", &props());
        assert!(p.protected, "{p:?}");
        let p = deletion_protection(
            "heliosdb-mek",
            &KeyProps {
                deletion_allowed: true,
                ..props()
            },
        );
        assert!(!p.protected);
        assert!(p.detail.contains("deletion_allowed=false"), "{}", p.detail);
    }
}
