//! Passphrase change: every MEK file re-encrypted under a new passphrase, one atomic write at
//! a time, each file recording its passphrase generation so that an interrupted change can be
//! diagnosed ([`wrong_passphrase`]) and finished by running it again.

use crate::sealing::{configured_kdf, open_file, seal_file};
use crate::versions::scan;
use crate::{
    DESCRIPTION, OLD_PASSPHRASE_ENV, SecureFileMekProvider, format, fsutil, lock, passphrase,
};
use heliosdb_tde_cipher::Backend;
use heliosdb_tde_core::{KdfParams, Result, SecureFileConfig, SecurityMode, TdeError};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::path::Path;

/// What a passphrase change did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PassphraseChange {
    /// Files re-encrypted under the new passphrase by this run.
    pub rewritten: usize,
    /// Files that an earlier, interrupted run had already converted.
    pub already_converted: usize,
    /// The passphrase generation every file now has.
    pub generation: u32,
}

pub(crate) fn wrong_passphrase(
    path: &Path,
    file_gen: u32,
    gens: &BTreeSet<u32>,
    which: &str,
) -> TdeError {
    let max = gens.iter().max().copied().unwrap_or(file_gen);
    let min = gens.iter().min().copied().unwrap_or(file_gen);
    let detail = if gens.len() > 1 && file_gen < max {
        format!(
            "this file is still encrypted with the PREVIOUS passphrase (generation {file_gen}) \
             while others use generation {max}: a passphrase change was interrupted. Finish it \
             with `heliosdb-cli security mek change-passphrase` (old passphrase in \
             HELIOSDB_MEK_PASSPHRASE_OLD, new one in the usual variable)"
        )
    } else if gens.len() > 1 && file_gen > min {
        format!(
            "this file already uses the NEW passphrase (generation {file_gen}) while others \
             still use generation {min}: a passphrase change was interrupted. Finish it with \
             `heliosdb-cli security mek change-passphrase`"
        )
    } else {
        format!("wrong {which} (the file uses passphrase generation {file_gen})")
    };
    TdeError::AuthenticationFailed {
        what: format!("MEK file {}: {detail}", path.display()),
    }
}

impl SecureFileMekProvider {
    /// Re-encrypts every MEK file under `new` passphrase; see
    /// [`SecureFileMekProvider::change_passphrase_in`]. This open provider uses the new
    /// passphrase afterwards.
    pub fn change_passphrase(&self, new: SecretString) -> Result<PassphraseChange> {
        let _guard = lock(&self.lifecycle)?;
        let (old, _) = self.passphrase()?;
        passphrase::check_strength(&new, self.mode)?;
        // This provider holds the directory lock already.
        let report = change_locked(&self.resolved, self.kdf, self.mode, &old, &new)?;
        let mut p = self
            .passphrase
            .write()
            .map_err(|_| TdeError::ProviderUnavailable {
                provider: DESCRIPTION.into(),
                reason: "internal lock poisoned".into(),
                retryable: false,
            })?;
        *p = (new, report.generation);
        Ok(report)
    }

    /// Re-encrypts every MEK file in `config.storage_path` from `old` to `new` passphrase,
    /// writing every file with the configured Argon2id parameters (or
    /// [`DEFAULT_KDF`](crate::DEFAULT_KDF)): this is also how files written with older, weaker
    /// parameters are upgraded (`new` may equal `old`).
    ///
    /// Each file is replaced atomically and records its passphrase generation. If a previous
    /// run was interrupted (files span two generations), this run finishes it. Every file is
    /// decrypted with the passphrase it needs before anything is written, so a wrong old or
    /// new passphrase changes nothing.
    ///
    /// Holds the directory's lock while it runs: if a provider (a running server) or another
    /// change holds it, nothing is touched and the error names that process.
    pub fn change_passphrase_in(
        config: &SecureFileConfig,
        mode: SecurityMode,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<PassphraseChange> {
        passphrase::check_strength(new, mode)?;
        let kdf = configured_kdf(config)?;
        let dir = &config.storage_path;
        if !dir.exists() {
            return Err(TdeError::config(
                "secure_file_config.storage_path",
                format!(
                    "{} does not exist; there are no MEK files to change",
                    dir.display()
                ),
            ));
        }
        let mut warnings = Vec::new();
        let resolved = fsutil::resolve_private_dir(dir, mode, &mut warnings)?;
        let _lock = fsutil::lock_dir(&resolved, dir)?;
        change_locked(&resolved, kdf, mode, old, new)
    }

    /// [`SecureFileMekProvider::change_passphrase_in`] with both passphrases taken from where
    /// `heliosdb-cli security mek change-passphrase` documents them: the old one from
    /// [`OLD_PASSPHRASE_ENV`] (`HELIOSDB_MEK_PASSPHRASE_OLD`), the new one from the configured
    /// source (`passphrase_file`, checked like an MEK file, or the passphrase variable). Every
    /// variable read is removed from the process environment.
    pub fn change_passphrase_from_env(
        config: &SecureFileConfig,
        mode: SecurityMode,
    ) -> Result<PassphraseChange> {
        let old = passphrase::take_env(OLD_PASSPHRASE_ENV).ok_or_else(|| {
            TdeError::PassphraseEnvMissing {
                var: OLD_PASSPHRASE_ENV.into(),
            }
        })?;
        let new = passphrase::resolve(config, mode)?;
        for w in &new.warnings {
            tracing::warn!(target: "heliosdb::tde::file", "{w}");
        }
        Self::change_passphrase_in(config, mode, &old, &new.passphrase)
    }
}

/// The body of a passphrase change, run while the caller holds the directory lock on `dir`
/// (the resolved directory).
pub(crate) fn change_locked(
    dir: &Path,
    kdf: KdfParams,
    mode: SecurityMode,
    old: &SecretString,
    new: &SecretString,
) -> Result<PassphraseChange> {
    let backend = Backend::default();
    let mut warnings = Vec::new();
    fsutil::remove_stale_temps(dir)?;
    let scanned = scan(dir, mode, &mut warnings)?;
    let gens: BTreeSet<u32> = scanned
        .files
        .iter()
        .map(|f| f.1.header.generation)
        .collect();
    let (lo, hi) = match (gens.iter().min(), gens.iter().max()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => {
            return Ok(PassphraseChange {
                rewritten: 0,
                already_converted: 0,
                generation: 1,
            });
        }
    };
    if hi - lo > 1 {
        return Err(TdeError::corrupt(
            "MEK directory",
            dir.display().to_string(),
            format!("files span passphrase generations {gens:?}; restore from a backup"),
        ));
    }
    let target = if lo == hi { hi + 1 } else { hi };
    // Decrypt everything first: nothing is written unless every file opens.
    let mut pending = Vec::new();
    let mut already = 0;
    for (path, file) in &scanned.files {
        let (pass, which) = if file.header.generation == target {
            (new, "new passphrase")
        } else {
            (old, "old passphrase")
        };
        match open_file(backend, pass, file)? {
            Ok(key) if file.header.generation == target => {
                drop(key);
                already += 1;
            }
            Ok(key) => pending.push((file.header.clone(), key)),
            Err(()) => {
                return Err(TdeError::AuthenticationFailed {
                    what: format!(
                        "MEK file {} (passphrase generation {}): wrong {which}; nothing \
                             was changed",
                        path.display(),
                        file.header.generation
                    ),
                });
            }
        }
    }
    let rewritten = pending.len();
    for (mut header, key) in pending {
        header.generation = target;
        let image = seal_file(backend, new, kdf, &mut header, key.bytes())?;
        fsutil::atomic_write(dir, &format::file_name(&header.mek), &image)?;
    }
    Ok(PassphraseChange {
        rewritten,
        already_converted: already,
        generation: target,
    })
}
