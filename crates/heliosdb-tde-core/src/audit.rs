//! The audit-sink trait: a record of every key-management action.
//!
//! Events carry identities, actions and outcomes; never key material or credentials.

use crate::envelope::ProviderKind;
use crate::error::{Result, TdeError};
use crate::ids::KeyId;
use crate::material::TableKey;
use crate::store::KeyStore;
use crate::time::Timestamp;
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;

/// What happened. [`AuditAction::name`] is the stable name written to logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// An MEK (version 1) was created: `generate_mek` or a first start.
    MekGenerated,
    /// A rotation pass of an MEK ended (started or resumed), or failed.
    MekRotated,
    /// A rotation pass stopped because the provider was unreachable (the circuit breaker).
    MekRotationPaused,
    /// An MEK version changed lifecycle state (deactivate, reactivate, rollback, compromise).
    MekStateChanged,
    /// A TEK was created (one event per TEK, also inside batches).
    TekCreated,
    /// A table's TEK was rotated (manual, emergency or usage-triggered).
    TekRotated,
    /// A TEK was unwrapped by the provider (a cache miss).
    TekUnwrapped,
    /// A TEK changed lifecycle state.
    TekStateChanged,
    /// The security configuration was validated at a start (a production refusal is a
    /// failure).
    SecurityValidated,
    /// A passphrase or credential was changed.
    CredentialChanged,
    /// A backup bundle was written.
    BackupWritten,
    /// A backup bundle was verified.
    BackupVerified,
    /// Keys were restored from a backup bundle.
    BackupRestored,
    /// Records were lost (failed writes) or a torn last line was set aside before this record.
    AuditGap,
    /// A provider migration pass ended (started or resumed), or failed.
    MekMigrated,
    /// A provider migration pass stopped because a provider was unreachable (the circuit
    /// breaker).
    MekMigrationPaused,
    /// A provider migration was verified (every TEK under the target, a sample unwrapped).
    MekMigrationVerified,
    /// A provider migration finished: the source wraps were dropped.
    MekMigrationFinished,
    /// A provider migration was rolled back: every TEK is under the source again.
    MekMigrationRolledBack,
}

impl AuditAction {
    /// Every action, in code order.
    pub const ALL: [AuditAction; 19] = [
        AuditAction::MekGenerated,
        AuditAction::MekRotated,
        AuditAction::MekRotationPaused,
        AuditAction::MekStateChanged,
        AuditAction::TekCreated,
        AuditAction::TekRotated,
        AuditAction::TekUnwrapped,
        AuditAction::TekStateChanged,
        AuditAction::SecurityValidated,
        AuditAction::CredentialChanged,
        AuditAction::BackupWritten,
        AuditAction::BackupVerified,
        AuditAction::BackupRestored,
        AuditAction::AuditGap,
        AuditAction::MekMigrated,
        AuditAction::MekMigrationPaused,
        AuditAction::MekMigrationVerified,
        AuditAction::MekMigrationFinished,
        AuditAction::MekMigrationRolledBack,
    ];

    /// A stable name for logs, for example `mek.rotated`.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::MekGenerated => "mek.generated",
            AuditAction::MekRotated => "mek.rotated",
            AuditAction::MekRotationPaused => "mek.rotation_paused",
            AuditAction::MekStateChanged => "mek.state_changed",
            AuditAction::TekCreated => "tek.created",
            AuditAction::TekRotated => "tek.rotated",
            AuditAction::TekUnwrapped => "tek.unwrapped",
            AuditAction::TekStateChanged => "tek.state_changed",
            AuditAction::SecurityValidated => "security.validated",
            AuditAction::CredentialChanged => "credential.changed",
            AuditAction::BackupWritten => "backup.written",
            AuditAction::BackupVerified => "backup.verified",
            AuditAction::BackupRestored => "backup.restored",
            AuditAction::AuditGap => "audit.gap",
            AuditAction::MekMigrated => "mek.migrated",
            AuditAction::MekMigrationPaused => "mek.migration_paused",
            AuditAction::MekMigrationVerified => "mek.migration_verified",
            AuditAction::MekMigrationFinished => "mek.migration_finished",
            AuditAction::MekMigrationRolledBack => "mek.migration_rolled_back",
        }
    }

    /// The action with this [`name`](AuditAction::name), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the record must be durable before `record` returns: everything but
    /// `tek.unwrapped`, which a file sink may group-commit.
    pub fn is_state_changing(self) -> bool {
        self != AuditAction::TekUnwrapped
    }

    /// Whether a successful record of this action changes key state (MEKs, TEKs, credentials,
    /// a restore), so that the log's checkpoint in the key store moves with it at once. The
    /// other actions (unwraps, validations, backups written or verified, gaps) and every
    /// failure move it only with the periodic rule, so that a command that changes no key and
    /// a failed one change no byte of the key store.
    pub fn changes_key_state(self) -> bool {
        matches!(
            self,
            AuditAction::MekGenerated
                | AuditAction::MekRotated
                | AuditAction::MekRotationPaused
                | AuditAction::MekStateChanged
                | AuditAction::TekCreated
                | AuditAction::TekRotated
                | AuditAction::TekStateChanged
                | AuditAction::CredentialChanged
                | AuditAction::BackupRestored
                | AuditAction::MekMigrated
                | AuditAction::MekMigrationPaused
                | AuditAction::MekMigrationVerified
                | AuditAction::MekMigrationFinished
                | AuditAction::MekMigrationRolledBack
        )
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the action succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// It succeeded.
    Success,
    /// It failed, with the error message (which never contains key material).
    Failure(String),
}

/// One audited action. Built with [`AuditEvent::success`] or [`AuditEvent::failure`], then
/// [`with_provider`](AuditEvent::with_provider).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub action: AuditAction,
    /// The key it concerned, if any.
    pub key: Option<KeyId>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Free-form, non-secret detail (counts, reasons, paths...).
    pub detail: String,
    /// The kind of provider involved, if any.
    pub provider: Option<ProviderKind>,
    /// For a failure, the error's stable kind ([`TdeError::kind`]).
    pub error_kind: Option<&'static str>,
}

impl AuditEvent {
    /// A successful event happening now.
    pub fn success(action: AuditAction, key: Option<KeyId>, detail: impl Into<String>) -> Self {
        Self {
            at: Timestamp::now(),
            action,
            key,
            outcome: AuditOutcome::Success,
            detail: detail.into(),
            provider: None,
            error_kind: None,
        }
    }

    /// A failed event happening now, with the error's message and kind.
    pub fn failure(
        action: AuditAction,
        key: Option<KeyId>,
        error: &TdeError,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at: Timestamp::now(),
            action,
            key,
            outcome: AuditOutcome::Failure(error.to_string()),
            detail: detail.into(),
            provider: None,
            error_kind: Some(error.kind()),
        }
    }

    /// The success or failure event of an operation's result.
    pub fn outcome_of<T>(
        action: AuditAction,
        key: Option<KeyId>,
        result: &Result<T>,
        detail: impl Into<String>,
    ) -> Self {
        match result {
            Ok(_) => Self::success(action, key, detail),
            Err(e) => Self::failure(action, key, e, detail),
        }
    }

    /// The same event, naming the kind of provider involved.
    pub fn with_provider(mut self, provider: ProviderKind) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The same event, at another time.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }

    /// Whether the event succeeded.
    pub fn is_success(&self) -> bool {
        self.outcome == AuditOutcome::Success
    }
}

/// Where audit events go (a tamper-evident log file, syslog, a SIEM...).
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event durably, or reports why it could not.
    async fn record(&self, event: AuditEvent) -> Result<()>;

    /// Hands the sink the audit key (the TEK of the reserved table
    /// [`AUDIT_TABLE`](crate::AUDIT_TABLE)) to authenticate the records it writes from now on,
    /// and the key store to keep its checkpoint in. Called at start and again after the audit
    /// key gets a new version. Sinks that neither authenticate nor checkpoint ignore it (the
    /// default).
    async fn attach_key(&self, key: Arc<TableKey>, store: Arc<dyn KeyStore>) -> Result<()> {
        let _ = (key, store);
        Ok(())
    }
}
