//! The associated data that binds a wrapped TEK to its identity.
//!
//! Every TEK wrap authenticates, as AES-GCM associated data (or as the KMS encryption context),
//! the table, the TEK version, the MEK id and version, and the purpose of the wrap. A wrapped TEK
//! copied onto another table, another TEK version or another MEK reference therefore fails to
//! unwrap instead of silently yielding a key that decrypts the wrong data.
//!
//! The encoding is canonical and length-prefixed, so no two distinct contexts share bytes.
//! Layout 2, for envelopes of format 2 (every new wrap), also binds the envelope's header
//! fields, which are otherwise not authenticated:
//!
//! ```text
//! "HDB-TEK-AAD" | layout u8 | purpose u8
//! | table len u8 | table bytes | TEK version u32 BE
//! | MEK id len u8 | MEK id bytes | MEK version u32 BE
//! [layout 2: | algorithm u8 | envelope format u8 | provider kind u8]
//! ```
//!
//! Layout 1 (without the last three bytes) is used only to unwrap format-1 envelopes written by
//! earlier releases; a rotation re-wraps them in format 2.

use crate::envelope::WrappedTek;
use crate::ids::{MekId, MekRef, TableId, TekId, TekVersion};
use std::collections::BTreeMap;

const AAD_LABEL: &[u8] = b"HDB-TEK-AAD";
const AAD_LAYOUT: u8 = 2;
const CTX_LABEL: &[u8] = b"HDB-TEK-CTX";
const CTX_LAYOUT: u8 = 1;

/// Why a key is being wrapped. Different purposes never share associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WrapPurpose {
    /// A table encryption key stored in the key store.
    TableKey,
    /// A table encryption key inside a backup bundle.
    Backup,
    /// A key store's key check value: a random canary key wrapped under an MEK version, whose
    /// unwrap proves that the provider holds the same MEK bytes the store was written with.
    KeyCheck,
}

impl WrapPurpose {
    /// The purpose's code in the associated data.
    pub fn code(self) -> u8 {
        match self {
            WrapPurpose::TableKey => 1,
            WrapPurpose::Backup => 2,
            WrapPurpose::KeyCheck => 3,
        }
    }

    /// The purpose's name in text contexts (KMS encryption context).
    pub fn name(self) -> &'static str {
        match self {
            WrapPurpose::TableKey => "table-key",
            WrapPurpose::Backup => "backup",
            WrapPurpose::KeyCheck => "key-check",
        }
    }
}

/// What a TEK wrap is bound to, apart from the MEK reference (which the envelope carries).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WrapContext {
    /// The table the TEK belongs to.
    pub table: TableId,
    /// The TEK version.
    pub tek_version: TekVersion,
    /// Why the key is wrapped.
    pub purpose: WrapPurpose,
}

impl WrapContext {
    /// The context for storing `tek` in the key store.
    pub fn table_key(tek: &TekId) -> Self {
        Self {
            table: tek.table.clone(),
            tek_version: tek.version,
            purpose: WrapPurpose::TableKey,
        }
    }

    /// Checks that this context names `tek`'s own table and version: a TEK is only ever wrapped
    /// for itself. Every provider calls this before wrapping.
    pub fn ensure_names(&self, tek: &crate::TableKey) -> crate::Result<()> {
        if tek.id().table != self.table || tek.id().version != self.tek_version {
            return Err(crate::TdeError::InvalidKeyState {
                key: tek.id().to_string(),
                state: crate::KeyState::Active,
                operation: format!("wrap for {}", self.tek_id()),
                hint: "a TEK can only be wrapped for its own table and version".into(),
            });
        }
        Ok(())
    }

    /// The TEK this context names.
    pub fn tek_id(&self) -> TekId {
        TekId::new(self.table.clone(), self.tek_version)
    }

    /// The associated data of envelope `header` (its payload is ignored): layout 1 for a
    /// format-1 envelope, layout 2, which also binds the algorithm, the format and the
    /// provider kind, for every later format. Providers seal a new wrap with the associated
    /// data of the envelope they are about to return (built with [`WrappedTek::new`]), and open
    /// a stored wrap with that of the stored envelope.
    pub fn aad_for(&self, header: &WrappedTek) -> Vec<u8> {
        let table = self.table.as_str().as_bytes();
        let mek = &header.mek;
        let mek_id = mek.id.as_str().as_bytes();
        let layout = if header.format <= 1 { 1 } else { AAD_LAYOUT };
        let mut out = Vec::with_capacity(AAD_LABEL.len() + 15 + table.len() + mek_id.len());
        out.extend_from_slice(AAD_LABEL);
        out.push(layout);
        out.push(self.purpose.code());
        // Identifier lengths are bounded well below 256 by their validation rules.
        out.push(u8::try_from(table.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(table);
        out.extend_from_slice(&self.tek_version.get().to_be_bytes());
        out.push(u8::try_from(mek_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(mek_id);
        out.extend_from_slice(&mek.version.get().to_be_bytes());
        if layout >= 2 {
            out.push(header.algorithm.code());
            out.push(header.format);
            out.push(header.provider.code());
        }
        out
    }

    /// The version-free binding for services that re-encrypt on the server (Vault Transit's
    /// `rewrap` keeps the derivation context of the ciphertext): the same canonical,
    /// length-prefixed encoding as [`WrapContext::aad_for`], with its own label and without the
    /// MEK version, which the service binds instead (the `vault:vN:` prefix selects the key
    /// version whose derived key authenticates the ciphertext, and the provider checks it
    /// against the envelope).
    ///
    /// ```text
    /// "HDB-TEK-CTX" | 0x01 | purpose u8 | table len u8 | table | TEK version u32 BE
    /// | MEK id len u8 | MEK id
    /// ```
    pub fn derivation_context(&self, mek_id: &MekId) -> Vec<u8> {
        let table = self.table.as_str().as_bytes();
        let id = mek_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(CTX_LABEL.len() + 8 + table.len() + id.len());
        out.extend_from_slice(CTX_LABEL);
        out.push(CTX_LAYOUT);
        out.push(self.purpose.code());
        // Identifier lengths are bounded well below 256 by their validation rules.
        out.push(u8::try_from(table.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(table);
        out.extend_from_slice(&self.tek_version.get().to_be_bytes());
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out
    }

    /// The same binding as a string map, for services that take an encryption context or a
    /// derivation context instead of raw associated data (AWS KMS, Vault Transit).
    pub fn context_map(&self, mek: &MekRef) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "heliosdb:purpose".to_string(),
                self.purpose.name().to_string(),
            ),
            ("heliosdb:table".to_string(), self.table.to_string()),
            (
                "heliosdb:tek_version".to_string(),
                self.tek_version.get().to_string(),
            ),
            ("heliosdb:mek_id".to_string(), mek.id.to_string()),
            (
                "heliosdb:mek_version".to_string(),
                mek.version.get().to_string(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(table: &str, v: u32) -> WrapContext {
        WrapContext::table_key(&format!("{table}@v{v}").parse().unwrap())
    }

    /// The associated data of a current-format envelope under `mek`.
    trait Aad {
        fn aad(&self, mek: &MekRef) -> Vec<u8>;
    }
    impl Aad for WrapContext {
        fn aad(&self, mek: &MekRef) -> Vec<u8> {
            self.aad_for(&header(mek.clone()))
        }
    }

    fn header(mek: MekRef) -> WrappedTek {
        WrappedTek::new(
            crate::EncryptionAlgorithm::Aes256Gcm,
            crate::ProviderKind::SecureFile,
            mek,
            Vec::new(),
        )
    }

    #[test]
    fn layout_2_binds_the_envelope_header_and_layout_1_does_not() {
        let mek: MekRef = "master_key_001@v1".parse().unwrap();
        let c = ctx("users", 1);
        let base = header(mek.clone());
        let mut other_provider = base.clone();
        other_provider.provider = crate::ProviderKind::Pkcs11;
        assert_ne!(c.aad_for(&base), c.aad_for(&other_provider));
        let mut v1 = base.clone();
        v1.format = 1;
        assert_ne!(
            c.aad_for(&base),
            c.aad_for(&v1),
            "a downgrade changes the AAD"
        );
        let mut v1_other = other_provider.clone();
        v1_other.format = 1;
        assert_eq!(
            c.aad_for(&v1),
            c.aad_for(&v1_other),
            "layout 1 is the old binding"
        );
        assert_eq!(c.aad_for(&v1)[11], 1);
        assert_eq!(c.aad_for(&base)[11], 2);
    }

    #[test]
    fn every_field_changes_the_aad() {
        let mek: MekRef = "master_key_001@v1".parse().unwrap();
        let base = ctx("users", 1).aad(&mek);
        assert_ne!(base, ctx("orders", 1).aad(&mek));
        assert_ne!(base, ctx("users", 2).aad(&mek));
        assert_ne!(
            base,
            ctx("users", 1).aad(&"master_key_002@v1".parse().unwrap())
        );
        assert_ne!(
            base,
            ctx("users", 1).aad(&"master_key_001@v2".parse().unwrap())
        );
        let mut backup = ctx("users", 1);
        backup.purpose = WrapPurpose::Backup;
        assert_ne!(base, backup.aad(&mek));
    }

    #[test]
    fn derivation_context_has_the_documented_layout() {
        let id = MekId::new("mk").unwrap();
        let c = ctx("users", 7);
        let mut want = b"HDB-TEK-CTX".to_vec();
        want.extend_from_slice(&[1, 1, 5]);
        want.extend_from_slice(b"users");
        want.extend_from_slice(&7u32.to_be_bytes());
        want.push(2);
        want.extend_from_slice(b"mk");
        assert_eq!(c.derivation_context(&id), want);
    }

    #[test]
    fn every_field_changes_the_derivation_context() {
        let id = MekId::new("master_key_001").unwrap();
        let base = ctx("users", 1).derivation_context(&id);
        assert_ne!(base, ctx("orders", 1).derivation_context(&id));
        assert_ne!(base, ctx("users", 2).derivation_context(&id));
        assert_ne!(
            base,
            ctx("users", 1).derivation_context(&MekId::new("master_key_002").unwrap())
        );
        let mut backup = ctx("users", 1);
        backup.purpose = WrapPurpose::Backup;
        assert_ne!(base, backup.derivation_context(&id));
        let mut check = ctx("users", 1);
        check.purpose = WrapPurpose::KeyCheck;
        assert_ne!(base, check.derivation_context(&id));
    }

    proptest! {
        /// The derivation context is injective too, and never equal to any associated data
        /// (its label differs), whatever the MEK version or envelope.
        #[test]
        fn derivation_context_is_injective_and_never_an_aad(
            t1 in "[a-z][a-z.]{0,8}", t2 in "[a-z][a-z.]{0,8}",
            m1 in "[a-z][a-z.]{0,8}", m2 in "[a-z][a-z.]{0,8}",
            v1 in 1u32..4, v2 in 1u32..4, w in 1u32..4,
            p1 in 0usize..3, p2 in 0usize..3, format in 1u8..3,
        ) {
            let purposes = [WrapPurpose::TableKey, WrapPurpose::Backup, WrapPurpose::KeyCheck];
            let mut c1 = ctx(&t1, v1);
            c1.purpose = purposes[p1];
            let mut c2 = ctx(&t2, v2);
            c2.purpose = purposes[p2];
            let a = c1.derivation_context(&MekId::new(m1.clone()).unwrap());
            let b = c2.derivation_context(&MekId::new(m2.clone()).unwrap());
            let same = t1 == t2 && m1 == m2 && v1 == v2 && p1 == p2;
            prop_assert_eq!(a == b, same);
            let mut h = header(format!("{m2}@v{w}").parse().unwrap());
            h.format = format;
            prop_assert_ne!(a, c2.aad_for(&h));
        }

        /// Length prefixes make the encoding injective: distinct contexts never collide.
        #[test]
        fn aad_is_injective(
            t1 in "[a-z][a-z.]{0,8}", t2 in "[a-z][a-z.]{0,8}",
            m1 in "[a-z][a-z.]{0,8}", m2 in "[a-z][a-z.]{0,8}",
            v1 in 1u32..4, v2 in 1u32..4, w1 in 1u32..4, w2 in 1u32..4,
        ) {
            let a = ctx(&t1, v1).aad(&format!("{m1}@v{w1}").parse().unwrap());
            let b = ctx(&t2, v2).aad(&format!("{m2}@v{w2}").parse().unwrap());
            let same = t1 == t2 && m1 == m2 && v1 == v2 && w1 == w2;
            prop_assert_eq!(a == b, same);
        }
    }
}
