#![doc = include_str!("../README.md")]
// Unsafe code: exactly one block, `std::env::remove_var` in `passphrase::take_env` (unsafe
// since edition 2024), which removes the passphrase variable from the process environment once
// it is read. See its SAFETY comment and ARCHITECTURE.md, "Unsafe code".
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod change;
pub mod format;
mod fsutil;
mod passphrase;
mod sealing;
mod versions;

pub use change::PassphraseChange;
pub use format::{FORMAT_VERSION, file_name, kdf_within_bounds, parse_file_name};
pub use passphrase::{MIN_PASSPHRASE_CHARS, OLD_PASSPHRASE_ENV};
pub use sealing::open_image;

use async_trait::async_trait;
use heliosdb_tde_cipher::LocalKeyring;
use heliosdb_tde_core::lifecycle::{Transition, mek_not_found};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KdfParams, KeyBytes, KeyState, MasterKey, MekBackupItem, MekId, MekInfo,
    MekLifecycle, MekProvider, MekRef, MekVersionInfo, ProviderHealth, ProviderKind, Result,
    SecureFileConfig, SecurityMode, TableKey, TdeError, Timestamp, WrapContext, WrappedTek,
};
use sealing::{configured_kdf, seal_file};
use secrecy::SecretString;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
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

/// Master keys in passphrase-protected files: a [`LocalKeyring`] loaded from the files of one
/// directory, the [`MekLifecycle`] of their versions, and every change persisted to a file
/// before it is recorded.
pub struct SecureFileMekProvider {
    dir: PathBuf,
    resolved: PathBuf,
    /// The directory lock, held while the provider exists.
    _lock: File,
    mode: SecurityMode,
    kdf: KdfParams,
    passphrase: RwLock<(SecretString, u32)>,
    /// The versions and their states. Its lock also serialises every change of the files.
    lifecycle: Mutex<MekLifecycle>,
    keyring: LocalKeyring,
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

    /// Reads the passphrase as [`SecureFileMekProvider::open`] does (the passphrase file, or
    /// the environment variable, which is then removed from the environment) and checks its
    /// strength, without opening anything: for a command that opens the provider more than
    /// once (a restore opens a scratch copy of the MEK directory first). Returns it with any
    /// warnings.
    pub fn resolve_passphrase(
        config: &SecureFileConfig,
        mode: SecurityMode,
    ) -> Result<(SecretString, Vec<String>)> {
        let r = passphrase::resolve(config, mode)?;
        Ok((r.passphrase, r.warnings))
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
        let loaded = versions::load(&dir, &resolved, mode, kdf, &passphrase, &mut warnings)?;
        for w in &warnings {
            tracing::warn!(target: "heliosdb::tde::file", "{w}");
        }
        Ok(Self {
            dir,
            resolved,
            _lock: lock,
            mode,
            kdf,
            passphrase: RwLock::new((passphrase, loaded.generation)),
            lifecycle: Mutex::new(loaded.lifecycle),
            keyring: loaded.keyring,
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
        let image = seal_file(
            self.keyring.backend(),
            &pass,
            self.kdf,
            &mut header,
            key.bytes(),
        )?;
        fsutil::atomic_write(&self.resolved, &format::file_name(key.mek()), &image)
    }

    /// Rewrites the file of one live version with a new state.
    fn rewrite_version(
        &self,
        lc: &MekLifecycle,
        mek: &MekRef,
        state: KeyState,
        now: Timestamp,
    ) -> Result<()> {
        let created_at = lc.get(mek).map(|v| v.created_at).unwrap_or(now);
        self.keyring
            .with_key(mek, |key| self.write_version(key, state, created_at, now))?
            .unwrap_or_else(|| Err(self.not_found(mek)))
    }

    /// Test hook on every new wrap, before its self-check. The fail point
    /// `secure_file::wrap_tek` (feature `failpoints`) damages it: `ciphertext` flips a bit of
    /// the payload, `other_key` wraps a different TEK.
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn tamper(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
        wrapped: WrappedTek,
    ) -> Result<WrappedTek> {
        fail::fail_point!("secure_file::wrap_tek", |how: Option<String>| {
            match how.as_deref() {
                Some("other_key") => {
                    let other = TableKey::generate(tek.id().clone(), tek.algorithm())?;
                    self.keyring.wrap_tek_unchecked(mek, &other, ctx)
                }
                _ => {
                    let mut w = self.keyring.wrap_tek_unchecked(mek, tek, ctx)?;
                    if let Some(b) = w.payload.last_mut() {
                        *b ^= 1;
                    }
                    Ok(w)
                }
            }
        });
        Ok(wrapped)
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        mek_not_found(
            mek,
            format!(
                "no such MEK file in {}; check secure_file_config.storage_path, or generate it \
                 with `heliosdb-cli security mek generate`",
                self.location()
            ),
        )
    }

    /// The state of a version that still has its key material.
    fn live_state(&self, mek: &MekRef) -> Result<KeyState> {
        match lock(&self.lifecycle)?.state(mek) {
            Some(KeyState::Destroyed) if !self.keyring.contains(mek)? => {
                Err(TdeError::InvalidKeyState {
                    key: format!("mek:{mek}"),
                    state: KeyState::Destroyed,
                    operation: "use it".into(),
                    hint: "its key material was destroyed; TEKs wrapped only under it are lost"
                        .into(),
                })
            }
            Some(state) => Ok(state),
            None => Err(self.not_found(mek)),
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
        let mut lc = lock(&self.lifecycle)?;
        let mek = lc.plan_generate(mek_id)?;
        let key = MasterKey::new(mek.clone(), algorithm, KeyBytes::generate()?);
        let now = Timestamp::now();
        self.write_version(&key, KeyState::Active, now, now)?;
        self.keyring.insert(key)?;
        let info = MekVersionInfo::active(mek, algorithm, now);
        lc.insert(info.clone());
        tracing::info!(target: "heliosdb::tde::file", mek = %info.mek, "generated MEK");
        Ok(info)
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.live_state(mek)?
            .ensure_can_encrypt(&format!("mek:{}", mek), "wrap a TEK")?;
        // The keyring checks that the new wrap gives back the same TEK before anyone stores
        // it (a fault here would otherwise leave a TEK that can never be unwrapped). The
        // default rewrap_tek wraps through this method, so re-wraps are checked too.
        self.keyring
            .wrap_tek_with(mek, tek, ctx, |w| self.tamper(mek, tek, ctx, w))
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.live_state(&wrapped.mek)?
            .ensure_can_decrypt(&format!("mek:{}", &wrapped.mek), "unwrap a TEK")?;
        self.keyring.unwrap_tek(wrapped, ctx)
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        lock(&self.lifecycle)?
            .mek_info(mek_id, ProviderKind::SecureFile, self.location())
            .ok_or_else(|| self.not_found(mek_id))
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        Ok(lock(&self.lifecycle)?.ids())
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let mut lc = lock(&self.lifecycle)?;
        let rotation = lc
            .plan_rotation(mek_id)
            .ok_or_else(|| self.not_found(mek_id))??;
        let key = MasterKey::new(
            rotation.next.clone(),
            rotation.algorithm,
            KeyBytes::generate()?,
        );
        let now = Timestamp::now();
        // New version first: a crash after this write leaves two active versions on disk, which
        // open() resolves in favour of the newest.
        self.write_version(&key, KeyState::Active, now, now)?;
        self.keyring.insert(key)?;
        for m in &rotation.demote {
            self.rewrite_version(&lc, m, KeyState::DecryptOnly, now)?;
            lc.set_state(m, KeyState::DecryptOnly);
        }
        let info = lc.apply_rotation(&rotation, now);
        tracing::info!(target: "heliosdb::tde::file", mek = %info.mek, "rotated MEK");
        Ok(info)
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        let mut lc = lock(&self.lifecycle)?;
        let transition = lc
            .plan_transition(mek, next)
            .ok_or_else(|| self.not_found(mek))??;
        if transition == Transition::Unchanged {
            return Ok(());
        }
        let now = Timestamp::now();
        if transition.destroys_material() {
            // The tombstone keeps the version number from being reused; then the key goes.
            fsutil::atomic_write(&self.resolved, &format::tombstone_name(mek), b"")?;
            fsutil::durable_remove(&self.resolved, &format::file_name(mek))?;
            self.keyring.remove(mek)?;
            lc.insert(versions::destroyed(mek.clone()));
        } else {
            self.rewrite_version(&lc, mek, next, now)?;
            lc.set_state(mek, next);
        }
        tracing::info!(target: "heliosdb::tde::file", mek = %mek, state = %next, "MEK state changed");
        Ok(())
    }

    async fn backup_material(&self, meks: &[MekRef]) -> Result<Vec<MekBackupItem>> {
        // MEK files are only ever added (a version's file never changes but by a passphrase
        // change, which keeps the key), so reading them after a store snapshot finds every
        // version the snapshot references. Each file is checked to parse before it is taken.
        let mut out = Vec::with_capacity(meks.len());
        for mek in meks {
            let name = format::file_name(mek);
            let path = self.resolved.join(&name);
            if !path.exists() {
                return Err(mek_not_found(
                    mek,
                    format!(
                        "its file {} is missing from the MEK directory; restore it from a backup \
                         bundle that holds it",
                        path.display()
                    ),
                ));
            }
            let mut warnings = Vec::new();
            let bytes = fsutil::read_key_file(&path, self.mode, &mut warnings)?;
            format::parse(&bytes, &path)?;
            out.push(MekBackupItem::file(mek.clone(), name, bytes));
        }
        Ok(out)
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let readable = std::fs::read_dir(&self.resolved).is_ok();
        let versions = lock(&self.lifecycle)?.len();
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
