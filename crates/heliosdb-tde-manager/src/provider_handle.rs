//! [`ProviderHandle`]: the key manager's MEK provider, reachable from outside only through
//! calls that are timed into the statistics and, when they change key state, audited.

use crate::stats::Counters;
use heliosdb_tde_core::{
    AsMekId, AuditAction, AuditEvent, AuditSink, EncryptionAlgorithm, KeyId, KeyState, MekId,
    MekInfo, MekProvider, MekRef, MekVersion, MekVersionInfo, ProviderHealth, ProviderKind, Result,
    TableKey, TdeError, WrapContext, WrappedTek,
};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The MEK provider of a [`crate::KeyManager`] (`km.mek_provider`).
///
/// It offers what an application may do with the provider directly: describe it, read MEK
/// information, check its health and generate an MEK. Every call is counted in
/// [`crate::KeyManager::key_stats`], and generating an MEK is recorded in the audit log. Wrapping,
/// unwrapping, rotating and state changes go through the [`crate::KeyManager`] methods, which
/// keep the key store, the cache and the audit log consistent; the raw provider is not handed
/// out.
pub struct ProviderHandle {
    provider: Arc<dyn MekProvider>,
    counters: Arc<Counters>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("provider", &self.provider.description())
            .field("audited", &self.audit.is_some())
            .finish()
    }
}

impl ProviderHandle {
    pub(crate) fn new(provider: Arc<dyn MekProvider>, counters: Arc<Counters>) -> Self {
        Self {
            provider,
            counters,
            audit: None,
        }
    }

    pub(crate) fn set_audit(&mut self, sink: Arc<dyn AuditSink>) {
        self.audit = Some(sink);
    }

    /// The provider itself, for the crate's own orchestration (rotation).
    pub(crate) fn provider(&self) -> &Arc<dyn MekProvider> {
        &self.provider
    }

    async fn timed<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let r = f.await;
        self.counters.provider_call(start.elapsed(), r.is_ok());
        r
    }

    /// Which family of provider this is.
    pub fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }

    /// A human-readable description, for example `In-Memory (INSECURE - testing only)`.
    pub fn description(&self) -> String {
        self.provider.description()
    }

    /// Whether the provider is fit for production.
    pub fn is_secure(&self) -> bool {
        self.provider.is_secure()
    }

    /// Describes an MEK and its versions ([`TdeError::KeyNotFound`] if the id is unknown).
    pub async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        self.timed(self.provider.mek_info(mek_id)).await
    }

    /// Every MEK id the provider holds.
    pub async fn list_meks(&self) -> Result<Vec<MekId>> {
        self.timed(self.provider.list_meks()).await
    }

    /// Checks that the provider is reachable and usable.
    pub async fn health(&self) -> Result<ProviderHealth> {
        self.timed(self.provider.health()).await
    }

    /// What a backup bundle records for each of `meks` (references, and the MEK files of a
    /// file provider); see [`MekProvider::backup_material`].
    pub async fn backup_material(
        &self,
        meks: &[heliosdb_tde_core::MekRef],
    ) -> Result<Vec<heliosdb_tde_core::MekBackupItem>> {
        self.timed(self.provider.backup_material(meks)).await
    }

    /// Makes sure MEK `mek_id` exists: generates version 1 inside the provider if the provider
    /// does not hold it, and otherwise returns its active version unchanged. The id may be a
    /// [`MekId`] or a string (`"master_key_001"`), validated here.
    ///
    /// A generated MEK is recorded in the audit log as `mek.generated`, and so is a failure to
    /// generate it; an MEK that already existed is neither regenerated nor replaced (and
    /// nothing is recorded). An existing MEK without an active version
    /// is [`TdeError::InvalidKeyState`].
    pub async fn generate_mek(
        &self,
        mek_id: &(impl AsMekId + ?Sized),
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        let id = mek_id.as_mek_id()?;
        let generated = self.timed(self.provider.generate_mek(&id, algorithm)).await;
        match generated {
            // Nothing was generated and nothing failed: the MEK is there already.
            Err(TdeError::AlreadyExists { .. }) => {
                let info = self.mek_info(&id).await?;
                let active = info.active_version();
                match info.versions.iter().find(|v| Some(v.mek.version) == active) {
                    Some(v) => Ok(v.clone()),
                    None => Err(TdeError::InvalidKeyState {
                        key: format!("mek:{id}"),
                        state: info
                            .versions
                            .last()
                            .map_or(KeyState::Deactivated, |v| v.state),
                        operation: "use as the active MEK".into(),
                        hint: "no version of this MEK is active; rotate it or reactivate a \
                               version"
                            .into(),
                    }),
                }
            }
            other => {
                self.record_generated(&id, &other).await;
                other
            }
        }
    }

    /// Generates version 1 of a new MEK ([`TdeError::AlreadyExists`] if it exists), timed and
    /// audited.
    pub(crate) async fn generate_new(
        &self,
        id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        let r = self.timed(self.provider.generate_mek(id, algorithm)).await;
        self.record_generated(id, &r).await;
        r
    }

    /// Records the `mek.generated` event of generating version 1 of `id`: success or failure.
    async fn record_generated(&self, id: &MekId, r: &Result<MekVersionInfo>) {
        let Some(sink) = &self.audit else {
            return;
        };
        let key = match r {
            Ok(v) => v.mek.clone(),
            Err(_) => MekRef::new(id.clone(), MekVersion::FIRST),
        };
        let event = AuditEvent::outcome_of(
            AuditAction::MekGenerated,
            Some(KeyId::Master(key)),
            r,
            self.provider.description(),
        )
        .with_provider(self.provider.kind());
        if let Err(e) = sink.record(event).await {
            tracing::error!(target: "heliosdb::tde::audit", "audit record failed: {e}");
        }
    }

    /// Changes the lifecycle state of an MEK version, timed (audited by the caller).
    pub(crate) async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        self.timed(self.provider.set_mek_state(mek, state)).await
    }

    pub(crate) async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.timed(self.provider.wrap_tek(mek, tek, ctx)).await
    }

    pub(crate) async fn unwrap_tek(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
    ) -> Result<TableKey> {
        self.timed(self.provider.unwrap_tek(wrapped, ctx)).await
    }
}
