//! The persisted rotation journal.

use heliosdb_tde_core::{MekId, MekRef, Result, TdeError, TekId, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The journal format this crate writes.
pub const JOURNAL_FORMAT: u32 = 1;
/// At most this many failed keys are kept with their errors (all are counted).
pub const MAX_FAILED_KEPT: usize = 1000;

/// Where a rotation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Recorded; the provider may or may not have created the new version yet.
    Preparing,
    /// The new version exists and wraps new TEKs.
    NewMekReady,
    /// Existing TEKs are being re-wrapped (see the cursor).
    Rewrapping,
    /// Both versions are valid; the grace period runs.
    DualActive,
    /// No TEK depends on the old version alone.
    Verified,
    /// The old version is deactivated. Final.
    OldDeactivated,
    /// A rollback is restoring the old version.
    RollingBack,
    /// The rollback finished. Final.
    RolledBack,
    /// A provider migration finished: the source's wraps are dropped. Final.
    Migrated,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Preparing => "preparing",
            Phase::NewMekReady => "new-mek-ready",
            Phase::Rewrapping => "rewrapping",
            Phase::DualActive => "dual-active",
            Phase::Verified => "verified",
            Phase::OldDeactivated => "old-mek-deactivated",
            Phase::RollingBack => "rolling-back",
            Phase::RolledBack => "rolled-back",
            Phase::Migrated => "migrated",
        })
    }
}

/// The journal entry of one rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RotationState {
    /// Journal format version.
    pub format: u32,
    /// The MEK being rotated.
    pub mek_id: MekId,
    /// Where the rotation is.
    pub phase: Phase,
    /// The version being replaced.
    pub old: MekRef,
    /// The replacement, once created.
    pub new: Option<MekRef>,
    /// An emergency rotation (the old version is marked compromised).
    pub emergency: bool,
    /// When the rotation started.
    pub started_at: Timestamp,
    /// The last TEK handled by the current pass (resume point).
    pub cursor: Option<TekId>,
    /// TEKs re-wrapped under the new version so far.
    pub reencrypted: u64,
    /// Keys of the last pass that failed, with the error (at most 1000 kept).
    pub failed: Vec<(String, String)>,
    /// How many keys of the last pass failed.
    pub failed_total: u64,
    /// When the old version may be deactivated.
    pub grace_until: Option<Timestamp>,
    /// When verification found no stranded TEK.
    pub verified_at: Option<Timestamp>,
    /// When the rotation ended (deactivated or rolled back).
    pub finished_at: Option<Timestamp>,
    /// Set when this journal is a provider migration rather than a rotation: `old` is the
    /// source provider's MEK version and `new` the target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationInfo>,
}

/// What a provider migration's journal records beyond a rotation's (see
/// [`RotationState::migration`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationInfo {
    /// The source provider's kind (`secure-file`, `pkcs11-hsm`...).
    pub source_provider: String,
    /// The target provider's kind.
    pub target_provider: String,
}

impl MigrationInfo {
    /// A migration from a `source` provider kind to a `target` one.
    pub fn new(source: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            source_provider: source.into(),
            target_provider: target.into(),
        }
    }
}

impl RotationState {
    pub(crate) fn new(mek_id: MekId, old: MekRef, emergency: bool) -> Self {
        Self {
            format: JOURNAL_FORMAT,
            mek_id,
            phase: Phase::Preparing,
            old,
            new: None,
            emergency,
            started_at: Timestamp::now(),
            cursor: None,
            reencrypted: 0,
            failed: Vec::new(),
            failed_total: 0,
            grace_until: None,
            verified_at: None,
            finished_at: None,
            migration: None,
        }
    }

    /// Whether this journal is a provider migration.
    pub fn is_migration(&self) -> bool {
        self.migration.is_some()
    }

    /// Whether a TEK wrapped under `mek` is one this journal moves to the new MEK: under the
    /// old version for a rotation, under any version of the source MEK for a migration (a
    /// migration leaves nothing behind in the source provider).
    pub fn moves(&self, mek: &MekRef) -> bool {
        if self.is_migration() {
            mek.id == self.old.id
        } else {
            *mek == self.old
        }
    }

    /// "MEK rotation" or "MEK migration", for messages.
    pub fn what(&self) -> &'static str {
        if self.is_migration() {
            "MEK migration"
        } else {
            "MEK rotation"
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a journal entry; `location` names the store in errors.
    pub fn decode(bytes: &[u8], location: &str) -> Result<Self> {
        let st: Self = serde_json::from_slice(bytes)
            .map_err(|e| TdeError::corrupt("rotation journal", location, e.to_string()))?;
        if st.format != JOURNAL_FORMAT {
            return Err(TdeError::corrupt(
                "rotation journal",
                location,
                format!(
                    "journal format {} is not supported; upgrade HeliosDB",
                    st.format
                ),
            ));
        }
        Ok(st)
    }

    /// The new version; an error before it exists.
    pub fn new_mek(&self) -> Result<MekRef> {
        self.new.clone().ok_or_else(|| TdeError::InvalidKeyState {
            key: format!("rotation of mek:{}", self.mek_id),
            state: heliosdb_tde_core::KeyState::Active,
            operation: "continue".into(),
            hint: "the new MEK version does not exist yet; run the rotation again".into(),
        })
    }

    pub(crate) fn record_failure(&mut self, id: &TekId, e: &TdeError) {
        self.failed_total += 1;
        if self.failed.len() < MAX_FAILED_KEPT {
            self.failed.push((format!("tek:{id}"), e.to_string()));
        }
    }
}
