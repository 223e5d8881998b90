//! The provider's payload inside a [`heliosdb_tde_core::WrappedTek`]
//! (`docs/formats/wrapped-tek.md`, "AWS KMS payload"):
//!
//! ```text
//! format u8 (= 1) | ARN length u16 BE | key ARN (UTF-8) | blob length u32 BE | CiphertextBlob
//! ```
//!
//! The ARN is the KMS key of the MEK version that wrapped the TEK: unwrap checks it against
//! the version the envelope names before it calls KMS, so a relabelled envelope fails as an
//! authentication failure, never as an access-denied error.

/// The only payload format this crate writes.
pub(crate) const FORMAT: u8 = 1;
/// The longest key ARN KMS uses is well under this; a longer one is corrupt.
pub(crate) const MAX_ARN: usize = 2048;
/// KMS ciphertexts of a 32-byte plaintext are a few hundred bytes; the envelope caps payloads
/// at 16 KiB anyway.
pub(crate) const MAX_BLOB: usize = 16 * 1024;

/// A parsed payload: the key ARN and the KMS ciphertext blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) arn: String,
    pub(crate) blob: Vec<u8>,
}

/// Writes a payload. `None` when the ARN or the blob is too long (never for KMS's answers).
pub(crate) fn encode(arn: &str, blob: &[u8]) -> Option<Vec<u8>> {
    if arn.is_empty() || arn.len() > MAX_ARN || blob.is_empty() || blob.len() > MAX_BLOB {
        return None;
    }
    let mut out = Vec::with_capacity(1 + 2 + arn.len() + 4 + blob.len());
    out.push(FORMAT);
    out.extend_from_slice(&u16::try_from(arn.len()).ok()?.to_be_bytes());
    out.extend_from_slice(arn.as_bytes());
    out.extend_from_slice(&u32::try_from(blob.len()).ok()?.to_be_bytes());
    out.extend_from_slice(blob);
    Some(out)
}

/// Parses a payload: total, any bytes give a payload or a description of what is wrong.
pub(crate) fn decode(bytes: &[u8]) -> Result<Payload, String> {
    let (&format, rest) = bytes.split_first().ok_or("the payload is empty")?;
    if format != FORMAT {
        return Err(format!(
            "payload format {format} is not an AWS KMS payload (format {FORMAT})"
        ));
    }
    let (len, rest) = split::<2>(rest, "the key ARN length")?;
    let arn_len = usize::from(u16::from_be_bytes(len));
    if arn_len == 0 || arn_len > MAX_ARN {
        return Err(format!("key ARN length {arn_len} is out of range"));
    }
    let (arn, rest) = take(rest, arn_len, "the key ARN")?;
    let arn = std::str::from_utf8(arn)
        .map_err(|_| "the key ARN is not UTF-8".to_string())?
        .to_string();
    let (len, rest) = split::<4>(rest, "the ciphertext length")?;
    let blob_len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if blob_len == 0 || blob_len > MAX_BLOB {
        return Err(format!("ciphertext length {blob_len} is out of range"));
    }
    let (blob, rest) = take(rest, blob_len, "the ciphertext")?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the ciphertext",
            rest.len()
        ));
    }
    Ok(Payload {
        arn,
        blob: blob.to_vec(),
    })
}

fn take<'a>(bytes: &'a [u8], n: usize, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    if bytes.len() < n {
        return Err(format!(
            "truncated: {what} needs {n} bytes, {} left",
            bytes.len()
        ));
    }
    Ok(bytes.split_at(n))
}

fn split<'a, const N: usize>(bytes: &'a [u8], what: &str) -> Result<([u8; N], &'a [u8]), String> {
    let (head, rest) = take(bytes, N, what)?;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn round_trip_and_layout() {
        let p = encode(ARN, &[7u8; 150]).unwrap();
        assert_eq!(p[0], FORMAT);
        assert_eq!(u16::from_be_bytes([p[1], p[2]]) as usize, ARN.len());
        assert_eq!(&p[3..3 + ARN.len()], ARN.as_bytes());
        let d = decode(&p).unwrap();
        assert_eq!(d.arn, ARN);
        assert_eq!(d.blob, vec![7u8; 150]);
    }

    #[test]
    fn damaged_payloads_are_refused() {
        let p = encode(ARN, &[7u8; 150]).unwrap();
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_err(), "truncated at {cut}");
        }
        let mut wrong = p.clone();
        wrong[0] = 2;
        assert!(decode(&wrong).unwrap_err().contains("format 2"));
        let mut long = p.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().contains("trailing"));
        assert!(encode("", &[1]).is_none());
        assert!(encode(ARN, &[]).is_none());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = decode(&bytes) {
                // Whatever parses re-encodes to the same bytes: the format has one encoding.
                prop_assert_eq!(encode(&p.arn, &p.blob), Some(bytes));
            }
        }

        #[test]
        fn any_payload_round_trips(arn in "[a-z0-9:/-]{1,300}", blob in proptest::collection::vec(any::<u8>(), 1..2000)) {
            let p = encode(&arn, &blob).unwrap();
            prop_assert_eq!(decode(&p), Ok(Payload { arn, blob }));
        }
    }
}
