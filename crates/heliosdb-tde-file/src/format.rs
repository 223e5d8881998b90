//! The MEK file format, version 1 (drawn in `docs/formats/mek-file.md`).
//!
//! ```text
//! "HMEK" | format u8 = 1 | KDF u8 = 1 (Argon2id v1.3) | m_cost u32 | t_cost u32 | p_cost u32
//! | salt len u8 | salt | passphrase generation u32 | algorithm u8 | state u8
//! | created_at u64 | state_changed_at u64 | MEK id len u8 | MEK id | MEK version u32
//! | nonce (12) | encrypted MEK (32) | tag (16)
//! ```
//!
//! Every byte before the nonce is the header, and the header is the AES-GCM associated data:
//! the KDF parameters, the salt, the MEK identity and its state cannot be changed without the
//! file failing to open. Parsing is total.

use heliosdb_tde_cipher::{NONCE_LEN, TAG_LEN};
use heliosdb_tde_core::{
    ByteReader, EncryptionAlgorithm, KEY_LEN, KdfParams, KeyState, MekId, MekRef, MekVersion,
    Result, Timestamp,
};
use std::path::Path;

/// The four bytes every MEK file starts with.
pub const MAGIC: [u8; 4] = *b"HMEK";
/// The file format version this crate writes.
pub const FORMAT_VERSION: u8 = 1;
/// KDF code for Argon2id, version 0x13.
pub const KDF_ARGON2ID: u8 = 1;
/// Salt length written by this crate.
pub const SALT_LEN: usize = 32;

/// The largest Argon2id memory cost accepted from a file or a configuration: 2 GiB, RFC 9106's
/// first recommended option. Checked before any work is spent on a file.
pub const MAX_M_COST_KIB: u32 = 2 * 1024 * 1024;
/// The largest number of Argon2id passes accepted.
pub const MAX_T_COST: u32 = 16;
/// The largest Argon2id parallelism (lanes) accepted.
pub const MAX_P_COST: u32 = 16;
/// The largest total work accepted, memory cost times passes, in KiB: 4 GiB (for example
/// 2 GiB with 2 passes, or 256 MiB with 16).
pub const MAX_WORK_KIB: u64 = 4 * 1024 * 1024;

/// Whether Argon2id parameters are within the bounds this crate accepts from a file:
/// `m_cost <= MAX_M_COST_KIB`, `1 <= t_cost <= MAX_T_COST`, `1 <= p_cost <= MAX_P_COST`,
/// `m_cost >= 8 * p_cost` (Argon2's own rule) and `m_cost * t_cost <= MAX_WORK_KIB`.
pub fn kdf_within_bounds(kdf: &KdfParams) -> bool {
    kdf.m_cost_kib <= MAX_M_COST_KIB
        && (1..=MAX_T_COST).contains(&kdf.t_cost)
        && (1..=MAX_P_COST).contains(&kdf.p_cost)
        && u64::from(kdf.m_cost_kib) >= 8 * u64::from(kdf.p_cost)
        && u64::from(kdf.m_cost_kib) * u64::from(kdf.t_cost) <= MAX_WORK_KIB
}

/// Describes the bounds of [`kdf_within_bounds`], for error messages.
pub(crate) fn kdf_bounds_text() -> String {
    format!(
        "accepted: memory 8 x lanes ..= {MAX_M_COST_KIB} KiB, passes 1..={MAX_T_COST}, lanes \
         1..={MAX_P_COST}, memory x passes <= {MAX_WORK_KIB} KiB"
    )
}

/// The authenticated header of a MEK file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Argon2id parameters the file key was derived with.
    pub kdf: KdfParams,
    /// The Argon2id salt.
    pub salt: Vec<u8>,
    /// Which passphrase generation encrypted the file (incremented by each passphrase change).
    pub generation: u32,
    /// The MEK's algorithm.
    pub algorithm: EncryptionAlgorithm,
    /// The MEK version's lifecycle state.
    pub state: KeyState,
    /// When the version was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub state_changed_at: Timestamp,
    /// Which MEK version the file holds.
    pub mek: MekRef,
}

/// A parsed MEK file: header bytes (the AAD), header, and the sealed key.
#[derive(Clone, Debug)]
pub struct MekFile {
    /// The header as stored: the associated data.
    pub header_bytes: Vec<u8>,
    /// The parsed header.
    pub header: Header,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The encrypted MEK.
    pub ciphertext: [u8; KEY_LEN],
    /// The tag.
    pub tag: [u8; TAG_LEN],
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.mek.id.as_str().as_bytes();
        let mut out = Vec::with_capacity(64 + self.salt.len() + id.len());
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&self.kdf.m_cost_kib.to_be_bytes());
        out.extend_from_slice(&self.kdf.t_cost.to_be_bytes());
        out.extend_from_slice(&self.kdf.p_cost.to_be_bytes());
        out.push(u8::try_from(self.salt.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.push(self.algorithm.code());
        out.push(self.state.code());
        out.extend_from_slice(&self.created_at.0.to_be_bytes());
        out.extend_from_slice(&self.state_changed_at.0.to_be_bytes());
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.mek.version.get().to_be_bytes());
        out
    }
}

/// Parses a MEK file read from `path`. Any input gives `Ok` or
/// [`TdeError::Corrupt`](heliosdb_tde_core::TdeError::Corrupt) naming
/// the file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<MekFile> {
    let mut r = ByteReader::new(bytes, "MEK file", path.display().to_string());
    if r.take(4, "magic")? != MAGIC {
        return Err(r.err("bad magic: this is not a HeliosDB MEK file"));
    }
    let version = r.u8("format version")?;
    if version != FORMAT_VERSION {
        return Err(r.err(format!(
            "format version {version} is not supported by this build (it reads \
             {FORMAT_VERSION}); upgrade HeliosDB"
        )));
    }
    let kdf_id = r.u8("KDF")?;
    if kdf_id != KDF_ARGON2ID {
        return Err(r.err(format!("unknown KDF code {kdf_id}")));
    }
    let kdf = KdfParams {
        m_cost_kib: r.u32("Argon2 memory cost")?,
        t_cost: r.u32("Argon2 time cost")?,
        p_cost: r.u32("Argon2 parallelism")?,
    };
    // Bounded before anything else is read or derived: a hostile file cannot make us allocate
    // gigabytes or spin for minutes.
    if !kdf_within_bounds(&kdf) {
        return Err(r.err(format!(
            "implausible Argon2 parameters (memory {} KiB, {} passes, {} lanes; {}); HeliosDB \
             never writes these",
            kdf.m_cost_kib,
            kdf.t_cost,
            kdf.p_cost,
            kdf_bounds_text()
        )));
    }
    let salt_len = usize::from(r.u8("salt length")?);
    if !(16..=64).contains(&salt_len) {
        return Err(r.err(format!("salt length {salt_len} is outside 16..=64")));
    }
    let salt = r.take(salt_len, "salt")?.to_vec();
    let generation = r.u32("passphrase generation")?;
    let a = r.u8("algorithm")?;
    let algorithm = EncryptionAlgorithm::from_code(a)
        .ok_or_else(|| r.err(format!("unknown algorithm code {a}")))?;
    let s = r.u8("state")?;
    let state = KeyState::from_code(s).ok_or_else(|| r.err(format!("unknown state code {s}")))?;
    let created_at = Timestamp(r.u64("created_at")?);
    let state_changed_at = Timestamp(r.u64("state_changed_at")?);
    let mek = r.mek_ref()?;
    let header_end = r.position();
    let nonce = r.array::<NONCE_LEN>("nonce")?;
    let ciphertext = r.array::<KEY_LEN>("encrypted MEK")?;
    let tag = r.array::<TAG_LEN>("tag")?;
    if r.remaining() != 0 {
        return Err(r.err(format!("{} unexpected trailing bytes", r.remaining())));
    }
    Ok(MekFile {
        header_bytes: bytes[..header_end].to_vec(),
        header: Header {
            kdf,
            salt,
            generation,
            algorithm,
            state,
            created_at,
            state_changed_at,
            mek,
        },
        nonce,
        ciphertext,
        tag,
    })
}

/// The file name of a MEK version: `<mek_id>.v<version>.mek`.
pub fn file_name(mek: &MekRef) -> String {
    format!("{}.v{}.mek", mek.id, mek.version.get())
}

/// The tombstone left when a version is destroyed: `<mek_id>.v<version>.destroyed`.
pub fn tombstone_name(mek: &MekRef) -> String {
    format!("{}.v{}.destroyed", mek.id, mek.version.get())
}

/// Parses a file name made by [`file_name`] or [`tombstone_name`]: the MEK version and whether
/// it is a tombstone.
pub fn parse_file_name(name: &str) -> Option<(MekRef, bool)> {
    let (stem, tomb) = if let Some(s) = name.strip_suffix(".mek") {
        (s, false)
    } else {
        (name.strip_suffix(".destroyed")?, true)
    };
    let (id, v) = stem.rsplit_once(".v")?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mek = MekRef::new(MekId::new(id).ok()?, MekVersion::new(v.parse().ok()?).ok()?);
    Some((mek, tomb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::TdeError;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let h = Header {
            kdf: KdfParams::default(),
            salt: vec![9; SALT_LEN],
            generation: 3,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            state: KeyState::Active,
            created_at: Timestamp(1),
            state_changed_at: Timestamp(2),
            mek: "master_key_001@v4".parse().unwrap(),
        };
        let mut b = h.encode();
        b.extend_from_slice(&[1; NONCE_LEN + KEY_LEN + TAG_LEN]);
        b
    }

    #[test]
    fn parse_round_trip_and_truncation() {
        let b = sample();
        let f = parse(&b, Path::new("/x.mek")).unwrap();
        assert_eq!(f.header.mek.to_string(), "master_key_001@v4");
        assert_eq!(f.header.generation, 3);
        assert_eq!(f.header.encode(), f.header_bytes);
        for n in 0..b.len() {
            let e = parse(&b[..n], Path::new("/keys/m.v4.mek")).unwrap_err();
            assert!(e.to_string().contains("/keys/m.v4.mek"), "{e}");
        }
    }

    #[test]
    fn hostile_parameters_are_refused() {
        let mut b = sample();
        b[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            parse(&b, Path::new("x"))
                .unwrap_err()
                .to_string()
                .contains("Argon2")
        );
    }

    /// Parameters the old bounds (4 GiB, 64 passes, 64 lanes) let through, which would have
    /// made the provider allocate gigabytes and derive for minutes before the AEAD check,
    /// are refused by the parser, before any work (issue 9, item 9).
    #[test]
    fn absurd_parameters_are_refused_before_any_work() {
        let set = |m: u32, t: u32, p: u32| {
            let mut b = sample();
            b[6..10].copy_from_slice(&m.to_be_bytes());
            b[10..14].copy_from_slice(&t.to_be_bytes());
            b[14..18].copy_from_slice(&p.to_be_bytes());
            b
        };
        for (m, t, p) in [
            (4 * 1024 * 1024, 2, 1),
            (3 * 1024 * 1024, 1, 4),
            (64 * 1024, 64, 4),
            (1024 * 1024, 8, 4),
            (64 * 1024, 3, 64),
            (64 * 1024, 0, 4),
            (64 * 1024, 3, 0),
            (16, 1, 4),
        ] {
            let e = parse(&set(m, t, p), Path::new("/keys/m.v4.mek")).unwrap_err();
            assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("implausible Argon2 parameters") && text.contains("/keys/m.v4.mek"),
                "{text}"
            );
        }
        // The bounds admit RFC 9106's two recommended options and OWASP's minimum.
        for (m, t, p) in [
            (2 * 1024 * 1024, 1, 4),
            (64 * 1024, 3, 4),
            (19 * 1024, 2, 1),
            (256 * 1024, 16, 16),
        ] {
            parse(&set(m, t, p), Path::new("x")).unwrap();
        }
    }

    #[test]
    fn names() {
        let m: MekRef = "master_key_001@v12".parse().unwrap();
        assert_eq!(file_name(&m), "master_key_001.v12.mek");
        assert_eq!(
            parse_file_name("master_key_001.v12.mek"),
            Some((m.clone(), false))
        );
        assert_eq!(
            parse_file_name("master_key_001.v12.destroyed"),
            Some((m, true))
        );
        assert_eq!(parse_file_name("a.b.v3.mek").unwrap().0.id.as_str(), "a.b");
        for bad in [
            "x.mek",
            "x.v.mek",
            "x.v0.mek",
            "x.vx.mek",
            ".x.v1.mek.tmp",
            "x.v1.txt",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_is_total(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, Path::new("fuzz"));
        }

        #[test]
        fn parse_is_total_near_valid(i in any::<prop::sample::Index>(), v in any::<u8>()) {
            let mut b = sample();
            let i = i.index(b.len());
            b[i] = v;
            let _ = parse(&b, Path::new("fuzz"));
        }
    }
}
