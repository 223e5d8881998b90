//! The audit key: the TEK of the reserved table [`AUDIT_TABLE`] (`_heliosdb.audit`), 32 random
//! bytes that authenticate the audit log's records. It is created, wrapped and stored like any
//! TEK (under the default MEK), so MEK rotation re-wraps it and backups carry it; its name is
//! reserved, so no user table can take it, and reserved tables are hidden from table lists and
//! counts.

use crate::KeyManager;
use heliosdb_tde_core::{AUDIT_TABLE, Result, TableId, TableKey, TdeError};
use std::sync::Arc;

/// The refusal of a user table named `_heliosdb...` (reserved for HeliosDB's own keys):
/// [`TdeError::InvalidIdentifier`].
pub fn reserved_table_error(table: &TableId) -> TdeError {
    TdeError::InvalidIdentifier {
        kind: "table id",
        value: table.to_string(),
        reason: "table names starting with _heliosdb are reserved for HeliosDB's own keys; \
                 choose another name"
            .into(),
    }
}

impl KeyManager {
    /// The newest version of the audit key (the TEK of `_heliosdb.audit`), unwrapped, or `None`
    /// if the key store has none. Read-only: it creates nothing.
    pub async fn audit_key(&self) -> Result<Option<Arc<TableKey>>> {
        match self.store.latest_tek(&TableId::audit()).await? {
            Some(rec) => Ok(Some(self.get_tek(&rec.id).await?)),
            None => Ok(None),
        }
    }

    /// Every version of the audit key that can still decrypt (active, decrypt-only or
    /// compromised), unwrapped, oldest first: what verifying a whole audit log needs. Versions
    /// deactivated or destroyed are left out (their records can no longer be authenticated).
    pub async fn audit_key_versions(&self) -> Result<Vec<Arc<TableKey>>> {
        let mut out = Vec::new();
        for rec in self.store.table_teks(&TableId::audit()).await? {
            if rec.metadata.state.can_decrypt() {
                out.push(self.get_tek(&rec.id).await?);
            }
        }
        Ok(out)
    }

    /// The audit key, created (version 1: 32 random bytes wrapped under the default MEK, one
    /// store transaction, recorded as `tek.created`) only if the key store has none. Needs a
    /// writable key store when the key does not exist yet.
    pub async fn ensure_audit_key(&self) -> Result<Arc<TableKey>> {
        if let Some(key) = self.audit_key().await? {
            return Ok(key);
        }
        match self.create_key(TableId::audit()).await {
            Ok((_, key)) => Ok(key),
            // Created meanwhile by another manager over the same store.
            Err(TdeError::AlreadyExists { .. }) => {
                self.audit_key()
                    .await?
                    .ok_or_else(|| TdeError::KeyNotFound {
                        key: format!("table {AUDIT_TABLE}"),
                        hint: "the audit key was reported to exist but is not in the key store; \
                           check the key store with `heliosdb-cli security status`"
                            .into(),
                    })
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure the audit key exists ([`KeyManager::ensure_audit_key`]) and hands it, with
    /// the key store, to the attached audit sink ([`AuditSink::attach_key`]), if there is one.
    /// Whenever the audit key later gets a new version through this manager (an emergency MEK
    /// rotation, a rotation of `_heliosdb.audit`), the new version is handed over again.
    ///
    /// [`AuditSink::attach_key`]: heliosdb_tde_core::AuditSink::attach_key
    pub async fn attach_audit_key(&self) -> Result<()> {
        let key = self.ensure_audit_key().await?;
        if let Some(sink) = &self.audit {
            sink.attach_key(key, self.store.clone()).await?;
        }
        Ok(())
    }

    /// Hands the newest audit key to the sink after it got a new version. A failure is logged
    /// at error level: the rotation that caused it is committed.
    pub(crate) async fn reattach_audit_key(&self) {
        let Some(sink) = &self.audit else {
            return;
        };
        let r = match self.audit_key().await {
            Ok(Some(key)) => sink.attach_key(key, self.store.clone()).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::error!(
                target: "heliosdb::tde::audit",
                "the audit key got a new version, but handing it to the audit sink failed: {e}"
            );
        }
    }
}
