#![no_main]
//! The page header parser and open of arbitrary bytes: never a panic, never a successful open
//! of bytes that were not sealed under the key.

use heliosdb_tde_cipher::{Backend, PageHeader, TableCipher, UsageLimits};
use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PageHeader::parse(data);
    let key = TableKey::new(
        "fuzz@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&[1u8; 32]).unwrap(),
    );
    let cipher = TableCipher::new(&key, Backend::default(), UsageLimits::default()).unwrap();
    assert!(cipher.open(b"aad", data).is_err(), "forged page opened");
});
