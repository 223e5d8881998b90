//! Where the passphrase comes from, and how strong it must be.

use crate::fsutil;
use heliosdb_tde_core::{Result, SecureFileConfig, SecurityMode, TdeError};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The guide's advice and production mode's floor.
pub const MIN_PASSPHRASE_CHARS: usize = 25;

/// A passphrase and the warnings its source produced (development mode only).
pub(crate) struct Resolved {
    /// The passphrase.
    pub(crate) passphrase: SecretString,
    /// Warnings to report.
    pub(crate) warnings: Vec<String>,
}

/// Reads the passphrase: from `passphrase_file` if configured, else from the environment
/// variable (`HELIOSDB_MEK_PASSPHRASE` by default), and checks its strength.
pub(crate) fn resolve(config: &SecureFileConfig, mode: SecurityMode) -> Result<Resolved> {
    let mut warnings = Vec::new();
    let passphrase = match &config.passphrase_file {
        Some(path) => {
            if let Some(w) = fsutil::check_private(path, 0o600, mode)? {
                warnings.push(w);
            }
            let text =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| TdeError::io(path, e))?);
            let trimmed = text.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(TdeError::config(
                    "secure_file_config.passphrase_file",
                    format!("{} is empty; write the passphrase into it", path.display()),
                ));
            }
            SecretString::from(trimmed.to_string())
        }
        None => {
            let var = config.passphrase_var();
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => SecretString::from(v),
                _ => {
                    return Err(TdeError::PassphraseEnvMissing {
                        var: var.to_string(),
                    });
                }
            }
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
