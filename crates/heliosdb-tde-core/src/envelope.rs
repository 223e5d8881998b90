//! The wrapped-TEK envelope: how a TEK is stored once wrapped under an MEK.
//!
//! The byte layout is drawn in `docs/formats/wrapped-tek.md`. In short:
//!
//! ```text
//! "HTEK" | format u8 | algorithm u8 | provider u8 | MEK id len u8 | MEK id
//! | MEK version u32 BE | payload len u32 BE | payload
//! ```
//!
//! Parsing is total: every byte string gives either an envelope or a [`TdeError::Corrupt`],
//! never a panic, and it allocates only after the lengths have been checked against the input.

use crate::bytes::ByteReader;
use crate::error::{Result, TdeError};
use crate::ids::MekRef;
use crate::metadata::EncryptionAlgorithm;
use std::fmt;

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = *b"HTEK";
/// The envelope format version this crate writes. From format 2 on, the wrap's associated
/// data also binds the algorithm, the format version and the provider kind of the envelope
/// (see [`crate::WrapContext::aad_for`]), so none of these unauthenticated header fields can be
/// changed without the unwrap failing.
pub const FORMAT_VERSION: u8 = 2;
/// The oldest envelope format this crate reads (format 1: the associated data binds the
/// identity only). A rotation re-wraps such envelopes into the current format.
pub const OLDEST_FORMAT_VERSION: u8 = 1;
/// The largest provider payload accepted (a KMS ciphertext blob is a few hundred bytes).
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// Which family of provider holds the MEK. Recorded in every wrapped-TEK envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// Process memory. Insecure; tests only.
    InMemory,
    /// A passphrase-protected file on local disk.
    SecureFile,
    /// A PKCS#11 hardware security module.
    Pkcs11,
    /// HashiCorp Vault (or OpenBao) Transit.
    Vault,
    /// AWS Key Management Service.
    AwsKms,
    /// Azure Key Vault.
    AzureKeyVault,
}

impl ProviderKind {
    /// Every provider kind, in code order.
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::InMemory,
        ProviderKind::SecureFile,
        ProviderKind::Pkcs11,
        ProviderKind::Vault,
        ProviderKind::AwsKms,
        ProviderKind::AzureKeyVault,
    ];

    /// The kind's code in the envelope.
    pub fn code(self) -> u8 {
        match self {
            ProviderKind::InMemory => 1,
            ProviderKind::SecureFile => 2,
            ProviderKind::Pkcs11 => 3,
            ProviderKind::Vault => 4,
            ProviderKind::AwsKms => 5,
            ProviderKind::AzureKeyVault => 6,
        }
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// A short machine-friendly name, for example `secure-file`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::InMemory => "in-memory",
            ProviderKind::SecureFile => "secure-file",
            ProviderKind::Pkcs11 => "pkcs11-hsm",
            ProviderKind::Vault => "vault",
            ProviderKind::AwsKms => "aws-kms",
            ProviderKind::AzureKeyVault => "azure-kv",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TEK wrapped under one MEK version by one provider.
///
/// The payload is the provider's own ciphertext (for local providers: nonce, ciphertext, tag).
/// It is not secret on its own, but it is only meaningful together with the MEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedTek {
    /// The envelope format version ([`FORMAT_VERSION`] for every new wrap); it selects the
    /// associated-data layout the payload was sealed with.
    pub format: u8,
    /// The algorithm of the wrapped TEK.
    pub algorithm: EncryptionAlgorithm,
    /// Which kind of provider produced the payload.
    pub provider: ProviderKind,
    /// The MEK version the TEK is wrapped under.
    pub mek: MekRef,
    /// The provider's ciphertext.
    pub payload: Vec<u8>,
}

/// What [`WrappedTek::decode`] names in its errors, and where it says the bytes come from.
const WHAT: &str = "wrapped TEK envelope";
const LOCATION: &str = "key store record";

fn corrupt(detail: impl Into<String>) -> TdeError {
    TdeError::corrupt(WHAT, LOCATION, detail)
}

impl WrappedTek {
    /// A new envelope in the current format.
    pub fn new(
        algorithm: EncryptionAlgorithm,
        provider: ProviderKind,
        mek: MekRef,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            format: FORMAT_VERSION,
            algorithm,
            provider,
            mek,
            payload,
        }
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.mek.id.as_str().as_bytes();
        let mut out = Vec::with_capacity(16 + id.len() + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.format);
        out.push(self.algorithm.code());
        out.push(self.provider.code());
        // MEK ids are at most 64 bytes and payloads at most MAX_PAYLOAD_LEN (checked by
        // `decode` and by providers), so these conversions do not saturate in practice.
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.mek.version.get().to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes an envelope. Any input gives `Ok` or [`TdeError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = ByteReader::new(bytes, WHAT, LOCATION);
        if r.take(4, "magic")? != MAGIC {
            return Err(corrupt("bad magic: this is not a HeliosDB wrapped TEK"));
        }
        let version = r.u8("format version")?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(corrupt(format!(
                "format version {version} is not supported by this build (it reads versions \
                 {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}); upgrade HeliosDB"
            )));
        }
        let alg = r.u8("algorithm")?;
        let algorithm = EncryptionAlgorithm::from_code(alg)
            .ok_or_else(|| corrupt(format!("unknown algorithm code {alg}")))?;
        let prov = r.u8("provider kind")?;
        let provider = ProviderKind::from_code(prov)
            .ok_or_else(|| corrupt(format!("unknown provider kind code {prov}")))?;
        let mek = r.mek_ref()?;
        let payload_len = usize::try_from(r.u32("payload length")?).unwrap_or(usize::MAX);
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(corrupt(format!(
                "payload length {payload_len} exceeds the limit of {MAX_PAYLOAD_LEN}"
            )));
        }
        let payload = r.take(payload_len, "payload")?.to_vec();
        if r.remaining() != 0 {
            return Err(corrupt(format!(
                "{} unexpected bytes after the payload",
                r.remaining()
            )));
        }
        Ok(Self {
            format: version,
            algorithm,
            provider,
            mek,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MekId, MekVersion};
    use proptest::prelude::*;

    fn sample() -> WrappedTek {
        WrappedTek::new(
            EncryptionAlgorithm::Aes256Gcm,
            ProviderKind::SecureFile,
            "master_key_001@v2".parse().unwrap(),
            vec![0xAA; 60],
        )
    }

    #[test]
    fn layout_matches_the_documented_diagram() {
        let bytes = sample().encode();
        assert_eq!(&bytes[0..4], b"HTEK");
        assert_eq!(bytes[4], 2, "format version");
        assert_eq!(bytes[5], 1, "AES-256-GCM");
        assert_eq!(bytes[6], ProviderKind::SecureFile.code());
        assert_eq!(bytes[7], 14, "MEK id length");
        assert_eq!(&bytes[8..22], b"master_key_001");
        assert_eq!(&bytes[22..26], &[0, 0, 0, 2]);
        assert_eq!(&bytes[26..30], &[0, 0, 0, 60]);
        assert_eq!(bytes.len(), 30 + 60);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let err = WrappedTek::decode(&bytes[..n]).unwrap_err();
            assert!(matches!(err, TdeError::Corrupt { .. }), "{n}: {err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(WrappedTek::decode(&long).is_err());
    }

    #[test]
    fn specific_errors() {
        let mut b = sample().encode();
        b[4] = 9;
        let e = WrappedTek::decode(&b).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
        let mut b = sample().encode();
        b[0] = b'X';
        assert!(
            WrappedTek::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut b = sample().encode();
        b[8] = b'/';
        assert!(WrappedTek::decode(&b).is_err());
        let mut b = sample().encode();
        b[22..26].copy_from_slice(&[0, 0, 0, 0]);
        assert!(WrappedTek::decode(&b).is_err());
        let mut b = sample().encode();
        b[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            WrappedTek::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
    }

    fn arb_envelope() -> impl Strategy<Value = WrappedTek> {
        (
            "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}",
            1u32..,
            prop::sample::select(ProviderKind::ALL.to_vec()),
            prop::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(id, v, provider, payload)| WrappedTek {
                format: if v % 2 == 0 {
                    FORMAT_VERSION
                } else {
                    OLDEST_FORMAT_VERSION
                },
                algorithm: EncryptionAlgorithm::Aes256Gcm,
                provider,
                mek: MekRef::new(MekId::new(id).unwrap(), MekVersion::new(v).unwrap()),
                payload,
            })
    }

    proptest! {
        #[test]
        fn round_trip(env in arb_envelope()) {
            let bytes = env.encode();
            prop_assert_eq!(WrappedTek::decode(&bytes).unwrap(), env);
        }

        #[test]
        fn decode_is_total(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = WrappedTek::decode(&bytes);
        }

        #[test]
        fn decode_is_total_near_valid(env in arb_envelope(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = env.encode();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(decoded) = WrappedTek::decode(&bytes) {
                // A successful parse must re-encode to the same bytes: no ambiguity.
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }
}
