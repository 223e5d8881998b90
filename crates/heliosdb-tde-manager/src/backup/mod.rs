//! Key backup bundles (`docs/formats/backup-bundle.md`): [`KeyManager::backup`] writes one from
//! a single read transaction of the key store while the database serves traffic; [`Bundle`]
//! opens one and checks every byte before anything in it is used; [`KeyManager::trial_unwrap_all`]
//! proves that every TEK of a store (a bundle loaded into a scratch store) unwraps.

mod format;
mod manifest;

pub use format::{
    CheckedBundle, EntryVisitor, FORMAT_VERSION, MAGIC, MAX_NAME, MAX_VALUE, Section, check,
};
pub use manifest::{
    Counts, Manifest, MekVersionEntry, ProviderSection, SectionDigest, Sections, StoreSection,
};

use crate::KeyManager;
use format::{Hashing, copy_exact, put_entry, put_header, put_section_header};
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, ExportItem, ImportItem, KeyStore, MekRef, Result, TdeError, TekId,
    Timestamp, WrapContext,
};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name extension of a bundle.
pub const BUNDLE_EXTENSION: &str = "hbk";

/// What [`KeyManager::backup`] wrote.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackupReport {
    /// The bundle file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The bundle file name `--out-dir` uses: `heliosdb-keys-<store id>-<UTC time>.hbk`.
pub fn bundle_file_name(store_id_hex: &str, at: Timestamp) -> String {
    let t: String = at
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("heliosdb-keys-{store_id_hex}-{t}.{BUNDLE_EXTENSION}")
}

/// An opened bundle whose every byte was checked ([`check`]): read its manifest, load it into
/// an empty store, or take its provider material.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    file: File,
    checked: CheckedBundle,
    trailer: [u8; 32],
}

impl Bundle {
    /// Opens and checks `path`. Any damage is [`TdeError::Corrupt`] naming the section and
    /// the byte offset.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| TdeError::io(path, e))?;
        let total = file.metadata().map_err(|e| TdeError::io(path, e))?.len();
        let loc = path.display().to_string();
        let checked = check(&mut file, total, &loc)?;
        let mut trailer = [0u8; 32];
        file.seek(SeekFrom::Start(total - 32))
            .and_then(|_| std::io::Read::read_exact(&mut file, &mut trailer))
            .map_err(|e| TdeError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            checked,
            trailer,
        })
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.checked.manifest
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bundle's own checksum (its last 32 bytes), hex: names this exact bundle.
    pub fn checksum(&self) -> String {
        hex::encode(self.trailer)
    }

    fn loc(&self) -> String {
        self.path.display().to_string()
    }

    /// Visits every TEK entry (store key, record bytes), in order.
    pub fn for_each_tek(&mut self, visit: &mut format::EntryVisitor<'_>) -> Result<()> {
        let loc = self.loc();
        format::walk(&mut self.file, &self.checked, Section::Teks, &loc, visit)
    }

    /// The provider material: (file name, bytes) of each MEK file, for a file provider.
    pub fn material(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let loc = self.loc();
        let mut out = Vec::new();
        format::walk(
            &mut self.file,
            &self.checked,
            Section::Material,
            &loc,
            &mut |name, value| {
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| safe_file_name(n))
                    .ok_or_else(|| {
                        TdeError::corrupt(
                            "backup bundle",
                            loc.clone(),
                            "section material: an entry's file name is not a plain file name",
                        )
                    })?;
                out.push((name.to_string(), value.to_vec()));
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Loads the bundle's records and journal into `store`, which must be empty, in one
    /// transaction, with the bundle's store identity. Blocking. Returns the TEK count.
    pub fn import_into(&mut self, store: &dyn KeyStore) -> Result<u64> {
        let id = self.manifest().store_id().ok_or_else(|| {
            TdeError::corrupt(
                "backup bundle",
                self.loc(),
                "section manifest: the store id is not 32 hex digits",
            )
        })?;
        let identity = heliosdb_tde_core::StoreIdentity::new(id, self.manifest().store.generation);
        // Records are streamed from the file (read by a second thread) into the store's one
        // transaction, so memory stays bounded.
        let loc = self.loc();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Option<ImportItem>>>(1024);
        let path = self.path.clone();
        std::thread::scope(|scope| {
            let checked = &self.checked;
            let loc2 = loc.clone();
            let producer = scope.spawn(move || {
                let mut file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(TdeError::io(&path, e)));
                        return;
                    }
                };
                let stopped = || TdeError::Unsupported {
                    what: "reading the bundle after the import stopped".into(),
                    hint: "see the import's own error".into(),
                };
                let r = format::walk(&mut file, checked, Section::Teks, &loc2, &mut |k, v| {
                    tx.send(Ok(Some(ImportItem::Tek {
                        key: k.to_vec(),
                        value: v.to_vec(),
                    })))
                    .map_err(|_| stopped())
                })
                .and_then(|()| {
                    format::walk(&mut file, checked, Section::Journal, &loc2, &mut |n, v| {
                        let name = String::from_utf8(n.to_vec()).map_err(|_| {
                            TdeError::corrupt(
                                "backup bundle",
                                loc2.clone(),
                                "section journal: an entry name is not UTF-8",
                            )
                        })?;
                        tx.send(Ok(Some(ImportItem::Journal {
                            name,
                            value: v.to_vec(),
                        })))
                        .map_err(|_| stopped())
                    })
                });
                let _ = tx.send(r.map(|()| None));
            });
            let mut done = false;
            let result = store.import_blocking(identity, &mut || {
                if done {
                    return Ok(None);
                }
                match rx.recv() {
                    Ok(Ok(Some(item))) => Ok(Some(item)),
                    Ok(Ok(None)) => {
                        done = true;
                        Ok(None)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(TdeError::corrupt(
                        "backup bundle",
                        loc.clone(),
                        "reading it stopped early",
                    )),
                }
            });
            drop(rx);
            let _ = producer.join();
            result
        })
    }
}

/// Whether `name` is a plain file name (no directory part, not hidden, printable).
fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Opens and checks a bundle and returns its manifest (every checksum, the framing and the
/// counts; record contents are checked when they are loaded into a store).
pub fn verify_bundle_structure(path: &Path) -> Result<Manifest> {
    Ok(Bundle::open(path)?.checked.manifest)
}

/// The newest bundle in `dir` (by the time in its manifest) among the `*.hbk` files whose
/// header and manifest can be read; `None` if there is none. Damaged files are skipped here:
/// [`verify_bundle_structure`] reports them.
pub fn newest_bundle(dir: &Path) -> Result<Option<(PathBuf, Manifest)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TdeError::io(dir, e)),
    };
    let mut best: Option<(PathBuf, Manifest)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| TdeError::io(dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(BUNDLE_EXTENSION) {
            continue;
        }
        let Ok(manifest) = read_manifest(&path) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|(_, b)| manifest.created_at_ms > b.created_at_ms)
        {
            best = Some((path, manifest));
        }
    }
    Ok(best)
}

/// Reads only the header and the manifest of a bundle (no checksum over the rest).
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    use std::io::Read;
    let loc = path.display().to_string();
    let bad = |d: &str| TdeError::corrupt("backup bundle", loc.clone(), d.to_string());
    let mut f = File::open(path).map_err(|e| TdeError::io(path, e))?;
    let mut head = [0u8; 21];
    f.read_exact(&mut head)
        .map_err(|_| bad("header at byte 0: the file is too short"))?;
    if head[..8] != MAGIC || head[12] != Section::Manifest as u8 {
        return Err(bad("header at byte 0: not a HeliosDB key backup bundle"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[13..21]);
    let len = u64::from_be_bytes(len);
    if len > MAX_VALUE as u64 {
        return Err(bad("section manifest at byte 12: implausibly large"));
    }
    let mut json = Vec::new();
    f.take(len)
        .read_to_end(&mut json)
        .map_err(|e| TdeError::io(path, e))?;
    serde_json::from_slice(&json).map_err(|e| bad(&format!("section manifest at byte 21: {e}")))
}

/// What one pass over the store gathered while spooling its records.
struct Spooled {
    summary: heliosdb_tde_core::ExportSummary,
    tables: u64,
    needs: BTreeMap<MekRef, u64>,
    teks: SectionDigest,
    journal: SectionDigest,
}

/// A file removed when dropped unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn create_private(path: &Path) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| TdeError::io(path, e))
}

/// A temporary name next to `base` in `dir`, unique in this process (and across processes by
/// the process id); files are created with `create_new`, so a clash is an error, never a
/// shared file.
fn temp_name(dir: &Path, base: &str, what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".{base}.{what}-{}-{n}", std::process::id()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TdeError::io(dir, e))
}

/// Streams the store's export into `spool` (TEK entries, then journal entries), gathering the
/// manifest's numbers on the way. Blocking.
fn spool_export(store: &dyn KeyStore, spool: File) -> Result<(Spooled, File)> {
    let loc = store.location();
    let mut out = Hashing::new(BufWriter::with_capacity(256 * 1024, spool));
    let mut needs: BTreeMap<MekRef, u64> = BTreeMap::new();
    let mut tables = 0u64;
    let mut last_table: Option<heliosdb_tde_core::TableId> = None;
    let mut teks: Option<SectionDigest> = None;
    let io = |e: std::io::Error| TdeError::io(&loc, e);
    let summary = store.export_blocking(&mut |item| {
        match item {
            ExportItem::Tek { key, value, record } => {
                // HeliosDB's own keys (the audit key) are no user's table.
                if !record.id.table.is_reserved() && last_table.as_ref() != Some(&record.id.table) {
                    tables += 1;
                    last_table = Some(record.id.table.clone());
                }
                for w in std::iter::once(&record.wrapped).chain(record.previous_wrap.as_ref()) {
                    *needs.entry(w.mek.clone()).or_insert(0) += 1;
                }
                put_entry(&mut out, key, value).map_err(io)?;
            }
            ExportItem::Journal { name, value } => {
                if teks.is_none() {
                    teks = Some(finish_section(&mut out));
                }
                put_entry(&mut out, name.as_bytes(), value).map_err(io)?;
            }
            other => {
                return Err(TdeError::Unsupported {
                    what: format!("backing up {other:?}"),
                    hint: "upgrade heliosdb-tde-manager".into(),
                });
            }
        }
        Ok(())
    })?;
    let teks = match teks {
        Some(t) => t,
        None => finish_section(&mut out),
    };
    let journal = finish_section(&mut out);
    out.flush().map_err(io)?;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| TdeError::io(&loc, e.into_error()))?;
    Ok((
        Spooled {
            summary,
            tables,
            needs,
            teks,
            journal,
        },
        file,
    ))
}

/// Closes the section being hashed: its digest, and a fresh hash for the next.
fn finish_section<W: Write>(h: &mut Hashing<W>) -> SectionDigest {
    let hash = std::mem::take(&mut h.hash);
    let d = SectionDigest {
        length: h.written,
        sha256: hex::encode(hash.finalize()),
    };
    h.written = 0;
    d
}

impl KeyManager {
    /// Writes a backup bundle of the key store to `out` (`docs/formats/backup-bundle.md`):
    /// every TEK record and journal entry as of one read transaction, the provider's material
    /// for every MEK version they need (MEK files for the secure-file provider, references for
    /// the others), and checksums. Safe while pages are sealed, keys are created and a rotation
    /// runs in this process: the snapshot is consistent by construction, and MEK versions are
    /// only ever added, so reading them afterwards finds every one it needs.
    ///
    /// The file is written mode 0600 through a temporary file, fsync and rename. An existing
    /// `out` is [`TdeError::AlreadyExists`] unless `overwrite`. The bundle holds no key in the
    /// clear and no credential. Recorded in the audit log (`backup.written`).
    pub async fn backup(&self, out: &Path, overwrite: bool) -> Result<BackupReport> {
        let r = self.backup_inner(out, overwrite).await;
        let event = backup_written_event(&r, out).with_provider(self.mek_provider.kind());
        self.audit(event).await;
        r
    }

    async fn backup_inner(&self, out: &Path, overwrite: bool) -> Result<BackupReport> {
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                TdeError::config("out", format!("{} is not a file path", out.display()))
            })?
            .to_string();
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(TdeError::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the directory for the backup does not exist; create it first",
                ),
            ));
        }
        if !overwrite && fs::symlink_metadata(out).is_ok() {
            return Err(exists(out));
        }
        // 1. The store's records and journal, spooled to a private temporary file.
        let spool_path = temp_name(&dir, &name, "spool");
        let spool_guard = TempFile {
            path: spool_path.clone(),
            keep: false,
        };
        let spool = create_private(&spool_path)?;
        let store = Arc::clone(self.store());
        let (spooled, mut spool) =
            tokio::task::spawn_blocking(move || spool_export(store.as_ref(), spool))
                .await
                .map_err(|e| TdeError::ProviderUnavailable {
                    provider: "backup".into(),
                    reason: format!("the export task failed: {e}"),
                    retryable: false,
                })??;
        // 2. The provider material for every version the records need, and every usable
        //    version of the default MEK (the key check value and new keys use it).
        let mut versions: Vec<MekRef> = spooled.needs.keys().cloned().collect();
        match self
            .mek_provider
            .mek_info(&self.config.default_mek_id)
            .await
        {
            Ok(info) => {
                for v in info.versions {
                    if v.state.can_decrypt() && !versions.contains(&v.mek) {
                        versions.push(v.mek);
                    }
                }
            }
            Err(TdeError::KeyNotFound { .. }) if spooled.summary.teks == 0 => {}
            Err(e) => return Err(e),
        }
        versions.sort();
        let items = self.mek_provider.backup_material(&versions).await?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut mek_versions = Vec::with_capacity(items.len());
        for item in items {
            let file = item.file.as_ref().map(|(n, _)| n.clone());
            if let Some(f) = item.file {
                files.push(f);
            }
            mek_versions.push(MekVersionEntry {
                mek: item.mek.to_string(),
                teks: spooled.needs.get(&item.mek).copied().unwrap_or(0),
                reference: item.reference,
                file,
            });
        }
        for v in &versions {
            if !mek_versions.iter().any(|m| m.mek == v.to_string()) {
                return Err(TdeError::ProviderUnavailable {
                    provider: self.mek_provider.description(),
                    reason: format!("it gave no backup material for {v}"),
                    retryable: false,
                });
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.dedup_by(|a, b| a.0 == b.0);
        let mut material = Vec::new();
        for (n, b) in &files {
            put_entry(&mut material, n.as_bytes(), b).map_err(|e| TdeError::io(out, e))?;
        }
        let now = Timestamp::now();
        let manifest = Manifest {
            format: u32::from(FORMAT_VERSION),
            created_at: now.to_string(),
            created_at_ms: now.as_millis(),
            heliosdb_version: env!("CARGO_PKG_VERSION").to_string(),
            store: StoreSection {
                id: spooled.summary.identity.id_hex(),
                generation: spooled.summary.identity.generation,
                location: self.store().location(),
            },
            provider: ProviderSection {
                kind: provider_kind_name(self.mek_provider.kind()),
                location: self.mek_provider.description(),
            },
            default_mek: self.config.default_mek_id.to_string(),
            mek_versions,
            counts: Counts {
                teks: spooled.summary.teks,
                tables: spooled.tables,
                journal: spooled.summary.journal,
                material: files.len() as u64,
            },
            sections: Sections {
                teks: spooled.teks.clone(),
                journal: spooled.journal.clone(),
                material: SectionDigest {
                    length: material.len() as u64,
                    sha256: format::sha256_hex(&material),
                },
            },
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| TdeError::Unsupported {
            what: format!("writing the backup manifest: {e}"),
            hint: "report this as a bug".into(),
        })?;
        // 3. The bundle: header, manifest, the spooled sections, material, trailer.
        let tmp_path = temp_name(&dir, &name, "tmp");
        let mut tmp_guard = TempFile {
            path: tmp_path.clone(),
            keep: false,
        };
        let tmp = create_private(&tmp_path)?;
        let spool_len = spooled.teks.length + spooled.journal.length;
        let manifest_clone = manifest.clone();
        let tmp_path2 = tmp_path.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<(u64, File)> {
            let io = |e: std::io::Error| TdeError::io(&tmp_path2, e);
            let mut w = Hashing::new(BufWriter::with_capacity(256 * 1024, tmp));
            put_header(&mut w).map_err(io)?;
            put_section_header(&mut w, Section::Manifest, json.len() as u64).map_err(io)?;
            w.write_all(&json).map_err(io)?;
            spool.seek(SeekFrom::Start(0)).map_err(io)?;
            let mut spool = std::io::BufReader::with_capacity(256 * 1024, spool);
            put_section_header(&mut w, Section::Teks, manifest_clone.sections.teks.length)
                .map_err(io)?;
            copy_exact(&mut spool, &mut w, manifest_clone.sections.teks.length).map_err(io)?;
            put_section_header(
                &mut w,
                Section::Journal,
                manifest_clone.sections.journal.length,
            )
            .map_err(io)?;
            copy_exact(
                &mut spool,
                &mut w,
                spool_len - manifest_clone.sections.teks.length,
            )
            .map_err(io)?;
            put_section_header(&mut w, Section::Material, material.len() as u64).map_err(io)?;
            w.write_all(&material).map_err(io)?;
            let digest = std::mem::take(&mut w.hash).finalize();
            let total = w.written + 32;
            let mut file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
            file.write_all(&digest).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok((total, file))
        })
        .await
        .map_err(|e| TdeError::ProviderUnavailable {
            provider: "backup".into(),
            reason: format!("the write task failed: {e}"),
            retryable: false,
        })??
        .0;
        // 4. Into place: without `overwrite`, a hard link never replaces a file that appeared
        //    meanwhile; with it, a rename replaces it atomically.
        if overwrite {
            fs::rename(&tmp_path, out).map_err(|e| TdeError::io(out, e))?;
        } else {
            match fs::hard_link(&tmp_path, out) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(exists(out));
                }
                Err(e) => return Err(TdeError::io(out, e)),
            }
        }
        tmp_guard.keep = overwrite;
        drop(tmp_guard);
        drop(spool_guard);
        sync_dir(&dir)?;
        Ok(BackupReport {
            path: out.to_path_buf(),
            manifest,
            bytes,
        })
    }

    /// Unwraps every TEK of the key store through the provider (never through the cache, and
    /// caching nothing), and returns the ones that fail with the reason. For a store loaded
    /// from a bundle: proves that the bundle can be restored with this provider. The integrity
    /// key must be loaded first ([`KeyManager::check_default_mek`]), so that every record read
    /// is authenticated.
    pub async fn trial_unwrap_all(&self) -> Result<TrialUnwraps> {
        let mut report = TrialUnwraps::default();
        let mut pages = self.store().tek_pages(None, 1024);
        while let Some(page) = pages.next_page().await? {
            for r in page {
                report.total += 1;
                let got = self
                    .mek_provider
                    .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id))
                    .await;
                if let Err(e) = got {
                    report
                        .failed
                        .push((r.id, r.wrapped.mek.to_string(), e.to_string()));
                }
            }
        }
        Ok(report)
    }
}

/// The refusal to write a bundle over an existing file.
fn exists(out: &Path) -> TdeError {
    TdeError::TargetExists {
        what: format!("the backup file {}", out.display()),
        hint: "nothing was written; pass --force to overwrite it, or choose another name".into(),
    }
}

/// The audit event of a backup to `out` (`backup.written`), for its success or its failure.
pub fn backup_written_event(r: &Result<BackupReport>, out: &Path) -> AuditEvent {
    match r {
        Ok(rep) => AuditEvent::success(
            AuditAction::BackupWritten,
            None,
            format!(
                "{} ({} table keys, store generation {})",
                rep.path.display(),
                rep.manifest.counts.teks,
                rep.manifest.store.generation
            ),
        ),
        Err(e) => AuditEvent::failure(
            AuditAction::BackupWritten,
            None,
            e,
            out.display().to_string(),
        ),
    }
}

/// The result of [`KeyManager::trial_unwrap_all`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TrialUnwraps {
    /// TEKs tried.
    pub total: u64,
    /// Those that did not unwrap: TEK, MEK version, reason.
    pub failed: Vec<(TekId, String, String)>,
}

impl TrialUnwraps {
    /// The user tables with at least one TEK that did not unwrap, in order, once each (a
    /// failed audit key is among the failed keys, but it is no user's table).
    pub fn failed_tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (id, _, _) in self
            .failed
            .iter()
            .filter(|(id, _, _)| !id.table.is_reserved())
        {
            let t = id.table.to_string();
            if out.last() != Some(&t) {
                out.push(t);
            }
        }
        out
    }
}

fn provider_kind_name(k: heliosdb_tde_core::ProviderKind) -> String {
    use heliosdb_tde_core::ProviderKind as P;
    match k {
        P::InMemory => "in_memory",
        P::SecureFile => "secure_file",
        P::Pkcs11 => "pkcs11",
        P::Vault => "vault",
        P::AwsKms => "aws_kms",
        P::AzureKeyVault => "azure_kv",
        _ => "other",
    }
    .to_string()
}
