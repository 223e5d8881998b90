//! Key material: fixed-size, zeroized on drop, never `Clone`, never printed.
//!
//! The bytes live in a slot of the locked key arena ([`crate::memory`]): a page that is locked
//! in RAM, left out of core dumps and zero in a forked child. The slot is overwritten with
//! zeros when the value is dropped, and moving a key around moves only a pointer, so it leaves
//! no copies on the stack. None of these types
//! implements `Clone`, `Copy`, `PartialEq`, `Display` or serde traits, and their `Debug` output
//! shows identity and algorithm only; tests check that no key byte appears in it.

use crate::error::{Result, TdeError};
use crate::ids::{MekRef, TekId};
use crate::memory::Slot;
use crate::metadata::EncryptionAlgorithm;
use std::fmt;

/// Length of every key in the hierarchy: 256 bits.
pub const KEY_LEN: usize = 32;

/// 32 secret bytes in the locked key arena, zeroized on drop.
///
/// Key material is not `Clone`:
///
/// ```compile_fail
/// fn needs_clone<T: Clone>() {}
/// needs_clone::<heliosdb_tde_core::KeyBytes>();
/// ```
///
/// ```compile_fail
/// fn needs_clone<T: Clone>() {}
/// needs_clone::<heliosdb_tde_core::TableKey>();
/// ```
pub struct KeyBytes(Slot);

impl KeyBytes {
    /// Fresh key bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut slot = Slot::new();
        getrandom::fill(slot.bytes_mut()).map_err(|e| TdeError::Random(e.to_string()))?;
        Ok(Self(slot))
    }

    /// Copies key bytes out of a slice, which must be exactly [`KEY_LEN`] long.
    ///
    /// The caller remains responsible for zeroizing `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(TdeError::corrupt(
                "key material",
                "unwrapped key",
                format!("expected {KEY_LEN} bytes, found {}", bytes.len()),
            ));
        }
        let mut slot = Slot::new();
        slot.bytes_mut().copy_from_slice(bytes);
        Ok(Self(slot))
    }

    /// Builds key bytes by filling a zeroed buffer in place; nothing is copied afterwards.
    pub fn try_fill_with<E>(
        fill: impl FnOnce(&mut [u8; KEY_LEN]) -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        // On an error the slot is dropped, which zeroes whatever `fill` wrote.
        let mut slot = Slot::new();
        fill(slot.bytes_mut())?;
        Ok(Self(slot))
    }

    /// The secret bytes. The name is loud on purpose: every call site hands key material to
    /// a cipher and must not log, copy or persist it.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.bytes()
    }
}

// The slot zeroes itself when dropped.

impl zeroize::ZeroizeOnDrop for KeyBytes {}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes([REDACTED; 32])")
    }
}

/// A table encryption key (TEK) in the clear, with its identity.
pub struct TableKey {
    id: TekId,
    algorithm: EncryptionAlgorithm,
    bytes: KeyBytes,
}

impl TableKey {
    /// Pairs key bytes with their identity.
    pub fn new(id: TekId, algorithm: EncryptionAlgorithm, bytes: KeyBytes) -> Self {
        Self {
            id,
            algorithm,
            bytes,
        }
    }

    /// Generates a fresh TEK from the OS CSPRNG.
    pub fn generate(id: TekId, algorithm: EncryptionAlgorithm) -> Result<Self> {
        Ok(Self::new(id, algorithm, KeyBytes::generate()?))
    }

    /// The key's identity.
    pub fn id(&self) -> &TekId {
        &self.id
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> EncryptionAlgorithm {
        self.algorithm
    }

    /// The secret bytes; see [`KeyBytes::expose_secret`].
    pub fn bytes(&self) -> &KeyBytes {
        &self.bytes
    }

    /// Gives up the identity and returns the bytes.
    pub fn into_bytes(self) -> KeyBytes {
        self.bytes
    }
}

impl fmt::Debug for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableKey")
            .field("id", &self.id.to_string())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Master key material in the clear, for the providers that hold it in process (the in-memory
/// and secure-file providers). HSM and KMS providers never produce one.
pub struct MasterKey {
    mek: MekRef,
    algorithm: EncryptionAlgorithm,
    bytes: KeyBytes,
}

impl MasterKey {
    /// Pairs key bytes with their identity.
    pub fn new(mek: MekRef, algorithm: EncryptionAlgorithm, bytes: KeyBytes) -> Self {
        Self {
            mek,
            algorithm,
            bytes,
        }
    }

    /// The MEK version this material belongs to.
    pub fn mek(&self) -> &MekRef {
        &self.mek
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> EncryptionAlgorithm {
        self.algorithm
    }

    /// The secret bytes; see [`KeyBytes::expose_secret`].
    pub fn bytes(&self) -> &KeyBytes {
        &self.bytes
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("mek", &self.mek.to_string())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way a byte of `key` could show up in text: hex (both cases), decimal array items.
    fn leaks(text: &str, key: &[u8; KEY_LEN]) -> Vec<String> {
        let mut found = Vec::new();
        let hex_lower: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // Any 4-byte window of the key in hex is a leak; a single byte could match by chance.
        for w in 0..KEY_LEN - 3 {
            let window = &hex_lower[w * 2..w * 2 + 8];
            if text.to_ascii_lowercase().contains(window) {
                found.push(format!("hex window {window}"));
            }
        }
        let decimal: Vec<String> = key.iter().map(|b| b.to_string()).collect();
        for w in decimal.windows(4) {
            let needle = w.join(", ");
            if text.contains(&needle) {
                found.push(format!("decimal window {needle}"));
            }
        }
        found
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        for _ in 0..64 {
            let tek = TableKey::generate(
                "public.users@v3".parse().unwrap(),
                EncryptionAlgorithm::Aes256Gcm,
            )
            .unwrap();
            let key = *tek.bytes().expose_secret();
            for text in [
                format!("{tek:?}"),
                format!("{tek:#?}"),
                format!("{:?}", tek.bytes()),
            ] {
                assert!(leaks(&text, &key).is_empty(), "{text}");
                assert!(!text.contains("[0"), "{text}");
            }
            let text = format!("{tek:?}");
            assert!(text.contains("public.users@v3"), "{text}");
            assert!(text.contains("Aes256Gcm"), "{text}");
        }
    }

    #[test]
    fn leak_detector_detects() {
        // The detector itself must be able to fail, or the test above proves nothing.
        let key = [
            7u8, 200, 13, 99, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
            20, 21, 22, 23, 24, 25, 26, 27, 28,
        ];
        assert!(!leaks(&format!("{key:?}"), &key).is_empty());
        assert!(!leaks(&hex_of(&key), &key).is_empty());
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02X}")).collect()
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let mk = MasterKey::new(
            "master_key_001@v2".parse().unwrap(),
            EncryptionAlgorithm::Aes256Gcm,
            KeyBytes::generate().unwrap(),
        );
        let text = format!("{mk:?}");
        assert!(
            leaks(&text, mk.bytes().expose_secret()).is_empty(),
            "{text}"
        );
        assert!(text.contains("master_key_001@v2"));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(KeyBytes::from_slice(&[0u8; 31]).is_err());
        assert!(KeyBytes::from_slice(&[0u8; 33]).is_err());
        let k = KeyBytes::from_slice(&[9u8; 32]).unwrap();
        assert_eq!(k.expose_secret(), &[9u8; 32]);
    }

    #[test]
    fn generated_keys_differ() {
        let a = KeyBytes::generate().unwrap();
        let b = KeyBytes::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), &[0u8; 32]);
    }

    #[test]
    fn zeroize_clears_the_buffer() {
        use zeroize::Zeroize;
        let mut k = KeyBytes::from_slice(&[0xAB; 32]).unwrap();
        k.0.bytes_mut().zeroize();
        assert_eq!(k.expose_secret(), &[0u8; 32]);
    }

    /// Compile-time checks: key material is not Clone and is ZeroizeOnDrop.
    #[test]
    fn type_properties() {
        fn zod<T: zeroize::ZeroizeOnDrop>() {}
        zod::<KeyBytes>();
        // `KeyBytes: !Clone` is checked by the compile_fail doc tests on `KeyBytes`.
    }
}
