//! Sealing an 8 KiB page through the facade's sealer, the whole per-page cost a database pays
//! (`TdeSubsystem::page_sealer`, then `PageSealer::seal_in_place`), against the raw aws-lc seal
//! with a fixed nonce on the same page buffer and associated data.
//!
//! The subsystem runs the secure-file provider and the redb store in a temporary directory,
//! with the default usage policy, so the run crosses reservation-block boundaries and the
//! amortised durable reservation is included. Each seal is polled once with a no-op waker; a
//! poll that answers `Pending` (waiting for a reservation) is finished with `block_on`, and
//! such polls are counted on standard error.
//!
//! The two sides run in alternating chunks of about 10 ms (ABBA order), about 3 s per side, so
//! background noise on a shared machine hits both alike (criterion would run one after the
//! other). The median time per seal of each side's chunks goes to
//! `target/bench-extra/facade_seal.json` (ids `facade_seal/{ours,raw_aws_lc}_8192`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_benches::extra::{Args, Extra, chunk_iters, interleave, write};
use heliosdb_security::tde::{SecureFileConfig, TdeConfig, TdeSubsystem};
use heliosdb_tde_cipher::{AeadKey, Backend};
use std::future::Future;
use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const PAGE: usize = 8192;
/// 23 bytes, as in the page-seal rows.
const AAD: &[u8] = b"bench.table/page/000001";
/// The target length of one chunk.
const CHUNK: Duration = Duration::from_millis(10);
/// Chunks (half each side), after [`WARM_UP`] discarded ones.
const CHUNKS: usize = 600;
const WARM_UP: usize = 8;

/// A development-mode subsystem on the secure-file provider under `root`.
fn config(root: &Path) -> TdeConfig {
    let pass = root.join("secrets").join("mek-passphrase.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, "benchmark passphrase, long enough for production\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut sf = SecureFileConfig::new(root.join("mek"));
    sf.passphrase_file = Some(pass);
    TdeConfig {
        key_storage_path: root.join("keys"),
        secure_file_config: Some(sf),
        security_mode: Some("development".into()),
        cache_limit: 100,
        ..Default::default()
    }
}

fn main() {
    let args = Args::from_env();
    if !args.bench {
        eprintln!("sealer: not run as a benchmark (cargo bench passes --bench); skipped");
        return;
    }
    // The setup (a subsystem with its Argon2id open) is skipped when the filter selects neither.
    let (ours_id, raw_id) = ("facade_seal/ours_8192", "facade_seal/raw_aws_lc_8192");
    if !args.selects(&[raw_id, ours_id]) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tde = rt.block_on(TdeSubsystem::new(config(dir.path()))).unwrap();
    rt.block_on(tde.key_manager().create_table_key("t"))
        .unwrap();
    let sealer = rt.block_on(tde.page_sealer("t")).unwrap();
    let raw = AeadKey::new(Backend::AwsLc, &[0x42; 32]).unwrap();

    let mut page = vec![0u8; PAGE];
    let nonce = [7u8; 12];
    // The seal may need the runtime (a reservation on the blocking pool); entered, a first poll
    // that finishes synchronously never touches it.
    let _entered = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let (mut polls, mut pending) = (0u64, 0u64);
    // Side 0 is the raw seal, side 1 ours.
    let mut run = |side: usize, n: u64| {
        if side == 0 {
            for _ in 0..n {
                black_box(
                    raw.seal_detached(&nonce, black_box(AAD), black_box(&mut page))
                        .unwrap(),
                );
            }
        } else {
            for _ in 0..n {
                polls += 1;
                let mut fut = std::pin::pin!(sealer.seal_in_place(black_box(AAD), &mut page));
                let parts = match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => r.unwrap(),
                    Poll::Pending => {
                        pending += 1;
                        rt.block_on(fut).unwrap()
                    }
                };
                black_box(parts);
            }
        }
    };
    let iters = chunk_iters(&mut run, CHUNK);
    let [r, o] = interleave(&mut run, iters, CHUNKS, WARM_UP);
    eprintln!(
        "facade_seal: ours/raw {:.3} ({iters} seals per chunk); {pending} of {polls} seals did \
         not finish on their first poll (finished with block_on)",
        o / r
    );
    write(
        "facade_seal",
        &[Extra::ns(raw_id, r), Extra::ns(ours_id, o)],
    );
}
