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

/// A counter split over cache-line-sized stripes, so that threads counting cache hits at the
/// same time do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter([Stripe; STRIPES]);

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Relaxed) as usize) % STRIPES
    };
}

impl StripedCounter {
    pub(crate) fn add(&self, n: u64) {
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(n, Relaxed);
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// Live counters, updated without locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cache_hits: StripedCounter,
    pub(crate) cache_misses: StripedCounter,
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
    /// Lookups answered from the cache.
    pub hits: u64,
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
    /// Number of stored TEK versions per lifecycle state.
    pub teks_by_state: BTreeMap<String, u64>,
    /// Number of tables with at least one TEK.
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
        let calls = c.provider_calls.load(Ordering::Relaxed);
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut tables = 0u64;
        let mut usage = UsageTotals::default();
        let mut last_table: Option<TableId> = None;
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
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
                hits: c.cache_hits.load(),
                misses: c.cache_misses.load(),
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
