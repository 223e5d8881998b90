//! `InMemoryMekProvider`: master keys in process memory. **INSECURE — testing only.**
//!
//! It implements the whole [`MekProvider`] contract (versions, rotation, lifecycle states,
//! AAD-bound wrapping through `heliosdb-tde-cipher`), so tests and development setups exercise
//! the same code paths as the real providers. It reports `is_secure() == false`, and the key
//! manager refuses it in production mode.

use async_trait::async_trait;
use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyState, MasterKey, MekId, MekInfo, MekProvider, MekRef,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, TableKey, TdeError, Timestamp,
    WrapContext, WrappedTek,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// How the provider describes itself; quoted by the production-mode refusal.
pub const DESCRIPTION: &str = "In-Memory (INSECURE - testing only)";

struct Version {
    key: Arc<MasterKey>,
    state: KeyState,
    created_at: Timestamp,
}

/// Master keys in process memory. Insecure; tests and development only.
pub struct InMemoryMekProvider {
    versions: Mutex<BTreeMap<MekRef, Version>>,
    backend: Backend,
}

impl fmt::Debug for InMemoryMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("InMemoryMekProvider")
            .field("mek_versions", &count)
            .field("backend", &self.backend)
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
            versions: Mutex::new(BTreeMap::new()),
            backend,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, BTreeMap<MekRef, Version>>> {
        self.versions
            .lock()
            .map_err(|_| TdeError::ProviderUnavailable {
                provider: DESCRIPTION.into(),
                reason: "internal lock poisoned by a panic in another thread".into(),
                retryable: false,
            })
    }

    fn not_found(mek: &dyn fmt::Display) -> TdeError {
        TdeError::KeyNotFound {
            key: format!("mek:{mek}"),
            hint: "the in-memory provider forgets every MEK when the process exits; generate \
                   it again (and re-create the TEKs wrapped under it)"
                .into(),
        }
    }

    /// The key and state of one version.
    fn version(&self, mek: &MekRef) -> Result<(Arc<MasterKey>, KeyState)> {
        let v = self.lock()?;
        let entry = v.get(mek).ok_or_else(|| Self::not_found(mek))?;
        Ok((entry.key.clone(), entry.state))
    }

    fn info(mek: &MekRef, v: &Version) -> MekVersionInfo {
        MekVersionInfo {
            mek: mek.clone(),
            state: v.state,
            algorithm: v.key.algorithm(),
            created_at: v.created_at,
        }
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
        let mut v = self.lock()?;
        if v.keys().any(|m| &m.id == mek_id) {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{mek_id}"),
            });
        }
        let mek = MekRef::new(mek_id.clone(), heliosdb_tde_core::MekVersion::FIRST);
        let entry = Version {
            key: Arc::new(MasterKey::new(
                mek.clone(),
                algorithm,
                KeyBytes::generate()?,
            )),
            state: KeyState::Active,
            created_at: Timestamp::now(),
        };
        let info = Self::info(&mek, &entry);
        v.insert(mek, entry);
        Ok(info)
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        let (key, state) = self.version(mek)?;
        state.ensure_can_encrypt(&format!("mek:{}", mek), "wrap a TEK")?;
        #[allow(unused_mut)]
        let mut wrapped = wrap::wrap_tek(self.backend, &key, ProviderKind::InMemory, tek, ctx)?;
        // Test hook (feature `failpoints`): damage the wrap, as a faulty host would.
        #[cfg(feature = "failpoints")]
        if fail::eval("memory::damage_wrap", |_| ()).is_some()
            && let Some(b) = wrapped.payload.get_mut(20)
        {
            *b ^= 1;
        }
        // Self-check before anyone stores the wrap (the default rewrap_tek comes through here).
        if !wrap::wrap_gives_back(self.backend, &key, &wrapped, tek, ctx) {
            return Err(wrap::wrap_check_failed(DESCRIPTION, mek, ctx));
        }
        Ok(wrapped)
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let (key, state) = self.version(&wrapped.mek)?;
        state.ensure_can_decrypt(&format!("mek:{}", &wrapped.mek), "unwrap a TEK")?;
        wrap::unwrap_tek(self.backend, &key, wrapped, ctx)
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let v = self.lock()?;
        let versions: Vec<MekVersionInfo> = v
            .iter()
            .filter(|(m, _)| &m.id == mek_id)
            .map(|(m, e)| Self::info(m, e))
            .collect();
        if versions.is_empty() {
            return Err(Self::not_found(mek_id));
        }
        Ok(MekInfo {
            id: mek_id.clone(),
            provider: ProviderKind::InMemory,
            location: "process memory (lost at exit)".into(),
            versions,
        })
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let mut ids: Vec<MekId> = self.lock()?.keys().map(|m| m.id.clone()).collect();
        ids.dedup();
        Ok(ids)
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let mut v = self.lock()?;
        let latest = v
            .keys()
            .filter(|m| &m.id == mek_id)
            .map(|m| m.version)
            .max()
            .ok_or_else(|| Self::not_found(mek_id))?;
        let algorithm = v
            .iter()
            .find(|(m, _)| m.id == *mek_id && m.version == latest)
            .map(|(_, e)| e.key.algorithm())
            .unwrap_or_default();
        for (m, e) in v.iter_mut() {
            if &m.id == mek_id && e.state == KeyState::Active {
                e.state = KeyState::DecryptOnly;
            }
        }
        let mek = MekRef::new(mek_id.clone(), latest.next()?);
        let entry = Version {
            key: Arc::new(MasterKey::new(
                mek.clone(),
                algorithm,
                KeyBytes::generate()?,
            )),
            state: KeyState::Active,
            created_at: Timestamp::now(),
        };
        let info = Self::info(&mek, &entry);
        v.insert(mek, entry);
        Ok(info)
    }

    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        let mut v = self.lock()?;
        let entry = v.get_mut(mek).ok_or_else(|| Self::not_found(mek))?;
        entry.state.check_transition(state, &format!("mek:{mek}"))?;
        entry.state = state;
        if state == KeyState::Destroyed {
            // Drop the material; keep the record so the version is known to be destroyed.
            entry.key = Arc::new(MasterKey::new(
                mek.clone(),
                entry.key.algorithm(),
                KeyBytes::from_slice(&[0u8; 32])?,
            ));
        }
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
