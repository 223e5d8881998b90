//! Reading TEKs: the bounded cache with single-flight misses and the synchronous hit path.
//!
//! The cache has two levels. The shared level is a quick_cache `Cache`: the authority for the
//! bound, eviction (an evicted key is dropped, and zeroized once nobody holds it) and single
//! flight on misses. In front of it each thread keeps its own small map of weak references
//! ([`front`]), so a repeat hit takes no lock and writes nothing shared but the key's reference
//! count, which a plain `HashMap<TekId, Arc<_>>` lookup also pays.

mod front;

use crate::stats::{CacheCounts, ThreadCounts, bump};
use crate::{KeyManager, not_found};
use front::{FRONT_MAX, Front, Local};
use heliosdb_tde_core::{
    AsTableId, AuditAction, KeyId, Result, TableKey, TdeError, TekId, TekVersion, WrapContext,
};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use thread_local::ThreadLocal;

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

    /// The cached TEK `id`, if it is in the cache. Synchronous: no await, no I/O. A repeat
    /// hit on the same thread is answered by that thread's front map without a lock.
    ///
    /// A key the cache evicted may still be returned while another caller holds it (the front
    /// keeps only a weak reference to it); eviction only bounds memory, it is not revocation.
    pub fn get_cached_table_key(&self, id: &TekId) -> Option<Arc<TableKey>> {
        self.cache.get(id)
    }

    /// One TEK version: from the cache, or unwrapped through the provider. Concurrent misses
    /// on the same key wait for a single unwrap. Each unwrap through the provider is recorded
    /// in the audit log (`tek.unwrapped`, success or failure); cache hits are not.
    pub async fn get_tek(&self, id: &TekId) -> Result<Arc<TableKey>> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(hit);
        }
        self.cache.count_miss();
        // Loaded before the shared cache is read, so that an invalidation that races with this
        // load keeps the result out of the front.
        let epoch = self.cache.epoch();
        let key = self
            .cache
            .shared
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
                    .await;
                // Every miss that reached the provider, once (the single flight's leader), on
                // success and on failure: a failed unwrap is what a tampered store looks like.
                if self.auditing() {
                    let ev = self.event_of(
                        AuditAction::TekUnwrapped,
                        Some(KeyId::Table(id.clone())),
                        &tek,
                        format!("under {}", rec.wrapped.mek),
                    );
                    self.audit(ev).await;
                }
                Ok(Arc::new(tek?))
            })
            .await?;
        self.cache.fill_front_if_room(id, &key, epoch);
        Ok(key)
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

type SharedCache = Cache<TekId, Arc<TableKey>, UnitWeighter, DefaultHashBuilder, EvictionCounter>;

/// Every this many front hits, a thread also looks the key up in the shared cache, so that the
/// shared cache's frequency estimate still sees keys served from fronts, and a key it evicted
/// stops being served from this front (a held key is otherwise served from it until dropped).
const TOUCH_EVERY: u64 = 64;

/// The TEK cache: the shared quick_cache and the per-thread fronts.
///
/// Invalidation: every change to an entry of the shared cache (today only
/// [`TekCache::insert`]; any future removal must be written the same way) is followed by a bump
/// of `epoch`. A front serves an entry only if the epoch it loaded before reading that entry
/// from the shared cache is still the current one, so an entry changed on purpose is never
/// served from a front once the change has returned. The epoch is loaded once per lookup
/// (Acquire, a plain load on x86 and a cheap one elsewhere).
pub(crate) struct TekCache {
    shared: SharedCache,
    locals: ThreadLocal<Local>,
    /// Every thread's counters, for the statistics.
    all_counts: Mutex<Vec<Arc<ThreadCounts>>>,
    epoch: Epoch,
    front_cap: usize,
}

/// The invalidation epoch, read by every lookup and written only by invalidations: on a cache
/// line of its own, so that no other write (a lock next to it in the manager) disturbs it.
#[repr(align(128))]
struct Epoch(AtomicU64);

impl TekCache {
    /// A cache of at most `limit` keys; evictions are counted in `evictions`.
    pub(crate) fn new(limit: usize, evictions: Arc<AtomicU64>) -> Self {
        Self {
            shared: Cache::with(
                limit,
                u64::try_from(limit).unwrap_or(u64::MAX),
                UnitWeighter,
                DefaultHashBuilder::default(),
                EvictionCounter(evictions),
            ),
            locals: ThreadLocal::new(),
            all_counts: Mutex::new(Vec::new()),
            epoch: Epoch(AtomicU64::new(0)),
            front_cap: limit.min(FRONT_MAX),
        }
    }

    /// The calling thread's front and counters, created on its first lookup.
    fn local(&self) -> &Local {
        self.locals.get_or(|| {
            let counts = Arc::new(ThreadCounts::default());
            self.all_counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(counts.clone());
            Local {
                front: RefCell::new(Front::new(self.front_cap, self.epoch())),
                counts,
            }
        })
    }

    fn epoch(&self) -> u64 {
        self.epoch.0.load(Ordering::Acquire)
    }

    /// The hit path: the thread's front, else the shared cache (whose answer then fills the
    /// front). Counts a hit; a `None` is not counted (the caller may count a miss).
    pub(crate) fn get(&self, id: &TekId) -> Option<Arc<TableKey>> {
        let local = self.local();
        let epoch = self.epoch();
        let front_hit = local.front.borrow_mut().lookup(id, epoch);
        if let Some(key) = front_hit {
            let n = bump(&local.counts.front_hits);
            if n % TOUCH_EVERY == TOUCH_EVERY - 1 && self.shared.get(id).is_none() {
                local.front.borrow_mut().forget(id);
            }
            return Some(key);
        }
        let key = self.shared.get(id)?;
        bump(&local.counts.shared_hits);
        local.front.borrow_mut().put(id, &key, epoch);
        Some(key)
    }

    /// Counts a miss on the calling thread.
    fn count_miss(&self) {
        bump(&self.local().counts.misses);
    }

    /// Puts `key`, just loaded by a miss after `epoch` was loaded, in the calling thread's
    /// front if the front has room: a miss never empties a full front (a scan of cold keys
    /// does not push the hot ones out), and costs only a length check once the front is full.
    fn fill_front_if_room(&self, id: &TekId, key: &Arc<TableKey>, epoch: u64) {
        self.local().front.borrow_mut().put_if_room(id, key, epoch);
    }

    /// Puts `key`, read from the shared cache after `epoch` was loaded, in the calling thread's
    /// front.
    #[cfg(test)]
    fn fill_front(&self, id: &TekId, key: &Arc<TableKey>, epoch: u64) {
        self.local().front.borrow_mut().put(id, key, epoch);
    }

    /// Adds or replaces the key `id`, then invalidates every front: a replaced key is never
    /// served from a front again.
    pub(crate) fn insert(&self, id: TekId, key: Arc<TableKey>) {
        self.shared.insert(id, key);
        self.epoch.0.fetch_add(1, Ordering::Release);
    }

    /// Keys in the shared cache now.
    pub(crate) fn len(&self) -> usize {
        self.shared.len()
    }

    /// The hit and miss counters summed over all threads.
    pub(crate) fn counts(&self) -> CacheCounts {
        let mut sum = CacheCounts::default();
        for t in self
            .all_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            sum.add(t);
        }
        sum
    }
}

#[cfg(test)]
mod tests;
