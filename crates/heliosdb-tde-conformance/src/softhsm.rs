//! The SoftHSM2 test token, as `cargo xtask test` provisions it: one place for its settings,
//! used by the tests of every crate that talks to it (the PKCS#11 provider, the CLI).
//!
//! `cargo xtask test` initialises a private token and exports [`CONF_ENV`], [`MODULE_ENV`],
//! [`TOKEN_ENV`] and [`PIN_ENV`]; without them the defaults below are those of the token it
//! creates. This module knows only core's [`HsmConfig`] (the conformance crate depends on no
//! backend); the PKCS#11 tests build their provider settings from it
//! (`Pkcs11Settings::from_config`).

use crate::services;
use heliosdb_tde_core::HsmConfig;

/// The variable naming SoftHSM2's configuration file (and so its token directory).
pub const CONF_ENV: &str = "SOFTHSM2_CONF";
/// The variable naming the PKCS#11 module.
pub const MODULE_ENV: &str = "HELIOSDB_TEST_PKCS11_MODULE";
/// The variable naming the test token's label.
pub const TOKEN_ENV: &str = "HELIOSDB_TEST_PKCS11_TOKEN";
/// The variable holding the test token's user PIN.
pub const PIN_ENV: &str = "HELIOSDB_TEST_PKCS11_PIN";
/// The module Debian's softhsm2 package installs.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The label of the token `cargo xtask test` initialises.
pub const DEFAULT_TOKEN: &str = "heliosdb-test";
/// The user PIN of that token (test-only, on a throwaway token).
pub const DEFAULT_PIN: &str = "654321";
/// The service's name in skip and failure messages.
pub const SERVICE: &str = "SoftHSM2 token";
/// Seconds allowed per HSM operation in the tests.
pub const TIMEOUT_SECS: u64 = 30;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The PKCS#11 module ([`MODULE_ENV`], else [`DEFAULT_MODULE`]).
pub fn module_path() -> String {
    env_or(MODULE_ENV, DEFAULT_MODULE)
}

/// The test token's label ([`TOKEN_ENV`], else [`DEFAULT_TOKEN`]).
pub fn token_label() -> String {
    env_or(TOKEN_ENV, DEFAULT_TOKEN)
}

/// The test token's user PIN ([`PIN_ENV`], else [`DEFAULT_PIN`]).
pub fn pin() -> String {
    env_or(PIN_ENV, DEFAULT_PIN)
}

/// Whether the token is provisioned ([`CONF_ENV`] names an existing file): `Some` to run,
/// `None` after a loud skip, or a panic when services are required
/// (`HELIOSDB_REQUIRE_SERVICES=1`, as in CI).
pub fn token_present() -> Option<()> {
    let probe = match std::env::var(CONF_ENV) {
        Ok(c) if std::path::Path::new(&c).exists() => Ok(()),
        _ => Err("SOFTHSM2_CONF is not set (run `cargo xtask test`)"),
    };
    services::require(SERVICE, probe)
}

/// The `hsm_config` of the test token: its module and label, a [`TIMEOUT_SECS`] timeout and
/// operation logging on; no PIN (set `pin`, `pin_file` or `HELIOSDB_HSM_PIN` as the test
/// needs), slot 0, the default session pool.
pub fn hsm_config() -> HsmConfig {
    HsmConfig {
        pkcs11_library_path: module_path(),
        token_label: Some(token_label()),
        timeout_secs: TIMEOUT_SECS,
        enable_logging: true,
        ..HsmConfig::default()
    }
}

/// [`hsm_config`] as the `[hsm_config]` table of a TOML configuration file (for the CLI),
/// ending with a newline; append a `pin = "..."` line to it if the test wants one.
pub fn hsm_config_toml() -> String {
    let c = hsm_config();
    format!(
        "[hsm_config]\npkcs11_library_path = \"{}\"\ntoken_label = \"{}\"\ntimeout_secs = {}\n\
         enable_logging = {}\n",
        c.pkcs11_library_path,
        c.token_label.unwrap_or_default(),
        c.timeout_secs,
        c.enable_logging
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_name_the_provisioned_token() {
        let c = hsm_config();
        assert_eq!(c.pkcs11_library_path, module_path());
        assert_eq!(c.token_label.as_deref(), Some(token_label().as_str()));
        assert_eq!((c.slot_id, c.timeout_secs, c.enable_logging), (0, 30, true));
        assert!(c.pin.is_empty() && c.pin_file.is_none());
        assert_eq!(c.session_pool_size, None);
        let toml = hsm_config_toml();
        assert!(toml.starts_with("[hsm_config]\n"), "{toml}");
        assert!(
            toml.contains(&format!("pkcs11_library_path = \"{}\"\n", module_path())),
            "{toml}"
        );
        assert!(toml.ends_with("enable_logging = true\n"), "{toml}");
        assert!(!toml.contains("pin ="), "{toml}");
    }
}
