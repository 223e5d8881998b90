//! [`LocalKeyring`]: MEK versions held in process, and the TEK wrapping done with them.
//!
//! The providers that hold their master keys in process share it: the in-memory provider is a
//! keyring (plus the lifecycle policy of `heliosdb_tde_core::lifecycle`), and the secure file
//! provider is a keyring plus the files it is loaded from and persisted to.
//!
//! Wrapping is [`crate::wrap`]'s AES-256-GCM under the MEK with the envelope's associated
//! data ([`heliosdb_tde_core::WrapContext::aad_for`]), and every new wrap is unwrapped once and
//! compared before it is returned ([`crate::wrap::wrap_gives_back`]). The keyring does not
//! know lifecycle states: the provider checks that a version may wrap or unwrap before it asks.
//!
//! Key material is never copied: each version's [`MasterKey`] (zeroized on drop) is shared
//! with the operations in flight through an [`Arc`], so that a wrap does not hold the
//! keyring's lock, and [`LocalKeyring::remove`] drops the keyring's reference.

use crate::aead::Backend;
use crate::wrap;
use heliosdb_tde_core::{
    MasterKey, MekRef, ProviderKind, Result, TableKey, TdeError, WrapContext, WrappedTek,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// MEK versions held in process, and AES-256-GCM wrapping of TEKs under them.
pub struct LocalKeyring {
    backend: Backend,
    provider: ProviderKind,
    name: String,
    keys: RwLock<BTreeMap<MekRef, Arc<MasterKey>>>,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.keys.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("LocalKeyring")
            .field("provider", &self.provider)
            .field("backend", &self.backend)
            .field("mek_versions", &count)
            .finish_non_exhaustive()
    }
}

impl LocalKeyring {
    /// An empty keyring for a provider of kind `provider` (recorded in every envelope it
    /// writes), named `name` in errors (the provider's description), using `backend` for
    /// AES-GCM.
    pub fn new(backend: Backend, provider: ProviderKind, name: impl Into<String>) -> Self {
        Self {
            backend,
            provider,
            name: name.into(),
            keys: RwLock::new(BTreeMap::new()),
        }
    }

    /// The AES-GCM backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The provider kind written into envelopes.
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }

    fn poisoned(&self) -> TdeError {
        TdeError::ProviderUnavailable {
            provider: self.name.clone(),
            reason: "internal lock poisoned by a panic in another thread".into(),
            retryable: false,
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, BTreeMap<MekRef, Arc<MasterKey>>>> {
        self.keys.read().map_err(|_| self.poisoned())
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, BTreeMap<MekRef, Arc<MasterKey>>>> {
        self.keys.write().map_err(|_| self.poisoned())
    }

    /// Holds `key` for the MEK version it names, replacing (and dropping) any key held for it.
    pub fn insert(&self, key: MasterKey) -> Result<()> {
        self.write()?.insert(key.mek().clone(), Arc::new(key));
        Ok(())
    }

    /// Drops the key of one version (its bytes are zeroized once no operation in flight uses
    /// them). Returns whether a key was held.
    pub fn remove(&self, mek: &MekRef) -> Result<bool> {
        Ok(self.write()?.remove(mek).is_some())
    }

    /// Whether a key is held for `mek`.
    pub fn contains(&self, mek: &MekRef) -> Result<bool> {
        Ok(self.read()?.contains_key(mek))
    }

    /// How many MEK versions are held.
    pub fn len(&self) -> Result<usize> {
        Ok(self.read()?.len())
    }

    /// Whether no MEK version is held.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.read()?.is_empty())
    }

    /// Runs `f` with the key of `mek` (for example to persist it encrypted); `None` when no
    /// key is held for it. The key is not copied.
    pub fn with_key<R>(&self, mek: &MekRef, f: impl FnOnce(&MasterKey) -> R) -> Result<Option<R>> {
        let key = self.read()?.get(mek).cloned();
        Ok(key.map(|k| f(&k)))
    }

    fn key(&self, mek: &MekRef) -> Result<Arc<MasterKey>> {
        self.read()?
            .get(mek)
            .cloned()
            .ok_or_else(|| TdeError::KeyNotFound {
                key: format!("mek:{mek}"),
                hint: format!("{} holds no key material for it", self.name),
            })
    }

    /// Wraps `tek` under `mek`, bound to `ctx`, and checks that the wrap gives the TEK back
    /// before returning it.
    pub fn wrap_tek(&self, mek: &MekRef, tek: &TableKey, ctx: &WrapContext) -> Result<WrappedTek> {
        self.wrap_tek_with(mek, tek, ctx, Ok)
    }

    /// [`LocalKeyring::wrap_tek`] with a test hook: `tamper` receives the new wrap before the
    /// self-check and returns the wrap to check (providers use it for their fail points, to
    /// show that a damaged wrap is refused).
    pub fn wrap_tek_with(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
        tamper: impl FnOnce(WrappedTek) -> Result<WrappedTek>,
    ) -> Result<WrappedTek> {
        let key = self.key(mek)?;
        let wrapped = tamper(wrap::wrap_tek(self.backend, &key, self.provider, tek, ctx)?)?;
        // Self-check before anyone stores the wrap (a fault here would otherwise leave a TEK
        // that can never be unwrapped). The default rewrap_tek comes through here too.
        if !wrap::wrap_gives_back(self.backend, &key, &wrapped, tek, ctx) {
            return Err(wrap::wrap_check_failed(&self.name, mek, ctx));
        }
        Ok(wrapped)
    }

    /// Wraps `tek` under `mek` without the self-check. Only for test hooks that build a
    /// damaged wrap (see [`LocalKeyring::wrap_tek_with`]).
    pub fn wrap_tek_unchecked(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        let key = self.key(mek)?;
        wrap::wrap_tek(self.backend, &key, self.provider, tek, ctx)
    }

    /// Unwraps a TEK under the MEK version its envelope names; `ctx` must be the context it
    /// was wrapped with ([`TdeError::AuthenticationFailed`] otherwise).
    pub fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let key = self.key(&wrapped.mek)?;
        wrap::unwrap_tek(self.backend, &key, wrapped, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TekId};

    fn keyring() -> (LocalKeyring, MekRef) {
        let k = LocalKeyring::new(Backend::default(), ProviderKind::InMemory, "test keyring");
        let mek: MekRef = "k@v1".parse().unwrap();
        k.insert(MasterKey::new(
            mek.clone(),
            EncryptionAlgorithm::Aes256Gcm,
            KeyBytes::generate().unwrap(),
        ))
        .unwrap();
        (k, mek)
    }

    fn new_tek() -> (TableKey, WrapContext) {
        let id: TekId = "accounts@v1".parse().unwrap();
        let ctx = WrapContext::table_key(&id);
        (
            TableKey::generate(id, EncryptionAlgorithm::Aes256Gcm).unwrap(),
            ctx,
        )
    }

    #[test]
    fn round_trip_and_removal() {
        let (k, mek) = keyring();
        let (tek, ctx) = new_tek();
        let w = k.wrap_tek(&mek, &tek, &ctx).unwrap();
        assert_eq!(w.mek, mek);
        assert_eq!(w.provider, ProviderKind::InMemory);
        let back = k.unwrap_tek(&w, &ctx).unwrap();
        assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
        assert_eq!(k.len().unwrap(), 1);
        assert!(k.contains(&mek).unwrap());
        assert_eq!(
            k.with_key(&mek, |m| m.mek().clone()).unwrap(),
            Some(mek.clone())
        );
        assert!(k.remove(&mek).unwrap());
        assert!(!k.remove(&mek).unwrap());
        assert!(k.is_empty().unwrap());
        let e = k.unwrap_tek(&w, &ctx).unwrap_err();
        assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
        assert!(k.with_key(&mek, |_| ()).unwrap().is_none());
    }

    #[test]
    fn a_damaged_wrap_is_refused() {
        let (k, mek) = keyring();
        let (tek, ctx) = new_tek();
        let e = k
            .wrap_tek_with(&mek, &tek, &ctx, |mut w| {
                w.payload[20] ^= 1;
                Ok(w)
            })
            .unwrap_err();
        assert!(e.to_string().contains("self-check"), "{e}");
        assert!(e.to_string().contains("test keyring"), "{e}");
        let (other, _) = new_tek();
        let e = k
            .wrap_tek_with(&mek, &tek, &ctx, |_| {
                k.wrap_tek_unchecked(&mek, &other, &ctx)
            })
            .unwrap_err();
        assert!(e.to_string().contains("self-check"), "{e}");
    }

    #[test]
    fn debug_shows_no_key() {
        let (k, _) = keyring();
        let d = format!("{k:?}");
        assert!(d.contains("mek_versions: 1"), "{d}");
        assert!(!d.contains("bytes"), "{d}");
    }
}
