//! Replays the fuzz seed corpora and every saved fuzz failure (`fuzz/regressions/<target>/`)
//! through the same checks as the fuzz targets, on every `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{
    CipherBackend, EncryptionAlgorithm, PageHeader, TableKey, TdeConfig, UnmeteredTableCipher,
    UsageLimits,
};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every input of `target`: seeds and regressions.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no seed inputs for fuzz target {target}");
    out
}

#[test]
fn envelope() {
    for (p, data) in inputs("envelope") {
        if let Ok(env) = heliosdb_tde_core::WrappedTek::decode(&data) {
            assert_eq!(env.encode(), data, "{}", p.display());
        }
    }
}

#[test]
fn page_open() {
    let key = TableKey::new(
        "fuzz@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        heliosdb_tde_core::KeyBytes::from_slice(&[1u8; 32]).unwrap(),
    );
    let cipher =
        UnmeteredTableCipher::new(&key, CipherBackend::default(), UsageLimits::default()).unwrap();
    for (p, data) in inputs("page_open") {
        let _ = PageHeader::parse(&data);
        assert!(cipher.open(b"aad", &data).is_err(), "{}", p.display());
    }
}

#[test]
fn mek_file() {
    let pass = secrecy::SecretString::from("fuzzing passphrase".to_string());
    for (p, data) in inputs("mek_file") {
        if let Ok(file) = heliosdb_tde_file::format::parse(&data, &p)
            && file.header.kdf.m_cost_kib <= 64
            && file.header.kdf.t_cost <= 2
        {
            let opened = heliosdb_tde_file::open_image(&data, &p, &pass).unwrap();
            assert!(opened.is_none(), "{}", p.display());
        }
    }
}

#[test]
fn keystore_record() {
    let id = "fuzz.table@v1".parse().unwrap();
    let mut decoded = 0;
    for (p, data) in inputs("keystore_record") {
        let _ = heliosdb_tde_keystore::record::parse_tek_key(&data, "fuzz");
        if let Ok(rec) = heliosdb_tde_keystore::record::decode(&id, &data, "fuzz")
            && data.first() == Some(&heliosdb_tde_keystore::record::RECORD_VERSION)
        {
            assert_eq!(
                heliosdb_tde_keystore::record::encode(&rec),
                data,
                "{}",
                p.display()
            );
            decoded += 1;
        }
    }
    assert!(
        decoded >= 1,
        "the seed record must decode: the documented layout drifted"
    );
}

#[test]
fn config_toml() {
    let mut parsed = 0;
    for (_, data) in inputs("config_toml") {
        if let Ok(text) = std::str::from_utf8(&data)
            && let Ok(c) = TdeConfig::from_toml_str(text)
        {
            let _ = c.validate();
            parsed += 1;
        }
    }
    assert!(parsed >= 3, "the seed configurations must parse");
}

#[test]
fn audit_log() {
    for (p, data) in inputs("audit_log") {
        let _ = heliosdb_tde_manager::audit::verify_lines(std::io::Cursor::new(data), &p);
    }
}
