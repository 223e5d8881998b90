#![no_main]
//! See `heliosdb_fuzz::checks::PageOpen` for the property checked.

use heliosdb_fuzz::checks::PageOpen;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CHECK: OnceLock<PageOpen> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    CHECK.get_or_init(PageOpen::new).check(data);
});
