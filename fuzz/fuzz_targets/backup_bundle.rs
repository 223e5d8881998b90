#![no_main]
//! See `heliosdb_fuzz::checks::backup_bundle` for the property checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = heliosdb_fuzz::checks::backup_bundle(data);
});
