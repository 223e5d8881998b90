#![no_main]
//! See `heliosdb_fuzz::checks::audit_log` for the property checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heliosdb_fuzz::checks::audit_log(data);
});
