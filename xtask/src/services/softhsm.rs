//! The SoftHSM2 token for the PKCS#11 provider's tests.

use super::Environment;
use crate::Result;
use std::path::Path;
use std::process::Command;

/// The PKCS#11 module Debian's softhsm2 package installs.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The label of the test token.
pub const TEST_TOKEN: &str = "heliosdb-test";
/// The test token's user PIN (test-only, on a throwaway token).
pub const TEST_PIN: &str = "654321";

/// Installs SoftHSM2 if missing and initialises a fresh token in a private `SOFTHSM2_CONF`.
pub(super) fn start_softhsm(state_dir: &Path, env: &mut Environment) -> Result {
    super::apt_install_if_missing(&["softhsm2"])?;
    let dir = state_dir.join("softhsm");
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    crate::run_cmd(
        Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                TEST_TOKEN,
                "--so-pin",
                "12345678",
                "--pin",
                TEST_PIN,
            ]),
    )?;
    env.set("SOFTHSM2_CONF", conf.display().to_string());
    env.set("HELIOSDB_TEST_PKCS11_MODULE", SOFTHSM_MODULE);
    env.set("HELIOSDB_TEST_PKCS11_TOKEN", TEST_TOKEN);
    env.set("HELIOSDB_TEST_PKCS11_PIN", TEST_PIN);
    Ok(())
}
