//! The `MekProvider` trait's shape: object safety, and the default `rewrap_tek`.
//!
//! `RecordingProvider` is a test double that exists only to observe the trait's default
//! methods. It stores TEKs in the clear and must never be used for anything else; the real
//! providers live in their own crates and run the conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyState, MekId, MekInfo, MekProvider, MekRef, MekVersion,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, TableKey, TdeError, Timestamp,
    WrapContext, WrappedTek,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
struct RecordingProvider {
    versions: Mutex<BTreeMap<MekRef, KeyState>>,
    wraps: AtomicUsize,
    unwraps: AtomicUsize,
}

impl RecordingProvider {
    fn state(&self, mek: &MekRef) -> Result<KeyState> {
        self.versions
            .lock()
            .unwrap()
            .get(mek)
            .copied()
            .ok_or_else(|| TdeError::KeyNotFound {
                key: mek.to_string(),
                hint: String::new(),
            })
    }
}

#[async_trait]
impl MekProvider for RecordingProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::InMemory
    }
    fn description(&self) -> String {
        "recording test double".into()
    }
    fn is_secure(&self) -> bool {
        false
    }
    async fn generate_mek(&self, id: &MekId, alg: EncryptionAlgorithm) -> Result<MekVersionInfo> {
        let mek = MekRef::new(id.clone(), MekVersion::FIRST);
        self.versions
            .lock()
            .unwrap()
            .insert(mek.clone(), KeyState::Active);
        Ok(MekVersionInfo::new(
            mek,
            KeyState::Active,
            alg,
            Timestamp::now(),
        ))
    }
    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.wraps.fetch_add(1, Ordering::SeqCst);
        if !self.state(mek)?.can_encrypt() {
            return Err(TdeError::InvalidKeyState {
                key: mek.to_string(),
                state: self.state(mek)?,
                operation: "wrap".into(),
                hint: String::new(),
            });
        }
        let header = WrappedTek::new(tek.algorithm(), self.kind(), mek.clone(), Vec::new());
        let mut payload = ctx.aad_for(&header);
        payload.extend_from_slice(tek.bytes().expose_secret());
        Ok(WrappedTek::new(
            tek.algorithm(),
            self.kind(),
            mek.clone(),
            payload,
        ))
    }
    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        let aad = ctx.aad_for(wrapped);
        if !wrapped.payload.starts_with(&aad) || wrapped.payload.len() != aad.len() + 32 {
            return Err(TdeError::AuthenticationFailed {
                what: ctx.tek_id().to_string(),
            });
        }
        let bytes = KeyBytes::from_slice(&wrapped.payload[aad.len()..])?;
        Ok(TableKey::new(ctx.tek_id(), wrapped.algorithm, bytes))
    }
    async fn mek_info(&self, id: &MekId) -> Result<MekInfo> {
        let versions = self
            .versions
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| &m.id == id)
            .map(|(m, s)| {
                MekVersionInfo::new(m.clone(), *s, EncryptionAlgorithm::Aes256Gcm, Timestamp(0))
            })
            .collect();
        Ok(MekInfo {
            id: id.clone(),
            provider: self.kind(),
            location: "memory".into(),
            versions,
            deletion_protection: None,
        })
    }
    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let mut ids: Vec<MekId> = self
            .versions
            .lock()
            .unwrap()
            .keys()
            .map(|m| m.id.clone())
            .collect();
        ids.dedup();
        Ok(ids)
    }
    async fn rotate_mek(&self, id: &MekId) -> Result<MekVersionInfo> {
        let mut v = self.versions.lock().unwrap();
        let latest = v
            .keys()
            .filter(|m| &m.id == id)
            .map(|m| m.version)
            .max()
            .unwrap();
        for (m, s) in v.iter_mut() {
            if &m.id == id && *s == KeyState::Active {
                *s = KeyState::DecryptOnly;
            }
        }
        let mek = MekRef::new(id.clone(), latest.next()?);
        v.insert(mek.clone(), KeyState::Active);
        Ok(MekVersionInfo::new(
            mek,
            KeyState::Active,
            EncryptionAlgorithm::Aes256Gcm,
            Timestamp::now(),
        ))
    }
    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        let mut v = self.versions.lock().unwrap();
        let cur = v.get_mut(mek).unwrap();
        cur.check_transition(state, mek)?;
        *cur = state;
        Ok(())
    }
    async fn health(&self) -> Result<ProviderHealth> {
        Ok(ProviderHealth {
            healthy: true,
            latency: std::time::Duration::ZERO,
            detail: "ok".into(),
        })
    }
}

#[tokio::test]
async fn the_trait_is_object_safe_and_rewrap_defaults_to_unwrap_then_wrap() {
    let concrete = Arc::new(RecordingProvider::default());
    let provider: Arc<dyn MekProvider> = concrete.clone();
    let id = MekId::new("master_key_001").unwrap();
    let v1 = provider
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let tek =
        TableKey::generate("users@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let wrapped = provider.wrap_tek(&v1.mek, &tek, &ctx).await.unwrap();

    let v2 = provider.rotate_mek(&id).await.unwrap();
    assert_eq!(v2.mek.version.get(), 2);
    let info = provider.mek_info(&id).await.unwrap();
    assert_eq!(info.active_version(), Some(v2.mek.version));
    assert_eq!(info.latest_version(), Some(v2.mek.version));

    let (w0, u0) = (
        concrete.wraps.load(Ordering::SeqCst),
        concrete.unwraps.load(Ordering::SeqCst),
    );
    let rewrapped = provider.rewrap_tek(&wrapped, &ctx, &v2.mek).await.unwrap();
    assert_eq!(concrete.unwraps.load(Ordering::SeqCst), u0 + 1);
    assert_eq!(concrete.wraps.load(Ordering::SeqCst), w0 + 1);
    assert_eq!(rewrapped.mek, v2.mek);
    let back = provider.unwrap_tek(&rewrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());

    // Rewrap with the wrong context fails in the unwrap step and wraps nothing.
    let wrong = WrapContext::table_key(&"orders@v1".parse().unwrap());
    let w1 = concrete.wraps.load(Ordering::SeqCst);
    let e = provider
        .rewrap_tek(&wrapped, &wrong, &v2.mek)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    assert_eq!(concrete.wraps.load(Ordering::SeqCst), w1);

    // The default deactivate goes through set_mek_state and its lifecycle check.
    provider.deactivate_mek_version(&v1.mek).await.unwrap();
    assert!(provider.wrap_tek(&v1.mek, &tek, &ctx).await.is_err());
    let e = provider
        .set_mek_state(&v1.mek, KeyState::Active)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    assert!(provider.health().await.unwrap().healthy);
    assert_eq!(provider.list_meks().await.unwrap(), vec![id]);
}
