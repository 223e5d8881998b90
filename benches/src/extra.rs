//! The `harness = false` benchmarks: their command line (filters, as criterion's) and their
//! results, written to `target/bench-extra/<name>.json`, which `cargo xtask bench` reads next to
//! criterion's (`{"results": [{"id": ..., "value": ..., "unit": "ns" | "bytes"}]}`).

use std::fmt::Write as _;
use std::path::PathBuf;

/// One measured value.
#[derive(Clone, Debug)]
pub struct Extra {
    /// The row id, `group/function`.
    pub id: String,
    /// The value: a median time in nanoseconds, or a byte count.
    pub value: f64,
    /// `"ns"` or `"bytes"`.
    pub unit: &'static str,
}

impl Extra {
    /// A time in nanoseconds.
    pub fn ns(id: &str, value: f64) -> Self {
        Self {
            id: id.into(),
            value,
            unit: "ns",
        }
    }

    /// A byte count.
    pub fn bytes(id: &str, value: u64) -> Self {
        Self {
            id: id.into(),
            value: value as f64,
            unit: "bytes",
        }
    }
}

/// Criterion options that take a value (so the value is not read as a filter).
const VALUE_OPTIONS: &[&str] = &[
    "--warm-up-time",
    "--measurement-time",
    "--sample-size",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--color",
    "--format",
    "--output-format",
    "--plotting-backend",
];

/// The command line of a `harness = false` benchmark: whether it runs as a benchmark
/// (`cargo bench` passes `--bench`; `cargo test --benches` does not, and then the benchmark
/// only says it was skipped), and its filters.
#[derive(Debug)]
pub struct Args {
    /// `--bench` was given.
    pub bench: bool,
    /// The positional arguments: a benchmark runs when any is a substring of one of its ids,
    /// or when there are none.
    pub filters: Vec<String>,
}

impl Args {
    /// The process's arguments.
    pub fn from_env() -> Self {
        let mut bench = false;
        let mut filters = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "--bench" {
                bench = true;
            } else if VALUE_OPTIONS.contains(&a.as_str()) {
                args.next();
            } else if !a.starts_with('-') {
                filters.push(a);
            }
        }
        Self { bench, filters }
    }

    /// Whether a benchmark with these row ids should run. A filter is read as criterion's
    /// regular expressions usually are written: alternatives separated by `|` (parentheses and
    /// `^`/`$` ignored), each a substring of the id, where `.*` matches anything.
    pub fn selects(&self, ids: &[&str]) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| ids.iter().any(|id| filter_matches(f, id)))
    }
}

fn filter_matches(filter: &str, id: &str) -> bool {
    let cleaned: String = filter
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | '^' | '$'))
        .collect();
    cleaned.split('|').any(|alt| {
        let mut rest = id;
        alt.split(".*").all(|piece| match rest.find(piece) {
            Some(at) => {
                rest = &rest[at + piece.len()..];
                true
            }
            None => false,
        })
    })
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target/` next to `benches/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Writes `results` to `target/bench-extra/<name>.json` and prints them.
pub fn write(name: &str, results: &[Extra]) {
    let mut json = String::from("{\"results\": [\n");
    for (i, r) in results.iter().enumerate() {
        assert!(r.value.is_finite(), "{}: not a finite value", r.id);
        let sep = if i + 1 < results.len() { "," } else { "" };
        let _ = writeln!(
            json,
            "  {{\"id\": \"{}\", \"value\": {:?}, \"unit\": \"{}\"}}{sep}",
            r.id, r.value, r.unit
        );
        println!("{:<60} {:>16.1} {}", r.id, r.value, r.unit);
    }
    json.push_str("]}\n");
    let dir = target_dir().join("bench-extra");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, json).unwrap();
    println!("wrote {}", path.display());
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The process's `VmRSS` or `VmHWM` (`field`) from `/proc/self/status`, in bytes.
pub fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Resets the process's peak resident set (`VmHWM`) to its current one: writes `5` to
/// `/proc/self/clear_refs` (Linux 4.0+).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Runs two sides in alternating chunks of `iters` calls each, in ABBA order (side 0, 1, 1, 0,
/// ...), so background noise on a shared machine hits both alike; `chunk(side, n)` makes `n`
/// calls of `side` (0 or 1). The first `warm_up` chunks are discarded; the median time per call
/// of each side's remaining `chunks` (half each) is returned, in ns.
pub fn interleave(
    mut chunk: impl FnMut(usize, u64),
    iters: u64,
    chunks: usize,
    warm_up: usize,
) -> [f64; 2] {
    let which = |c: usize| [0, 1, 1, 0][c % 4];
    let mut sides = [
        Vec::with_capacity(chunks / 2 + 1),
        Vec::with_capacity(chunks / 2 + 1),
    ];
    for c in 0..warm_up + chunks {
        let side = which(c);
        let start = std::time::Instant::now();
        chunk(side, iters);
        let per_call = start.elapsed().as_nanos() as f64 / iters as f64;
        if c >= warm_up {
            sides[side].push(per_call);
        }
    }
    let [a, b] = &mut sides;
    [median(a), median(b)]
}

/// The number of calls of side 0 of `chunk` (as in [`interleave`]) that take about `target`:
/// doubles a trial run until it takes a tenth of `target`, then scales.
pub fn chunk_iters(mut chunk: impl FnMut(usize, u64), target: std::time::Duration) -> u64 {
    let mut n = 1u64;
    loop {
        let start = std::time::Instant::now();
        chunk(0, n);
        let took = start.elapsed();
        if took >= target / 10 || n >= 1 << 40 {
            let per_call = took.as_nanos().max(1) as f64 / n as f64;
            return ((target.as_nanos() as f64 / per_call) as u64).max(1);
        }
        n *= 2;
    }
}
