//! `KeyManager`: the control path of the HeliosDB TDE key hierarchy.
//!
//! The manager owns the lifecycle of table encryption keys (TEKs) over any [`MekProvider`] and
//! any [`KeyStore`]:
//!
//! * it refuses insecure providers in production mode ([`KeyManager::validate_security`]);
//! * it creates TEKs from the OS CSPRNG, wraps them under the active MEK version bound to their
//!   identity, and stores them ([`KeyManager::create_table_key`]);
//! * it rotates a table's TEK: the new version becomes active for encryption and older versions
//!   become decrypt-only, in one store transaction ([`KeyManager::rotate_table_key`]);
//! * it caches unwrapped TEKs in a bounded cache with single-flight misses, so a cold cache
//!   under a thousand concurrent readers costs one provider unwrap, and hits are a synchronous
//!   lookup ([`KeyManager::get_cached_table_key`]).

pub mod audit;
mod config;
mod rotation;
mod stats;

pub use audit::{AuditVerification, FileAuditSink, verify_audit_log};
pub use config::KeyManagerConfig;
pub use heliosdb_tde_rotation::{Phase, Progress, RotationConfig, RotationState, Verification};
pub use rotation::{EmergencyRotation, MekRotationResult, UsagePolicy};
pub use stats::{CacheStats, KeyStats, ProviderStats, UsageTotals};

use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{
    AuditAction, AuditEvent, AuditSink, KeyId, KeyMetadata, KeyState,
    KeyStore, KeyType, MekId, MekInfo, MekProvider, MekRef, Result, SecurityMode, StoreBatch,
    StoreOp, TableId, TableKey, TdeError, TekId, TekRecord, TekVersion, WrapContext,
};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use stats::Counters;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Counts evictions; the evicted `Arc<TableKey>` is dropped right after, and its bytes are
/// zeroized as soon as no caller still holds it.
#[derive(Clone, Debug)]
struct EvictionCounter(Arc<AtomicU64>);

impl Lifecycle<TekId, Arc<TableKey>> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: TekId, _val: Arc<TableKey>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type TekCache = Cache<TekId, Arc<TableKey>, UnitWeighter, DefaultHashBuilder, EvictionCounter>;

/// The key manager.
pub struct KeyManager {
    /// The MEK provider (public so that the guide's `km.mek_provider.generate_mek(..)` works).
    pub mek_provider: Arc<dyn MekProvider>,
    store: Arc<dyn KeyStore>,
    audit: Option<Arc<dyn AuditSink>>,
    config: KeyManagerConfig,
    cache: TekCache,
    counters: Counters,
    /// The active TEK version of each table seen by this process.
    active_versions: RwLock<HashMap<TableId, TekVersion>>,
    /// The MEK version new TEKs are wrapped under, once known.
    active_mek: RwLock<Option<MekRef>>,
    /// Serialises TEK creation and rotation (rare; reads never take it).
    mutations: tokio::sync::Mutex<()>,
    /// Page sealers per table, with their reserved nonce budget.
    encryptors: RwLock<HashMap<TableId, Arc<rotation::Encryptor>>>,
    /// Serialises sealer creation, so that two sealers never share a reservation.
    encryptor_lock: tokio::sync::Mutex<()>,
    /// The store integrity key (held as the key check canary), once loaded.
    integrity: RwLock<Option<Arc<TableKey>>>,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("provider", &self.mek_provider.description())
            .field("store", &self.store.location())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn poisoned() -> TdeError {
    TdeError::ProviderUnavailable {
        provider: "key manager".into(),
        reason: "internal lock poisoned by a panic in another thread".into(),
        retryable: false,
    }
}

impl KeyManager {
    /// A manager over `provider` and `store`.
    pub fn new(
        provider: Arc<dyn MekProvider>,
        store: Arc<dyn KeyStore>,
        config: KeyManagerConfig,
    ) -> Result<Self> {
        if config.cache_limit == 0 {
            return Err(TdeError::config("cache_limit", "must be at least 1"));
        }
        let counters = Counters::default();
        let cache = TekCache::with(
            config.cache_limit,
            u64::try_from(config.cache_limit).unwrap_or(u64::MAX),
            UnitWeighter,
            DefaultHashBuilder::default(),
            EvictionCounter(counters.cache_evictions.clone()),
        );
        Ok(Self {
            mek_provider: provider,
            store,
            audit: None,
            config,
            cache,
            counters,
            active_versions: RwLock::new(HashMap::new()),
            active_mek: RwLock::new(None),
            mutations: tokio::sync::Mutex::new(()),
            encryptors: RwLock::new(HashMap::new()),
            encryptor_lock: tokio::sync::Mutex::new(()),
            integrity: RwLock::new(None),
        })
    }

    /// Sends audit events to `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Whether an audit sink is attached.
    pub fn has_audit(&self) -> bool {
        self.audit.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &KeyManagerConfig {
        &self.config
    }

    /// The security mode.
    pub fn security_mode(&self) -> SecurityMode {
        self.config.security_mode
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    pub(crate) async fn audit(&self, event: AuditEvent) {
        if let Some(sink) = &self.audit
            && let Err(e) = sink.record(event).await
        {
            tracing::error!(target: "heliosdb::tde::audit", "audit record failed: {e}");
        }
    }

    /// Times a provider call into the statistics.
    async fn call<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let r = f.await;
        self.counters.provider_call(start.elapsed(), r.is_ok());
        r
    }

    /// Refuses an insecure provider in production mode; in development mode logs a warning and
    /// returns it.
    pub fn validate_security(&self) -> Result<Option<String>> {
        if self.mek_provider.is_secure() {
            return Ok(None);
        }
        let err = TdeError::InsecureProvider {
            provider: self.mek_provider.description(),
        };
        if self.config.security_mode.is_production() {
            return Err(err);
        }
        let warning = format!("{err} (running in development mode)");
        tracing::warn!(target: "heliosdb::tde", "{warning}");
        Ok(Some(warning))
    }

    /// Makes sure the default MEK exists and returns its active version.
    ///
    /// The MEK is generated only on a true first start: when the provider does not have it
    /// *and* the key store holds nothing that depends on it (no TEK wrapped under it, no
    /// rotation journal, no key check value). If anything depends on it, the MEK was lost or the
    /// provider points at the wrong place: that is [`TdeError::MekMissing`], and nothing is
    /// created. When the MEK exists, its key check value is unwrapped to prove that it is the
    /// key this store was written with ([`TdeError::MekMismatch`] otherwise), and written if the
    /// store has none yet.
    pub async fn ensure_default_mek(&self) -> Result<MekRef> {
        self.default_mek(true).await
    }

    /// [`KeyManager::ensure_default_mek`] for read-only use: checks the default MEK and its key
    /// check value, but never generates a key and never writes.
    pub async fn check_default_mek(&self) -> Result<MekRef> {
        self.default_mek(false).await
    }

    async fn default_mek(&self, may_write: bool) -> Result<MekRef> {
        let id = self.config.default_mek_id.clone();
        let info = match self.call(self.mek_provider.mek_info(&id)).await {
            Ok(info) => info,
            Err(TdeError::KeyNotFound { .. }) => {
                let deps = self.mek_dependents(&id).await?;
                if deps.teks > 0 || deps.journal {
                    return Err(TdeError::MekMissing {
                        mek: id.to_string(),
                        provider: self.mek_provider.description(),
                        store: self.store.location(),
                        teks: deps.teks,
                        tables: deps.tables,
                    });
                }
                if !may_write {
                    return Err(TdeError::KeyNotFound {
                        key: format!("mek:{id}"),
                        hint: format!(
                            "the MEK provider {} has no such MEK and the key store is empty; \
                             start HeliosDB (or run `heliosdb-cli security tek create`) once to \
                             create it",
                            self.mek_provider.description()
                        ),
                    });
                }
                let v = self
                    .call(self.mek_provider.generate_mek(&id, self.config.algorithm))
                    .await?;
                self.audit(AuditEvent::success(
                    AuditAction::MekGenerated,
                    Some(KeyId::Master(v.mek.clone())),
                    self.mek_provider.description(),
                ))
                .await;
                self.write_key_check(&v.mek).await?;
                self.set_active_mek(v.mek.clone())?;
                return Ok(v.mek);
            }
            Err(e) => return Err(e),
        };
        let active = active_of(&info)?;
        self.verify_key_check(&active, may_write).await?;
        self.set_active_mek(active.clone())?;
        Ok(active)
    }

    /// What in the key store depends on MEK `id`.
    async fn mek_dependents(&self, id: &MekId) -> Result<MekDependents> {
        let mut deps = MekDependents::default();
        let mut last_table: Option<TableId> = None;
        self.store.tek_pages(None, 4096).for_each(|page| {
            for r in page {
                let under = r.wrapped.mek.id == *id
                    || r.previous_wrap.as_ref().is_some_and(|p| p.mek.id == *id);
                if under {
                    deps.teks += 1;
                    if last_table.as_ref() != Some(&r.id.table) {
                        deps.tables += 1;
                        last_table = Some(r.id.table.clone());
                    }
                }
            }
            Ok(())
        })
        .await?;
        deps.journal = self
            .store
            .get_journal(&format!("mek_rotation/{id}"))
            .await?
            .is_some();
        Ok(deps)
    }

    /// Stores the key check value of `mek`: the store integrity key (a random 256-bit key,
    /// created once per store) wrapped under `mek`. Unwrapping it at start proves that the
    /// provider holds the MEK this store was written with, and gives the key that
    /// authenticates the store's records.
    async fn write_key_check(&self, mek: &MekRef) -> Result<()> {
        let canary = match self.integrity_key()? {
            Some(k) => k,
            None => match self.older_integrity_key(mek).await? {
                Some(k) => Arc::new(k),
                None => {
                    let (canary_id, _) = key_check_context();
                    Arc::new(TableKey::generate(canary_id, self.config.algorithm)?)
                }
            },
        };
        let (_, ctx) = key_check_context();
        let wrapped = self
            .call(self.mek_provider.wrap_tek(mek, &canary, &ctx))
            .await?;
        let bytes = heliosdb_tde_core::KeyBytes::from_slice(canary.bytes().expose_secret())?;
        self.store
            .set_integrity_key(bytes, Some((key_check_entry(mek), wrapped.encode())))
            .await?;
        *self.integrity.write().map_err(|_| poisoned())? = Some(canary);
        Ok(())
    }

    /// The integrity key from the newest older version of `mek`'s MEK that has a key check
    /// value which unwraps, if any.
    async fn older_integrity_key(&self, mek: &MekRef) -> Result<Option<TableKey>> {
        let mut v = mek.version.get();
        while v > 1 {
            v -= 1;
            let older = MekRef::new(mek.id.clone(), heliosdb_tde_core::MekVersion::new(v)?);
            if let Some(Ok(canary)) = self.read_key_check(&older).await? {
                return Ok(Some(canary));
            }
        }
        Ok(None)
    }

    fn integrity_key(&self) -> Result<Option<Arc<TableKey>>> {
        Ok(self.integrity.read().map_err(|_| poisoned())?.clone())
    }

    /// Keeps the store integrity key and hands it to the store, which from then on
    /// authenticates every record it reads and writes.
    async fn load_integrity_key(&self, canary: Arc<TableKey>) -> Result<()> {
        let bytes = heliosdb_tde_core::KeyBytes::from_slice(canary.bytes().expose_secret())?;
        self.store.set_integrity_key(bytes, None).await?;
        *self.integrity.write().map_err(|_| poisoned())? = Some(canary);
        Ok(())
    }

    /// Unwraps the key check value stored for `mek`, if there is one.
    async fn read_key_check(&self, mek: &MekRef) -> Result<Option<Result<TableKey>>> {
        let Some(bytes) = self.store.get_journal(&key_check_entry(mek)).await? else {
            return Ok(None);
        };
        let wrapped = heliosdb_tde_core::WrappedTek::decode(&bytes).map_err(|e| {
            TdeError::corrupt(
                "key check value",
                format!("{} ({})", self.store.location(), key_check_entry(mek)),
                e.to_string(),
            )
        })?;
        if wrapped.mek != *mek {
            return Ok(Some(Err(TdeError::KeyNotFound {
                key: format!("mek:{mek}"),
                hint: "the key check value names another MEK version".into(),
            })));
        }
        let (_, ctx) = key_check_context();
        Ok(Some(
            self.call(self.mek_provider.unwrap_tek(&wrapped, &ctx))
                .await,
        ))
    }

    /// Unwraps the key check value of `mek` and loads the store integrity key from it.
    /// Without one (a store written before key checks existed, or an MEK version created
    /// outside a rotation), one TEK wrapped under `mek` is unwrapped instead; then, when
    /// `may_write`, the integrity key (from another version's key check value, or new) is
    /// wrapped under `mek` and the store's records are authenticated.
    async fn verify_key_check(&self, mek: &MekRef, may_write: bool) -> Result<()> {
        let mismatch = || TdeError::MekMismatch {
            mek: mek.to_string(),
            provider: self.mek_provider.description(),
            store: self.store.location(),
        };
        let judge = |r: Result<TableKey>| match r {
            Ok(k) => Ok(k),
            Err(e @ (TdeError::ProviderUnavailable { .. } | TdeError::Io { .. })) => Err(e),
            Err(TdeError::KeyNotFound { .. } | TdeError::AuthenticationFailed { .. }) => {
                Err(mismatch())
            }
            Err(e) => Err(e),
        };
        if let Some(r) = self.read_key_check(mek).await? {
            let canary = judge(r)?;
            return self.load_integrity_key(Arc::new(canary)).await;
        }
        // No key check value yet: prove the MEK on one of the TEKs it wraps, if any.
        let mut sample: Option<TekRecord> = None;
        self.store.tek_pages(None, 4096).for_each(|page| {
            if sample.is_none() {
                sample = page.into_iter().find(|r| r.wrapped.mek == *mek);
            }
            Ok(())
        })
        .await?;
        if let Some(r) = sample {
            judge(
                self.call(
                    self.mek_provider
                        .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id)),
                )
                .await,
            )?;
        }
        // A read-only start can still verify records with the integrity key wrapped under an
        // older version of this MEK.
        if !may_write
            && self.integrity_key()?.is_none()
            && let Some(canary) = self.older_integrity_key(mek).await?
        {
            self.load_integrity_key(Arc::new(canary)).await?;
        }
        if may_write {
            self.write_key_check(mek).await?;
        }
        Ok(())
    }

    /// The key store's identity (hex), written when the store was created; `None` for a store
    /// created before stores had one.
    pub async fn store_id(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get_journal("store/id")
            .await?
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// Checks that every MEK version some stored TEK depends on is in the provider and unwraps
    /// one of its TEKs, and lists the tables that cannot be read. Read-only.
    pub async fn key_availability(&self) -> Result<KeyAvailability> {
        // For each MEK version: how many TEKs it wraps and one of them to try.
        let mut by_mek: BTreeMap<MekRef, (u64, Option<TekRecord>)> = BTreeMap::new();
        let mut teks: Vec<(TableId, MekRef, Option<MekRef>)> = Vec::new();
        self.store.tek_pages(None, 4096).for_each(|page| {
            for r in page {
                for (i, w) in std::iter::once(&r.wrapped)
                    .chain(r.previous_wrap.as_ref())
                    .enumerate()
                {
                    let e = by_mek.entry(w.mek.clone()).or_insert((0, None));
                    e.0 += 1;
                    if i == 0 && e.1.is_none() {
                        e.1 = Some(r.clone());
                    }
                }
                teks.push((
                    r.id.table.clone(),
                    r.wrapped.mek.clone(),
                    r.previous_wrap.as_ref().map(|p| p.mek.clone()),
                ));
            }
            Ok(())
        })
        .await?;
        let mut infos: BTreeMap<MekId, Result<MekInfo>> = BTreeMap::new();
        let mut meks = Vec::with_capacity(by_mek.len());
        for (mek, (count, sample)) in by_mek {
            if !infos.contains_key(&mek.id) {
                let info = self.call(self.mek_provider.mek_info(&mek.id)).await;
                infos.insert(mek.id.clone(), info);
            }
            let present = match infos.get(&mek.id) {
                Some(Ok(info)) => info.versions.iter().any(|v| v.mek == mek),
                _ => false,
            };
            let mut error = match infos.get(&mek.id) {
                Some(Err(e)) => Some(e.to_string()),
                _ if !present => Some("the provider does not have this MEK version".into()),
                _ => None,
            };
            let mut unwraps = false;
            if present {
                let tried = match &sample {
                    Some(r) => self
                        .call(
                            self.mek_provider
                                .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id)),
                        )
                        .await
                        .map(|_| ()),
                    // Only kept as a previous wrap: its presence is what can be checked.
                    None => Ok(()),
                };
                match tried {
                    Ok(()) => unwraps = true,
                    Err(e) => error = Some(e.to_string()),
                }
            }
            meks.push(MekAvailability {
                mek,
                teks: count,
                present,
                unwraps,
                error,
            });
        }
        let ok = |m: &MekRef| meks.iter().any(|a| a.mek == *m && a.unwraps);
        let mut unreadable_tables: Vec<TableId> = Vec::new();
        for (table, cur, prev) in &teks {
            let readable = ok(cur) || prev.as_ref().is_some_and(ok);
            if !readable && unreadable_tables.last() != Some(table) {
                unreadable_tables.push(table.clone());
            }
        }
        let store = match self.store_id().await? {
            Some(id) => format!("{} (id {id})", self.store.location()),
            None => self.store.location(),
        };
        Ok(KeyAvailability {
            store,
            meks,
            unreadable_tables,
        })
    }

    /// Generates a new MEK (version 1) in the provider.
    pub async fn generate_mek(&self, mek_id: &str) -> Result<MekRef> {
        let id = MekId::new(mek_id)?;
        let v = self
            .call(self.mek_provider.generate_mek(&id, self.config.algorithm))
            .await?;
        self.audit(AuditEvent::success(
            AuditAction::MekGenerated,
            Some(KeyId::Master(v.mek.clone())),
            self.mek_provider.description(),
        ))
        .await;
        Ok(v.mek)
    }

    fn set_active_mek(&self, mek: MekRef) -> Result<()> {
        *self.active_mek.write().map_err(|_| poisoned())? = Some(mek);
        Ok(())
    }

    /// The MEK version new TEKs are wrapped under.
    pub async fn active_mek(&self) -> Result<MekRef> {
        if let Some(m) = self.active_mek.read().map_err(|_| poisoned())?.clone() {
            return Ok(m);
        }
        let info = self
            .call(self.mek_provider.mek_info(&self.config.default_mek_id))
            .await?;
        let active = active_of(&info)?;
        self.set_active_mek(active.clone())?;
        Ok(active)
    }

    /// Forgets the cached active MEK version (after a rotation changed it).
    pub fn refresh_active_mek(&self) -> Result<()> {
        *self.active_mek.write().map_err(|_| poisoned())? = None;
        Ok(())
    }

    /// Describes the default MEK and its versions.
    pub async fn mek_info(&self) -> Result<MekInfo> {
        self.call(self.mek_provider.mek_info(&self.config.default_mek_id))
            .await
    }

    /// Creates version 1 of a table's TEK: 256 fresh bits from the OS CSPRNG, wrapped under the
    /// active MEK version with the AAD binding, stored durably, and cached.
    pub async fn create_table_key(&self, table: &str) -> Result<KeyMetadata> {
        let table = TableId::new(table)?;
        let _guard = self.mutations.lock().await;
        if let Some(existing) = self.store.latest_tek(&table).await? {
            return Err(TdeError::AlreadyExists {
                key: format!("tek:{} (the table has keys; rotate instead)", existing.id),
            });
        }
        let id = TekId::new(table.clone(), TekVersion::FIRST);
        let record = self.new_record(&id).await?;
        let meta = record.0.metadata.clone();
        self.store.apply(StoreBatch::new().insert(record.0)).await?;
        self.cache.insert(id.clone(), Arc::new(record.1));
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table, id.version);
        self.audit(AuditEvent::success(
            AuditAction::TekCreated,
            Some(KeyId::Table(id)),
            format!(
                "wrapped under {}",
                meta.wrapped_by
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            ),
        ))
        .await;
        Ok(meta)
    }

    /// Creates version 1 of the TEK of each table in one store transaction: all or none. For
    /// setting up many tables at once.
    pub async fn create_table_keys(&self, tables: &[&str]) -> Result<Vec<KeyMetadata>> {
        let tables: Vec<TableId> = tables
            .iter()
            .map(|t| TableId::new(*t))
            .collect::<Result<_>>()?;
        let _guard = self.mutations.lock().await;
        let mut batch = StoreBatch::new();
        let mut metas = Vec::with_capacity(tables.len());
        let mut keys = Vec::with_capacity(tables.len());
        for table in &tables {
            let id = TekId::new(table.clone(), TekVersion::FIRST);
            let (rec, tek) = self.new_record(&id).await?;
            metas.push(rec.metadata.clone());
            batch = batch.insert(rec);
            keys.push(tek);
        }
        // The store refuses the whole batch if any table already has a key.
        self.store.apply(batch).await?;
        {
            let mut active = self.active_versions.write().map_err(|_| poisoned())?;
            for tek in keys {
                active.insert(tek.id().table.clone(), TekVersion::FIRST);
                self.cache.insert(tek.id().clone(), Arc::new(tek));
            }
        }
        self.audit(AuditEvent::success(
            AuditAction::TekCreated,
            None,
            format!("{} table keys created in one batch", metas.len()),
        ))
        .await;
        Ok(metas)
    }

    /// A fresh TEK for `id`, wrapped under the active MEK, as a record plus the clear key.
    async fn new_record(&self, id: &TekId) -> Result<(TekRecord, TableKey)> {
        let mek = self.active_mek().await?;
        let tek = TableKey::generate(id.clone(), self.config.algorithm)?;
        let ctx = WrapContext::table_key(id);
        let wrapped = self
            .call(self.mek_provider.wrap_tek(&mek, &tek, &ctx))
            .await?;
        let meta = KeyMetadata::new_active(
            KeyId::Table(id.clone()),
            self.config.algorithm,
            Some(wrapped.mek.clone()),
        );
        Ok((TekRecord::new(id.clone(), meta, wrapped)?, tek))
    }

    /// A table's TEK: the given version, or the newest one.
    pub async fn get_table_key(
        &self,
        table: &str,
        version: Option<TekVersion>,
    ) -> Result<Arc<TableKey>> {
        let table = TableId::new(table)?;
        let version = match version {
            Some(v) => v,
            None => self.latest_version(&table).await?,
        };
        self.get_tek(&TekId::new(table, version)).await
    }

    /// The TEK that encrypts new data for `table`: its newest, active version.
    pub async fn active_table_key(&self, table: &str) -> Result<Arc<TableKey>> {
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

    async fn latest_version(&self, table: &TableId) -> Result<TekVersion> {
        if let Some(v) = self
            .active_versions
            .read()
            .map_err(|_| poisoned())?
            .get(table)
            .copied()
        {
            return Ok(v);
        }
        let latest = self
            .store
            .latest_tek(table)
            .await?
            .ok_or_else(|| TdeError::KeyNotFound {
                key: format!("table {table}"),
                hint: "create its key first (`heliosdb-cli security tek create`)".into(),
            })?;
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), latest.id.version);
        Ok(latest.id.version)
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

    /// Lists keys: MEK versions, TEK versions, or both.
    pub async fn list_keys(&self, key_type: Option<KeyType>) -> Result<Vec<KeyMetadata>> {
        let mut out = Vec::new();
        if key_type != Some(KeyType::Table) {
            for id in self.call(self.mek_provider.list_meks()).await? {
                let info = self.call(self.mek_provider.mek_info(&id)).await?;
                for v in info.versions {
                    out.push(KeyMetadata {
                        key_id: KeyId::Master(v.mek),
                        state: v.state,
                        algorithm: v.algorithm,
                        wrapped_by: None,
                        created_at: v.created_at,
                        state_changed_at: v.created_at,
                        usage: Default::default(),
                    });
                }
            }
        }
        if key_type != Some(KeyType::Master) {
            self.store.tek_pages(None, 1024).for_each(|page| {
                out.extend(page.into_iter().map(|r| r.metadata));
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// Rotates a table's TEK: a new version becomes active for encryption and every older
    /// active version becomes decrypt-only, in one transaction. `key_id` names any version of
    /// the table's key (as listed by [`KeyManager::list_keys`]).
    pub async fn rotate_table_key(&self, key_id: &KeyId) -> Result<KeyMetadata> {
        let KeyId::Table(tek) = key_id else {
            return Err(TdeError::Unsupported {
                what: format!("rotate_table_key on {key_id}"),
                hint: "MEKs are rotated with rotate_mek_with_dual_encryption".into(),
            });
        };
        self.rotate_table(&tek.table).await
    }

    /// Rotates the TEK of `table`; see [`KeyManager::rotate_table_key`].
    pub async fn rotate_table(&self, table: &TableId) -> Result<KeyMetadata> {
        let _guard = self.mutations.lock().await;
        let versions = self.store.table_teks(table).await?;
        let latest = versions.last().ok_or_else(|| TdeError::KeyNotFound {
            key: format!("table {table}"),
            hint: "create its key first".into(),
        })?;
        let id = TekId::new(table.clone(), latest.id.version.next()?);
        let (record, tek) = self.new_record(&id).await?;
        let meta = record.metadata.clone();
        let mut batch = StoreBatch::new().insert(record);
        for old in versions {
            if old.metadata.state == KeyState::Active {
                // Read-modify-write in the store: a concurrent MEK rewrap of this record is
                // never undone.
                batch = batch.push(StoreOp::SetState {
                    id: old.id,
                    state: KeyState::DecryptOnly,
                });
            }
        }
        self.store.apply(batch).await?;
        self.encryptors
            .write()
            .map_err(|_| poisoned())?
            .remove(table);
        self.cache.insert(id.clone(), Arc::new(tek));
        self.active_versions
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), id.version);
        self.audit(AuditEvent::success(
            AuditAction::TekRotated,
            Some(KeyId::Table(id)),
            "older versions are decrypt-only",
        ))
        .await;
        Ok(meta)
    }

    /// Cache, provider, state and usage statistics.
    pub async fn key_stats(&self) -> Result<KeyStats> {
        let c = &self.counters;
        let calls = c.provider_calls.load(Ordering::Relaxed);
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut tables = 0u64;
        let mut usage = UsageTotals::default();
        let mut last_table: Option<TableId> = None;
        self.store.tek_pages(None, 4096).for_each(|page| {
            for r in page {
                *by_state
                    .entry(stats::state_name(r.metadata.state))
                    .or_default() += 1;
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

/// Whether one MEK version that stored TEKs depend on is usable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MekAvailability {
    /// The MEK version.
    pub mek: MekRef,
    /// How many stored TEK wraps (current or kept previous) are under it.
    pub teks: u64,
    /// Whether the provider has this version.
    pub present: bool,
    /// Whether one of its TEKs unwrapped through the provider.
    pub unwraps: bool,
    /// Why it is not usable, if it is not.
    pub error: Option<String>,
}

/// What [`KeyManager::key_availability`] found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyAvailability {
    /// The key store's location and identity (see [`KeyManager::store_id`]).
    pub store: String,
    /// Every MEK version some stored TEK depends on.
    pub meks: Vec<MekAvailability>,
    /// Tables with at least one TEK version that no available MEK version can unwrap.
    pub unreadable_tables: Vec<TableId>,
}

impl KeyAvailability {
    /// Whether every stored TEK can be unwrapped.
    pub fn all_readable(&self) -> bool {
        self.unreadable_tables.is_empty()
    }
}

/// What in a key store depends on one MEK.
#[derive(Debug, Default)]
struct MekDependents {
    teks: u64,
    tables: u64,
    journal: bool,
}

/// The identity and wrap context of the key check canary.
fn key_check_context() -> (TekId, WrapContext) {
    let id = TekId::new(
        // A valid table id, and the purpose keeps it apart from any real table's key.
        TableId::new("heliosdb.keycheck").unwrap_or_else(|_| unreachable!("a valid table id")),
        TekVersion::FIRST,
    );
    let mut ctx = WrapContext::table_key(&id);
    ctx.purpose = heliosdb_tde_core::WrapPurpose::KeyCheck;
    (id, ctx)
}

/// The journal entry holding the key check value of `mek`.
pub fn key_check_entry(mek: &MekRef) -> String {
    format!("keycheck/{mek}")
}

pub(crate) fn not_found(id: &TekId) -> TdeError {
    TdeError::KeyNotFound {
        key: format!("tek:{id}"),
        hint: "no such table key version in the key store".into(),
    }
}

fn active_of(info: &MekInfo) -> Result<MekRef> {
    let v = info
        .active_version()
        .ok_or_else(|| TdeError::InvalidKeyState {
            key: format!("mek:{}", info.id),
            state: info
                .versions
                .last()
                .map(|v| v.state)
                .unwrap_or(KeyState::Deactivated),
            operation: "wrap new table keys".into(),
            hint: "no version of this MEK is active; rotate it or reactivate a version".into(),
        })?;
    Ok(MekRef::new(info.id.clone(), v))
}
