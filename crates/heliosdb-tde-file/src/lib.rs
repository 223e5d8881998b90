//! The secure file MEK provider.
//!
//! Each MEK version is one file, `<storage_path>/<mek_id>.v<version>.mek`, holding the 256-bit
//! MEK encrypted with AES-256-GCM under a key derived from a passphrase with Argon2id (OWASP
//! parameters or stronger, random 32-byte salt per file). The whole file header — KDF
//! parameters, salt, MEK id and version, lifecycle state — is the associated data, so nothing in
//! it can be altered without the file failing to open. Format: `docs/formats/mek-file.md`.
//!
//! Operational rules:
//! * the directory is created `0700` and files are written `0600`; on open, group- or
//!   world-accessible files or directories are refused in production mode with the `chmod`
//!   that fixes them, and reported as warnings in development mode;
//! * every write is atomic (temporary file, fsync, rename, fsync of the directory): a crash or
//!   `kill -9` leaves the old file or the new one, never a torn one;
//! * the passphrase comes from `HELIOSDB_MEK_PASSPHRASE` (or the configured variable) or from a
//!   `0600` passphrase file; production mode refuses passphrases under 25 characters;
//! * every file is decrypted at open, so a wrong passphrase is reported before anything is
//!   written;
//! * a passphrase change re-encrypts every file, one atomic write at a time; each file records
//!   its passphrase generation, so after an interrupted change every file is readable with the
//!   old or the new passphrase and the error says which; running the change again finishes it.

pub mod format;
mod fsutil;
mod passphrase;

pub use format::{FORMAT_VERSION, file_name, parse_file_name};
pub use passphrase::MIN_PASSPHRASE_CHARS;

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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// How the provider describes itself.
pub const DESCRIPTION: &str = "Secure File (Argon2id + AES-256-GCM)";

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

/// Derives the 256-bit file key from a passphrase.
fn derive(passphrase: &SecretString, salt: &[u8], kdf: KdfParams) -> Result<KeyBytes> {
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

/// Reads and parses every MEK file and tombstone in `dir`, checking permissions.
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
        if let Some(w) = fsutil::check_private(&path, 0o600, mode)? {
            warnings.push(w);
        }
        let bytes = std::fs::read(&path).map_err(|e| TdeError::io(&path, e))?;
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
        let kdf = config.kdf.unwrap_or_default();
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
        fsutil::create_private_dir(&dir)?;
        if let Some(w) = fsutil::check_private(&dir, 0o700, mode)? {
            warnings.push(w);
        }
        fsutil::remove_stale_temps(&dir)?;
        let backend = Backend::default();
        let scanned = scan(&dir, mode, &mut warnings)?;
        let gens: BTreeSet<u32> = scanned
            .files
            .iter()
            .map(|f| f.1.header.generation)
            .collect();
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

    /// The directory holding the MEK files.
    pub fn storage_path(&self) -> &Path {
        &self.dir
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
        fsutil::atomic_write(&self.dir, &format::file_name(key.mek()), &image)
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        TdeError::KeyNotFound {
            key: format!("mek:{mek}"),
            hint: format!(
                "no such MEK file in {}; check secure_file_config.storage_path, or generate it \
                 with `heliosdb-cli security mek generate`",
                self.dir.display()
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
        let config = SecureFileConfig {
            storage_path: self.dir.clone(),
            passphrase_env_var: None,
            passphrase_file: None,
            kdf: Some(self.kdf),
        };
        let report = Self::change_passphrase_in(&config, self.mode, &old, &new)?;
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

    /// Re-encrypts every MEK file in `config.storage_path` from `old` to `new` passphrase.
    ///
    /// Each file is replaced atomically and records its passphrase generation. If a previous
    /// run was interrupted (files span two generations), this run finishes it. Every file is
    /// decrypted with the passphrase it needs before anything is written, so a wrong old or
    /// new passphrase changes nothing.
    pub fn change_passphrase_in(
        config: &SecureFileConfig,
        mode: SecurityMode,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<PassphraseChange> {
        passphrase::check_strength(new, mode)?;
        let dir = &config.storage_path;
        let kdf = config.kdf.unwrap_or_default();
        let backend = Backend::default();
        let mut warnings = Vec::new();
        fsutil::check_private(dir, 0o700, mode)?;
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
        format!("{DESCRIPTION} at {}", self.dir.display())
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
        wrap::wrap_tek(self.backend, &key, ProviderKind::SecureFile, tek, ctx)
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
            location: self.dir.display().to_string(),
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
            fsutil::atomic_write(&self.dir, &format::tombstone_name(mek), b"")?;
            fsutil::durable_remove(&self.dir, &format::file_name(mek))?;
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
        let readable = std::fs::read_dir(&self.dir).is_ok();
        let versions = lock(&self.slots)?.len();
        Ok(ProviderHealth {
            healthy: readable,
            latency: start.elapsed(),
            detail: if readable {
                format!("{versions} MEK versions in {}", self.dir.display())
            } else {
                format!("{} is not readable", self.dir.display())
            },
        })
    }
}
