//! Counters behind `KeyManager::key_stats`.

use crate::KeyManager;
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{KeyState, Timestamp};
use heliosdb_tde_core::{Result, TableId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::time::Duration;

/// One thread's cache counters. Only the owning thread writes them, each with a plain load
/// and store ([`bump`]), so the hit path makes no locked read-modify-write; any thread may read
/// them, and their sum over all threads is exact. One cache-line pair per thread, so threads
/// never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct ThreadCounts {
    /// Hits answered by the thread's front map, without the shared cache.
    pub(crate) front_hits: AtomicU64,
    /// Hits answered by the shared cache.
    pub(crate) shared_hits: AtomicU64,
    /// Lookups that had to load the key.
    pub(crate) misses: AtomicU64,
}

/// Adds one to a counter that only the calling thread writes, and returns the old value. A
/// relaxed load and store, not a locked read-modify-write: exact because there is one writer.
/// Another thread reading it sees the old or the new value, never a torn one.
pub(crate) fn bump(c: &AtomicU64) -> u64 {
    let n = c.load(Relaxed);
    c.store(n.wrapping_add(1), Relaxed);
    n
}

/// The cache counters summed over all threads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CacheCounts {
    pub(crate) front_hits: u64,
    pub(crate) shared_hits: u64,
    pub(crate) misses: u64,
}

impl CacheCounts {
    pub(crate) fn add(&mut self, t: &ThreadCounts) {
        self.front_hits += t.front_hits.load(Relaxed);
        self.shared_hits += t.shared_hits.load(Relaxed);
        self.misses += t.misses.load(Relaxed);
    }
}

/// Live counters, updated without locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cache_evictions: Arc<AtomicU64>,
    pub(crate) provider_calls: AtomicU64,
    pub(crate) provider_errors: AtomicU64,
    pub(crate) provider_nanos_total: AtomicU64,
    pub(crate) provider_nanos_max: AtomicU64,
    pub(crate) usage_rotation_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn provider_call(&self, took: Duration, ok: bool) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.provider_calls.fetch_add(1, Relaxed);
        if !ok {
            self.provider_errors.fetch_add(1, Relaxed);
        }
        self.provider_nanos_total.fetch_add(nanos, Relaxed);
        self.provider_nanos_max.fetch_max(nanos, Relaxed);
    }
}

/// Cache statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from the cache (`front_hits` included).
    pub hits: u64,
    /// Of `hits`, those answered by the calling thread's own front map of the cache, without
    /// touching the shared cache (no lock, no shared write but the key's reference count).
    pub front_hits: u64,
    /// Lookups that had to unwrap the key through the provider (or wait for another caller's
    /// unwrap of the same key).
    pub misses: u64,
    /// Keys evicted to respect the limit.
    pub evictions: u64,
    /// Keys in the cache now.
    pub entries: u64,
    /// The configured limit.
    pub limit: u64,
}

/// MEK provider call statistics (wrap, unwrap, rewrap, info, generate, rotate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ProviderStats {
    /// The provider's description.
    pub provider: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Mean latency in microseconds.
    pub mean_latency_us: u64,
    /// Highest latency in microseconds.
    pub max_latency_us: u64,
}

/// Usage summed over all stored TEKs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsageTotals {
    /// Encryptions (GCM invocations) recorded against TEKs.
    pub encryptions: u64,
    /// Decryptions recorded against TEKs.
    pub decryptions: u64,
    /// The most recent use of any TEK.
    pub last_used: Option<Timestamp>,
}

/// What `KeyManager::key_stats` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyStats {
    /// The TEK cache.
    pub cache: CacheStats,
    /// The MEK provider.
    pub provider: ProviderStats,
    /// Number of stored TEK versions of user tables per lifecycle state (reserved tables such
    /// as the audit key's `_heliosdb.audit` are not counted here, nor below).
    pub teks_by_state: BTreeMap<String, u64>,
    /// Number of user tables with at least one TEK.
    pub tables: u64,
    /// Usage totals.
    pub usage: UsageTotals,
    /// Automatic (usage-driven) table key rotations that failed in this process after the
    /// page that triggered them was sealed; each is retried at the next seal of that table.
    pub usage_rotation_failures: u64,
}

pub(crate) fn state_name(s: KeyState) -> String {
    s.to_string()
}

impl KeyManager {
    /// Cache, provider, state and usage statistics.
    pub async fn key_stats(&self) -> Result<KeyStats> {
        let c = &self.counters;
        let cache = self.cache.counts();
        let calls = c.provider_calls.load(Ordering::Relaxed);
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut tables = 0u64;
        let mut usage = UsageTotals::default();
        let mut last_table: Option<TableId> = None;
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                // HeliosDB's own keys (the audit key) are not counted with the user tables.
                for r in page.into_iter().filter(|r| !r.id.table.is_reserved()) {
                    *by_state.entry(state_name(r.metadata.state)).or_default() += 1;
                    if last_table.as_ref() != Some(&r.id.table) {
                        tables += 1;
                        last_table = Some(r.id.table.clone());
                    }
                    usage.encryptions += r.metadata.usage.encryptions;
                    usage.decryptions += r.metadata.usage.decryptions;
                    usage.last_used = usage.last_used.max(r.metadata.usage.last_used);
                }
                Ok(())
            })
            .await?;
        Ok(KeyStats {
            cache: CacheStats {
                hits: cache.front_hits + cache.shared_hits,
                front_hits: cache.front_hits,
                misses: cache.misses,
                evictions: c.cache_evictions.load(Ordering::Relaxed),
                entries: u64::try_from(self.cache.len()).unwrap_or(u64::MAX),
                limit: u64::try_from(self.config.cache_limit).unwrap_or(u64::MAX),
            },
            provider: ProviderStats {
                provider: self.mek_provider.description(),
                calls,
                errors: c.provider_errors.load(Ordering::Relaxed),
                mean_latency_us: c
                    .provider_nanos_total
                    .load(Ordering::Relaxed)
                    .checked_div(calls)
                    .unwrap_or(0)
                    / 1000,
                max_latency_us: c.provider_nanos_max.load(Ordering::Relaxed) / 1000,
            },
            teks_by_state: by_state,
            tables,
            usage,
            usage_rotation_failures: c.usage_rotation_failures.load(Ordering::Relaxed),
        })
    }
}
