//! The secure file MEK provider.
//!
//! Each MEK version is one file, `<storage_path>/<mek_id>.v<version>.mek`, holding the 256-bit
//! MEK encrypted with AES-256-GCM under a key derived from a passphrase with Argon2id (by
//! default RFC 9106's second recommended option, 64 MiB, 3 passes, 4 lanes: [`DEFAULT_KDF`];
//! random 32-byte salt per file). The whole file header — KDF parameters, salt, MEK id and
//! version, lifecycle state — is the associated data, so nothing in it can be altered without
//! the file failing to open. Format: `docs/formats/mek-file.md`.
//!
//! Operational rules:
//! * the directory is created `0700` and files are written `0600`; on open, the directory and
//!   every file must belong to the user HeliosDB runs as and give group and other users no
//!   access: a violation is refused in production mode with the `chown` / `chmod` that fixes
//!   it, and reported as a warning in development mode. MEK files are opened with
//!   `O_NOFOLLOW` and checked through the opened descriptor (`fstat`), so the file checked is
//!   the file read; a symbolic link, pipe or device in its place is refused. A symbolic link
//!   as the directory itself is followed, its target checked, and the resolved path shown
//!   ([`SecureFileMekProvider::resolved_storage_path`], and in the description);
//! * one process at a time: the provider holds an exclusive advisory lock (`flock`) on the
//!   `<storage_path>` directory itself (no lock file) for its whole lifetime, and so does a
//!   passphrase change; the second one gets an error naming the process that holds it;
//! * every write is atomic (temporary file, fsync, rename, fsync of the directory): a crash or
//!   `kill -9` leaves the old file or the new one, never a torn one;
//! * the passphrase comes from `HELIOSDB_MEK_PASSPHRASE` (or the configured variable), which
//!   is removed from the process environment once read, or from a `0600` passphrase file
//!   (checked like an MEK file); production mode refuses passphrases under 25 characters;
//! * KDF parameters read from a file are bounded before any work is spent on them
//!   ([`format::kdf_within_bounds`]); production mode refuses files written with parameters
//!   below the configured ones (the default: [`DEFAULT_KDF`]), and `heliosdb-cli security mek
//!   change-passphrase` rewrites them;
//! * every wrap of a TEK is unwrapped once and compared before it is returned;
//! * every file is decrypted at open, so a wrong passphrase is reported before anything is
//!   written;
//! * a passphrase change re-encrypts every file, one atomic write at a time; each file records
//!   its passphrase generation, so after an interrupted change every file is readable with the
//!   old or the new passphrase and the error says which; running the change again finishes it.

// Unsafe code: exactly one block, `std::env::remove_var` in `passphrase::take_env` (unsafe
// since edition 2024), which removes the passphrase variable from the process environment once
// it is read. See its SAFETY comment and ARCHITECTURE.md, "Unsafe code".
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod format;
mod fsutil;
mod passphrase;

pub use format::{FORMAT_VERSION, file_name, kdf_within_bounds, parse_file_name};
pub use passphrase::{MIN_PASSPHRASE_CHARS, OLD_PASSPHRASE_ENV};

use async_trait::async_trait;
use heliosdb_tde_cipher::{AeadKey, Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KdfParams, KeyBytes, KeyState, MasterKey, MekId, MekInfo, MekProvider,
    MekRef, MekVersion, MekVersionInfo, ProviderHealth, ProviderKind, Result, SecureFileConfig,
    SecurityMode, TableKey, TdeError, Timestamp, WrapContext, WrappedTek,
};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// How the provider describes itself.
pub const DESCRIPTION: &str = "Secure File (Argon2id + AES-256-GCM)";

/// The Argon2id parameters new files are written with when the configuration sets none: RFC
/// 9106's second recommended option (section 4) for a key derived once at start-up, 64 MiB of
/// memory, 3 passes, 4 lanes. They are also the policy: production mode refuses to open a file
/// written with less memory or fewer passes than the parameters in force.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    m_cost_kib: 64 * 1024,
    t_cost: 3,
    p_cost: 4,
};

#[derive(Clone)]
enum Slot {
    Live {
        key: Arc<MasterKey>,
        state: KeyState,
        created_at: Timestamp,
        state_changed_at: Timestamp,
    },
    Destroyed,
}

/// What a passphrase change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassphraseChange {
    /// Files re-encrypted under the new passphrase by this run.
    pub rewritten: usize,
    /// Files that an earlier, interrupted run had already converted.
    pub already_converted: usize,
    /// The passphrase generation every file now has.
    pub generation: u32,
}

/// Master keys in passphrase-protected files.
pub struct SecureFileMekProvider {
    dir: PathBuf,
    resolved: PathBuf,
    /// The directory lock, held while the provider exists.
    _lock: File,
    mode: SecurityMode,
    kdf: KdfParams,
    backend: Backend,
    passphrase: RwLock<(SecretString, u32)>,
    slots: Mutex<BTreeMap<MekRef, Slot>>,
    warnings: Mutex<Vec<String>>,
}

impl fmt::Debug for SecureFileMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureFileMekProvider")
            .field("dir", &self.dir)
            .field("resolved", &self.resolved)
            .field("mode", &self.mode)
            .field("kdf", &self.kdf)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| TdeError::ProviderUnavailable {
        provider: DESCRIPTION.into(),
        reason: "internal lock poisoned by a panic in another thread".into(),
        retryable: false,
    })
}

/// The Argon2id parameters for new files: the configured ones or [`DEFAULT_KDF`], within the
/// bounds files are read with (a file this crate would refuse to read is never written).
fn configured_kdf(config: &SecureFileConfig) -> Result<KdfParams> {
    let kdf = config.kdf.unwrap_or(DEFAULT_KDF);
    if !format::kdf_within_bounds(&kdf) {
        return Err(TdeError::config(
            "secure_file_config.kdf",
            format!(
                "memory {} KiB, {} passes, {} lanes is outside the bounds ({}); the default \
                 is 65536 KiB, 3 passes, 4 lanes",
                kdf.m_cost_kib,
                kdf.t_cost,
                kdf.p_cost,
                format::kdf_bounds_text()
            ),
        ));
    }
    Ok(kdf)
}

/// Whether a file's parameters are below the policy: less memory or fewer passes. (Fewer lanes
/// cost an attacker nothing: the work is memory times passes.)
fn below_policy(file: &KdfParams, policy: &KdfParams) -> bool {
    file.m_cost_kib < policy.m_cost_kib || file.t_cost < policy.t_cost
}

fn kdf_text(k: &KdfParams) -> String {
    format!(
        "memory {} KiB, {} passes, {} lanes",
        k.m_cost_kib, k.t_cost, k.p_cost
    )
}

/// Derives the 256-bit file key from a passphrase. Parameters outside the bounds are refused
/// before any work.
fn derive(passphrase: &SecretString, salt: &[u8], kdf: KdfParams) -> Result<KeyBytes> {
    if !format::kdf_within_bounds(&kdf) {
        return Err(TdeError::config(
            "secure_file_config.kdf",
            format!(
                "{} is outside the bounds ({})",
                kdf_text(&kdf),
                format::kdf_bounds_text()
            ),
        ));
    }
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| TdeError::config("secure_file_config.kdf", e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    KeyBytes::try_fill_with(|out| {
        argon
            .hash_password_into(passphrase.expose_secret().as_bytes(), salt, out)
            .map_err(|e| TdeError::config("secure_file_config.kdf", e.to_string()))
    })
}

/// Encrypts `key` into a complete file image.
fn seal_file(
    backend: Backend,
    passphrase: &SecretString,
    kdf: KdfParams,
    header: &mut format::Header,
    key: &KeyBytes,
) -> Result<Vec<u8>> {
    let mut salt = vec![0u8; format::SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| TdeError::Random(e.to_string()))?;
    header.salt = salt;
    header.kdf = kdf;
    let file_key = derive(passphrase, &header.salt, kdf)?;
    let aead = AeadKey::new(backend, file_key.expose_secret())?;
    let nonce = heliosdb_tde_cipher::aead::random_nonce()?;
    let mut out = header.encode();
    let mut ct = *key.expose_secret();
    let tag = aead.seal_detached(&nonce, &out, &mut ct)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a parsed file. `Err(())` means the passphrase is wrong (or the file was altered).
fn open_file(
    backend: Backend,
    passphrase: &SecretString,
    file: &format::MekFile,
) -> Result<std::result::Result<MasterKey, ()>> {
    let file_key = derive(passphrase, &file.header.salt, file.header.kdf)?;
    let aead = AeadKey::new(backend, file_key.expose_secret())?;
    let opened = KeyBytes::try_fill_with(|buf| {
        buf.copy_from_slice(&file.ciphertext);
        aead.open_detached(&file.nonce, &file.header_bytes, buf, &file.tag)
    });
    Ok(opened
        .map(|bytes| MasterKey::new(file.header.mek.clone(), file.header.algorithm, bytes))
        .map_err(|_| ()))
}

/// Parses and decrypts a MEK file image with `passphrase`: `Ok(Some(key))` when it opens,
/// `Ok(None)` when the passphrase is wrong or the file was altered, and an error when the image
/// is malformed. `path` names the file in errors. (The provider uses the same code; this entry
/// point exists for tools and fuzzing.)
pub fn open_image(
    bytes: &[u8],
    path: &Path,
    passphrase: &SecretString,
) -> Result<Option<MasterKey>> {
    let file = format::parse(bytes, path)?;
    Ok(open_file(Backend::default(), passphrase, &file)?.ok())
}

struct Scanned {
    files: Vec<(PathBuf, format::MekFile)>,
    tombstones: Vec<MekRef>,
}

/// Reads and parses every MEK file and tombstone in `dir` (the resolved directory), checking
/// each opened file's type, owner and permissions.
fn scan(dir: &Path, mode: SecurityMode, warnings: &mut Vec<String>) -> Result<Scanned> {
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

fn wrong_passphrase(path: &Path, file_gen: u32, gens: &BTreeSet<u32>, which: &str) -> TdeError {
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
    /// Opens the provider on `config.storage_path`, creating the directory if needed, and
    /// decrypts every MEK file with the configured passphrase.
    ///
    /// The passphrase comes from `config.passphrase_file` or from the environment variable
    /// (`HELIOSDB_MEK_PASSPHRASE` unless configured otherwise), which is removed from the
    /// process environment once read.
    ///
    /// The provider takes an exclusive advisory lock (`flock`) on the directory itself, which
    /// writes nothing, and holds it until it is dropped: a second provider or a
    /// passphrase change on the same directory, in this process or another one, fails with
    /// an error naming the process that holds it.
    pub fn open(config: &SecureFileConfig, mode: SecurityMode) -> Result<Self> {
        let resolved = passphrase::resolve(config, mode)?;
        Self::open_with_passphrase(config, mode, resolved.passphrase, resolved.warnings)
    }

    /// Like [`SecureFileMekProvider::open`], with the passphrase supplied by the caller.
    pub fn open_with_passphrase(
        config: &SecureFileConfig,
        mode: SecurityMode,
        passphrase: SecretString,
        mut warnings: Vec<String>,
    ) -> Result<Self> {
        if let Some(w) = passphrase::check_strength(&passphrase, mode)?
            && !warnings.contains(&w)
        {
            warnings.push(w);
        }
        let kdf = configured_kdf(config)?;
        if !kdf.meets_owasp_minimum() {
            let msg = format!(
                "secure_file_config.kdf {kdf:?} is below OWASP's Argon2id minimum (19 MiB, 2 \
                 passes)"
            );
            if mode.is_production() {
                return Err(TdeError::SecurityPolicy(msg));
            }
            warnings.push(format!("{msg} (allowed in development mode only)"));
        }
        let dir = config.storage_path.clone();
        let resolved = fsutil::resolve_private_dir(&dir, mode, &mut warnings)?;
        // Taken before anything in the directory is touched: the temporary files removed
        // next are never another live process's.
        let lock = fsutil::lock_dir(&resolved, &dir)?;
        fsutil::remove_stale_temps(&resolved)?;
        let backend = Backend::default();
        let scanned = scan(&resolved, mode, &mut warnings)?;
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
        let mut slots = BTreeMap::new();
        for (path, file) in &scanned.files {
            match open_file(backend, &passphrase, file)? {
                Ok(key) => {
                    slots.insert(
                        file.header.mek.clone(),
                        Slot::Live {
                            key: Arc::new(key),
                            state: file.header.state,
                            created_at: file.header.created_at,
                            state_changed_at: file.header.state_changed_at,
                        },
                    );
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
            slots.entry(t).or_insert(Slot::Destroyed);
        }
        normalize_active(&mut slots, &mut warnings);
        for w in &warnings {
            tracing::warn!(target: "heliosdb::tde::file", "{w}");
        }
        let generation = gens.into_iter().next().unwrap_or(1);
        Ok(Self {
            dir,
            resolved,
            _lock: lock,
            mode,
            kdf,
            backend,
            passphrase: RwLock::new((passphrase, generation)),
            slots: Mutex::new(slots),
            warnings: Mutex::new(warnings),
        })
    }

    /// Warnings produced at open (development mode only: in production they are errors).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// The directory holding the MEK files, as configured.
    pub fn storage_path(&self) -> &Path {
        &self.dir
    }

    /// The directory holding the MEK files with every symbolic link resolved: the directory
    /// whose owner and mode were checked and that the provider reads and writes. Equal to
    /// [`SecureFileMekProvider::storage_path`] unless that is (or passes through) a link.
    pub fn resolved_storage_path(&self) -> &Path {
        &self.resolved
    }

    /// Where the MEK files are, for descriptions: the configured path, and the resolved one
    /// when they differ.
    fn location(&self) -> String {
        if self.resolved == self.dir {
            self.dir.display().to_string()
        } else {
            format!(
                "{} (a symbolic link to {})",
                self.dir.display(),
                self.resolved.display()
            )
        }
    }

    fn passphrase(&self) -> Result<(SecretString, u32)> {
        let g = self
            .passphrase
            .read()
            .map_err(|_| TdeError::ProviderUnavailable {
                provider: DESCRIPTION.into(),
                reason: "internal lock poisoned".into(),
                retryable: false,
            })?;
        Ok((g.0.clone(), g.1))
    }

    /// Writes the file of one live version.
    fn write_version(
        &self,
        key: &MasterKey,
        state: KeyState,
        created_at: Timestamp,
        state_changed_at: Timestamp,
    ) -> Result<()> {
        let (pass, generation) = self.passphrase()?;
        let mut header = format::Header {
            kdf: self.kdf,
            salt: Vec::new(),
            generation,
            algorithm: key.algorithm(),
            state,
            created_at,
            state_changed_at,
            mek: key.mek().clone(),
        };
        let image = seal_file(self.backend, &pass, self.kdf, &mut header, key.bytes())?;
        fsutil::atomic_write(&self.resolved, &format::file_name(key.mek()), &image)
    }

    /// Wraps `tek` under `key` (one attempt, no check). The fail point
    /// `secure_file::wrap_tek` (feature `failpoints`) damages the result for the self-check
    /// tests: `ciphertext` flips a bit of the payload, `other_key` wraps a different TEK.
    fn wrap_once(&self, key: &MasterKey, tek: &TableKey, ctx: &WrapContext) -> Result<WrappedTek> {
        fail::fail_point!("secure_file::wrap_tek", |how: Option<String>| {
            match how.as_deref() {
                Some("other_key") => {
                    let other = TableKey::generate(tek.id().clone(), tek.algorithm())?;
                    wrap::wrap_tek(self.backend, key, ProviderKind::SecureFile, &other, ctx)
                }
                _ => {
                    let mut w =
                        wrap::wrap_tek(self.backend, key, ProviderKind::SecureFile, tek, ctx)?;
                    if let Some(b) = w.payload.last_mut() {
                        *b ^= 1;
                    }
                    Ok(w)
                }
            }
        });
        wrap::wrap_tek(self.backend, key, ProviderKind::SecureFile, tek, ctx)
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        TdeError::KeyNotFound {
            key: format!("mek:{mek}"),
            hint: format!(
                "no such MEK file in {}; check secure_file_config.storage_path, or generate it \
                 with `heliosdb-cli security mek generate`",
                self.location()
            ),
        }
    }

    fn live(&self, mek: &MekRef) -> Result<(Arc<MasterKey>, KeyState)> {
        match lock(&self.slots)?.get(mek) {
            Some(Slot::Live { key, state, .. }) => Ok((key.clone(), *state)),
            Some(Slot::Destroyed) => Err(TdeError::InvalidKeyState {
                key: format!("mek:{mek}"),
                state: KeyState::Destroyed,
                operation: "use it".into(),
                hint: "its key material was destroyed; TEKs wrapped only under it are lost".into(),
            }),
            None => Err(self.not_found(mek)),
        }
    }

    /// Re-encrypts every MEK file under `new` passphrase; see
    /// [`SecureFileMekProvider::change_passphrase_in`]. This open provider uses the new
    /// passphrase afterwards.
    pub fn change_passphrase(&self, new: SecretString) -> Result<PassphraseChange> {
        let _guard = lock(&self.slots)?;
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
    /// writing every file with the configured Argon2id parameters (or [`DEFAULT_KDF`]): this
    /// is also how files written with older, weaker parameters are upgraded (`new` may equal
    /// `old`).
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
fn change_locked(
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

/// Records a freshly written, active MEK version in memory and describes it.
fn insert_active(
    slots: &mut BTreeMap<MekRef, Slot>,
    key: MasterKey,
    now: Timestamp,
) -> MekVersionInfo {
    let info = MekVersionInfo {
        mek: key.mek().clone(),
        state: KeyState::Active,
        algorithm: key.algorithm(),
        created_at: now,
    };
    slots.insert(
        info.mek.clone(),
        Slot::Live {
            key: Arc::new(key),
            state: KeyState::Active,
            created_at: now,
            state_changed_at: now,
        },
    );
    info
}

/// After a crash between writing a new version and demoting the old one, two versions of one
/// MEK can be Active on disk; only the newest stays Active.
fn normalize_active(slots: &mut BTreeMap<MekRef, Slot>, warnings: &mut Vec<String>) {
    let mut newest_active: BTreeMap<MekId, MekVersion> = BTreeMap::new();
    for (m, s) in slots.iter() {
        if let Slot::Live {
            state: KeyState::Active,
            ..
        } = s
        {
            let e = newest_active.entry(m.id.clone()).or_insert(m.version);
            *e = (*e).max(m.version);
        }
    }
    for (m, s) in slots.iter_mut() {
        if let Slot::Live { state, .. } = s
            && *state == KeyState::Active
            && newest_active.get(&m.id) != Some(&m.version)
        {
            *state = KeyState::DecryptOnly;
            warnings.push(format!(
                "{m} was still marked active next to a newer active version (an interrupted \
                     rotation); treating it as decrypt-only"
            ));
        }
    }
}

#[async_trait]
impl MekProvider for SecureFileMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SecureFile
    }

    fn description(&self) -> String {
        format!("{DESCRIPTION} at {}", self.location())
    }

    fn is_secure(&self) -> bool {
        true
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        let mut slots = lock(&self.slots)?;
        if slots.keys().any(|m| &m.id == mek_id) {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{mek_id}"),
            });
        }
        let mek = MekRef::new(mek_id.clone(), MekVersion::FIRST);
        let key = MasterKey::new(mek.clone(), algorithm, KeyBytes::generate()?);
        let now = Timestamp::now();
        self.write_version(&key, KeyState::Active, now, now)?;
        tracing::info!(target: "heliosdb::tde::file", mek = %mek, "generated MEK");
        Ok(insert_active(&mut slots, key, now))
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        let (key, state) = self.live(mek)?;
        state.ensure_can_encrypt(&format!("mek:{}", mek), "wrap a TEK")?;
        let wrapped = self.wrap_once(&key, tek, ctx)?;
        // Self-check: the new wrap must give back the same TEK before anyone stores it (a
        // fault here would otherwise leave a TEK that can never be unwrapped). The default
        // rewrap_tek wraps through this method, so re-wraps are checked too.
        if !wrap::wrap_gives_back(self.backend, &key, &wrapped, tek, ctx) {
            return Err(wrap::wrap_check_failed(DESCRIPTION, mek, ctx));
        }
        Ok(wrapped)
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let (key, state) = self.live(&wrapped.mek)?;
        state.ensure_can_decrypt(&format!("mek:{}", &wrapped.mek), "unwrap a TEK")?;
        wrap::unwrap_tek(self.backend, &key, wrapped, ctx)
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let slots = lock(&self.slots)?;
        let versions: Vec<MekVersionInfo> = slots
            .iter()
            .filter(|(m, _)| &m.id == mek_id)
            .map(|(m, s)| match s {
                Slot::Live {
                    key,
                    state,
                    created_at,
                    ..
                } => MekVersionInfo {
                    mek: m.clone(),
                    state: *state,
                    algorithm: key.algorithm(),
                    created_at: *created_at,
                },
                Slot::Destroyed => MekVersionInfo {
                    mek: m.clone(),
                    state: KeyState::Destroyed,
                    algorithm: EncryptionAlgorithm::Aes256Gcm,
                    created_at: Timestamp(0),
                },
            })
            .collect();
        if versions.is_empty() {
            return Err(self.not_found(mek_id));
        }
        Ok(MekInfo {
            id: mek_id.clone(),
            provider: ProviderKind::SecureFile,
            location: self.location(),
            versions,
        })
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let mut ids: Vec<MekId> = lock(&self.slots)?.keys().map(|m| m.id.clone()).collect();
        ids.dedup();
        Ok(ids)
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let mut slots = lock(&self.slots)?;
        let latest = slots
            .keys()
            .filter(|m| &m.id == mek_id)
            .map(|m| m.version)
            .max()
            .ok_or_else(|| self.not_found(mek_id))?;
        let algorithm = slots
            .iter()
            .filter(|(m, _)| &m.id == mek_id)
            .find_map(|(_, s)| match s {
                Slot::Live { key, .. } => Some(key.algorithm()),
                Slot::Destroyed => None,
            })
            .unwrap_or_default();
        let mek = MekRef::new(mek_id.clone(), latest.next()?);
        let key = MasterKey::new(mek.clone(), algorithm, KeyBytes::generate()?);
        let now = Timestamp::now();
        // New version first: a crash after this write leaves two active versions on disk, which
        // open() resolves in favour of the newest.
        self.write_version(&key, KeyState::Active, now, now)?;
        let demote: Vec<MekRef> = slots
            .iter()
            .filter(|(m, s)| {
                &m.id == mek_id
                    && matches!(
                        s,
                        Slot::Live {
                            state: KeyState::Active,
                            ..
                        }
                    )
            })
            .map(|(m, _)| m.clone())
            .collect();
        for m in demote {
            if let Some(Slot::Live {
                key: old,
                state,
                created_at,
                state_changed_at,
            }) = slots.get_mut(&m)
            {
                self.write_version(old, KeyState::DecryptOnly, *created_at, now)?;
                *state = KeyState::DecryptOnly;
                *state_changed_at = now;
            }
        }
        tracing::info!(target: "heliosdb::tde::file", mek = %mek, "rotated MEK");
        Ok(insert_active(&mut slots, key, now))
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        let mut slots = lock(&self.slots)?;
        let slot = slots.get_mut(mek).ok_or_else(|| self.not_found(mek))?;
        let Slot::Live {
            key,
            state,
            created_at,
            state_changed_at,
        } = slot
        else {
            return KeyState::Destroyed.check_transition(next, &format!("mek:{mek}"));
        };
        state.check_transition(next, &format!("mek:{mek}"))?;
        if next == *state {
            return Ok(());
        }
        let now = Timestamp::now();
        if next == KeyState::Destroyed {
            // The tombstone keeps the version number from being reused; then the key goes.
            fsutil::atomic_write(&self.resolved, &format::tombstone_name(mek), b"")?;
            fsutil::durable_remove(&self.resolved, &format::file_name(mek))?;
            *slot = Slot::Destroyed;
        } else {
            self.write_version(key, next, *created_at, now)?;
            *state = next;
            *state_changed_at = now;
        }
        tracing::info!(target: "heliosdb::tde::file", mek = %mek, state = %next, "MEK state changed");
        Ok(())
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let readable = std::fs::read_dir(&self.resolved).is_ok();
        let versions = lock(&self.slots)?.len();
        Ok(ProviderHealth {
            healthy: readable,
            latency: start.elapsed(),
            detail: if readable {
                format!("{versions} MEK versions in {}", self.location())
            } else {
                format!("{} is not readable", self.location())
            },
        })
    }
}
