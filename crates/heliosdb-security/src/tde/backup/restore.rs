//! `restore`: a bundle back into place with HeliosDB stopped. The new key store (and MEK
//! directory) is built and checked with the provider in scratch directories next to the
//! targets; MEK files are put in place first and the key store last, each by an atomic rename
//! or exchange, so that a crash at any moment leaves the old store or the new one, and running
//! the command again finishes. Existing data is moved aside, never deleted.

use super::{
    ScratchDir, blocking, is_secure_file, provider_for, scratch_manager, sync_dir, write_mek_files,
    write_private_file,
};
use crate::tde::TdeConfig;
use crate::tde::subsystem::TdeSubsystem;
use crate::tde::subsystem::providers::ProviderFacts;
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, KeyStore, MekProvider, Result, StoreBatch, TdeError, Timestamp,
};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};
use heliosdb_tde_manager::backup::{Bundle, Manifest};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal entry a restored store carries until its post-restore rotation is done: the
/// bundle's checksum and the time the restore began. Running `restore` again with the same
/// bundle resumes from it.
pub const RESTORE_PENDING_ENTRY: &str = "restore/pending";

/// How [`restore`] treats existing data and the post-restore rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Restore over a key store that holds keys or belongs to another store id, and over MEK
    /// files that differ from the bundle's: the existing directories are moved aside to
    /// `<dir>.pre-restore-<time>`, never deleted.
    pub force: bool,
    /// Skip the rotation of every table's active TEK after the restore (not recommended: the
    /// bundle's encryption counts may be lower than what was used after it was taken).
    pub no_rotate: bool,
}

impl RestoreOptions {
    /// The defaults: refuse to overwrite, rotate after the restore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`RestoreOptions::force`].
    pub fn with_force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Sets [`RestoreOptions::no_rotate`].
    pub fn with_no_rotate(mut self, no_rotate: bool) -> Self {
        self.no_rotate = no_rotate;
        self
    }
}

/// What [`restore`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// Table keys restored.
    pub teks: u64,
    /// Existing directories moved aside (never deleted).
    pub moved_aside: Vec<PathBuf>,
    /// MEK files put in place (secure-file provider).
    pub mek_files_added: Vec<String>,
    /// Tables whose active TEK was rotated after the restore (the audit key, also rotated, is
    /// not listed).
    pub rotated: Vec<String>,
    /// Whether this run finished an interrupted restore of the same bundle.
    pub resumed: bool,
    /// Warnings for the operator (`--no-rotate`).
    pub warnings: Vec<String>,
}

/// A fail point for crash tests of the restore: with the environment variable
/// `HELIOSDB_TEST_RESTORE_CRASH` set to a step name, a debug build sends itself SIGKILL when it
/// reaches that step (nothing runs after it: no destructor, no flush). Not compiled into
/// release builds.
fn fail_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("HELIOSDB_TEST_RESTORE_CRASH").as_deref() == Ok(step) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// `dir` with `suffix` appended to its last component (a sibling on the same filesystem).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

fn compact_now() -> String {
    Timestamp::now()
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Moves `dir` aside to a fresh `<dir>.<what>-<time>` and returns where.
fn move_aside(dir: &Path, what: &str) -> Result<PathBuf> {
    move_aside_as(dir, dir, what)
}

/// Moves `dir` to a fresh `<named>.<what>-<time>` and returns where.
fn move_aside_as(dir: &Path, named: &Path, what: &str) -> Result<PathBuf> {
    let base = sibling(named, &format!(".{what}-{}", compact_now()));
    let mut to = base.clone();
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = sibling(&base, &format!("-{n}"));
    }
    std::fs::rename(dir, &to).map_err(|e| TdeError::io(dir, e))?;
    Ok(to)
}

/// Atomically exchanges two directories (both must exist).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            a,
            rustix::fs::CWD,
            b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| TdeError::io(b, std::io::Error::from(e)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(TdeError::Unsupported {
            what: "exchanging two directories atomically".into(),
            hint: "restore over an existing directory needs Linux (renameat2); move the old \
                   directory away by hand and run the restore again"
                .into(),
        })
    }
}

/// Puts the new directory `new` at `target`: an atomic exchange when `target` exists (the old
/// one then moves aside, never deleted), a rename when it does not.
fn swap_into_place(new: &Path, target: &Path, moved: &mut Vec<PathBuf>) -> Result<()> {
    if target.exists() {
        exchange(new, target)?;
        fail_point("after-store-swap");
        // `new` now holds the old directory: it takes the target's name.
        moved.push(move_aside_as(new, target, "pre-restore")?);
    } else {
        std::fs::rename(new, target).map_err(|e| TdeError::io(target, e))?;
    }
    if let Some(parent) = target.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// What the target key store holds.
enum Target {
    /// No store file.
    Absent,
    /// A store restored from this very bundle whose post-restore step did not finish.
    Resume,
    /// A store: its id, TEK count.
    Present { id: [u8; 16], teks: u64 },
}

fn pending_value(checksum: &str, started: Timestamp) -> Vec<u8> {
    format!("{checksum} {}", started.as_millis()).into_bytes()
}

async fn inspect(store_file: &Path, checksum: &str) -> Result<Target> {
    if std::fs::symlink_metadata(store_file).is_err() {
        return Ok(Target::Absent);
    }
    let store = match RedbKeyStore::open_read_only(store_file) {
        Ok(s) => s,
        Err(TdeError::InUse { .. }) => {
            return Err(TdeError::InUse {
                what: "key store".into(),
                location: store_file.display().to_string(),
                hint: "HeliosDB (or another command) has it open: stop HeliosDB first, then run \
                       the restore again; nothing was changed"
                    .into(),
            });
        }
        Err(e) => return Err(e),
    };
    if let Some(v) = store.get_journal(RESTORE_PENDING_ENTRY).await?
        && v.starts_with(checksum.as_bytes())
    {
        return Ok(Target::Resume);
    }
    let teks = store.count_teks().await?;
    let id = match store.identity().await {
        Ok(i) => i.id,
        Err(TdeError::KeyNotFound { .. }) => [0; 16],
        Err(e) => return Err(e),
    };
    Ok(Target::Present { id, teks })
}

/// Restores the bundle at `path` into the key store and MEK locations `config` names, with
/// HeliosDB stopped (see the module documentation and `docs/operations.md`):
///
/// 1. checks the bundle (every byte) and refuses while another process holds the key store;
/// 2. refuses a target store that holds table keys or has another store id, and MEK files
///    that differ from the bundle's, unless `force`;
/// 3. builds the new store (and, for the secure-file provider, MEK directory) in scratch
///    directories next to the targets, and checks them with the provider: the key check value
///    and every TEK must unwrap (a wrong passphrase or another deployment's MEK is an error,
///    with nothing changed);
/// 4. puts MEK files in place first, the key store last (atomic renames or exchanges);
/// 5. unless `no_rotate`, rotates every table's active TEK, then clears the pending marker.
///
/// Running it again after a crash finishes the job.
pub async fn restore(
    config: &TdeConfig,
    path: &Path,
    opts: RestoreOptions,
) -> Result<RestoreReport> {
    let r = match super::refuse_during_migration(config, "restore a bundle") {
        Ok(()) => restore_inner(config, path, opts).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &r {
        super::audit_direct(
            config,
            AuditEvent::failure(
                AuditAction::BackupRestored,
                None,
                e,
                path.display().to_string(),
            ),
        )
        .await;
    }
    r
}

async fn restore_inner(
    config: &TdeConfig,
    path: &Path,
    opts: RestoreOptions,
) -> Result<RestoreReport> {
    let p = path.to_path_buf();
    let bundle = blocking(move || Bundle::open(&p)).await?;
    let manifest = bundle.manifest().clone();
    let checksum = bundle.checksum();
    let store_dir = config.key_storage_path.clone();
    let store_file = store_dir.join(STORE_FILE_NAME);
    let secure_file = is_secure_file(config)?;
    let mek_dir = config
        .secure_file_config
        .as_ref()
        .map(|f| f.storage_path.clone());
    let mut report = RestoreReport {
        manifest: manifest.clone(),
        teks: manifest.counts.teks,
        moved_aside: Vec::new(),
        mek_files_added: Vec::new(),
        rotated: Vec::new(),
        resumed: false,
        warnings: Vec::new(),
    };
    let target = inspect(&store_file, &checksum).await?;
    let mut passphrase = None;
    let mut reuse: Option<Arc<dyn MekProvider>> = None;
    if matches!(target, Target::Resume) {
        report.resumed = true;
        // A crash between the exchange of the key store directories and moving the old one
        // aside leaves the old store under the scratch name: move it aside now, kept.
        let tmp_store = sibling(&store_dir, ".restore-tmp");
        if tmp_store.exists() {
            report
                .moved_aside
                .push(move_aside_as(&tmp_store, &store_dir, "pre-restore")?);
        }
    } else {
        let bundle_id = manifest.store_id();
        let mut conflicts = Vec::new();
        if let Target::Present { id, teks } = &target {
            if *teks > 0 {
                conflicts.push(format!(
                    "the key store {} holds {teks} table keys",
                    store_file.display()
                ));
            }
            if Some(*id) != bundle_id && *id != [0; 16] {
                conflicts.push(format!(
                    "the key store {} is another store (id {}) than the bundle's ({})",
                    store_file.display(),
                    hex_id(id),
                    manifest.store.id
                ));
            }
        }
        let material = blocking({
            let p = path.to_path_buf();
            move || Bundle::open(&p)?.material()
        })
        .await?;
        let mut mek_conflict = false;
        if secure_file && let Some(dir) = &mek_dir {
            for (name, bytes) in &material {
                if let Ok(existing) = std::fs::read(dir.join(name))
                    && existing != *bytes
                {
                    mek_conflict = true;
                    conflicts.push(format!(
                        "the MEK file {} differs from the bundle's",
                        dir.join(name).display()
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !opts.force {
            return Err(TdeError::TargetExists {
                what: format!("data at the restore target ({})", conflicts.join("; ")),
                hint: "nothing was changed; pass --force to move the existing directories aside \
                       (they are never deleted)"
                    .into(),
            });
        }
        // 3. Scratch store and MEK directory next to the targets.
        let tmp_store = sibling(&store_dir, ".restore-tmp");
        if tmp_store.exists() {
            report
                .moved_aside
                .push(move_aside(&tmp_store, "restore-stale")?);
        }
        if let Some(parent) = store_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| TdeError::io(parent, e))?;
        }
        let tmp_mek = mek_dir
            .as_ref()
            .filter(|_| secure_file)
            .map(|d| sibling(d, ".restore-tmp"));
        if let Some(t) = &tmp_mek {
            if t.exists() {
                report.moved_aside.push(move_aside(t, "restore-stale")?);
            }
            if let Some(parent) = t.parent() {
                std::fs::create_dir_all(parent).map_err(|e| TdeError::io(parent, e))?;
            }
            write_mek_files(t, &material)?;
        }
        let mek_guard = tmp_mek.clone().map(ScratchDir);
        let started = Timestamp::now();
        let store = {
            let tmp_store = tmp_store.clone();
            let p = path.to_path_buf();
            let pending = pending_value(&checksum, started);
            blocking(move || {
                let store = RedbKeyStore::create_new_in_dir(&tmp_store)?;
                Bundle::open(&p)?.import_into(&store)?;
                store.apply_blocking(
                    StoreBatch::new().put_journal(RESTORE_PENDING_ENTRY, pending),
                )?;
                Ok(store)
            })
            .await
        };
        let store = match store {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // The scratch store is this command's own partial work: nothing of the
                // operator's is in it.
                let _ = std::fs::remove_dir_all(&tmp_store);
                return Err(e);
            }
        };
        fail_point("after-scratch-store");
        let checked = async {
            let (provider, pass) = provider_for(config, tmp_mek.as_deref(), None).await?;
            let (km, key_check) = scratch_manager(&provider, store.clone()).await?;
            if let Some(reason) = key_check {
                return Err(TdeError::AuthenticationFailed {
                    what: format!(
                        "the key check value of the bundle {} under the configured provider \
                         ({reason})",
                        path.display()
                    ),
                });
            }
            let trial = km.trial_unwrap_all().await?;
            if !trial.failed.is_empty() {
                return Err(TdeError::AuthenticationFailed {
                    what: format!(
                        "{} of {} table keys of the bundle {} with the configured provider \
                         (tables: {})",
                        trial.failed.len(),
                        trial.total,
                        path.display(),
                        trial.failed_tables().join(", ")
                    ),
                });
            }
            Ok((provider.provider.clone(), pass))
        }
        .await;
        drop(store);
        let (provider, pass) = match checked {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp_store);
                return Err(e);
            }
        };
        passphrase = pass;
        if !secure_file {
            reuse = Some(provider);
        } else {
            drop(provider);
        }
        // 4a. MEK files first.
        if let (Some(dir), Some(tmp)) = (&mek_dir, &tmp_mek) {
            if mek_conflict {
                // After the exchange the scratch path holds the operator's old directory,
                // which is moved aside and must never be removed by the guard.
                std::mem::forget(mek_guard);
                swap_into_place(tmp, dir, &mut report.moved_aside)?;
                report.mek_files_added = material.iter().map(|(n, _)| n.clone()).collect();
            } else {
                if !dir.exists() {
                    let mut b = std::fs::DirBuilder::new();
                    b.recursive(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::DirBuilderExt;
                        b.mode(0o700);
                    }
                    b.create(dir).map_err(|e| TdeError::io(dir, e))?;
                }
                for (name, bytes) in &material {
                    let dest = dir.join(name);
                    if dest.exists() {
                        continue;
                    }
                    let part = dir.join(format!(".{name}.restore"));
                    let _ = std::fs::remove_file(&part);
                    write_private_file(&part, bytes)?;
                    std::fs::rename(&part, &dest).map_err(|e| TdeError::io(&dest, e))?;
                    report.mek_files_added.push(name.clone());
                }
                sync_dir(dir)?;
                drop(mek_guard);
            }
        }
        fail_point("after-mek-files");
        // 4b. The key store last.
        swap_into_place(&tmp_store, &store_dir, &mut report.moved_aside)?;
        fail_point("after-store-in-place");
    }
    // 5. Start on the restored store and rotate.
    let checked = config.checked()?;
    let (mode, _) = heliosdb_tde_core::SecurityMode::resolve_configured(checked.security_mode)?;
    let provider: Arc<dyn MekProvider> = match reuse {
        Some(p) => p,
        None => {
            #[cfg(feature = "secure-file")]
            if let Some(file) = config.secure_file_config.as_ref().filter(|_| secure_file) {
                let pass = match passphrase.take() {
                    Some(p) => p,
                    None => {
                        heliosdb_tde_file::SecureFileMekProvider::resolve_passphrase(file, mode)?.0
                    }
                };
                Arc::new(
                    heliosdb_tde_file::SecureFileMekProvider::open_with_passphrase(
                        file,
                        mode,
                        pass,
                        Vec::new(),
                    )?,
                )
            } else {
                crate::tde::subsystem::build_provider(
                    &checked.provider,
                    &checked.default_mek_id,
                    mode,
                )
                .await?
                .0
            }
            #[cfg(not(feature = "secure-file"))]
            {
                let _ = (&passphrase, mode);
                crate::tde::subsystem::build_provider(
                    &checked.provider,
                    &checked.default_mek_id,
                    mode,
                )
                .await?
                .0
            }
        }
    };
    let tde = TdeSubsystem::start_with(
        config.clone(),
        checked.default_mek_id.clone(),
        false,
        provider,
        ProviderFacts::default(),
        None,
    )
    .await?;
    let km = tde.key_manager();
    let started = match km.store().get_journal(RESTORE_PENDING_ENTRY).await? {
        Some(v) => String::from_utf8_lossy(&v)
            .split(' ')
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .map(Timestamp)
            .unwrap_or_else(Timestamp::now),
        None => Timestamp::now(),
    };
    if opts.no_rotate {
        report.warnings.push(
            "the table keys were not rotated (--no-rotate): the encryption counts in the bundle \
             may be lower than what was used after it was taken, so the nonce budget of their \
             active TEKs is no longer tracked exactly. Run `heliosdb-cli security tek rotate \
             TABLE` for every table before writing much data"
                .into(),
        );
    } else {
        // The newest version of every table, created before this restore began.
        let mut latest: Vec<(heliosdb_tde_core::TableId, Timestamp)> = Vec::new();
        km.store()
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    match latest.last_mut() {
                        Some((t, c)) if *t == r.id.table => *c = r.metadata.created_at,
                        _ => latest.push((r.id.table.clone(), r.metadata.created_at)),
                    }
                }
                Ok(())
            })
            .await?;
        for (table, created) in latest {
            if created < started {
                fail_point("during-rotation");
                km.rotate_table(&table).await?;
                // The audit key is rotated like every key the bundle held, but it is no
                // user's table.
                if !table.is_reserved() {
                    report.rotated.push(table.to_string());
                }
            }
        }
    }
    km.store()
        .apply(StoreBatch::new().delete_journal(RESTORE_PENDING_ENTRY))
        .await?;
    km.record_audit(AuditEvent::success(
        AuditAction::BackupRestored,
        None,
        format!(
            "{} ({} table keys, store {}, {} tables rotated{})",
            path.display(),
            report.teks,
            manifest.store.id,
            report.rotated.len(),
            if opts.no_rotate { ", --no-rotate" } else { "" }
        ),
    ))
    .await;
    Ok(report)
}

fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
