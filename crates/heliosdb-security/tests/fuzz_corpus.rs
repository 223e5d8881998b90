//! Replays the fuzz seed corpora and every saved fuzz failure (`fuzz/regressions/<target>/`)
//! through the fuzz targets' own checks, on every `cargo test`. The checks live in
//! `fuzz/src/checks.rs`, shared with the fuzz targets: the fuzz workspace stays separate (this
//! crate never builds libfuzzer-sys), so the file is included here rather than depended on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub)]
#[path = "../../../fuzz/src/checks.rs"]
mod checks;

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

/// Runs `check` over every input of `target`, naming the input (in the test's captured
/// output, shown on failure) before each; returns how many it accepted.
fn replay(target: &str, mut check: impl FnMut(&[u8]) -> bool) -> usize {
    let mut accepted = 0;
    for (p, data) in inputs(target) {
        eprintln!("fuzz_corpus: {target}: {}", p.display());
        if check(&data) {
            accepted += 1;
        }
    }
    accepted
}

#[test]
fn envelope() {
    replay("envelope", checks::envelope);
}

#[test]
fn page_open() {
    let check = checks::PageOpen::new();
    replay("page_open", |d| {
        check.check(d);
        true
    });
}

#[test]
fn mek_file() {
    replay("mek_file", checks::mek_file);
}

#[test]
fn keystore_record() {
    let decoded = replay("keystore_record", checks::keystore_record);
    assert!(
        decoded >= 1,
        "the seed record must decode: the documented layout drifted"
    );
}

#[test]
fn config_toml() {
    let parsed = replay("config_toml", checks::config_toml);
    assert!(parsed >= 3, "the seed configurations must parse");
}

#[test]
fn audit_log() {
    replay("audit_log", |d| {
        checks::audit_log(d);
        true
    });
}

#[test]
fn backup_bundle() {
    let accepted = replay("backup_bundle", checks::backup_bundle);
    assert!(
        accepted >= 3,
        "the three valid seed bundles must be accepted (accepted {accepted}): the documented \
         layout drifted; write new seeds with write_backup_bundle_seeds"
    );
    // Resealed, the byte flipped in the journal section is past the checksums and must be
    // judged by the entry walk; the valid seeds stay valid.
    let resealed = replay("backup_bundle", checks::backup_bundle_resealed);
    assert!(resealed >= 3, "resealed: {resealed}");
}

/// Writes the seeds of `fuzz/corpus/backup_bundle/`: three bundles of real stores (the default
/// MEK only; 3 tables; 20 tables, every third rotated) under a throwaway passphrase, and three
/// damaged copies (cut short inside the `teks` section, a byte flipped inside the `journal`
/// section, the wrong magic). Run it when the bundle format changes:
/// `cargo test -p heliosdb-security --test fuzz_corpus -- --ignored write_backup_bundle_seeds`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes the committed seeds of fuzz/corpus/backup_bundle"]
async fn write_backup_bundle_seeds() {
    use heliosdb_tde_core::{MekId, SecureFileConfig, SecurityMode};
    use heliosdb_tde_file::SecureFileMekProvider;
    use heliosdb_tde_keystore::RedbKeyStore;
    use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
    use std::sync::Arc;

    async fn bundle(dir: &Path, tables: usize) -> Vec<u8> {
        let provider = SecureFileMekProvider::open_with_passphrase(
            &SecureFileConfig::new(dir.join("mek")),
            SecurityMode::Production,
            secrecy::SecretString::from("a throwaway passphrase for fuzz seeds".to_string()),
            vec![],
        )
        .unwrap();
        let store = RedbKeyStore::open_dir(&dir.join("keys")).unwrap();
        let km = KeyManager::new(
            Arc::new(provider),
            Arc::new(store),
            KeyManagerConfig::new(
                MekId::new("master_key_001").unwrap(),
                SecurityMode::Production,
            ),
        )
        .unwrap();
        km.ensure_default_mek().await.unwrap();
        for t in 0..tables {
            let table = format!("public.t{t:03}");
            km.create_table_key(&table).await.unwrap();
            if t % 3 == 0 {
                km.rotate_table(&table.parse().unwrap()).await.unwrap();
            }
        }
        let out = dir.join("bundle.hbk");
        km.backup(&out, false).await.unwrap();
        std::fs::read(out).unwrap()
    }

    /// Where each section's payload starts, and its length.
    fn sections(b: &[u8]) -> Vec<(usize, usize)> {
        let mut at = 12;
        let mut out = Vec::new();
        for tag in 1..=4u8 {
            assert_eq!(b[at], tag, "section {tag} at byte {at}");
            let len = u64::from_be_bytes(b[at + 1..at + 9].try_into().unwrap()) as usize;
            out.push((at + 9, len));
            at += 9 + len;
        }
        out
    }

    let tmp = tempfile::tempdir().unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, tables) in [
        ("valid-default-mek-only", 0),
        ("valid-3-tables", 3),
        ("valid-20-tables-rotated", 20),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        seeds.push((name, bundle(&dir, tables).await));
    }
    let three = seeds[1].1.clone();
    let s = sections(&three);
    let (teks, teks_len) = s[1];
    let (journal, journal_len) = s[2];
    assert!(teks_len > 8 && journal_len > 8, "{s:?}");
    seeds.push(("truncated-in-teks", three[..teks + teks_len / 2].to_vec()));
    let mut flipped = three.clone();
    flipped[journal + journal_len / 2] ^= 0x01;
    seeds.push(("flipped-in-journal", flipped));
    let mut magic = three;
    magic[0] = b'X';
    seeds.push(("wrong-magic", magic));

    let corpus = fuzz_dir().join("corpus").join("backup_bundle");
    std::fs::create_dir_all(&corpus).unwrap();
    for (name, bytes) in &seeds {
        let accepted = checks::backup_bundle(bytes);
        assert_eq!(accepted, name.starts_with("valid-"), "{name}");
        std::fs::write(corpus.join(name), bytes).unwrap();
    }
}
