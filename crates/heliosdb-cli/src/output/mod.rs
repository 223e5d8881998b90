//! Table and JSON rendering of command results: [`Out`] (where output goes, in which
//! [`Format`]) here; what each command prints in `status.rs` (`security status`), `keys.rs`
//! (MEK info, key statistics, key lists) and `rotation.rs` (a service's own key rotation).

mod keys;
mod rotation;
mod status;

pub(crate) use status::{AzureView, KmsView, MigrationMember, MigrationView, StatusParts};

use clap::ValueEnum;
use serde_json::json;
use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes one line of command output through [`Out::line`], like `println!`.
macro_rules! outln {
    ($out:expr) => {
        $out.line(format_args!(""))
    };
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Where command output goes: stdout, in the chosen format.
///
/// Output never panics. When stdout is closed (`heliosdb-cli security status | true`: the
/// reader has gone, `EPIPE`), the rest of the output is dropped silently and the command runs
/// to its end and exits with its own code, as if the reader had read everything. Any other
/// write error is kept and reported once the command has finished ([`Out::take_write_error`]).
pub(crate) struct Out {
    format: Format,
    /// Set once stdout is gone; later output is dropped.
    closed: AtomicBool,
    /// The first write error other than a closed pipe.
    write_error: Mutex<Option<io::Error>>,
}

/// `rows` as aligned text columns, one line per row.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

impl Out {
    pub(crate) fn new(format: Format) -> Self {
        Self {
            format,
            closed: AtomicBool::new(false),
            write_error: Mutex::new(None),
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes `text` to stdout and flushes it; see [`Out`] for what happens on errors.
    pub(crate) fn write_stdout(&self, text: &str) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut stdout = io::stdout().lock();
        let result = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        if let Err(e) = result {
            self.closed.store(true, Ordering::Relaxed);
            if e.kind() != io::ErrorKind::BrokenPipe
                && let Ok(mut slot) = self.write_error.lock()
            {
                slot.get_or_insert(e);
            }
        }
    }

    /// The first error writing stdout other than a closed pipe, if any.
    pub(crate) fn take_write_error(&self) -> Option<io::Error> {
        self.write_error.lock().ok().and_then(|mut e| e.take())
    }

    /// One line of output (use [`outln!`]).
    pub(crate) fn line(&self, args: fmt::Arguments<'_>) {
        let mut text = args.to_string();
        text.push('\n');
        self.write_stdout(&text);
    }

    /// A line of narration for people: printed in table format, left out in JSON (where the
    /// command prints one document instead).
    pub(crate) fn say(&self, args: fmt::Arguments<'_>) {
        if !self.is_json() {
            self.line(args);
        }
    }

    /// A line on stderr (warnings); errors writing it are ignored.
    pub(crate) fn warn(&self, args: fmt::Arguments<'_>) {
        let _ = writeln!(io::stderr().lock(), "{args}");
    }

    pub(crate) fn json_value(&self, v: serde_json::Value) {
        self.json(v);
    }

    fn json(&self, v: serde_json::Value) {
        let text = serde_json::to_string_pretty(&v).unwrap_or_else(|e| e.to_string());
        outln!(self, "{text}");
    }

    pub(crate) fn message(&self, text: &str) {
        if self.is_json() {
            self.json(json!({ "message": text }));
        } else {
            outln!(self, "{text}");
        }
    }
}
