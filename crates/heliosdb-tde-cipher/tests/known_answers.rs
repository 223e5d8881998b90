//! Known-answer tests on every backend: NIST CAVP and Project Wycheproof AES-GCM vectors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{all_backends, unhex};
use heliosdb_tde_cipher::{AeadKey, CipherError};

struct Vector {
    key: [u8; 32],
    nonce: [u8; 12],
    pt: Vec<u8>,
    aad: Vec<u8>,
    ct: Vec<u8>,
    tag: [u8; 16],
}

fn nist_vectors() -> Vec<Vector> {
    let text = include_str!("data/nist_gcm_encrypt_256.txt");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let fields: std::collections::HashMap<&str, &str> = block
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(" = ").or_else(|| l.split_once(" =")))
            .collect();
        if fields.is_empty() {
            continue;
        }
        let get = |k: &str| unhex(fields.get(k).unwrap_or(&""));
        out.push(Vector {
            key: get("Key").try_into().unwrap(),
            nonce: get("IV").try_into().unwrap(),
            pt: get("PT"),
            aad: get("AAD"),
            ct: get("CT"),
            tag: get("Tag").try_into().unwrap(),
        });
    }
    out
}

#[test]
fn nist_cavp_gcm_encrypt_vectors() {
    let vectors = nist_vectors();
    assert_eq!(vectors.len(), 375, "the whole vector file was parsed");
    assert!(
        vectors
            .iter()
            .any(|v| !v.pt.is_empty() && !v.aad.is_empty())
    );
    for backend in all_backends() {
        for (i, v) in vectors.iter().enumerate() {
            let key = AeadKey::new(backend, &v.key).unwrap();
            let mut buf = v.pt.clone();
            let tag = key.seal_detached(&v.nonce, &v.aad, &mut buf).unwrap();
            assert_eq!(buf, v.ct, "{backend} vector {i}: ciphertext");
            assert_eq!(tag, v.tag, "{backend} vector {i}: tag");
            key.open_detached(&v.nonce, &v.aad, &mut buf, &v.tag)
                .unwrap_or_else(|e| panic!("{backend} vector {i}: open: {e}"));
            assert_eq!(buf, v.pt, "{backend} vector {i}: plaintext");
            // The same vector with a wrong tag must fail.
            let mut bad_tag = v.tag;
            bad_tag[i % 16] ^= 0x01;
            let mut buf = v.ct.clone();
            assert_eq!(
                key.open_detached(&v.nonce, &v.aad, &mut buf, &bad_tag),
                Err(CipherError::AuthenticationFailed),
                "{backend} vector {i}: bad tag accepted"
            );
        }
    }
}

#[test]
fn wycheproof_aes_gcm_vectors() {
    use wycheproof::TestResult;
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).unwrap();
    for backend in all_backends() {
        let (mut valid, mut invalid) = (0usize, 0usize);
        for group in &set.test_groups {
            // Our engine uses 256-bit keys, 96-bit nonces and 128-bit tags only.
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in &group.tests {
                let key = AeadKey::new(backend, t.key.as_ref().try_into().unwrap()).unwrap();
                let nonce: [u8; 12] = t.nonce.as_ref().try_into().unwrap();
                let tag: [u8; 16] = t.tag.as_ref().try_into().unwrap();
                let mut buf = t.ct.to_vec();
                let opened = key.open_detached(&nonce, &t.aad, &mut buf, &tag);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        opened.unwrap_or_else(|e| {
                            panic!("{backend} tc {} ({}): {e}", t.tc_id, t.comment)
                        });
                        assert_eq!(&buf[..], &t.pt[..], "{backend} tc {}", t.tc_id);
                        let mut enc = t.pt.to_vec();
                        let got = key.seal_detached(&nonce, &t.aad, &mut enc).unwrap();
                        assert_eq!(&enc[..], &t.ct[..], "{backend} tc {}", t.tc_id);
                        assert_eq!(got, tag, "{backend} tc {}", t.tc_id);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(
                            opened.is_err(),
                            "{backend} tc {} ({}): invalid vector accepted",
                            t.tc_id,
                            t.comment
                        );
                        assert!(buf.iter().all(|&b| b == 0), "buffer cleared on failure");
                        invalid += 1;
                    }
                }
            }
        }
        assert!(valid >= 35, "{backend}: only {valid} valid vectors ran");
        assert!(
            invalid > 10,
            "{backend}: only {invalid} invalid vectors ran"
        );
    }
}
