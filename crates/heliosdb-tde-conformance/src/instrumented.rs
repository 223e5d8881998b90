//! [`Instrumented`]: a test decorator around any [`MekProvider`] that counts the calls of each
//! method and runs a hook before a method (to inject a failure, slow it down, hold it at a gate
//! or act behind the caller's back), and otherwise forwards every call unchanged.
//!
//! ```
//! # use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
//! # use heliosdb_tde_core::{MekProvider, TdeError};
//! # use std::sync::Arc;
//! # fn demo(real: Arc<dyn MekProvider>) {
//! let p = Arc::new(Instrumented::new(real));
//! p.fail_when(Method::WrapTek, |_| {
//!     Some(TdeError::ProviderUnavailable {
//!         provider: "test".into(),
//!         reason: "outage".into(),
//!         retryable: true,
//!     })
//! });
//! // ... drive the code under test with `p` ...
//! p.clear(Method::WrapTek);
//! assert_eq!(p.calls(Method::UnwrapTek), 0);
//! # }
//! ```

use async_trait::async_trait;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekInfo, MekProvider, MekRef, MekVersionInfo,
    ProviderHealth, ProviderKind, Result, TableKey, TdeError, TekId, WrapContext, WrappedTek,
};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A [`MekProvider`] method that can be counted and hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Method {
    /// [`MekProvider::generate_mek`].
    GenerateMek,
    /// [`MekProvider::wrap_tek`].
    WrapTek,
    /// [`MekProvider::unwrap_tek`].
    UnwrapTek,
    /// [`MekProvider::rewrap_tek`].
    RewrapTek,
    /// [`MekProvider::mek_info`].
    MekInfo,
    /// [`MekProvider::list_meks`].
    ListMeks,
    /// [`MekProvider::rotate_mek`].
    RotateMek,
    /// [`MekProvider::set_mek_state`].
    SetMekState,
    /// [`MekProvider::deactivate_mek_version`].
    DeactivateMekVersion,
    /// [`MekProvider::health`].
    Health,
}

impl Method {
    const ALL: [Method; 10] = [
        Method::GenerateMek,
        Method::WrapTek,
        Method::UnwrapTek,
        Method::RewrapTek,
        Method::MekInfo,
        Method::ListMeks,
        Method::RotateMek,
        Method::SetMekState,
        Method::DeactivateMekVersion,
        Method::Health,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// What a hook sees of one call (owned, so that an asynchronous hook may keep it).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Call {
    /// The method called.
    pub method: Method,
    /// The how-manieth call of this method this is, from 1 (since the last
    /// [`Instrumented::reset_counts`]).
    pub n: u64,
    /// The MEK id the call names, if any.
    pub mek_id: Option<MekId>,
    /// The MEK version the call names, if any: the one wrapped under or moved to another state,
    /// the one an envelope names for an unwrap, the new one for a rewrap.
    pub mek: Option<MekRef>,
    /// The TEK of a wrap, unwrap or rewrap.
    pub tek: Option<TekId>,
}

impl Call {
    /// The table of the TEK, as text (`""` when the call names no TEK).
    pub fn table(&self) -> String {
        self.tek
            .as_ref()
            .map(|t| t.table.to_string())
            .unwrap_or_default()
    }
}

/// The future a hook returns: `Err` is returned to the caller instead of calling the provider.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

type Hook = Arc<dyn Fn(Call) -> HookFuture + Send + Sync>;

/// A decorator over an `Arc<dyn MekProvider>`: counts every call per [`Method`], runs the hook
/// set for a method before forwarding it, and forwards everything else unchanged (the kind, the
/// description and whether it is secure are the inner provider's).
pub struct Instrumented {
    inner: Arc<dyn MekProvider>,
    counts: [AtomicU64; Method::ALL.len()],
    hooks: Mutex<HashMap<Method, Hook>>,
}

impl fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Instrumented {
    /// A decorator forwarding to `inner`, with no hook.
    pub fn new(inner: Arc<dyn MekProvider>) -> Self {
        Self {
            inner,
            counts: Default::default(),
            hooks: Mutex::new(HashMap::new()),
        }
    }

    /// The provider this one forwards to.
    pub fn inner(&self) -> &Arc<dyn MekProvider> {
        &self.inner
    }

    /// How many times `method` was called (since the last [`Instrumented::reset_counts`]),
    /// failed calls included.
    pub fn calls(&self, method: Method) -> u64 {
        self.counts[method.index()].load(Ordering::SeqCst)
    }

    /// Sets every count back to zero.
    pub fn reset_counts(&self) {
        for c in &self.counts {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// Runs `hook` before every call of `method` (replacing an earlier hook of that method);
    /// its error is returned to the caller and the inner provider is not called.
    pub fn before<F>(&self, method: Method, hook: F)
    where
        F: Fn(Call) -> HookFuture + Send + Sync + 'static,
    {
        self.lock_hooks().insert(method, Arc::new(hook));
    }

    /// Fails a call of `method` with the error `decide` returns for it, if any.
    pub fn fail_when<F>(&self, method: Method, decide: F)
    where
        F: Fn(&Call) -> Option<TdeError> + Send + Sync + 'static,
    {
        self.before(method, move |call| {
            let r = decide(&call).map_or(Ok(()), Err);
            Box::pin(std::future::ready(r))
        });
    }

    /// Delays every call of `method` by `delay` (so that concurrent callers overlap).
    pub fn delay(&self, method: Method, delay: Duration) {
        self.before(method, move |_| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(())
            })
        });
    }

    /// Removes the hook of `method`: its calls are forwarded unchanged again.
    pub fn clear(&self, method: Method) {
        self.lock_hooks().remove(&method);
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, HashMap<Method, Hook>> {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call and runs its hook.
    async fn enter(
        &self,
        method: Method,
        mek_id: Option<&MekId>,
        mek: Option<&MekRef>,
        tek: Option<&TekId>,
    ) -> Result<()> {
        let n = self.counts[method.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let hook = self.lock_hooks().get(&method).cloned();
        match hook {
            Some(h) => {
                h(Call {
                    method,
                    n,
                    mek_id: mek_id.or(mek.map(|m| &m.id)).cloned(),
                    mek: mek.cloned(),
                    tek: tek.cloned(),
                })
                .await
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl MekProvider for Instrumented {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn description(&self) -> String {
        self.inner.description()
    }
    fn is_secure(&self) -> bool {
        self.inner.is_secure()
    }
    async fn generate_mek(&self, id: &MekId, a: EncryptionAlgorithm) -> Result<MekVersionInfo> {
        self.enter(Method::GenerateMek, Some(id), None, None)
            .await?;
        self.inner.generate_mek(id, a).await
    }
    async fn wrap_tek(&self, m: &MekRef, t: &TableKey, c: &WrapContext) -> Result<WrappedTek> {
        self.enter(Method::WrapTek, None, Some(m), Some(&c.tek_id()))
            .await?;
        self.inner.wrap_tek(m, t, c).await
    }
    async fn unwrap_tek(&self, w: &WrappedTek, c: &WrapContext) -> Result<TableKey> {
        self.enter(Method::UnwrapTek, None, Some(&w.mek), Some(&c.tek_id()))
            .await?;
        self.inner.unwrap_tek(w, c).await
    }
    async fn rewrap_tek(
        &self,
        w: &WrappedTek,
        c: &WrapContext,
        new: &MekRef,
    ) -> Result<WrappedTek> {
        self.enter(Method::RewrapTek, None, Some(new), Some(&c.tek_id()))
            .await?;
        self.inner.rewrap_tek(w, c, new).await
    }
    async fn mek_info(&self, id: &MekId) -> Result<MekInfo> {
        self.enter(Method::MekInfo, Some(id), None, None).await?;
        self.inner.mek_info(id).await
    }
    async fn list_meks(&self) -> Result<Vec<MekId>> {
        self.enter(Method::ListMeks, None, None, None).await?;
        self.inner.list_meks().await
    }
    async fn rotate_mek(&self, id: &MekId) -> Result<MekVersionInfo> {
        self.enter(Method::RotateMek, Some(id), None, None).await?;
        self.inner.rotate_mek(id).await
    }
    async fn set_mek_state(&self, m: &MekRef, s: KeyState) -> Result<()> {
        self.enter(Method::SetMekState, None, Some(m), None).await?;
        self.inner.set_mek_state(m, s).await
    }
    async fn deactivate_mek_version(&self, m: &MekRef) -> Result<()> {
        self.enter(Method::DeactivateMekVersion, None, Some(m), None)
            .await?;
        self.inner.deactivate_mek_version(m).await
    }
    async fn health(&self) -> Result<ProviderHealth> {
        self.enter(Method::Health, None, None, None).await?;
        self.inner.health().await
    }
}
