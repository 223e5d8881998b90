//! The provider's payload inside a [`heliosdb_tde_core::WrappedTek`]
//! (`docs/formats/wrapped-tek.md`, "Azure Key Vault payload"):
//!
//! ```text
//! format u8 (= 1) | algorithm u8 (1 = RSA-OAEP-256, 2 = A256KW, 3 = A256GCM)
//! | version id length u8 | Key Vault version id (ASCII alphanumerics)
//! | ciphertext length u16 BE | ciphertext
//! | A256GCM only: iv length u8 | iv | tag length u8 (= 16) | tag
//! ```
//!
//! The version id is the Key Vault key version that made the wrap: unwrap checks it against the
//! version tagged with the envelope's MEK version before it calls the vault.

use crate::names::valid_version_id;
use crate::settings::WrapAlgorithm;

/// The only payload format this crate writes.
pub(crate) const FORMAT: u8 = 1;
/// RSA-4096 gives 512 bytes, AES-KW of 64 bytes 72, GCM of 32 bytes 32; more is corrupt.
pub(crate) const MAX_CIPHERTEXT: usize = 1024;
/// The GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

/// A parsed payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) algorithm: WrapAlgorithm,
    pub(crate) version: String,
    pub(crate) ciphertext: Vec<u8>,
    /// A256GCM only: the nonce the service chose (12 bytes; old Managed HSMs sent 16).
    pub(crate) iv: Vec<u8>,
    /// A256GCM only: the tag.
    pub(crate) tag: Vec<u8>,
}

impl Payload {
    /// Writes the payload; `None` when a field is out of range (never for a vault's answer).
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let gcm = self.algorithm.uses_encrypt();
        if !valid_version_id(&self.version)
            || self.ciphertext.is_empty()
            || self.ciphertext.len() > MAX_CIPHERTEXT
            || gcm == self.iv.is_empty()
            || gcm != (self.tag.len() == TAG_LEN)
            || (!gcm && !self.tag.is_empty())
            || self.iv.len() > 32
        {
            return None;
        }
        let mut out = Vec::with_capacity(6 + self.version.len() + self.ciphertext.len() + 50);
        out.push(FORMAT);
        out.push(self.algorithm.code());
        out.push(u8::try_from(self.version.len()).ok()?);
        out.extend_from_slice(self.version.as_bytes());
        out.extend_from_slice(&u16::try_from(self.ciphertext.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        if gcm {
            out.push(u8::try_from(self.iv.len()).ok()?);
            out.extend_from_slice(&self.iv);
            out.push(u8::try_from(self.tag.len()).ok()?);
            out.extend_from_slice(&self.tag);
        }
        Some(out)
    }

    /// Parses a payload: total, any bytes give a payload or a description of what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        let format = r.u8("the format byte")?;
        if format != FORMAT {
            return Err(format!(
                "payload format {format} is not an Azure Key Vault payload (format {FORMAT})"
            ));
        }
        let code = r.u8("the algorithm")?;
        let algorithm = WrapAlgorithm::from_code(code)
            .ok_or_else(|| format!("algorithm code {code} is unknown (1, 2 or 3)"))?;
        let n = usize::from(r.u8("the version id length")?);
        let version = r.take(n, "the version id")?;
        let version = std::str::from_utf8(version)
            .ok()
            .filter(|v| valid_version_id(v))
            .ok_or("the version id is not 1-64 ASCII letters and digits")?
            .to_string();
        let n = usize::from(u16::from_be_bytes(r.array("the ciphertext length")?));
        if n == 0 || n > MAX_CIPHERTEXT {
            return Err(format!("ciphertext length {n} is out of range"));
        }
        let ciphertext = r.take(n, "the ciphertext")?.to_vec();
        let (mut iv, mut tag) = (Vec::new(), Vec::new());
        if algorithm.uses_encrypt() {
            let n = usize::from(r.u8("the iv length")?);
            if n == 0 || n > 32 {
                return Err(format!("iv length {n} is out of range"));
            }
            iv = r.take(n, "the iv")?.to_vec();
            let n = usize::from(r.u8("the tag length")?);
            if n != TAG_LEN {
                return Err(format!("tag length {n} is not {TAG_LEN}"));
            }
            tag = r.take(n, "the tag")?.to_vec();
        }
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes after the payload", r.0.len()));
        }
        Ok(Self {
            algorithm,
            version,
            ciphertext,
            iv,
            tag,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VID: &str = "0123456789abcdef0123456789abcdef";

    fn rsa() -> Payload {
        Payload {
            algorithm: WrapAlgorithm::RsaOaep256,
            version: VID.into(),
            ciphertext: vec![7; 384],
            iv: vec![],
            tag: vec![],
        }
    }

    fn gcm() -> Payload {
        Payload {
            algorithm: WrapAlgorithm::A256Gcm,
            version: VID.into(),
            ciphertext: vec![9; 32],
            iv: vec![1; 12],
            tag: vec![2; 16],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let p = rsa().encode().unwrap();
        assert_eq!(&p[..3], &[FORMAT, 1, 32]);
        assert_eq!(&p[3..35], VID.as_bytes());
        assert_eq!(u16::from_be_bytes([p[35], p[36]]), 384);
        assert_eq!(p.len(), 37 + 384);
        assert_eq!(Payload::decode(&p).unwrap(), rsa());
        let g = gcm().encode().unwrap();
        assert_eq!(g[1], 3);
        assert_eq!(g.len(), 3 + 32 + 2 + 32 + 1 + 12 + 1 + 16);
        assert_eq!(Payload::decode(&g).unwrap(), gcm());
        let mut kw = rsa();
        kw.algorithm = WrapAlgorithm::A256Kw;
        kw.ciphertext = vec![3; 72];
        assert_eq!(Payload::decode(&kw.encode().unwrap()).unwrap(), kw);
    }

    #[test]
    fn damaged_payloads_are_refused() {
        for p in [rsa().encode().unwrap(), gcm().encode().unwrap()] {
            for cut in 0..p.len() {
                assert!(Payload::decode(&p[..cut]).is_err(), "truncated at {cut}");
            }
            let mut long = p.clone();
            long.push(0);
            assert!(Payload::decode(&long).unwrap_err().contains("trailing"));
            let mut f = p.clone();
            f[0] = 2;
            assert!(Payload::decode(&f).unwrap_err().contains("format 2"));
            let mut a = p.clone();
            a[1] = 9;
            assert!(Payload::decode(&a).unwrap_err().contains("algorithm"));
        }
        let mut bad = rsa();
        bad.version = "a/b".into();
        assert!(bad.encode().is_none());
        let mut bad = gcm();
        bad.tag = vec![0; 12];
        assert!(bad.encode().is_none());
        let mut bad = rsa();
        bad.iv = vec![1; 12];
        assert!(bad.encode().is_none());
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Payload::decode(&bytes);
        }

        #[test]
        fn decode_is_total_near_valid_payloads(
            which in 0usize..2,
            pos in any::<prop::sample::Index>(),
            val in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut p = if which == 0 { rsa() } else { gcm() }.encode().unwrap();
            let i = pos.index(p.len());
            p[i] = val;
            let c = cut.index(p.len() + 1);
            if let Ok(d) = Payload::decode(&p[..c]) {
                // Whatever decodes, encodes back to the same bytes.
                prop_assert_eq!(d.encode().unwrap(), p[..c].to_vec());
            }
        }

        #[test]
        fn encode_decode_round_trips(
            alg in 0usize..3,
            vid in "[a-z0-9]{1,64}",
            ct in proptest::collection::vec(any::<u8>(), 1..600),
            iv in proptest::collection::vec(any::<u8>(), 1..32),
            tag in proptest::collection::vec(any::<u8>(), 16..=16),
        ) {
            let algorithm = WrapAlgorithm::ALL[alg];
            let gcm = algorithm.uses_encrypt();
            let p = Payload {
                algorithm,
                version: vid,
                ciphertext: ct,
                iv: if gcm { iv } else { vec![] },
                tag: if gcm { tag } else { vec![] },
            };
            let bytes = p.encode().unwrap();
            prop_assert_eq!(Payload::decode(&bytes).unwrap(), p);
        }
    }
}
