#![doc = include_str!("../README.md")]

pub mod audit;
mod audit_key;
mod availability;
pub mod backup;
mod cache;
mod config;
mod mek;
mod mek_migration;
mod mek_rotation;
mod provider_handle;
mod sealing;
mod stats;
mod tek;

pub use audit::{AuditVerification, FileAuditSink, verify_audit_log};
pub use audit_key::reserved_table_error;
pub use availability::{KeyAvailability, MekAvailability};
pub use config::KeyManagerConfig;
pub use heliosdb_tde_rotation::{
    MigrationInfo, Phase, Progress, RotationConfig, RotationState, Verification,
};
pub use mek::key_check_entry;
pub use mek_migration::MekMigrationResult;
pub use mek_rotation::{EmergencyRotation, MekRotationResult};
pub use provider_handle::ProviderHandle;
pub use sealing::{TableSealer, UsagePolicy};
pub use stats::{CacheStats, KeyStats, ProviderStats, UsageTotals};

use cache::TekCache;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditSink, KeyId, KeyStore, MekProvider, MekRef, Result, SecurityMode,
    TableId, TableKey, TdeError, TekId, TekVersion,
};
use stats::Counters;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};

/// The key manager.
pub struct KeyManager {
    /// The MEK provider, through a handle whose calls are counted in the statistics and whose
    /// key changes are audited (`km.mek_provider.generate_mek("master_key_001", ..)`).
    pub mek_provider: ProviderHandle,
    store: Arc<dyn KeyStore>,
    audit: Option<Arc<dyn AuditSink>>,
    config: KeyManagerConfig,
    cache: TekCache,
    counters: Arc<Counters>,
    /// The active TEK version of each table seen by this process.
    active_versions: RwLock<HashMap<TableId, TekVersion>>,
    /// The MEK version new TEKs are wrapped under, once known.
    active_mek: RwLock<Option<MekRef>>,
    /// Serialises TEK creation and rotation (rare; reads never take it).
    mutations: tokio::sync::Mutex<()>,
    /// The sealing state of each table sealed by this process (its current encryptor over a
    /// reserved block of nonce budget), shared with its [`TableSealer`] handles; never removed.
    encryptors: RwLock<HashMap<TableId, Arc<sealing::TableSeal>>>,
    /// Serialises sealer creation, so that two sealers never share a reservation.
    encryptor_lock: tokio::sync::Mutex<()>,
    /// The store integrity key (held as the key check canary), once loaded.
    integrity: RwLock<Option<Arc<TableKey>>>,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("provider", &self.mek_provider.description())
            .field("store", &self.store.location())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn poisoned() -> TdeError {
    TdeError::ProviderUnavailable {
        provider: "key manager".into(),
        reason: "internal lock poisoned by a panic in another thread".into(),
        retryable: false,
    }
}

impl KeyManager {
    /// A manager over `provider` and `store`.
    pub fn new(
        provider: Arc<dyn MekProvider>,
        store: Arc<dyn KeyStore>,
        config: KeyManagerConfig,
    ) -> Result<Self> {
        if config.cache_limit == 0 {
            return Err(TdeError::config("cache_limit", "must be at least 1"));
        }
        let counters = Arc::new(Counters::default());
        let cache = TekCache::new(config.cache_limit, counters.cache_evictions.clone());
        Ok(Self {
            mek_provider: ProviderHandle::new(provider, counters.clone()),
            store,
            audit: None,
            config,
            cache,
            counters,
            active_versions: RwLock::new(HashMap::new()),
            active_mek: RwLock::new(None),
            mutations: tokio::sync::Mutex::new(()),
            encryptors: RwLock::new(HashMap::new()),
            encryptor_lock: tokio::sync::Mutex::new(()),
            integrity: RwLock::new(None),
        })
    }

    /// Sends audit events to `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.mek_provider.set_audit(sink.clone());
        self.audit = Some(sink);
        self
    }

    /// Whether an audit sink is attached.
    pub fn has_audit(&self) -> bool {
        self.audit.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &KeyManagerConfig {
        &self.config
    }

    /// The security mode.
    pub fn security_mode(&self) -> SecurityMode {
        self.config.security_mode
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Records `event` in the attached audit log, if any: for operations the embedding code
    /// performs around the manager (a restore). A failed write is logged at error level.
    pub async fn record_audit(&self, event: AuditEvent) {
        self.audit(event).await;
    }

    pub(crate) async fn audit(&self, event: AuditEvent) {
        if let Some(sink) = &self.audit
            && let Err(e) = sink.record(event).await
        {
            tracing::error!(target: "heliosdb::tde::audit", "audit record failed: {e}");
        }
    }

    /// Whether events are recorded at all (checked before building an event on a busy path).
    pub(crate) fn auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// The event of an operation's `result` (success, or failure with the error's message and
    /// kind), naming this manager's provider.
    pub(crate) fn event_of<T>(
        &self,
        action: AuditAction,
        key: Option<KeyId>,
        result: &Result<T>,
        detail: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent::outcome_of(action, key, result, detail).with_provider(self.mek_provider.kind())
    }

    /// Records the failure of an operation with `error`, naming this manager's provider.
    pub(crate) async fn audit_failure(
        &self,
        action: AuditAction,
        key: Option<KeyId>,
        error: &TdeError,
        detail: impl Into<String>,
    ) {
        if self.auditing() {
            let ev = AuditEvent::failure(action, key, error, detail)
                .with_provider(self.mek_provider.kind());
            self.audit(ev).await;
        }
    }

    /// Records the event of an operation's `result` (see [`KeyManager::event_of`]).
    pub(crate) async fn audit_result<T>(
        &self,
        action: AuditAction,
        key: Option<KeyId>,
        result: &Result<T>,
        detail: impl Into<String>,
    ) {
        if self.auditing() {
            self.audit(self.event_of(action, key, result, detail)).await;
        }
    }

    /// Awaits a provider call; [`ProviderHandle`] times it into the statistics.
    async fn call<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        f.await
    }

    /// Refuses an insecure provider in production mode; in development mode logs a warning and
    /// returns it.
    pub fn validate_security(&self) -> Result<Option<String>> {
        if self.mek_provider.is_secure() {
            return Ok(None);
        }
        let err = TdeError::InsecureProvider {
            provider: self.mek_provider.description(),
        };
        if self.config.security_mode.is_production() {
            return Err(err);
        }
        let warning = format!("{err} (running in development mode)");
        tracing::warn!(target: "heliosdb::tde", "{warning}");
        Ok(Some(warning))
    }
}

pub(crate) fn not_found(id: &TekId) -> TdeError {
    TdeError::KeyNotFound {
        key: format!("tek:{id}"),
        hint: "no such table key version in the key store".into(),
    }
}
