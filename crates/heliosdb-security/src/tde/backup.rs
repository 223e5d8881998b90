//! Key backups at the facade: [`TdeSubsystem::backup`] for a running database, checking a
//! bundle ([`verify_bundle`], [`verify_bundle_with_provider`]), and [`restore`]
//! (`docs/operations.md`, `docs/formats/backup-bundle.md`).

mod restore;

pub use restore::{RESTORE_PENDING_ENTRY, RestoreOptions, RestoreReport, restore};

use super::TdeConfig;
use super::checked::ConfiguredProvider;
use super::subsystem::{TdeSubsystem, build_provider};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, KeyStore, MekProvider, MekRef, Result, SecurityMode, TdeError,
    Timestamp,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::backup::{BackupReport, Bundle, Manifest, TrialUnwraps};
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl TdeSubsystem {
    /// Writes a backup bundle of every table key to `out` while the database runs (see
    /// [`KeyManager::backup`]): one consistent snapshot of the key store, the MEK files of the
    /// secure-file provider (still encrypted under the passphrase) or the references of the
    /// other providers, never a key in the clear. Refuses to overwrite an existing file.
    pub async fn backup(&self, out: &Path) -> Result<BackupReport> {
        self.key_manager().backup(out, false).await
    }

    /// Like [`TdeSubsystem::backup`], into `dir` under the name
    /// `heliosdb-keys-<store id>-<UTC time>.hbk` (never over an existing file).
    pub async fn backup_to_dir(&self, dir: &Path) -> Result<BackupReport> {
        let id = self.key_manager().store().identity().await?;
        let name = heliosdb_tde_manager::backup::bundle_file_name(&id.id_hex(), Timestamp::now());
        self.key_manager().backup(&dir.join(name), false).await
    }
}

/// Where [`backup_offline`] writes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BackupTarget {
    /// This file.
    File(PathBuf),
    /// A file named `heliosdb-keys-<store id>-<UTC time>.hbk` in this directory.
    Dir(PathBuf),
}

/// Takes a backup with HeliosDB stopped (`heliosdb-cli security backup`): opens the key store
/// read-only (no file of the store or the provider is changed), writes the bundle as
/// [`TdeSubsystem::backup`] does, and records `backup.written` in the configured audit log.
/// While another process holds the key store, the error says to take the backup through the
/// running database or to stop it.
pub async fn backup_offline(
    config: TdeConfig,
    target: BackupTarget,
    overwrite: bool,
) -> Result<BackupReport> {
    let audit_config = config.clone();
    let target_label = match &target {
        BackupTarget::File(f) | BackupTarget::Dir(f) => f.clone(),
    };
    let r = async {
        let tde = match TdeSubsystem::open_read_only(config).await {
            Err(TdeError::InUse { what, location, .. }) => {
                return Err(TdeError::InUse {
                    what,
                    location,
                    hint: "the database is running and holds it: take the backup through the \
                           running database (TdeSubsystem::backup, as docs/operations.md shows), \
                           or stop HeliosDB and run this command again"
                        .into(),
                });
            }
            other => other?,
        };
        let out = match target {
            BackupTarget::File(f) => f,
            BackupTarget::Dir(d) => {
                let id = tde.key_manager().store().identity().await?;
                d.join(heliosdb_tde_manager::backup::bundle_file_name(
                    &id.id_hex(),
                    Timestamp::now(),
                ))
            }
        };
        tde.key_manager().backup(&out, overwrite).await
    }
    .await;
    let event = heliosdb_tde_manager::backup::backup_written_event(&r, &target_label);
    audit_direct(&audit_config, event).await;
    r
}

/// What [`verify_bundle`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BundleCheck {
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// The bundle's own checksum, hex.
    pub checksum: String,
    /// Disagreements between the manifest and the records (empty when the bundle is sound).
    pub problems: Vec<String>,
}

/// Loads `bundle` into a scratch store in memory (every record's checksum and layout checked
/// on the way) and returns it. Blocking.
fn load_scratch(bundle: &mut Bundle) -> Result<RedbKeyStore> {
    let store = RedbKeyStore::scratch(bundle.path())?;
    bundle.import_into(&store)?;
    Ok(store)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TdeError::ProviderUnavailable {
            provider: "backup".into(),
            reason: format!("a worker task failed: {e}"),
            retryable: false,
        })?
}

/// Checks a bundle without any provider: its structure and checksums (any damage is
/// [`TdeError::Corrupt`] naming the section), every record, and that the manifest matches the
/// records: every MEK version a TEK needs is listed with the right count and, for the
/// secure-file provider, its `.mek` file is in the bundle. Disagreements are listed in
/// [`BundleCheck::problems`]. Reads only the bundle.
pub async fn verify_bundle(path: &Path) -> Result<BundleCheck> {
    let path = path.to_path_buf();
    let (check, _store, _) = blocking(move || verify_and_load(&path)).await?;
    Ok(check)
}

/// What [`verify_and_load`] gives: the check, the scratch store, and the MEK files.
type Loaded = (BundleCheck, RedbKeyStore, Vec<(String, Vec<u8>)>);

/// Opens and checks the bundle once, loads it into a scratch store, and compares the manifest
/// with the records. Blocking.
fn verify_and_load(path: &Path) -> Result<Loaded> {
    let mut bundle = Bundle::open(path)?;
    let store = load_scratch(&mut bundle)?;
    let manifest = bundle.manifest().clone();
    let files = bundle.material()?;
    let material: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TdeError::ProviderUnavailable {
            provider: "backup".into(),
            reason: format!("cannot start a runtime: {e}"),
            retryable: false,
        })?;
    let mut needs: BTreeMap<MekRef, u64> = BTreeMap::new();
    rt.block_on(store.tek_pages(None, 4096).for_each(|page| {
        for r in page {
            for w in std::iter::once(&r.wrapped).chain(r.previous_wrap.as_ref()) {
                *needs.entry(w.mek.clone()).or_insert(0) += 1;
            }
        }
        Ok(())
    }))?;
    let mut problems = Vec::new();
    for (mek, count) in &needs {
        let name = mek.to_string();
        match manifest.mek_versions.iter().find(|v| v.mek == name) {
            None => problems.push(format!(
                "{count} table keys need MEK version {mek}, which the manifest does not list"
            )),
            Some(v) => {
                if v.teks != *count {
                    problems.push(format!(
                        "the manifest says {} table keys need {mek}, the records say {count}",
                        v.teks
                    ));
                }
                if manifest.provider.kind == "secure_file" {
                    match &v.file {
                        Some(f) if material.contains(&f.as_str()) => {}
                        _ => problems.push(format!(
                            "the MEK file of {mek} is not in the bundle; it cannot be restored \
                             with the secure-file provider"
                        )),
                    }
                }
            }
        }
    }
    let check = BundleCheck {
        manifest,
        checksum: bundle.checksum(),
        problems,
    };
    Ok((check, store, files))
}

/// What [`verify_bundle_with_provider`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProviderCheck {
    /// The structural check.
    pub bundle: BundleCheck,
    /// MEK versions of the manifest the provider does not hold or cannot use, with the reason.
    pub missing_meks: Vec<(String, String)>,
    /// The trial unwrap of every TEK in the bundle.
    pub unwraps: TrialUnwraps,
    /// Why the key check value (the MEK's proof) did not unwrap, if it did not: a wrong
    /// passphrase or another deployment's MEK.
    pub key_check: Option<String>,
}

impl ProviderCheck {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.bundle.problems.is_empty()
            && self.missing_meks.is_empty()
            && self.unwraps.failed.is_empty()
            && self.key_check.is_none()
    }
}

/// A provider for checking a bundle: for the secure-file provider, the bundle's own MEK files
/// in a private scratch directory opened with the configured passphrase (the running
/// database's MEK directory is never touched); for the others, the configured provider.
pub(crate) struct CheckProvider {
    pub(crate) provider: Arc<dyn MekProvider>,
    pub(crate) mode: SecurityMode,
    pub(crate) default_mek: heliosdb_tde_core::MekId,
    /// Kept alive while the provider uses it.
    _scratch: Option<ScratchDir>,
}

/// A private directory removed when dropped.
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `files` into a new private directory `dir` (0700, files 0600, synced).
pub(crate) fn write_mek_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| TdeError::io(dir, e))?;
    for (name, bytes) in files {
        write_private_file(&dir.join(name), bytes)?;
    }
    sync_dir(dir)
}

/// Writes a new file with mode 0600 and syncs it.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| TdeError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TdeError::io(path, e))?;
    f.sync_all().map_err(|e| TdeError::io(path, e))
}

/// Syncs a directory, so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TdeError::io(dir, e))
}

/// Refuses a bundle check with the provider or a restore under a configuration with a
/// `migration_source`: they build one provider, and a bundle's TEKs may be under either.
pub(crate) fn refuse_during_migration(config: &TdeConfig, operation: &str) -> Result<()> {
    if config.migration_source.is_some() {
        return Err(TdeError::Unsupported {
            what: format!("cannot {operation} with a configuration that has a migration_source"),
            hint: "checks and restores work with the configuration of one provider: use the \
                   source's configuration for a bundle taken before the migration started, the \
                   target's (without migration_source) for one taken after it finished"
                .into(),
        });
    }
    Ok(())
}

/// The provider `config` names, built for a check or a restore. For the secure-file provider
/// it opens `mek_dir` (a scratch directory holding the bundle's MEK files) with the
/// configured passphrase, which is read once and returned for a second opening.
pub(crate) async fn provider_for(
    config: &TdeConfig,
    mek_dir: Option<&Path>,
    passphrase: Option<secrecy::SecretString>,
) -> Result<(CheckProvider, Option<secrecy::SecretString>)> {
    let checked = config.checked()?;
    let (mode, _) = SecurityMode::resolve_configured(checked.security_mode)?;
    match (&checked.provider, mek_dir) {
        #[cfg(feature = "secure-file")]
        (ConfiguredProvider::SecureFile(file), Some(dir)) => {
            let pass = match passphrase {
                Some(p) => p,
                None => heliosdb_tde_file::SecureFileMekProvider::resolve_passphrase(file, mode)?.0,
            };
            let mut scratch = file.clone();
            scratch.storage_path = dir.to_path_buf();
            let p = heliosdb_tde_file::SecureFileMekProvider::open_with_passphrase(
                &scratch,
                mode,
                pass.clone(),
                Vec::new(),
            )?;
            Ok((
                CheckProvider {
                    provider: Arc::new(p),
                    mode,
                    default_mek: checked.default_mek_id,
                    _scratch: None,
                },
                Some(pass),
            ))
        }
        (selected, _) => {
            let (p, _) = build_provider(selected, &checked.default_mek_id, mode).await?;
            Ok((
                CheckProvider {
                    provider: p,
                    mode,
                    default_mek: checked.default_mek_id,
                    _scratch: None,
                },
                None,
            ))
        }
    }
}

/// Whether `config` uses the secure-file provider (whose MEKs travel in the bundle).
pub(crate) fn is_secure_file(config: &TdeConfig) -> Result<bool> {
    Ok(matches!(
        config.checked()?.provider,
        ConfiguredProvider::SecureFile(_)
    ))
}

/// A key manager over a store loaded from a bundle, with its integrity key loaded through the
/// provider (which proves the provider holds the bundle's MEK).
pub(crate) async fn scratch_manager(
    provider: &CheckProvider,
    store: Arc<dyn KeyStore>,
) -> Result<(KeyManager, Option<String>)> {
    let km = KeyManager::new(
        provider.provider.clone(),
        store,
        KeyManagerConfig::new(provider.default_mek.clone(), provider.mode),
    )?;
    let key_check = match km.check_default_mek().await {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    Ok((km, key_check))
}

/// Checks a bundle as [`verify_bundle`] does, and then with the configured provider: every MEK
/// version the manifest lists exists in the provider, the key check value unwraps, and every
/// TEK in the bundle unwraps (reported per TEK and per table). The running key store, its cache
/// and, for the secure-file provider, the MEK directory are never touched: the bundle is loaded
/// into a scratch store in memory and its own MEK files into a private scratch directory,
/// removed afterwards. A wrong passphrase is an error, with nothing changed.
pub async fn verify_bundle_with_provider(config: &TdeConfig, path: &Path) -> Result<ProviderCheck> {
    refuse_during_migration(config, "check a bundle with the provider")?;
    let p = path.to_path_buf();
    let (check, store, material) = blocking(move || verify_and_load(&p)).await?;
    let secure_file = is_secure_file(config)?;
    let scratch = if secure_file {
        let dir = scratch_dir_for(path);
        let _ = std::fs::remove_dir_all(&dir);
        write_mek_files(&dir, &material)?;
        Some(ScratchDir(dir))
    } else {
        None
    };
    let (mut provider, _) =
        provider_for(config, scratch.as_ref().map(|s| s.0.as_path()), None).await?;
    provider._scratch = scratch;
    let mut missing_meks = Vec::new();
    for v in &check.manifest.mek_versions {
        let Ok(mek) = v.mek.parse::<MekRef>() else {
            missing_meks.push((v.mek.clone(), "not a valid MEK version name".into()));
            continue;
        };
        match provider.provider.mek_info(&mek.id).await {
            Ok(info) => match info.versions.iter().find(|x| x.mek == mek) {
                Some(x) if x.state.can_decrypt() => {}
                Some(x) => missing_meks.push((v.mek.clone(), format!("it is {}", x.state))),
                None => missing_meks.push((v.mek.clone(), "the provider does not hold it".into())),
            },
            Err(e) => missing_meks.push((v.mek.clone(), e.to_string())),
        }
    }
    let store: Arc<dyn KeyStore> = Arc::new(store);
    let (km, key_check) = scratch_manager(&provider, store).await?;
    let unwraps = km.trial_unwrap_all().await?;
    let result = ProviderCheck {
        bundle: check,
        missing_meks,
        unwraps,
        key_check,
    };
    let event = if result.ok() {
        AuditEvent::success(
            AuditAction::BackupVerified,
            None,
            format!(
                "{} with provider ({} table keys unwrap)",
                path.display(),
                result.unwraps.total
            ),
        )
    } else {
        let e = TdeError::corrupt(
            "backup bundle",
            path.display().to_string(),
            format!(
                "{} table keys do not unwrap, {} MEK versions missing",
                result.unwraps.failed.len(),
                result.missing_meks.len()
            ),
        );
        AuditEvent::failure(
            AuditAction::BackupVerified,
            None,
            &e,
            format!("{} with provider", path.display()),
        )
    };
    audit_direct(config, event).await;
    Ok(result)
}

/// A scratch directory next to nothing anybody uses: under the system's temporary directory,
/// named after the process.
fn scratch_dir_for(bundle: &Path) -> PathBuf {
    let stem = bundle
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("bundle");
    std::env::temp_dir().join(format!("heliosdb-verify-{stem}-{}", std::process::id()))
}

/// Records an event in the configured audit log (`audit_log_path`), for commands that run
/// without the subsystem (`security backup verify`, `mek change-passphrase`). The record
/// carries no MAC (the audit key is not unwrapped for it); the next record written by a
/// started subsystem covers it. Without an audit log it does nothing; a failed write is logged
/// at error level, as the key manager does.
pub async fn record_audit_event(config: &TdeConfig, event: AuditEvent) {
    audit_direct(config, event).await;
}

pub(crate) async fn audit_direct(config: &TdeConfig, event: AuditEvent) {
    // The writer's mode as a start would resolve it; a configuration too broken to resolve it
    // has already failed the command, which is what is being recorded.
    let mode = heliosdb_tde_core::SecurityMode::resolve(config.security_mode.as_deref())
        .map(|(m, _)| m)
        .unwrap_or(heliosdb_tde_core::SecurityMode::for_build(cfg!(
            debug_assertions
        )));
    super::audit::record_once(config, mode, event).await;
}

/// The newest bundle in `dir` that holds (or references) every one of `meks`, for the "lost
/// MEK" report of `security status`. `None` when there is none.
pub fn bundle_holding(dir: &Path, meks: &[MekRef]) -> Option<(PathBuf, Manifest)> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(PathBuf, Manifest)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str())
            != Some(heliosdb_tde_manager::backup::BUNDLE_EXTENSION)
        {
            continue;
        }
        let Ok(m) = heliosdb_tde_manager::backup::read_manifest(&path) else {
            continue;
        };
        let holds = meks
            .iter()
            .all(|k| m.mek_versions.iter().any(|v| v.mek == k.to_string()));
        if holds
            && best
                .as_ref()
                .is_none_or(|(_, b)| m.created_at_ms > b.created_at_ms)
        {
            best = Some((path, m));
        }
    }
    best
}
