//! Key backup of 100,000 TEKs with the secure-file provider and the durable redb store
//! (`KeyManager::backup`), against the same store's export alone (`KeyStore::export_blocking`
//! with a visitor that only counts); and the check of that bundle with the provider
//! (`verify_bundle_with_provider`: the bundle loaded into a scratch store in memory, its MEK
//! files written to a scratch directory and opened with the passphrase, the key check value
//! and every TEK unwrapped), against 100,000 `unwrap_tek` calls of the same wrapped keys on the
//! already-open secure-file provider.
//!
//! `harness = false`: one side takes seconds, so criterion's ten-sample minimum, twice per row,
//! would take minutes. The store is built once per run; each side runs [`REPS`] times, the two
//! sides of a row alternating in ABBA order, and the median of each goes to
//! `target/bench-extra/backup.json` (ids `backup_100k/{ours_backup_secure_file,
//! baseline_store_export_count}` and `backup_verify_100k/{ours_verify_with_provider_file,
//! baseline_unwraps_in_memory}`, in ns).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_benches::extra::{Args, Extra, median, write};
use heliosdb_benches::{file_provider, manager};
use heliosdb_security::tde::{SecureFileConfig, TdeConfig, verify_bundle_with_provider};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{ExportItem, WrapContext};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const N: usize = 100_000;
/// Timed runs of each side.
const REPS: usize = 5;
const PASSPHRASE: &str = "benchmark passphrase, long enough for production";
const IDS: [&str; 4] = [
    "backup_100k/ours_backup_secure_file",
    "backup_100k/baseline_store_export_count",
    "backup_verify_100k/ours_verify_with_provider_file",
    "backup_verify_100k/baseline_unwraps_in_memory",
];

/// The configuration a check of the bundle runs with: the secure-file provider whose MEK files
/// are under `root/mek` (the bundle carries copies), its passphrase in a 0600 file.
fn config(root: &Path) -> TdeConfig {
    let pass = root.join("secrets").join("mek-passphrase.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut sf = SecureFileConfig::new(root.join("mek"));
    sf.passphrase_file = Some(pass);
    TdeConfig {
        key_storage_path: root.join("keys"),
        default_mek_id: "bench_mek".into(),
        secure_file_config: Some(sf),
        security_mode: Some("development".into()),
        ..Default::default()
    }
}

/// Runs `a` and `b` [`REPS`] times each in ABBA order; returns the median of each in ns.
fn abba(mut a: impl FnMut() -> Duration, mut b: impl FnMut() -> Duration) -> [f64; 2] {
    let (mut ta, mut tb) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
    for rep in 0..REPS {
        if rep % 2 == 0 {
            ta.push(a().as_nanos() as f64);
            tb.push(b().as_nanos() as f64);
        } else {
            tb.push(b().as_nanos() as f64);
            ta.push(a().as_nanos() as f64);
        }
    }
    [median(&mut ta), median(&mut tb)]
}

fn main() {
    let args = Args::from_env();
    if !args.bench {
        eprintln!("backup: not run as a benchmark (cargo bench passes --bench); skipped");
        return;
    }
    if !args.selects(&IDS) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let built = Instant::now();
    let provider = file_provider(root);
    let km = manager(&rt, root, provider.clone(), 1000, N, false);
    eprintln!("backup: store of {N} TEKs built in {:?}", built.elapsed());
    let store = km.store().clone();

    // Row 1: the backup against the export alone.
    let out = root.join("bench.hbk");
    let mut bytes = 0;
    let [backup, export] = abba(
        || {
            let start = Instant::now();
            let r = rt.block_on(km.backup(&out, false)).unwrap();
            let took = start.elapsed();
            assert_eq!(r.manifest.counts.teks as usize, N);
            bytes = r.bytes;
            std::fs::remove_file(&out).unwrap();
            took
        },
        || {
            let mut teks = 0usize;
            let start = Instant::now();
            store
                .export_blocking(&mut |item| {
                    if let ExportItem::Tek { .. } = item {
                        teks += 1;
                    }
                    Ok(())
                })
                .unwrap();
            let took = start.elapsed();
            assert_eq!(teks, N);
            took
        },
    );
    eprintln!(
        "backup: bundle of {bytes} bytes; backup / export {:.2}",
        backup / export
    );

    // Row 2: the check with the provider against the unwraps alone, of the same wrapped keys.
    let bundle = root.join("verify.hbk");
    rt.block_on(km.backup(&bundle, false)).unwrap();
    let config = config(root);
    let mut wrapped = Vec::with_capacity(N);
    rt.block_on(store.tek_pages(None, 4096).for_each(|page| {
        wrapped.extend(
            page.into_iter()
                .map(|r| (WrapContext::table_key(&r.id), r.wrapped)),
        );
        Ok(())
    }))
    .unwrap();
    assert_eq!(wrapped.len(), N);
    let [verify, unwraps] = abba(
        || {
            let start = Instant::now();
            let check = rt
                .block_on(verify_bundle_with_provider(&config, &bundle))
                .unwrap();
            let took = start.elapsed();
            assert!(check.ok(), "the bundle did not verify: {check:?}");
            assert_eq!(check.unwraps.total as usize, N);
            took
        },
        || {
            let start = Instant::now();
            rt.block_on(async {
                for (ctx, w) in &wrapped {
                    std::hint::black_box(provider.unwrap_tek(w, ctx).await.unwrap());
                }
            });
            start.elapsed()
        },
    );
    eprintln!("backup: verify / unwraps {:.2}", verify / unwraps);
    write(
        "backup",
        &[
            Extra::ns(IDS[0], backup),
            Extra::ns(IDS[1], export),
            Extra::ns(IDS[2], verify),
            Extra::ns(IDS[3], unwraps),
        ],
    );
}
