//! Page sealing: round trips, cross-backend interoperability, tamper detection, limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::all_backends;
use heliosdb_tde_cipher::{
    AeadKey, Backend, CipherError, HEADER_LEN, PageHeader, SealedParts, TAG_LEN, TableCipher,
    UsageLimits, sealed_tek_version,
};
use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};
use proptest::prelude::*;

fn tek(table: &str, version: u32, bytes: [u8; 32]) -> TableKey {
    TableKey::new(
        format!("{table}@v{version}").parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&bytes).unwrap(),
    )
}

fn cipher(backend: Backend, key: [u8; 32]) -> TableCipher {
    TableCipher::new(&tek("users", 3, key), backend, UsageLimits::default()).unwrap()
}

#[test]
fn layout_is_header_ciphertext_tag() {
    let c = cipher(Backend::default(), [1; 32]);
    let sealed = c.seal(b"users/page/7", b"hello page").unwrap();
    assert_eq!(sealed.len(), HEADER_LEN + 10 + TAG_LEN);
    assert_eq!(sealed[0], 1, "format version");
    assert_eq!(&sealed[1..5], &[0, 0, 0, 3], "TEK version");
    assert_eq!(sealed_tek_version(&sealed).unwrap().get(), 3);
    assert_ne!(&sealed[HEADER_LEN..HEADER_LEN + 10], b"hello page");
    assert_eq!(c.open(b"users/page/7", &sealed).unwrap(), b"hello page");
}

#[test]
fn nonces_are_fresh() {
    let c = cipher(Backend::default(), [2; 32]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let s = c.seal(b"", b"same plaintext").unwrap();
        let h = PageHeader::parse(&s).unwrap();
        assert!(seen.insert(h.nonce), "a nonce repeated");
    }
    assert_eq!(c.usage().invocations, 10_000);
}

#[test]
fn in_place_pages_of_database_sizes() {
    for backend in all_backends() {
        let c = cipher(backend, [3; 32]);
        for size in [0usize, 1, 15, 16, 17, 4096, 8192, 16384] {
            let original: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mut page = original.clone();
            let aad = format!("users:{size}");
            let parts = c.seal_in_place(aad.as_bytes(), &mut page).unwrap();
            if size > 16 {
                assert_ne!(page, original);
            }
            c.open_in_place(&parts, aad.as_bytes(), &mut page).unwrap();
            assert_eq!(page, original, "{backend} size {size}");
        }
    }
}

#[test]
fn long_associated_data_takes_the_heap_path() {
    let c = cipher(Backend::default(), [4; 32]);
    let aad = vec![7u8; 1000];
    let sealed = c.seal(&aad, b"x").unwrap();
    assert_eq!(c.open(&aad, &sealed).unwrap(), b"x");
    let mut other = aad.clone();
    other[999] ^= 1;
    assert_eq!(
        c.open(&other, &sealed),
        Err(CipherError::AuthenticationFailed)
    );
}

#[test]
fn moved_page_fails_to_open() {
    let c = cipher(Backend::default(), [5; 32]);
    let sealed = c.seal(b"users/page/1", b"row data").unwrap();
    assert_eq!(
        c.open(b"users/page/2", &sealed),
        Err(CipherError::AuthenticationFailed)
    );
    assert_eq!(
        c.open(b"orders/page/1", &sealed),
        Err(CipherError::AuthenticationFailed)
    );
}

#[test]
fn wrong_key_or_version_fails() {
    let a = cipher(Backend::default(), [6; 32]);
    let b = cipher(Backend::default(), [7; 32]);
    let sealed = a.seal(b"", b"secret").unwrap();
    assert_eq!(b.open(b"", &sealed), Err(CipherError::AuthenticationFailed));
    let v4 = TableCipher::new(
        &tek("users", 4, [6; 32]),
        Backend::default(),
        UsageLimits::default(),
    )
    .unwrap();
    let e = v4.open(b"", &sealed).unwrap_err();
    assert!(matches!(e, CipherError::KeyVersionMismatch { .. }), "{e}");
    assert!(e.to_string().contains("version v3"), "{e}");
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let c = cipher(Backend::default(), [8; 32]);
    for n in 0..HEADER_LEN + TAG_LEN {
        assert!(c.open(b"", &vec![1u8; n]).is_err());
    }
    let mut sealed = c.seal(b"", b"data").unwrap();
    sealed[0] = 2;
    assert!(matches!(
        c.open(b"", &sealed),
        Err(CipherError::Malformed(_))
    ));
    sealed[0] = 1;
    sealed[1..5].copy_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(
        c.open(b"", &sealed),
        Err(CipherError::Malformed(_))
    ));
}

#[test]
fn hard_limit_refuses_to_seal_but_still_opens() {
    let limits = UsageLimits::new(2, 3).unwrap();
    let c = TableCipher::new(&tek("t", 1, [9; 32]), Backend::default(), limits).unwrap();
    let first = c.seal(b"", b"a").unwrap();
    assert!(!c.rotation_due());
    c.seal(b"", b"b").unwrap();
    assert!(c.rotation_due(), "soft limit reached");
    c.seal(b"", b"c").unwrap();
    let e = c.seal(b"", b"d").unwrap_err();
    assert_eq!(e, CipherError::NonceBudgetExhausted { invocations: 3 });
    assert!(e.to_string().contains("rotate"), "{e}");
    assert_eq!(c.open(b"", &first).unwrap(), b"a");
}

#[test]
fn invocations_resume_from_a_persisted_count() {
    let limits = UsageLimits::new(10, 12).unwrap();
    let c = TableCipher::with_invocations(&tek("t", 1, [9; 32]), Backend::default(), limits, 11)
        .unwrap();
    assert!(c.rotation_due());
    c.seal(b"", b"x").unwrap();
    assert!(
        c.seal(b"", b"y").is_err(),
        "the restart did not reset the budget"
    );
}

#[test]
fn debug_does_not_leak_the_key() {
    let key = [0xA5u8; 32];
    let c = cipher(Backend::default(), key);
    let text = format!("{c:?} {:?}", AeadKey::new(Backend::Ring, &key).unwrap());
    assert!(!text.to_lowercase().contains("a5a5"), "{text}");
    assert!(!text.contains("165, 165"), "{text}");
    assert!(text.contains("users@v3"), "{text}");
}

#[test]
fn unavailable_backend_names_the_feature() {
    // Every backend is compiled into the tests, so exercise the parse path instead.
    let e = "openssl".parse::<Backend>().unwrap_err();
    assert!(e.to_string().contains("aws-lc, ring, rustcrypto"), "{e}");
    assert_eq!("ring".parse::<Backend>().unwrap(), Backend::Ring);
}

fn arb_key() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_on_every_backend(key in arb_key(), aad in prop::collection::vec(any::<u8>(), 0..200),
                                   pt in prop::collection::vec(any::<u8>(), 0..2048)) {
        for backend in all_backends() {
            let c = cipher(backend, key);
            let sealed = c.seal(&aad, &pt).unwrap();
            prop_assert_eq!(c.open(&aad, &sealed).unwrap(), pt.clone());
        }
    }

    /// Each backend's ciphertext opens with every other backend, and for the same nonce all
    /// backends produce identical bytes.
    #[test]
    fn backends_interoperate(key in arb_key(), nonce in any::<[u8; 12]>(),
                             aad in prop::collection::vec(any::<u8>(), 0..64),
                             pt in prop::collection::vec(any::<u8>(), 0..1024)) {
        let backends = all_backends();
        let mut outputs = Vec::new();
        for &b in &backends {
            let k = AeadKey::new(b, &key).unwrap();
            let mut buf = pt.clone();
            let tag = k.seal_detached(&nonce, &aad, &mut buf).unwrap();
            outputs.push((buf, tag));
        }
        for w in outputs.windows(2) {
            prop_assert_eq!(&w[0], &w[1]);
        }
        for &sealer in &backends {
            let sealed = cipher(sealer, key).seal(&aad, &pt).unwrap();
            for &opener in &backends {
                prop_assert_eq!(cipher(opener, key).open(&aad, &sealed).unwrap(), pt.clone(),
                    "sealed by {} opened by {}", sealer, opener);
            }
        }
    }
}

/// Flipping any single bit of the header, ciphertext, tag or associated data makes open fail.
#[test]
fn every_bit_flip_is_detected() {
    for backend in all_backends() {
        let c = cipher(backend, [0x11; 32]);
        let aad = b"users/page/42".to_vec();
        let sealed = c.seal(&aad, b"a short page body").unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut t = sealed.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(
                c.open(&aad, &t).is_err(),
                "{backend}: flip of sealed bit {bit} accepted"
            );
        }
        for bit in 0..aad.len() * 8 {
            let mut a = aad.clone();
            a[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                c.open(&a, &sealed),
                Err(CipherError::AuthenticationFailed),
                "{backend}: flip of aad bit {bit} accepted"
            );
        }
        // Detached in-place form: flips in the detached header and tag.
        let mut page = vec![0x5Au8; 64];
        let parts = c.seal_in_place(&aad, &mut page).unwrap();
        for bit in 0..(HEADER_LEN + TAG_LEN) * 8 {
            let mut p = parts;
            let byte = bit / 8;
            if byte < HEADER_LEN {
                p.header[byte] ^= 1 << (bit % 8);
            } else {
                p.tag[byte - HEADER_LEN] ^= 1 << (bit % 8);
            }
            let mut buf = page.clone();
            assert!(
                c.open_in_place(&p, &aad, &mut buf).is_err(),
                "{backend}: bit {bit}"
            );
        }
        let SealedParts { .. } = parts;
    }
}

#[test]
fn failed_open_clears_the_buffer() {
    let c = cipher(Backend::default(), [0x22; 32]);
    let mut page = vec![0x33u8; 128];
    let mut parts = c.seal_in_place(b"", &mut page).unwrap();
    parts.tag[0] ^= 1;
    assert!(c.open_in_place(&parts, b"", &mut page).is_err());
    assert!(
        page.iter().all(|&b| b == 0),
        "no unauthenticated plaintext is left behind"
    );
}
