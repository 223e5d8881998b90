#![doc = include_str!("../README.md")]

use async_trait::async_trait;
use heliosdb_tde_cipher::{Backend, LocalKeyring};
use heliosdb_tde_core::lifecycle::{MekLifecycle, mek_not_found};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyState, MasterKey, MekId, MekInfo, MekProvider, MekRef,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, TableKey, TdeError, Timestamp,
    WrapContext, WrappedTek,
};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// How the provider describes itself; quoted by the production-mode refusal.
pub const DESCRIPTION: &str = "In-Memory (INSECURE - testing only)";

/// Master keys in process memory. Insecure; tests and development only.
///
/// A [`LocalKeyring`] holding the key material, and the [`MekLifecycle`] of its versions.
pub struct InMemoryMekProvider {
    /// The versions and their states. Its lock also serialises generate, rotate and state
    /// changes, so the keyring and the lifecycle change together.
    lifecycle: Mutex<MekLifecycle>,
    keyring: LocalKeyring,
}

impl fmt::Debug for InMemoryMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("InMemoryMekProvider")
            .field("mek_versions", &count)
            .field("backend", &self.keyring.backend())
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryMekProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryMekProvider {
    /// An empty provider using the default cipher backend.
    pub fn new() -> Self {
        Self::with_backend(Backend::default())
    }

    /// An empty provider using `backend` for its local AES-GCM.
    pub fn with_backend(backend: Backend) -> Self {
        Self {
            lifecycle: Mutex::new(MekLifecycle::new()),
            keyring: LocalKeyring::new(backend, ProviderKind::InMemory, DESCRIPTION),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, MekLifecycle>> {
        self.lifecycle
            .lock()
            .map_err(|_| TdeError::ProviderUnavailable {
                provider: DESCRIPTION.into(),
                reason: "internal lock poisoned by a panic in another thread".into(),
                retryable: false,
            })
    }

    fn not_found(mek: &dyn fmt::Display) -> TdeError {
        mek_not_found(
            mek,
            "the in-memory provider forgets every MEK when the process exits; generate it again \
             (and re-create the TEKs wrapped under it)",
        )
    }

    /// The state of one version.
    fn state(&self, mek: &MekRef) -> Result<KeyState> {
        self.lock()?.state(mek).ok_or_else(|| Self::not_found(mek))
    }

    /// Creates the key of a new version and records it, active.
    fn create(&self, lc: &mut MekLifecycle, info: MekVersionInfo) -> Result<MekVersionInfo> {
        self.keyring.insert(MasterKey::new(
            info.mek.clone(),
            info.algorithm,
            KeyBytes::generate()?,
        ))?;
        lc.insert(info.clone());
        Ok(info)
    }
}

#[async_trait]
impl MekProvider for InMemoryMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::InMemory
    }

    fn description(&self) -> String {
        DESCRIPTION.into()
    }

    fn is_secure(&self) -> bool {
        false
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        let mut lc = self.lock()?;
        let mek = lc.plan_generate(mek_id)?;
        self.create(
            &mut lc,
            MekVersionInfo::active(mek, algorithm, Timestamp::now()),
        )
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.state(mek)?
            .ensure_can_encrypt(&format!("mek:{}", mek), "wrap a TEK")?;
        self.keyring.wrap_tek_with(mek, tek, ctx, |wrapped| {
            // Test hook (feature `failpoints`): damage the wrap, as a faulty host would; the
            // keyring's self-check must refuse it.
            #[cfg(feature = "failpoints")]
            let mut wrapped = wrapped;
            #[cfg(feature = "failpoints")]
            if fail::eval("memory::damage_wrap", |_| ()).is_some()
                && let Some(b) = wrapped.payload.get_mut(20)
            {
                *b ^= 1;
            }
            Ok(wrapped)
        })
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.state(&wrapped.mek)?
            .ensure_can_decrypt(&format!("mek:{}", &wrapped.mek), "unwrap a TEK")?;
        self.keyring.unwrap_tek(wrapped, ctx)
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        self.lock()?
            .mek_info(
                mek_id,
                ProviderKind::InMemory,
                "process memory (lost at exit)",
            )
            .ok_or_else(|| Self::not_found(mek_id))
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        Ok(self.lock()?.ids())
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let mut lc = self.lock()?;
        let rotation = lc
            .plan_rotation(mek_id)
            .ok_or_else(|| Self::not_found(mek_id))??;
        let info = self.create(&mut lc, rotation.new_version(Timestamp::now()))?;
        lc.apply_rotation(&rotation, info.created_at);
        Ok(info)
    }

    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        let mut lc = self.lock()?;
        let transition = lc
            .plan_transition(mek, state)
            .ok_or_else(|| Self::not_found(mek))??;
        if transition.destroys_material() {
            // Drop the material; keep the record so the version is known to be destroyed.
            self.keyring.remove(mek)?;
        }
        lc.set_state(mek, state);
        Ok(())
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let count = self.lock()?.len();
        Ok(ProviderHealth {
            healthy: true,
            latency: start.elapsed(),
            detail: format!("{count} MEK versions in process memory (INSECURE)"),
        })
    }
}
