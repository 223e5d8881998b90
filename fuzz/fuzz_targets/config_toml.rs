#![no_main]
//! Configuration loading: any text parses and validates, or fails with an error.

use heliosdb_security::tde::TdeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut config) = TdeConfig::from_toml_str(text) {
        let _ = config.validate();
        let _ = config.apply_env_with(|k| (k == "HELIOSDB_TDE_CACHE_LIMIT").then(|| text.to_string()));
    }
});
