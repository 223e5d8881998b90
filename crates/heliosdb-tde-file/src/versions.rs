//! Version bookkeeping: reading the directory's MEK files and tombstones into the keyring and
//! the lifecycle at open, and the description of a destroyed version.

use crate::change::wrong_passphrase;
use crate::sealing::{below_policy, kdf_text, open_file};
use crate::{DESCRIPTION, OLD_PASSPHRASE_ENV, format, fsutil};
use heliosdb_tde_cipher::{Backend, LocalKeyring};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KdfParams, KeyState, MekLifecycle, MekRef, MekVersionInfo, ProviderKind,
    Result, SecurityMode, TdeError, Timestamp,
};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub(crate) struct Scanned {
    pub(crate) files: Vec<(PathBuf, format::MekFile)>,
    pub(crate) tombstones: Vec<MekRef>,
}

/// Reads and parses every MEK file and tombstone in `dir` (the resolved directory), checking
/// each opened file's type, owner and permissions.
pub(crate) fn scan(dir: &Path, mode: SecurityMode, warnings: &mut Vec<String>) -> Result<Scanned> {
    let mut files = Vec::new();
    let mut tombstones = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| TdeError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TdeError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((mek, tomb)) = format::parse_file_name(&name) else {
            continue;
        };
        let path = entry.path();
        if tomb {
            tombstones.push(mek);
            continue;
        }
        let bytes = fsutil::read_key_file(&path, mode, warnings)?;
        let file = format::parse(&bytes, &path)?;
        if file.header.mek != mek {
            return Err(TdeError::corrupt(
                "MEK file",
                path.display().to_string(),
                format!(
                    "the file name says {mek} but the file holds {}; restore the original \
                     file name",
                    file.header.mek
                ),
            ));
        }
        files.push((path, file));
    }
    files.sort_by(|a, b| a.1.header.mek.cmp(&b.1.header.mek));
    Ok(Scanned { files, tombstones })
}

/// How a destroyed version (a tombstone) is described: its file and with it its algorithm and
/// creation time are gone.
pub(crate) fn destroyed(mek: MekRef) -> MekVersionInfo {
    MekVersionInfo::new(
        mek,
        KeyState::Destroyed,
        EncryptionAlgorithm::Aes256Gcm,
        Timestamp(0),
    )
}

/// What a directory holds, decrypted.
pub(crate) struct Loaded {
    /// Every version and its state (tombstones as destroyed versions).
    pub(crate) lifecycle: MekLifecycle,
    /// The key of every version that has a file.
    pub(crate) keyring: LocalKeyring,
    /// The passphrase generation of the files (1 when there is none).
    pub(crate) generation: u32,
}

/// Reads every MEK file and tombstone of `resolved` (the directory `dir` resolved, locked by
/// the caller), refuses files below the `kdf` policy in production mode, and decrypts every
/// file with `passphrase`. After an interrupted rotation, only the newest active version of
/// an MEK stays active (with a warning).
pub(crate) fn load(
    dir: &Path,
    resolved: &Path,
    mode: SecurityMode,
    kdf: KdfParams,
    passphrase: &SecretString,
    warnings: &mut Vec<String>,
) -> Result<Loaded> {
    let backend = Backend::default();
    let scanned = scan(resolved, mode, warnings)?;
    let gens: BTreeSet<u32> = scanned
        .files
        .iter()
        .map(|f| f.1.header.generation)
        .collect();
    // Checked before any key derivation.
    for (path, file) in &scanned.files {
        if below_policy(&file.header.kdf, &kdf) {
            let msg = format!(
                "MEK file {} was written with Argon2id {}, below the parameters in force \
                     ({}). Run `heliosdb-cli security mek change-passphrase` (with \
                     {OLD_PASSPHRASE_ENV} set to the current passphrase; the new one may be the \
                     same) to rewrite every file with the current parameters",
                path.display(),
                kdf_text(&file.header.kdf),
                kdf_text(&kdf)
            );
            if mode.is_production() {
                return Err(TdeError::SecurityPolicy(msg));
            }
            warnings.push(format!("{msg} (allowed in development mode only)"));
        }
    }
    let keyring = LocalKeyring::new(backend, ProviderKind::SecureFile, DESCRIPTION);
    let mut lifecycle = MekLifecycle::new();
    for (path, file) in &scanned.files {
        match open_file(backend, passphrase, file)? {
            Ok(key) => {
                lifecycle.insert(MekVersionInfo::new(
                    file.header.mek.clone(),
                    file.header.state,
                    key.algorithm(),
                    file.header.created_at,
                ));
                keyring.insert(key)?;
            }
            Err(()) => {
                return Err(wrong_passphrase(
                    path,
                    file.header.generation,
                    &gens,
                    "passphrase",
                ));
            }
        }
    }
    if gens.len() > 1 {
        return Err(TdeError::AuthenticationFailed {
            what: format!(
                "MEK files in {}: they use passphrase generations {gens:?}; a passphrase \
                 change was interrupted. Finish it with `heliosdb-cli security mek \
                 change-passphrase`",
                dir.display()
            ),
        });
    }
    for t in scanned.tombstones {
        // A tombstone next to a file (a crash between writing one and removing the other)
        // leaves the live file in charge.
        if lifecycle.get(&t).is_none() {
            lifecycle.insert(destroyed(t));
        }
    }
    for m in lifecycle.normalize_active() {
        warnings.push(format!(
            "{m} was still marked active next to a newer active version (an interrupted \
             rotation); treating it as decrypt-only"
        ));
    }
    Ok(Loaded {
        lifecycle,
        keyring,
        generation: gens.into_iter().next().unwrap_or(1),
    })
}
