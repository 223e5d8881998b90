//! Reading TEKs: the bounded cache with single-flight misses and the synchronous hit path.

use crate::{KeyManager, not_found};
use heliosdb_tde_core::{AsTableId, Result, TableKey, TdeError, TekId, TekVersion, WrapContext};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

impl KeyManager {
    /// A table's TEK: the given version, or the newest one.
    pub async fn get_table_key(
        &self,
        table: &(impl AsTableId + ?Sized),
        version: Option<TekVersion>,
    ) -> Result<Arc<TableKey>> {
        let table = table.as_table_id()?;
        let version = match version {
            Some(v) => v,
            None => self.latest_version(&table).await?,
        };
        self.get_tek(&TekId::new(table.into_owned(), version)).await
    }

    /// The TEK that encrypts new data for `table`: its newest, active version.
    pub async fn active_table_key(
        &self,
        table: &(impl AsTableId + ?Sized),
    ) -> Result<Arc<TableKey>> {
        let key = self.get_table_key(table, None).await?;
        let rec = self.store.get_tek(key.id()).await?;
        match rec {
            Some(r) if r.metadata.state.can_encrypt() => Ok(key),
            Some(r) => Err(TdeError::InvalidKeyState {
                key: format!("tek:{}", r.id),
                state: r.metadata.state,
                operation: "encrypt".into(),
                hint: "rotate the table key to get an active version".into(),
            }),
            None => Err(not_found(key.id())),
        }
    }

    /// The cached TEK `id`, if it is in the cache. Synchronous: no await, no I/O.
    pub fn get_cached_table_key(&self, id: &TekId) -> Option<Arc<TableKey>> {
        let hit = self.cache.get(id);
        if hit.is_some() {
            self.counters.cache_hits.add(1);
        }
        hit
    }

    /// One TEK version: from the cache, or unwrapped through the provider. Concurrent misses
    /// on the same key wait for a single unwrap.
    pub async fn get_tek(&self, id: &TekId) -> Result<Arc<TableKey>> {
        if let Some(hit) = self.get_cached_table_key(id) {
            return Ok(hit);
        }
        self.counters.cache_misses.add(1);
        self.cache
            .get_or_insert_async(id, async {
                let rec = self.store.get_tek(id).await?.ok_or_else(|| not_found(id))?;
                if !rec.metadata.state.can_decrypt() {
                    return Err(TdeError::InvalidKeyState {
                        key: format!("tek:{id}"),
                        state: rec.metadata.state,
                        operation: "use it".into(),
                        hint: "the key version is out of service".into(),
                    });
                }
                let tek = self
                    .call(
                        self.mek_provider
                            .unwrap_tek(&rec.wrapped, &WrapContext::table_key(id)),
                    )
                    .await?;
                Ok(Arc::new(tek))
            })
            .await
    }
}

/// Counts evictions; the evicted `Arc<TableKey>` is dropped right after, and its bytes are
/// zeroized as soon as no caller still holds it.
#[derive(Clone, Debug)]
pub(crate) struct EvictionCounter(pub(crate) Arc<AtomicU64>);

impl Lifecycle<TekId, Arc<TableKey>> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: TekId, _val: Arc<TableKey>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type TekCache =
    Cache<TekId, Arc<TableKey>, UnitWeighter, DefaultHashBuilder, EvictionCounter>;
