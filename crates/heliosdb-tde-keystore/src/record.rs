//! The binary encoding of stored TEK records (see `docs/formats/keystore-record.md`).
//!
//! Decoding is total: any byte string gives a record or a [`TdeError::Corrupt`].

use heliosdb_tde_core::{
    ByteReader, EncryptionAlgorithm, KeyBytes, KeyId, KeyMetadata, KeyState, Result, TableId,
    TdeError, TekId, TekRecord, TekVersion, Timestamp, UsageCounters, WrappedTek,
};

/// The record format version this crate writes without an integrity key. Version 2 checksums
/// the store key with the record, so a record found under another key (a damaged index) is
/// detected; version 1 records (checksum over the value only) are still read.
pub const RECORD_VERSION: u8 = 2;
/// The record format version written with a store integrity key: version 2 plus an HMAC-SHA256
/// of the store key and the record under that key, so that only a holder of the MEK (which
/// wraps the integrity key) can produce a record that is accepted.
pub const AUTHENTICATED_RECORD_VERSION: u8 = 3;
/// The length of the record MAC.
pub const MAC_LEN: usize = 32;

/// The MAC of an authenticated record: HMAC-SHA256 under the store integrity key over a label,
/// the store key (length-prefixed) and the record body before the MAC.
fn record_mac(key: &KeyBytes, store_key: &[u8], body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::{KeyInit, Mac};
    // A 32-byte key is always accepted by HMAC.
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"HDB-TEK-RECORD-MAC");
    m.update(
        &u32::try_from(store_key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.update(store_key);
    m.update(body);
    m
}

/// The checksum of a record: over the value only in version 1, over key and value from 2 on.
fn record_crc(version: u8, key: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if version >= 2 {
        h.update(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(key);
    }
    h.update(body);
    h.finalize()
}

/// The store key of a TEK: table bytes, a zero byte, the version as u32 big-endian. Table ids
/// never contain a zero byte, so keys sort by (table, version).
pub fn tek_key(id: &TekId) -> Vec<u8> {
    let t = id.table.as_str().as_bytes();
    let mut k = Vec::with_capacity(t.len() + 5);
    k.extend_from_slice(t);
    k.push(0);
    k.extend_from_slice(&id.version.get().to_be_bytes());
    k
}

/// The key range holding every version of `table`: `[table 0x00, table 0x01)`.
pub fn table_range(table: &TableId) -> (Vec<u8>, Vec<u8>) {
    let t = table.as_str().as_bytes();
    let mut lo = t.to_vec();
    lo.push(0);
    let mut hi = t.to_vec();
    hi.push(1);
    (lo, hi)
}

/// Parses a store key back into a TEK id; `location` names the store in errors.
pub fn parse_tek_key(key: &[u8], location: &str) -> Result<TekId> {
    let bad = |d: &str| {
        TdeError::corrupt(
            "key store key",
            format!("{location} (key bytes {key:02x?})"),
            d.to_string(),
        )
    };
    if key.len() < 6 || key[key.len() - 5] != 0 {
        return Err(bad("not TABLE 0x00 VERSION"));
    }
    let (t, v) = key.split_at(key.len() - 5);
    let table = std::str::from_utf8(t)
        .ok()
        .and_then(|s| TableId::new(s).ok())
        .ok_or_else(|| bad("invalid table id"))?;
    let version = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
    let version = TekVersion::new(version).map_err(|_| bad("TEK version 0"))?;
    Ok(TekId::new(table, version))
}

/// Reads a length-prefixed envelope (`u32` length, then [`WrappedTek::encode`] bytes).
fn read_envelope(r: &mut ByteReader<'_>, field: &str) -> Result<WrappedTek> {
    let len = usize::try_from(r.u32(field)?).unwrap_or(usize::MAX);
    let bytes = r.take(len, field)?;
    WrappedTek::decode(bytes).map_err(|e| r.err(format!("{field}: {e}")))
}

fn put_envelope(out: &mut Vec<u8>, w: &WrappedTek) {
    let bytes = w.encode();
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&bytes);
}

/// Encodes a record without authentication (version 2); see [`encode_with`].
pub fn encode(r: &TekRecord) -> Vec<u8> {
    encode_with(r, None)
}

/// Encodes a record (the TEK id is the store key, not part of the value): version 3,
/// authenticated under `integrity_key`, when one is given, else version 2.
pub fn encode_with(r: &TekRecord, integrity_key: Option<&KeyBytes>) -> Vec<u8> {
    let m = &r.metadata;
    let mut out = Vec::with_capacity(200 + r.wrapped.payload.len() * 2);
    out.push(if integrity_key.is_some() {
        AUTHENTICATED_RECORD_VERSION
    } else {
        RECORD_VERSION
    });
    out.push(m.state.code());
    out.push(m.algorithm.code());
    match &m.wrapped_by {
        Some(mek) => {
            out.push(1);
            let id = mek.id.as_str().as_bytes();
            out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(id);
            out.extend_from_slice(&mek.version.get().to_be_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&m.created_at.0.to_be_bytes());
    out.extend_from_slice(&m.state_changed_at.0.to_be_bytes());
    out.extend_from_slice(&m.usage.encryptions.to_be_bytes());
    out.extend_from_slice(&m.usage.decryptions.to_be_bytes());
    match m.usage.last_used {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.0.to_be_bytes());
        }
        None => out.push(0),
    }
    put_envelope(&mut out, &r.wrapped);
    match &r.previous_wrap {
        Some(p) => {
            out.push(1);
            put_envelope(&mut out, p);
        }
        None => out.push(0),
    }
    let key = tek_key(&r.id);
    if let Some(k) = integrity_key {
        use hmac::Mac;
        let tag = record_mac(k, &key, &out).finalize().into_bytes();
        out.extend_from_slice(&tag);
    }
    let crc = record_crc(out[0], &key, &out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes the record stored under `id` without checking authentication; see [`decode_with`].
pub fn decode(id: &TekId, bytes: &[u8], location: &str) -> Result<TekRecord> {
    decode_with(id, bytes, location, None, false)
}

/// Decodes the record stored under `id`. `location` names it in errors (store path and key).
/// With `integrity_key`, an authenticated (version 3) record's MAC is verified; with
/// `require_auth`, a record that is not authenticated is refused (a store whose records are
/// all authenticated must never accept one that anybody could have written).
pub fn decode_with(
    id: &TekId,
    bytes: &[u8],
    location: &str,
    integrity_key: Option<&KeyBytes>,
    require_auth: bool,
) -> Result<TekRecord> {
    // The last four bytes are a CRC-32 of the rest: the storage engine does not checksum every
    // page, so flipped bits in metadata (a state code, a counter) would otherwise go unnoticed.
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(TdeError::corrupt(
            "key store record",
            location,
            format!("{} bytes is too short for a record", bytes.len()),
        ));
    };
    let (body, crc) = bytes.split_at(split);
    let version = body.first().copied().unwrap_or(0);
    if record_crc(version, &tek_key(id), body).to_be_bytes() != crc {
        return Err(TdeError::corrupt(
            "key store record",
            location,
            "checksum mismatch: the record was damaged on disk, or is stored under another \
             table key than its own",
        ));
    }
    let bytes = if version == AUTHENTICATED_RECORD_VERSION {
        let Some(split) = body.len().checked_sub(MAC_LEN) else {
            return Err(TdeError::corrupt(
                "key store record",
                location,
                "too short for an authenticated record",
            ));
        };
        let (fields, tag) = body.split_at(split);
        if let Some(k) = integrity_key {
            use hmac::Mac;
            if record_mac(k, &tek_key(id), fields)
                .verify_slice(tag)
                .is_err()
            {
                return Err(TdeError::corrupt(
                    "key store record",
                    location,
                    "its authentication code does not match: the record was changed by \
                     something that does not hold the MEK (its state, counters or wrapped key \
                     may have been tampered with), and it is not used",
                ));
            }
        }
        fields
    } else {
        if require_auth {
            return Err(TdeError::corrupt(
                "key store record",
                location,
                format!(
                    "record version {version} carries no authentication code, but every record \
                     of this store is authenticated: it was written by something that does not \
                     hold the MEK, and it is not used"
                ),
            ));
        }
        body
    };
    let mut r = ByteReader::new(bytes, "key store record", location);
    let version = r.u8("record version")?;
    if !(1..=AUTHENTICATED_RECORD_VERSION).contains(&version) {
        return Err(r.err(format!(
            "record version {version} is not supported by this build (it reads 1 to \
             {AUTHENTICATED_RECORD_VERSION}); upgrade HeliosDB"
        )));
    }
    let s = r.u8("state")?;
    let state = KeyState::from_code(s).ok_or_else(|| r.err(format!("unknown state code {s}")))?;
    let a = r.u8("algorithm")?;
    let algorithm = EncryptionAlgorithm::from_code(a)
        .ok_or_else(|| r.err(format!("unknown algorithm code {a}")))?;
    let wrapped_by = if r.flag("wrapped-by flag")? {
        Some(r.mek_ref()?)
    } else {
        None
    };
    let created_at = Timestamp(r.u64("created_at")?);
    let state_changed_at = Timestamp(r.u64("state_changed_at")?);
    let encryptions = r.u64("encryptions")?;
    let decryptions = r.u64("decryptions")?;
    let last_used = if r.flag("last-used flag")? {
        Some(Timestamp(r.u64("last_used")?))
    } else {
        None
    };
    let wrapped = read_envelope(&mut r, "wrapped TEK")?;
    let previous_wrap = if r.flag("previous-wrap flag")? {
        Some(read_envelope(&mut r, "previous wrapped TEK")?)
    } else {
        None
    };
    if r.remaining() != 0 {
        return Err(r.err(format!("{} trailing bytes", r.remaining())));
    }
    Ok(TekRecord {
        id: id.clone(),
        metadata: KeyMetadata {
            key_id: KeyId::Table(id.clone()),
            state,
            algorithm,
            wrapped_by,
            created_at,
            state_changed_at,
            usage: UsageCounters {
                encryptions,
                decryptions,
                last_used,
            },
        },
        wrapped,
        previous_wrap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::ProviderKind;
    use proptest::prelude::*;

    fn env(mek: &str, n: usize) -> WrappedTek {
        WrappedTek::new(
            EncryptionAlgorithm::Aes256Gcm,
            ProviderKind::SecureFile,
            mek.parse().unwrap(),
            vec![0x5A; n],
        )
    }

    fn arb_record() -> impl Strategy<Value = TekRecord> {
        (
            "[a-z][a-z0-9_.]{0,20}",
            1u32..,
            1u8..=5,
            any::<bool>(),
            any::<(u64, u64, u64, u64)>(),
            prop::option::of(any::<u64>()),
            0usize..100,
            prop::option::of(0usize..100),
        )
            .prop_map(|(t, v, s, wb, (c, sc, e, d), lu, n, prev)| {
                let id: TekId = format!("{t}@v{v}").parse().unwrap();
                TekRecord {
                    id: id.clone(),
                    metadata: KeyMetadata {
                        key_id: KeyId::Table(id),
                        state: KeyState::from_code(s).unwrap(),
                        algorithm: EncryptionAlgorithm::Aes256Gcm,
                        wrapped_by: wb.then(|| "m@v2".parse().unwrap()),
                        created_at: Timestamp(c),
                        state_changed_at: Timestamp(sc),
                        usage: UsageCounters {
                            encryptions: e,
                            decryptions: d,
                            last_used: lu.map(Timestamp),
                        },
                    },
                    wrapped: env("m@v2", n),
                    previous_wrap: prev.map(|p| env("m@v1", p)),
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(rec in arb_record()) {
            let bytes = encode(&rec);
            prop_assert_eq!(decode(&rec.id, &bytes, "test").unwrap(), rec.clone());
            prop_assert_eq!(parse_tek_key(&tek_key(&rec.id), "test").unwrap(), rec.id);
        }

        #[test]
        fn decode_is_total(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let id: TekId = "t@v1".parse().unwrap();
            let _ = decode(&id, &bytes, "test");
            let _ = parse_tek_key(&bytes, "test");
        }
    }

    #[test]
    fn truncations_are_errors_naming_the_location() {
        let id: TekId = "users@v1".parse().unwrap();
        let rec = TekRecord::new(
            id.clone(),
            KeyMetadata::new_active(
                KeyId::Table(id.clone()),
                EncryptionAlgorithm::Aes256Gcm,
                Some("m@v1".parse().unwrap()),
            ),
            env("m@v1", 60),
        )
        .unwrap();
        let bytes = encode(&rec);
        for n in 0..bytes.len() {
            let e = decode(&id, &bytes[..n], "/keys/tek-store.redb users@v1").unwrap_err();
            assert!(e.to_string().contains("/keys/tek-store.redb"), "{e}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let id: TekId = "users@v1".parse().unwrap();
        let rec = TekRecord::new(
            id.clone(),
            KeyMetadata::new_active(
                KeyId::Table(id.clone()),
                EncryptionAlgorithm::Aes256Gcm,
                None,
            ),
            env("m@v1", 60),
        )
        .unwrap();
        let bytes = encode(&rec);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&id, &b, "test").is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn keys_sort_by_table_then_version() {
        let k = |s: &str| tek_key(&s.parse().unwrap());
        assert!(k("a@v2") < k("a@v10"));
        assert!(k("a@v4294967295") < k("a.b@v1"));
        assert!(k("a@v1") < k("ab@v1"));
        let (lo, hi) = table_range(&"a".parse().unwrap());
        assert!(lo <= k("a@v1") && k("a@v4294967295") < hi);
        assert!(!(lo <= k("ab@v1") && k("ab@v1") < hi));
    }
}
