//! `get_table_key` cache hit against a `HashMap<TekId, Arc<TableKey>>` lookup of the same keys,
//! at 1, 2 and 4 threads. The two run in alternating chunks of about 10 ms (ABBA order) on the
//! same threads, so background noise on a shared machine hits both alike; criterion would run
//! one function after the other. The median time per lookup of each side's chunks goes to
//! `target/bench-extra/get_table_key_hit.json` (ids `get_table_key_hit/{ours,hashmap}_{n}t`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_benches::extra::{Args, Extra, median, write};
use heliosdb_benches::manager;
use heliosdb_tde_core::{TableKey, TekId};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KEYS: usize = 1000;
const THREADS: [usize; 3] = [1, 2, 4];
/// The target length of one chunk, per thread.
const CHUNK: Duration = Duration::from_millis(10);
/// Chunks per thread count (half each side), after [`WARM_UP`] discarded ones.
const CHUNKS: usize = 400;
const WARM_UP: usize = 8;

type Op<'a> = &'a (dyn Fn(u64) + Sync);

/// Runs `ops[0]` and `ops[1]` in alternating chunks of `iters` calls (ABBA) on `threads`
/// threads at once; returns the median time per call of each, in ns. A chunk's time is the
/// slowest thread's (the wall time per call as one thread sees it).
fn interleaved(threads: usize, ops: [Op<'_>; 2], iters: u64) -> [f64; 2] {
    let which = |c: usize| [0, 1, 1, 0][c % 4];
    let total = WARM_UP + CHUNKS;
    let barrier = Barrier::new(threads);
    let per_thread: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut mine = Vec::with_capacity(total);
                    for c in 0..total {
                        let op = ops[which(c)];
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..iters {
                            op(i.wrapping_mul(7919).wrapping_add(t as u64 * 131));
                        }
                        mine.push(start.elapsed());
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sides = [Vec::new(), Vec::new()];
    for c in WARM_UP..total {
        let slowest = per_thread.iter().map(|v| v[c]).max().unwrap();
        sides[which(c)].push(slowest.as_nanos() as f64 / iters as f64);
    }
    let [a, b] = &mut sides;
    [median(a), median(b)]
}

/// Calls per chunk: about [`CHUNK`] of `op` on one thread.
fn calibrate(op: Op<'_>) -> u64 {
    let n = 100_000u64;
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    let per_call = start.elapsed().as_nanos().max(1) as f64 / n as f64;
    ((CHUNK.as_nanos() as f64 / per_call) as u64).max(1000)
}

fn main() {
    let args = Args::from_env();
    let ids_of = |side: &str| THREADS.map(|t| format!("get_table_key_hit/{side}_{t}t"));
    let all: Vec<String> = ids_of("ours")
        .into_iter()
        .chain(ids_of("hashmap"))
        .collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    if !args.bench {
        eprintln!("key_cache_hit: not run as a benchmark (cargo bench passes --bench); skipped");
        return;
    }
    if !args.selects(&all) {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let km = manager(
        &rt,
        dir.path(),
        Arc::new(InMemoryMekProvider::new()),
        KEYS * 2,
        KEYS,
        false,
    );
    let ids: Vec<TekId> = (0..KEYS)
        .map(|i| format!("t{i:07}@v1").parse().unwrap())
        .collect();
    // The baseline maps the same ids to the same keys.
    let map: HashMap<TekId, Arc<TableKey>> = ids
        .iter()
        .map(|id| (id.clone(), km.get_cached_table_key(id).expect("warm cache")))
        .collect();
    let hashmap = |i: u64| {
        black_box(map.get(&ids[(i as usize) % KEYS]).cloned());
    };
    let ours = |i: u64| {
        black_box(km.get_cached_table_key(&ids[(i as usize) % KEYS]));
    };
    let iters = calibrate(&hashmap);
    let mut results = Vec::new();
    for threads in THREADS {
        // With more threads than cores the threads share cores: fewer calls per chunk keep a
        // chunk near CHUNK of wall time.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_thread = (iters * cores as u64 / threads.max(cores) as u64).max(1000);
        let [h, o] = interleaved(threads, [&hashmap, &ours], per_thread);
        results.push(Extra::ns(
            &format!("get_table_key_hit/hashmap_{threads}t"),
            h,
        ));
        results.push(Extra::ns(&format!("get_table_key_hit/ours_{threads}t"), o));
    }
    write("get_table_key_hit", &results);
}
