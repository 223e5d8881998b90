#![no_main]
//! The audit-log line parser and chain verifier: total on any input.

use heliosdb_tde_manager::audit::verify_lines;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = verify_lines(std::io::Cursor::new(data), Path::new("fuzz-audit.log"));
});
