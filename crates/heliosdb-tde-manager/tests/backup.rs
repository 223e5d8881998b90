//! Backup bundles: a bundle written from a live store opens, checks, loads into an empty store
//! and unwraps there; every truncation and a flipped byte in each section is refused with the
//! section named; no key or passphrase is in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{MekId, SecurityMode, TdeError};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::backup::{Bundle, Section, check, verify_bundle_structure};
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use std::sync::Arc;

const PASSPHRASE: &str = "a passphrase of sufficient length!";

fn manager(mek_dir: &std::path::Path, store: RedbKeyStore) -> KeyManager {
    let config = KeyManagerConfig::new(
        MekId::new("master_key_001").unwrap(),
        SecurityMode::Production,
    );
    KeyManager::new(
        Arc::new(common::secure_file_provider(mek_dir)),
        Arc::new(store),
        config,
    )
    .unwrap()
}

/// A store with `tables` tables, every third one rotated, and a bundle of it.
async fn bundle(dir: &std::path::Path, tables: usize) -> (KeyManager, std::path::PathBuf) {
    let km = manager(
        &dir.join("mek"),
        RedbKeyStore::open_dir(&dir.join("keys")).unwrap(),
    );
    km.ensure_default_mek().await.unwrap();
    for t in 0..tables {
        km.create_table_key(&format!("public.t{t:03}"))
            .await
            .unwrap();
        if t % 3 == 0 {
            km.rotate_table(&format!("public.t{t:03}").parse().unwrap())
                .await
                .unwrap();
        }
    }
    let out = dir.join("b.hbk");
    km.backup(&out, false).await.unwrap();
    (km, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_loads_into_an_empty_store_and_every_key_unwraps_there() {
    let dir = tempfile::tempdir().unwrap();
    let (km, out) = bundle(dir.path(), 12).await;
    let mut b = Bundle::open(&out).unwrap();
    let m = b.manifest().clone();
    assert_eq!(m.counts.teks, 16);
    assert_eq!(m.counts.tables, 12);
    assert_eq!(m.provider.kind, "secure_file");
    assert_eq!(m.default_mek, "master_key_001");
    assert_eq!(m.store.id, km.store().identity().await.unwrap().id_hex());
    assert_eq!(
        m.store.generation,
        km.store().identity().await.unwrap().generation
    );
    let v1 = m
        .mek_versions
        .iter()
        .find(|v| v.mek == "master_key_001@v1")
        .unwrap();
    assert_eq!(v1.teks, 16);
    assert_eq!(v1.file.as_deref(), Some("master_key_001.v1.mek"));
    let material = b.material().unwrap();
    assert_eq!(material.len(), 1);
    assert_eq!(
        material[0].1,
        std::fs::read(dir.path().join("mek/master_key_001.v1.mek")).unwrap(),
        "the MEK file is kept byte for byte"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // No stray temporary files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    let target = tempfile::tempdir().unwrap();
    let restored = RedbKeyStore::open_dir(target.path()).unwrap();
    let n = tokio::task::block_in_place(|| b.import_into(&restored)).unwrap();
    assert_eq!(n, 16);
    // The MEK files come from the bundle too, into a directory of their own.
    let mek2 = target.path().join("mek");
    std::fs::create_dir(&mek2).unwrap();
    for (name, file) in &material {
        std::fs::write(mek2.join(name), file).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(mek2.join(name), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mek2, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let km2 = manager(&mek2, restored);
    km2.check_default_mek().await.unwrap();
    let trial = km2.trial_unwrap_all().await.unwrap();
    assert_eq!(trial.total, 16);
    assert!(trial.failed.is_empty(), "{:?}", trial.failed);
    assert_eq!(
        km2.get_table_key("public.t005", None)
            .await
            .unwrap()
            .bytes()
            .expose_secret(),
        km.get_table_key("public.t005", None)
            .await
            .unwrap()
            .bytes()
            .expose_secret()
    );

    // No TEK, and not the passphrase, is anywhere in the bundle.
    let bytes = std::fs::read(&out).unwrap();
    for t in 0..12 {
        let k = km
            .get_table_key(&format!("public.t{t:03}"), None)
            .await
            .unwrap();
        let secret = k.bytes().expose_secret();
        assert!(!bytes.windows(32).any(|w| w == secret), "TEK {t} leaked");
    }
    assert!(
        !bytes
            .windows(PASSPHRASE.len())
            .any(|w| w == PASSPHRASE.as_bytes())
    );
}

#[tokio::test]
async fn an_existing_file_is_kept_unless_overwrite_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (km, out) = bundle(dir.path(), 2).await;
    let before = std::fs::read(&out).unwrap();
    let e = km.backup(&out, false).await.unwrap_err();
    assert!(matches!(e, TdeError::TargetExists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    km.create_table_key("public.later").await.unwrap();
    km.backup(&out, true).await.unwrap();
    assert_eq!(verify_bundle_structure(&out).unwrap().counts.teks, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_truncation_and_a_flipped_byte_in_each_section_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_km, out) = bundle(dir.path(), 5).await;
    let bytes = std::fs::read(&out).unwrap();
    let loc = "bundle";
    let parse = |b: &[u8]| check(&mut std::io::Cursor::new(b), b.len() as u64, loc);
    assert!(parse(&bytes).is_ok());
    for len in 0..bytes.len() {
        let e = parse(&bytes[..len]).unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{len}: {e}");
        let text = e.to_string();
        assert!(
            ["header", "section ", "trailer"]
                .iter()
                .any(|w| text.contains(w)),
            "{len}: {text}"
        );
    }
    let checked = parse(&bytes).unwrap();
    // Section payload offsets, from the framing: header 12 bytes, then tag + u64 length.
    let mut at = 12usize;
    for s in Section::ALL {
        let len = u64::from_be_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
        let payload = at + 9;
        if len > 0 {
            for pos in [payload, payload + len / 2, payload + len - 1] {
                let mut damaged = bytes.clone();
                damaged[pos] ^= 0x01;
                let e = parse(&damaged).unwrap_err().to_string();
                let named = match s {
                    Section::Manifest => e.contains("manifest"),
                    other => e.contains(&format!("section {}", other.name())),
                };
                assert!(named, "{} byte {pos}: {e}", s.name());
            }
        }
        at = payload + len;
    }
    // The trailer itself.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x80;
    assert!(
        parse(&damaged)
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
    drop(checked);
}
