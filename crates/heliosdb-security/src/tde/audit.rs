//! The audit log in the facade: the configured sink, the audit key handed to it at a start,
//! the `security.validated` record, verification with the key store's audit keys and
//! checkpoint, and what `key-stats` and the Security Checklist report.

use super::{Result, TdeConfig, TdeSubsystem};
use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditSink, MekProvider, ModeSource, SecurityMode, TdeError,
};
use heliosdb_tde_manager::KeyManager;
use heliosdb_tde_manager::audit::{
    AuditCheckpoint, AuditFilter, AuditFsync, AuditKeys, AuditLogOptions, AuditRecord,
    AuditVerification, AuditVerifyOptions, FileAuditSink, read_audit_tail, verify_audit_log_with,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sink options of `config` (file size, fsync policy) for a writer in `mode`.
pub(crate) fn sink_options(config: &TdeConfig, mode: SecurityMode) -> Result<AuditLogOptions> {
    let fsync: AuditFsync = config.audit_fsync.parse()?;
    Ok(AuditLogOptions::new()
        .with_max_file_bytes(config.audit_max_file_bytes)
        .with_fsync(fsync)
        .with_mode(mode))
}

/// Opens the configured audit log for writing, if one is configured.
pub(crate) fn open_sink(
    config: &TdeConfig,
    mode: SecurityMode,
) -> Result<Option<Arc<FileAuditSink>>> {
    let Some(path) = config.audit_log_path.as_ref() else {
        return Ok(None);
    };
    // FileAuditSink creates a missing directory owner-only (0700).
    Ok(Some(Arc::new(FileAuditSink::open_with(
        path,
        sink_options(config, mode)?,
    )?)))
}

/// At a writable start: hands the sink the audit key, creating it on the log's first keyed
/// start only. A log that already holds authenticated records while the key store has no
/// audit key is refused: a new key would make every earlier record unverifiable, and the store
/// was replaced or damaged.
pub(crate) async fn attach_key(km: &KeyManager, sink: &FileAuditSink) -> Result<()> {
    if km.audit_key().await?.is_none()
        && let Some(akv) = sink.last_akv_in_log()
    {
        return Err(TdeError::KeyNotFound {
            key: format!("audit key (table {})", heliosdb_tde_core::AUDIT_TABLE),
            hint: format!(
                "the audit log {} holds records authenticated with audit key version {akv}, but \
                 the key store {} has no audit key (it was replaced or the key removed); no new \
                 key was created. Restore the key store from a backup, or move the log aside \
                 (check it with `heliosdb-cli security audit verify --structure-only`) to start \
                 a new one",
                sink.path().display(),
                km.store().location()
            ),
        });
    }
    km.attach_audit_key().await
}

/// The `security.validated` record of a start: the mode and where it came from, the provider
/// and the warnings; a refusal as a failure.
pub(crate) fn validated_event(
    mode: SecurityMode,
    source: ModeSource,
    provider: &dyn MekProvider,
    warnings: &[String],
    refusal: Option<&TdeError>,
) -> AuditEvent {
    let mut detail = format!(
        "mode={} source={} provider={}",
        mode,
        source,
        provider.description()
    );
    if !warnings.is_empty() {
        detail.push_str(&format!(
            " warnings={}: {}",
            warnings.len(),
            warnings.join(" | ")
        ));
    }
    let event = match refusal {
        None => AuditEvent::success(AuditAction::SecurityValidated, None, detail),
        Some(e) => AuditEvent::failure(AuditAction::SecurityValidated, None, e, detail),
    };
    event.with_provider(provider.kind())
}

/// Records `event` in a sink opened for this one record (a start refused before the subsystem
/// exists). A failure is logged, never returned: the refusal is what the caller reports.
pub(crate) async fn record_once(config: &TdeConfig, mode: SecurityMode, event: AuditEvent) {
    match open_sink(config, mode) {
        Ok(Some(sink)) => {
            if let Err(e) = sink.record(event).await {
                tracing::error!(target: "heliosdb::tde::audit", "audit record failed: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(target: "heliosdb::tde::audit", "audit log unavailable: {e}"),
    }
}

/// The log `path` names, or the configured one.
fn log_path<'a>(tde: &'a TdeSubsystem, path: Option<&'a Path>) -> Result<&'a Path> {
    path.or(tde.config().audit_log_path.as_deref())
        .ok_or_else(|| {
            TdeError::config(
                "audit_log_path",
                "no audit log is configured; set audit_log_path or pass --path FILE",
            )
        })
}

/// Verifies the audit log (`path`, or the configured `audit_log_path`) with everything the
/// key store holds: every audit key version (unwrapped through the provider) for the MACs, and
/// the checkpoint. With `current_file_only`, only the current file is read (bounded, for the
/// Security Checklist). The first problem is an error naming its file and line.
pub async fn verify_audit(
    tde: &TdeSubsystem,
    path: Option<&Path>,
    current_file_only: bool,
) -> Result<AuditVerification> {
    let path = log_path(tde, path)?;
    let km = tde.key_manager();
    let mut keys = AuditKeys::new();
    for key in km.audit_key_versions().await? {
        keys = keys.with_version(key.id().version.get(), key);
    }
    let mut opts = AuditVerifyOptions::new().with_keys(keys);
    if let Some(c) = AuditCheckpoint::read(km.store().as_ref()).await? {
        opts = opts.with_checkpoint(c.seq, c.hash.clone(), c.mac.clone());
    }
    if current_file_only {
        opts = opts.current_file_only();
    }
    verify_audit_log_with(path, &opts)
}

/// Checks only the hash chain of the audit log at `path` and its file set: no provider, no key
/// store. It cannot tell a whole file rewritten with a recomputed chain (the MACs can).
pub fn verify_audit_structure(path: &Path) -> Result<AuditVerification> {
    verify_audit_log_with(path, &AuditVerifyOptions::new())
}

/// The newest `n` records of the audit log at `path` (oldest first) that match `filter`.
pub fn audit_tail(path: &Path, n: usize, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
    read_audit_tail(path, n, filter)
}

/// The audit section of `security key-stats` and the state the checklist judges.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStatus {
    /// The configured log.
    pub path: Option<PathBuf>,
    /// Whether this process writes to it (a read-only start does not).
    pub attached: bool,
    /// Records this process wrote since it started.
    pub written: u64,
    /// Records this process failed to write since it started.
    pub write_failures: u64,
    /// The newest sequence number this process wrote or read.
    pub last_seq: Option<u64>,
    /// The checkpoint in the key store (its sequence number).
    pub checkpoint: Option<u64>,
    /// Records another writer lost that no `audit.gap` record accounts for yet.
    pub lost_pending: u64,
}

/// The audit log's state for `security key-stats`.
pub async fn audit_status(tde: &TdeSubsystem) -> Result<AuditStatus> {
    let checkpoint = AuditCheckpoint::read(tde.key_manager().store().as_ref()).await?;
    let stats = tde.audit_sink().map(|s| s.stats());
    let last_seq = match (&stats, tde.config().audit_log_path.as_ref()) {
        (Some(s), _) => Some(s.last_seq),
        // A process that does not write the log (a read-only command) reads its last record.
        (None, Some(path)) if path.exists() => read_audit_tail(path, 1, &AuditFilter::new())?
            .last()
            .map(|r| r.seq),
        (None, _) => None,
    };
    Ok(AuditStatus {
        path: tde.config().audit_log_path.clone(),
        attached: stats.is_some(),
        written: stats.as_ref().map_or(0, |s| s.written),
        write_failures: stats.as_ref().map_or(0, |s| s.write_failures),
        last_seq,
        checkpoint: checkpoint.as_ref().map(|c| c.seq),
        lost_pending: checkpoint.as_ref().map_or(0, |c| c.lost),
    })
}

/// The Security Checklist's "Audit logging enabled": a log is configured (and, in a writing
/// process, attached), no write failed since start, no lost records are unaccounted for, and
/// the current file verifies up to the checkpoint.
pub(crate) async fn checklist_item(tde: &TdeSubsystem) -> std::result::Result<String, String> {
    let Some(path) = tde.config().audit_log_path.as_ref() else {
        return Err("no audit log: set audit_log_path (or HELIOSDB_TDE_AUDIT_LOG_PATH)".into());
    };
    let status = audit_status(tde).await.map_err(|e| e.to_string())?;
    if status.write_failures > 0 {
        return Err(format!(
            "{} audit records could not be written since this process started (see the error \
             log); fix the cause (disk full? permissions on {}?) and restart",
            status.write_failures,
            path.display()
        ));
    }
    if status.lost_pending > 0 {
        return Err(format!(
            "{} audit records were lost by a writer that could not append to {}; the next \
             successful write records them as an audit.gap",
            status.lost_pending,
            path.display()
        ));
    }
    let v = verify_audit(tde, None, true)
        .await
        .map_err(|e| e.to_string())?;
    let mut msg = format!(
        "{} verified: the current file's {} records (up to {}){}",
        path.display(),
        v.lines,
        v.last_seq,
        match status.checkpoint {
            Some(c) => format!(", checkpoint {c} reached"),
            None => String::new(),
        }
    );
    if v.unauthenticated_tail > 0 {
        msg.push_str(&format!(
            "; the last {} records were written without the audit key (a command run without \
             the database) and are covered by the next authenticated one",
            v.unauthenticated_tail
        ));
    }
    Ok(msg)
}
