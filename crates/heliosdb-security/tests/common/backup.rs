//! The key backup of a remote provider, end to end: a bundle of references only, without
//! credentials or table keys, verified with the provider and restored into another key store
//! directory where a new subsystem unwraps the same table keys.

use heliosdb_security::tde::{self, RestoreOptions, TdeConfig, TdeSubsystem, TekVersion};
use std::path::Path;

/// One table key as created: its table, its version and its bytes.
pub type Tek = (&'static str, TekVersion, [u8; 32]);

/// Creates one table key for each of three tables and returns them.
pub async fn three_table_keys(tde: &TdeSubsystem) -> Vec<Tek> {
    let km = tde.key_manager();
    let mut teks = Vec::new();
    for t in ["public.a", "public.b", "public.c"] {
        km.create_table_key(t).await.unwrap();
        let k = km.get_table_key(t, None).await.unwrap();
        teks.push((t, k.id().version, *k.bytes().expose_secret()));
    }
    teks
}

/// What a provider's bundle holds and what it must leave out.
pub struct Expected<'a> {
    /// The manifest's provider kind.
    pub provider: &'a str,
    /// The default MEK id; its version 1 wraps every table key.
    pub mek: &'a str,
    /// Text each MEK version's reference contains, besides the MEK version itself.
    pub reference: &'a [String],
    /// Credentials that must not be in the bundle, each with the name a failure gives it.
    pub secrets: &'a [(&'a str, String)],
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Backs `tde` (started from `config`) up to `dir/<file>`, checks the bundle against `expected`
/// and `teks` offline and with the provider, restores it into `dir/keys-restored` against the
/// same provider, and checks that a new subsystem there unwraps every one of `teks`.
pub async fn backup_verify_and_restore(
    tde: &TdeSubsystem,
    config: &TdeConfig,
    dir: &Path,
    file: &str,
    expected: &Expected<'_>,
    teks: &[Tek],
) {
    let n = u64::try_from(teks.len()).unwrap();
    let mek = expected.mek;
    let bundle = dir.join(file);
    let report = tde.backup(&bundle).await.unwrap();
    assert_eq!(report.manifest.counts.teks, n);

    let check = tde::verify_bundle(&bundle).await.unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let m = &check.manifest;
    assert_eq!(m.provider.kind, expected.provider);
    assert_eq!(m.counts.material, 0);
    assert_eq!(m.default_mek, mek);
    assert_eq!(m.mek_versions.len(), 1, "{:?}", m.mek_versions);
    for v in &m.mek_versions {
        assert_eq!(v.mek, format!("{mek}@v1"));
        assert_eq!(v.teks, n);
        assert_eq!(v.file, None);
        for part in expected.reference {
            assert!(v.reference.contains(part.as_str()), "{}", v.reference);
        }
        assert!(v.reference.contains(&v.mek), "{}", v.reference);
    }

    // Neither a credential nor any table key is in the bundle.
    let bytes = std::fs::read(&bundle).unwrap();
    for (name, secret) in expected.secrets {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "the {name} is in the bundle"
        );
    }
    for (t, v, k) in teks {
        assert!(!contains(&bytes, k), "{t} v{v} is in the bundle");
    }

    let check = tde::verify_bundle_with_provider(config, &bundle)
        .await
        .unwrap();
    assert!(check.ok(), "{check:?}");
    assert_eq!(check.unwraps.total, n);

    // Another key store directory against the same provider.
    let mut moved = config.clone();
    moved.key_storage_path = dir.join("keys-restored");
    let r = tde::restore(&moved, &bundle, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(r.teks, n);
    assert_eq!(r.mek_files_added, Vec::<String>::new());
    let restored = TdeSubsystem::new(moved).await.unwrap();
    for (t, v, k) in teks {
        let got = restored
            .key_manager()
            .get_table_key(*t, Some(*v))
            .await
            .unwrap();
        assert_eq!(got.bytes().expose_secret(), k, "{t} v{v}");
    }
}
