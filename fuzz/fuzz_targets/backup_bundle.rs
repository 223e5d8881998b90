#![no_main]
//! See `heliosdb_fuzz::checks::backup_bundle` for the property checked; each input is also
//! checked resealed (correct checksums), so that mutations reach the entry walk.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = heliosdb_fuzz::checks::backup_bundle(data);
    let _ = heliosdb_fuzz::checks::backup_bundle_resealed(data);
});
