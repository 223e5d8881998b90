//! Key metadata and lifecycle states.

use crate::error::{Result, TdeError};
use crate::ids::{KeyId, MekRef};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The tier of a key in the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyType {
    /// A master encryption key (MEK), held by a provider.
    Master,
    /// A table encryption key (TEK), stored wrapped under an MEK.
    Table,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Master => "master",
            KeyType::Table => "table",
        })
    }
}

/// The authenticated encryption algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum EncryptionAlgorithm {
    /// AES with a 256-bit key in Galois/Counter Mode, 96-bit nonces, 128-bit tags.
    #[default]
    #[serde(alias = "aes256gcm", alias = "aes-256-gcm", alias = "AES-256-GCM")]
    Aes256Gcm,
}

impl EncryptionAlgorithm {
    /// The algorithm's code in binary formats.
    pub fn code(self) -> u8 {
        match self {
            EncryptionAlgorithm::Aes256Gcm => 1,
        }
    }

    /// The algorithm with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(EncryptionAlgorithm::Aes256Gcm),
            _ => None,
        }
    }

    /// The key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            EncryptionAlgorithm::Aes256Gcm => 32,
        }
    }

    /// The standard name, for example `AES-256-GCM`.
    pub fn name(self) -> &'static str {
        match self {
            EncryptionAlgorithm::Aes256Gcm => "AES-256-GCM",
        }
    }
}

impl fmt::Display for EncryptionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EncryptionAlgorithm {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "aes256gcm" | "aes-256-gcm" | "aes_256_gcm" => Ok(EncryptionAlgorithm::Aes256Gcm),
            _ => Err(TdeError::config(
                "algorithm",
                format!("unknown algorithm {s:?}; the accepted value is Aes256Gcm (AES-256-GCM)"),
            )),
        }
    }
}

/// The lifecycle state of a key (after NIST SP 800-57 part 1, section 7).
///
/// ```text
///            rotate              verify + grace period
///   Active ─────────▶ DecryptOnly ─────────────────▶ Deactivated ─────▶ Destroyed
///     ▲                   │  ▲                          │
///     └─── rollback ──────┘  └──── reactivate ──────────┘
///   (any state but Destroyed) ──── suspected compromise ───▶ Compromised
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyState {
    /// In use: encrypts new data (or, for an MEK, wraps new TEKs) and decrypts.
    Active,
    /// Superseded by a newer version: still decrypts existing data, never encrypts.
    DecryptOnly,
    /// Taken out of service: neither encrypts nor decrypts. Can be reactivated to DecryptOnly.
    Deactivated,
    /// Suspected or known to be exposed: decrypts only, so data can be re-encrypted away from it.
    Compromised,
    /// Key material is gone. Terminal.
    Destroyed,
}

impl KeyState {
    /// The state's code in binary formats.
    pub fn code(self) -> u8 {
        match self {
            KeyState::Active => 1,
            KeyState::DecryptOnly => 2,
            KeyState::Deactivated => 3,
            KeyState::Compromised => 4,
            KeyState::Destroyed => 5,
        }
    }

    /// The state with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => KeyState::Active,
            2 => KeyState::DecryptOnly,
            3 => KeyState::Deactivated,
            4 => KeyState::Compromised,
            5 => KeyState::Destroyed,
            _ => return None,
        })
    }

    /// Whether a key in this state may encrypt (or wrap) new data.
    pub fn can_encrypt(self) -> bool {
        self == KeyState::Active
    }

    /// Whether a key in this state may decrypt (or unwrap) existing data.
    pub fn can_decrypt(self) -> bool {
        matches!(
            self,
            KeyState::Active | KeyState::DecryptOnly | KeyState::Compromised
        )
    }

    /// Whether the lifecycle allows moving from this state to `next`.
    pub fn can_transition_to(self, next: KeyState) -> bool {
        use KeyState::*;
        match (self, next) {
            (a, b) if a == b => true,
            (Destroyed, _) => false,
            (_, Compromised) => true,
            (Active, DecryptOnly | Deactivated) => true,
            (DecryptOnly, Active | Deactivated) => true,
            (Deactivated, DecryptOnly | Destroyed) => true,
            (Compromised, Deactivated | Destroyed) => true,
            _ => false,
        }
    }

    /// `Ok` if a key in this state may encrypt (or wrap); otherwise an error naming the key,
    /// its state and `operation`.
    pub fn ensure_can_encrypt(self, key: &dyn fmt::Display, operation: &str) -> Result<()> {
        if self.can_encrypt() {
            return Ok(());
        }
        Err(self.unusable(key, operation))
    }

    /// `Ok` if a key in this state may decrypt (or unwrap); otherwise an error naming the key,
    /// its state and `operation`.
    pub fn ensure_can_decrypt(self, key: &dyn fmt::Display, operation: &str) -> Result<()> {
        if self.can_decrypt() {
            return Ok(());
        }
        Err(self.unusable(key, operation))
    }

    fn unusable(self, key: &dyn fmt::Display, operation: &str) -> TdeError {
        TdeError::InvalidKeyState {
            key: key.to_string(),
            state: self,
            operation: operation.into(),
            hint: match self {
                KeyState::Destroyed => "its key material was destroyed".into(),
                _ => "use the active version; see `heliosdb-cli security mek-info`".into(),
            },
        }
    }

    /// Checks a transition and returns an error that explains a refused one.
    pub fn check_transition(self, next: KeyState, key: &dyn fmt::Display) -> Result<()> {
        if self.can_transition_to(next) {
            return Ok(());
        }
        Err(TdeError::InvalidKeyState {
            key: key.to_string(),
            state: self,
            operation: format!("move to {next}"),
            hint: match self {
                KeyState::Destroyed => "a destroyed key cannot come back".into(),
                KeyState::Active => "deactivate or retire it first".into(),
                _ => "see the key lifecycle in docs/key-lifecycle.md".into(),
            },
        })
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Deactivated => "deactivated",
            KeyState::Compromised => "compromised",
            KeyState::Destroyed => "destroyed",
        })
    }
}

/// How much a key has been used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    /// Encryptions (GCM invocations) performed with the key; this is the nonce budget count.
    pub encryptions: u64,
    /// Decryptions performed with the key.
    pub decryptions: u64,
    /// When the key was last used, if ever.
    pub last_used: Option<Timestamp>,
}

/// What is known about a key, without its material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    /// The key's identity.
    pub key_id: KeyId,
    /// Its lifecycle state.
    pub state: KeyState,
    /// Its algorithm.
    pub algorithm: EncryptionAlgorithm,
    /// For a TEK, the MEK version it is wrapped under.
    pub wrapped_by: Option<MekRef>,
    /// When the key was created.
    pub created_at: Timestamp,
    /// When the state last changed.
    pub state_changed_at: Timestamp,
    /// Usage counters.
    pub usage: UsageCounters,
}

impl KeyMetadata {
    /// Metadata for a key created now, in state [`KeyState::Active`].
    pub fn new_active(
        key_id: KeyId,
        algorithm: EncryptionAlgorithm,
        wrapped_by: Option<MekRef>,
    ) -> Self {
        let now = Timestamp::now();
        Self {
            key_id,
            state: KeyState::Active,
            algorithm,
            wrapped_by,
            created_at: now,
            state_changed_at: now,
            usage: UsageCounters::default(),
        }
    }

    /// Which tier the key belongs to.
    pub fn key_type(&self) -> KeyType {
        self.key_id.key_type()
    }

    /// Moves the key to `next` if the lifecycle allows it.
    pub fn transition(&mut self, next: KeyState) -> Result<()> {
        self.state.check_transition(next, &self.key_id)?;
        if self.state != next {
            self.state = next;
            self.state_changed_at = Timestamp::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TekId;

    const ALL: [KeyState; 5] = [
        KeyState::Active,
        KeyState::DecryptOnly,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Destroyed,
    ];

    #[test]
    fn codes_round_trip() {
        for s in ALL {
            assert_eq!(KeyState::from_code(s.code()), Some(s));
        }
        assert_eq!(KeyState::from_code(0), None);
        assert_eq!(KeyState::from_code(6), None);
        assert_eq!(
            EncryptionAlgorithm::from_code(1),
            Some(EncryptionAlgorithm::Aes256Gcm)
        );
        assert_eq!(EncryptionAlgorithm::from_code(0), None);
    }

    #[test]
    fn only_active_encrypts() {
        for s in ALL {
            assert_eq!(s.can_encrypt(), s == KeyState::Active, "{s}");
        }
        assert!(KeyState::DecryptOnly.can_decrypt());
        assert!(KeyState::Compromised.can_decrypt());
        assert!(!KeyState::Deactivated.can_decrypt());
        assert!(!KeyState::Destroyed.can_decrypt());
    }

    #[test]
    fn lifecycle() {
        use KeyState::*;
        assert!(Active.can_transition_to(DecryptOnly));
        assert!(DecryptOnly.can_transition_to(Active), "rollback");
        assert!(Deactivated.can_transition_to(DecryptOnly), "reactivate");
        assert!(!Deactivated.can_transition_to(Active));
        assert!(
            !Active.can_transition_to(Destroyed),
            "destroy needs deactivation first"
        );
        for s in ALL {
            assert!(!Destroyed.can_transition_to(s) || s == Destroyed);
            if s != Destroyed {
                assert!(s.can_transition_to(Compromised));
            }
        }
        let tek: TekId = "users@v1".parse().unwrap();
        let mut meta = KeyMetadata::new_active(tek.into(), EncryptionAlgorithm::Aes256Gcm, None);
        meta.transition(DecryptOnly).unwrap();
        meta.transition(Deactivated).unwrap();
        let err = meta.transition(Active).unwrap_err();
        assert!(err.to_string().contains("tek:users@v1"), "{err}");
        assert_eq!(meta.state, Deactivated);
    }

    #[test]
    fn usability_errors_name_the_key_and_operation() {
        assert!(
            KeyState::Active
                .ensure_can_encrypt(&"mek:m@v1", "wrap a TEK")
                .is_ok()
        );
        let e = KeyState::DecryptOnly
            .ensure_can_encrypt(&"mek:m@v1", "wrap a TEK")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wrap a TEK") && e.contains("mek:m@v1") && e.contains("decrypt-only"),
            "{e}"
        );
        assert!(
            KeyState::DecryptOnly
                .ensure_can_decrypt(&"k", "unwrap")
                .is_ok()
        );
        assert!(
            KeyState::Deactivated
                .ensure_can_decrypt(&"k", "unwrap")
                .is_err()
        );
    }

    #[test]
    fn algorithm_parsing() {
        for s in ["Aes256Gcm", "aes-256-gcm", "AES_256_GCM"] {
            assert_eq!(
                s.parse::<EncryptionAlgorithm>().unwrap(),
                EncryptionAlgorithm::Aes256Gcm
            );
        }
        let err = "chacha20".parse::<EncryptionAlgorithm>().unwrap_err();
        assert!(err.to_string().contains("algorithm"), "{err}");
    }
}
