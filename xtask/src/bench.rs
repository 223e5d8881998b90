//! `cargo xtask bench`: runs the benchmarks and writes `docs/benchmarks.md`.
//!
//! The rows are declared in `bench/rows.rs` and the notes under the table in `bench/notes.rs`; this module
//! reads the results (criterion's, and the JSON the `harness = false` benchmarks write) and
//! renders the report.

use crate::Result;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Median time in nanoseconds of every benchmark criterion has results for, by full id
/// (`group/function[/parameter]`); with `since`, only results written at or after it (the
/// benchmarks of this run, not older results left in the directory).
pub fn read_results(
    criterion_dir: &Path,
    since: Option<std::time::SystemTime>,
) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![criterion_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    let bench = p.join("benchmark.json");
                    let est = p.join("estimates.json");
                    let fresh = since.is_none_or(|t| {
                        std::fs::metadata(&est)
                            .and_then(|m| m.modified())
                            .is_ok_and(|m| m >= t)
                    });
                    if !fresh {
                        continue;
                    }
                    if let (Ok(b), Ok(s)) = (std::fs::read(&bench), std::fs::read(&est)) {
                        let b: serde_json::Value = serde_json::from_slice(&b)
                            .map_err(|e| format!("{}: {e}", bench.display()))?;
                        let s: serde_json::Value = serde_json::from_slice(&s)
                            .map_err(|e| format!("{}: {e}", est.display()))?;
                        if let (Some(id), Some(median)) = (
                            b["full_id"].as_str(),
                            s["median"]["point_estimate"].as_f64(),
                        ) {
                            out.insert(id.to_string(), median);
                        }
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// The results the `harness = false` benchmarks write to `extra_dir` (`target/bench-extra`),
/// added to `out` (replacing a criterion result of the same id): each file is
/// `{"results": [{"id": "group/function", "value": 12.5, "unit": "ns"}, ...]}`, where `unit` is
/// `ns` (a median time) or `bytes`. With `since`, only files written at or after it count.
pub fn read_extra(
    extra_dir: &Path,
    since: Option<std::time::SystemTime>,
    out: &mut BTreeMap<String, f64>,
) -> Result {
    let Ok(entries) = std::fs::read_dir(extra_dir) else {
        return Ok(());
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let fresh = since.is_none_or(|t| {
            std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= t)
        });
        if !fresh {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let results = v["results"].as_array().ok_or_else(|| {
            format!(
                "{}: no \"results\" array; delete the file and rerun its benchmark",
                path.display()
            )
        })?;
        for r in results {
            match (r["id"].as_str(), r["value"].as_f64(), r["unit"].as_str()) {
                (Some(id), Some(value), Some("ns" | "bytes")) => {
                    out.insert(id.to_string(), value);
                }
                _ => {
                    return Err(format!(
                        "{}: a result needs an id, a numeric value and the unit ns or bytes: \
                         {r}; delete the file and rerun its benchmark",
                        path.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn human_bytes(bytes: f64) -> String {
    if bytes >= f64::from(1u32 << 30) {
        format!("{:.2} GiB", bytes / f64::from(1u32 << 30))
    } else if bytes >= f64::from(1u32 << 20) {
        format!("{:.1} MiB", bytes / f64::from(1u32 << 20))
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The words before the date of the oldest kept row, in the note under the table.
const KEPT_FROM: &str = "they are kept from earlier runs, back to ";

/// A row's label without its parenthesised details ("page seal, aws-lc, 8 KiB"): the key that
/// matches a row across reports.
fn row_key(what: &str) -> &str {
    what.split(" (").next().unwrap_or(what).trim()
}

/// The measured rows of a previous report (the table lines whose "ours" cell is a time), by
/// [`row_key`], and that report's run date.
fn previous_rows(previous: &str) -> (BTreeMap<String, String>, String) {
    let mut rows = BTreeMap::new();
    for line in previous.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| what | ours | ... |" splits into an empty first and last cell.
        if cells.len() == 9 && cells[2] != "-" && cells[2] != "ours" && cells[2] != "---" {
            let what = cells[1].trim_end_matches(" †");
            rows.insert(row_key(what).to_string(), line.to_string());
        }
    }
    // The oldest run a kept row may come from: what the previous report said it kept, or
    // else its own run.
    let date = previous
        .lines()
        .find_map(|l| {
            l.split_once(KEPT_FROM)
                .map(|(_, d)| d.trim_end_matches('.'))
        })
        .or_else(|| previous.lines().find_map(|l| l.strip_prefix("* Run: ")))
        .unwrap_or("unknown")
        .to_string();
    (rows, date)
}

/// The verdict of one row: "met" or "MISSED (...)" against its target, "report" without one,
/// "not run" when ours (or the baseline of a ratio) was not measured.
fn verdict(target: rows::Target, ours: Option<f64>, base: Option<f64>) -> String {
    use rows::Target;
    match (target, ours) {
        (_, None) => "not run".into(),
        (Target::Report | Target::Bytes, Some(_)) => "report".into(),
        (Target::RatioAtMost(limit), Some(o)) => match base {
            Some(b) if b > 0.0 => {
                if o / b <= limit {
                    "met".into()
                } else {
                    format!("MISSED ({:+.1}%)", (o / b - 1.0) * 100.0)
                }
            }
            _ => "not run".into(),
        },
        (Target::AtMostNs(limit), Some(o)) => {
            if o <= limit {
                "met".into()
            } else {
                "MISSED".into()
            }
        }
    }
}

/// Renders the report from the results ([`read_results`] and [`read_extra`]). With `previous`
/// (the last report), a row this run did not measure keeps its measured line from there,
/// marked †, so that a partial run (`cargo xtask bench wrap_unwrap`) does not erase the other
/// rows.
pub fn render(r: &BTreeMap<String, f64>, previous: Option<&str>) -> String {
    let get = |k: &str| r.get(k).copied();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` from the criterion results of one run. Every row is \
         measured next to its baseline in the same run, because the machine is noisy; read the \
         ratio first. Times are medians.\n"
    );
    let cpu = sh("sh", &["-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"]);
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "* CPU: {cpu} ({} cores)", sh("nproc", &[]));
    let _ = writeln!(
        md,
        "* Memory: {}",
        sh("sh", &["-c", "free -h | awk '/Mem:/{print $2}'"])
    );
    let _ = writeln!(md, "* Kernel: {}", sh("uname", &["-sr"]));
    let _ = writeln!(md, "* Compiler: {}", sh("rustc", &["-V"]));
    let _ = writeln!(
        md,
        "* Run: {}\n",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| what | ours | baseline | baseline is | ratio | target | verdict |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    let (kept, kept_date) = previous.map(previous_rows).unwrap_or_default();
    let mut kept_any = false;
    for spec in rows::specs() {
        let ours = get(&spec.ours);
        let base = spec.base.as_deref().and_then(get);
        let what = match (spec.throughput, ours) {
            (Some(bytes), Some(o)) if o > 0.0 => {
                format!("{} ({:.1} GB/s)", spec.label, bytes as f64 / o)
            }
            _ => spec.label.clone(),
        };
        if ours.is_none()
            && let Some(old) = kept.get(row_key(&what))
        {
            // The old line with its label marked: "| what | ..." -> "| what † | ...".
            let mut cells: Vec<String> = old.split('|').map(str::to_string).collect();
            let what = cells[1].trim().trim_end_matches(" †").to_string();
            cells[1] = format!(" {what} † ");
            let _ = writeln!(md, "{}", cells.join("|"));
            kept_any = true;
            continue;
        }
        let ratio = match (ours, base) {
            (Some(o), Some(b)) if b > 0.0 => format!("{:.2}×", o / b),
            _ => "-".into(),
        };
        let value = |v: Option<f64>| match (v, spec.target) {
            (Some(v), rows::Target::Bytes) => human_bytes(v),
            (Some(v), _) => human(v),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {ratio} | {} | {} |",
            value(ours),
            value(base),
            spec.base_name,
            spec.target_text,
            verdict(spec.target, ours, base)
        );
    }
    if kept_any {
        let _ = writeln!(
            md,
            "\nRows marked † were not measured by this run (a partial run, `cargo xtask bench \
             <filter>`): {KEPT_FROM}{kept_date}."
        );
    }
    let _ = writeln!(md, "\n{}\n\n## Notes on the misses\n", notes::REPRODUCE);
    for note in notes::NOTES {
        let _ = writeln!(md, "* {note}");
    }
    if let Some(prev) = previous.filter(|_| kept_any) {
        // Notes written for the kept rows (by hand or by an earlier version) stay with them.
        if let Some((_, old_notes)) = prev.split_once("## Notes on the misses\n") {
            for note in old_notes
                .split("\n* ")
                .map(|n| n.trim().trim_start_matches("* "))
            {
                // A note whose bold title a current note has is that note's older text.
                let replaced = note_title(note).is_some_and(|title| {
                    notes::NOTES
                        .iter()
                        .any(|current| note_title(current) == Some(title))
                });
                if !note.is_empty() && !replaced && !md.contains(note) {
                    let _ = writeln!(md, "* {note}");
                }
            }
        }
    }
    md
}

/// The bold title a note starts with (`**SoftHSM2 wrap + unwrap: ...**`), if it has one.
fn note_title(note: &str) -> Option<&str> {
    let rest = note.strip_prefix("**")?;
    rest.find("**").map(|end| &rest[..end])
}

/// Runs the benchmarks (unless `report_only`) and writes the report.
pub fn run(root: &Path, report_only: bool, filter: &[String]) -> Result {
    // Results older than this run are not reported as measured by it.
    let started = std::time::SystemTime::now();
    if !report_only {
        // The provider rows need their services, as the tests do: SoftHSM2, OpenBao, moto and the
        // Key Vault test server.
        let env = crate::services::provision(
            root,
            &[
                "-p".into(),
                "heliosdb-tde-pkcs11".into(),
                "-p".into(),
                "heliosdb-tde-vault".into(),
                "-p".into(),
                "heliosdb-tde-aws-kms".into(),
                "-p".into(),
                "heliosdb-tde-azure-kv".into(),
            ],
        )?;
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root)
            .args([
                "bench",
                "-p",
                "heliosdb-benches",
                "--benches",
                "--",
                "--noplot",
            ])
            .args(filter);
        env.apply(&mut cmd);
        crate::run_cmd(&mut cmd)?;
        drop(env);
    }
    let since = (!report_only).then_some(started);
    let mut results = read_results(&root.join("target").join("criterion"), since)?;
    read_extra(
        &root.join("target").join("bench-extra"),
        since,
        &mut results,
    )?;
    if results.is_empty() {
        return Err(
            "no results under target/criterion or target/bench-extra; run `cargo xtask bench`"
                .into(),
        );
    }
    let path = root.join("docs").join("benchmarks.md");
    let previous = std::fs::read_to_string(&path).ok();
    let md = render(&results, previous.as_deref());
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

mod notes;
mod rows;
#[cfg(test)]
mod tests;
