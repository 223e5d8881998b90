//! The 8 KiB page seal through `TableCipher::seal_in_place` against the raw backend seal
//! (`AeadKey::seal_detached`) with a fixed nonce, per backend, on the same key, the same 23-byte
//! associated data and the same page buffer. The two run in alternating chunks of about 10 ms
//! (ABBA order), about 3 s per side, so background noise on a shared machine hits both alike;
//! criterion would run one function after the other, and a drift between its two runs can read
//! as a few percent of our cost. The median time per seal of each side's chunks goes to
//! `target/bench-extra/page_seal_8k.json` under the ids of the criterion rows
//! (`page_seal/<backend>/{ours,raw}/8192`); the other sizes, and the OS-random-nonce baseline,
//! stay in `page_cipher.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_benches::bench_tek;
use heliosdb_benches::extra::{Args, Extra, chunk_iters, interleave, write};
use heliosdb_tde_cipher::{AeadKey, Backend, TableCipher, UsageLimits};
use std::hint::black_box;
use std::time::Duration;

const PAGE: usize = 8192;
/// 23 bytes, as in `page_cipher.rs`.
const AAD: &[u8] = b"bench.table/page/000001";
/// The target length of one chunk.
const CHUNK: Duration = Duration::from_millis(10);
/// Chunks per backend (half each side), after [`WARM_UP`] discarded ones.
const CHUNKS: usize = 600;
const WARM_UP: usize = 8;

fn main() {
    let args = Args::from_env();
    if !args.bench {
        eprintln!("page_seal_8k: not run as a benchmark (cargo bench passes --bench); skipped");
        return;
    }
    let tek = bench_tek();
    let mut results = Vec::new();
    for backend in Backend::available() {
        let ours_id = format!("page_seal/{backend}/ours/{PAGE}");
        let raw_id = format!("page_seal/{backend}/raw/{PAGE}");
        if !args.selects(&[&ours_id, &raw_id]) {
            continue;
        }
        let raw = AeadKey::new(backend, tek.bytes().expose_secret()).unwrap();
        let cipher = TableCipher::new(&tek, backend, UsageLimits::default()).unwrap();
        let mut page = vec![0u8; PAGE];
        let nonce = [7u8; 12];
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
                    black_box(
                        cipher
                            .seal_in_place(black_box(AAD), black_box(&mut page))
                            .unwrap(),
                    );
                }
            }
        };
        let iters = chunk_iters(&mut run, CHUNK);
        let [r, o] = interleave(&mut run, iters, CHUNKS, WARM_UP);
        eprintln!("{backend}: ours/raw {:.3} ({iters} seals per chunk)", o / r);
        results.push(Extra::ns(&raw_id, r));
        results.push(Extra::ns(&ours_id, o));
    }
    if !results.is_empty() {
        write("page_seal_8k", &results);
    }
}
