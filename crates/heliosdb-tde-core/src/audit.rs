//! The audit-sink trait: a record of every key-management action.
//!
//! Events carry identities, actions and outcomes; never key material or credentials.

use crate::error::Result;
use crate::ids::KeyId;
use crate::time::Timestamp;
use async_trait::async_trait;
use std::fmt;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// An MEK (version 1) was created.
    MekGenerated,
    /// A new MEK version was created.
    MekRotated,
    /// An MEK version changed lifecycle state.
    MekStateChanged,
    /// A TEK was created.
    TekCreated,
    /// A table's TEK was rotated.
    TekRotated,
    /// A TEK was unwrapped from the store (a cache miss).
    TekUnwrapped,
    /// A TEK changed lifecycle state.
    TekStateChanged,
    /// The security configuration was validated.
    SecurityValidated,
    /// A passphrase or credential was changed.
    CredentialChanged,
    /// A backup was written or restored.
    Backup,
}

impl AuditAction {
    /// A stable name for logs, for example `mek.rotated`.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::MekGenerated => "mek.generated",
            AuditAction::MekRotated => "mek.rotated",
            AuditAction::MekStateChanged => "mek.state_changed",
            AuditAction::TekCreated => "tek.created",
            AuditAction::TekRotated => "tek.rotated",
            AuditAction::TekUnwrapped => "tek.unwrapped",
            AuditAction::TekStateChanged => "tek.state_changed",
            AuditAction::SecurityValidated => "security.validated",
            AuditAction::CredentialChanged => "credential.changed",
            AuditAction::Backup => "backup",
        }
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

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub action: AuditAction,
    /// The key it concerned, if any.
    pub key: Option<KeyId>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Free-form, non-secret detail (provider, counts...).
    pub detail: String,
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
        }
    }

    /// A failed event happening now.
    pub fn failure(
        action: AuditAction,
        key: Option<KeyId>,
        error: &dyn std::error::Error,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at: Timestamp::now(),
            action,
            key,
            outcome: AuditOutcome::Failure(error.to_string()),
            detail: detail.into(),
        }
    }
}

/// Where audit events go (a tamper-evident log file, syslog, a SIEM...).
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event durably, or reports why it could not.
    async fn record(&self, event: AuditEvent) -> Result<()>;
}
