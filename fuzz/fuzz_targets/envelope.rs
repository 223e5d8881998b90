#![no_main]
//! The wrapped-TEK envelope parser: any input parses or errors, and whatever parses
//! re-encodes to the same bytes.

use heliosdb_tde_core::WrappedTek;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = WrappedTek::decode(data) {
        assert_eq!(env.encode(), data);
    }
});
