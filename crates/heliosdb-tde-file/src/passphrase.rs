//! Where the passphrase comes from, and how strong it must be.

use crate::fsutil;
use heliosdb_tde_core::{Result, SecureFileConfig, SecurityMode, TdeError};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;

/// The shortest passphrase production mode accepts, in characters (a passphrase generated with
/// `openssl rand -base64 32` has 44).
pub const MIN_PASSPHRASE_CHARS: usize = 25;

/// A passphrase and the warnings its source produced (development mode only).
pub(crate) struct Resolved {
    /// The passphrase.
    pub(crate) passphrase: SecretString,
    /// Warnings to report.
    pub(crate) warnings: Vec<String>,
}

/// The variable `heliosdb-cli security mek change-passphrase` reads the old passphrase from.
pub const OLD_PASSPHRASE_ENV: &str = "HELIOSDB_MEK_PASSPHRASE_OLD";

/// Reads the environment variable `var` and removes it from the process environment, so
/// that child processes do not inherit it and later reads of the environment do not find it.
/// `None` if it is unset, empty or not UTF-8 (it is removed in every case).
pub(crate) fn take_env(var: &str) -> Option<SecretString> {
    let value = std::env::var_os(var)?;
    // SAFETY: `remove_var` is unsafe because another thread may read or write the environment
    // at the same moment. Rust's own environment functions take std's environment lock, so
    // they are synchronised with this call; a C library calling getenv concurrently could
    // see the environment before or after the removal (glibc never frees the strings of
    // removed variables, so it never reads freed memory). This runs once per provider
    // open, at start-up, before the provider exists.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var(var);
    }
    let value = value.into_string().ok()?;
    if value.is_empty() {
        None
    } else {
        Some(SecretString::from(value))
    }
}

/// Reads the passphrase: from `passphrase_file` if configured (a regular file owned by the
/// running user, mode 0600, opened without following a link in its last component; a symbolic
/// link to it is resolved first and the target checked), else from the environment variable
/// (`HELIOSDB_MEK_PASSPHRASE` by default), which is then removed from the process
/// environment. Checks the passphrase's strength.
pub(crate) fn resolve(config: &SecureFileConfig, mode: SecurityMode) -> Result<Resolved> {
    let mut warnings = Vec::new();
    let passphrase = match &config.passphrase_file {
        Some(path) => read_file(path, mode, &mut warnings)?,
        None => {
            let var = config.passphrase_var();
            take_env(var).ok_or_else(|| TdeError::PassphraseEnvMissing {
                var: var.to_string(),
            })?
        }
    };
    if let Some(w) = check_strength(&passphrase, mode)? {
        warnings.push(w);
    }
    Ok(Resolved {
        passphrase,
        warnings,
    })
}

/// Reads `passphrase_file`: symbolic links are resolved, the target is opened with
/// `O_NOFOLLOW` and its descriptor checked (regular file, owner, 0600).
fn read_file(path: &Path, mode: SecurityMode, warnings: &mut Vec<String>) -> Result<SecretString> {
    let resolved = std::fs::canonicalize(path).map_err(|e| TdeError::io(path, e))?;
    let mut found = Vec::new();
    let bytes =
        fsutil::read_private_small_file(&resolved, "the passphrase file", mode, &mut found)?;
    if resolved != path {
        for w in &mut found {
            w.push_str(&format!(
                " (passphrase_file {} resolves to {})",
                path.display(),
                resolved.display()
            ));
        }
    }
    warnings.extend(found);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        TdeError::config(
            "secure_file_config.passphrase_file",
            format!("{} is not UTF-8 text", path.display()),
        )
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(TdeError::config(
            "secure_file_config.passphrase_file",
            format!("{} is empty; write the passphrase into it", path.display()),
        ));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// Production mode refuses passphrases shorter than [`MIN_PASSPHRASE_CHARS`]; development
/// mode returns a warning.
pub(crate) fn check_strength(
    passphrase: &SecretString,
    mode: SecurityMode,
) -> Result<Option<String>> {
    let chars = passphrase.expose_secret().chars().count();
    if chars >= MIN_PASSPHRASE_CHARS {
        return Ok(None);
    }
    let msg = format!(
        "the MEK passphrase has {chars} characters; use at least {MIN_PASSPHRASE_CHARS} (for \
         example: openssl rand -base64 32)"
    );
    if mode.is_production() {
        Err(TdeError::SecurityPolicy(format!(
            "{msg}. Production mode refuses shorter passphrases"
        )))
    } else {
        Ok(Some(format!("{msg} (allowed in development mode only)")))
    }
}
