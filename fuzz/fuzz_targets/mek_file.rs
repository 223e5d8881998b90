#![no_main]
//! The MEK file parser and decryption: any bytes parse or fail with an error; an image whose
//! KDF parameters are cheap enough is also decrypted, which must fail for anything the fuzzer
//! made (it cannot forge a GCM tag).

use heliosdb_tde_file::format;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.v1.mek");
    let Ok(file) = format::parse(data, path) else {
        return;
    };
    let kdf = file.header.kdf;
    if kdf.m_cost_kib <= 64 && kdf.t_cost <= 2 {
        let pass = SecretString::from("fuzzing passphrase".to_string());
        let opened = heliosdb_tde_file::open_image(data, path, &pass).expect("parsed image");
        assert!(opened.is_none(), "a forged MEK file decrypted");
    }
});
