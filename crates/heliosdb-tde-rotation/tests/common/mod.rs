//! Real parts for the rotation tests: the in-memory provider (its MEKs outlive a simulated
//! restart because the same instance is reused) and a redb store on disk.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyId, KeyMetadata, KeyStore, MekId, MekProvider, MekRef, StoreBatch,
    TableKey, TekId, TekRecord, WrapContext,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_memory::InMemoryMekProvider;
use heliosdb_tde_rotation::{RotationConfig, Rotator};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct World {
    pub dir: tempfile::TempDir,
    pub provider: Arc<dyn MekProvider>,
    pub store: Arc<dyn KeyStore>,
    pub mek_id: MekId,
    pub v1: MekRef,
    /// Every TEK created, by id, with its bytes.
    pub keys: BTreeMap<TekId, [u8; 32]>,
}

pub fn config() -> RotationConfig {
    RotationConfig::default()
        .with_concurrency(4)
        .with_batch_size(64)
        .with_max_attempts(3)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .with_grace_period(Duration::from_secs(30 * 86_400))
}

impl World {
    pub async fn new(provider: Arc<dyn MekProvider>, teks: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
        let mek_id = MekId::new("rot_mek").unwrap();
        let v1 = provider
            .generate_mek(&mek_id, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap()
            .mek;
        let mut w = World {
            dir,
            provider,
            store,
            mek_id,
            v1,
            keys: BTreeMap::new(),
        };
        w.add_teks(teks, "t").await;
        w
    }

    pub async fn memory(teks: usize) -> World {
        Self::new(Arc::new(InMemoryMekProvider::new()), teks).await
    }

    /// Adds TEKs wrapped under the MEK's active version.
    pub async fn add_teks(&mut self, n: usize, prefix: &str) {
        let info = self.provider.mek_info(&self.mek_id).await.unwrap();
        let mek = MekRef::new(self.mek_id.clone(), info.active_version().unwrap());
        self.add_teks_under(n, prefix, mek).await;
    }

    /// Adds TEKs wrapped under a given MEK version (which must be able to wrap).
    pub async fn add_teks_under(&mut self, n: usize, prefix: &str, mek: MekRef) {
        let mut batch = StoreBatch::new();
        for i in 0..n {
            let id: TekId = format!("{prefix}{i:05}@v1").parse().unwrap();
            let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
            let wrapped = self
                .provider
                .wrap_tek(&mek, &tek, &WrapContext::table_key(&id))
                .await
                .unwrap();
            let meta = KeyMetadata::new_active(
                KeyId::Table(id.clone()),
                EncryptionAlgorithm::Aes256Gcm,
                Some(mek.clone()),
            );
            self.keys.insert(id.clone(), *tek.bytes().expose_secret());
            batch = batch.insert(TekRecord::new(id, meta, wrapped).unwrap());
        }
        self.store.apply(batch).await.unwrap();
    }

    pub fn rotator(&self) -> Rotator {
        Rotator::new(self.provider.clone(), self.store.clone(), config())
    }

    /// Every TEK unwraps to its original bytes; returns how many are wrapped under `mek`.
    pub async fn check_all_unwrap(&self, mek: &MekRef) -> usize {
        let all = self.store.scan_teks(None, usize::MAX).await.unwrap();
        assert_eq!(all.len(), self.keys.len(), "TEKs were lost or invented");
        let mut under = 0;
        for r in &all {
            let k = self
                .provider
                .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id))
                .await
                .unwrap_or_else(|e| panic!("{} does not unwrap: {e}", r.id));
            assert_eq!(k.bytes().expose_secret(), &self.keys[&r.id], "{}", r.id);
            if &r.wrapped.mek == mek {
                under += 1;
                assert_eq!(r.metadata.wrapped_by.as_ref(), Some(mek));
            }
        }
        under
    }
}

/// Holds a step inside the provider: each `rewrap_tek` call announces itself on `entered` and
/// waits for a permit of `open`.
#[derive(Debug)]
pub struct Gate {
    pub entered: tokio::sync::Notify,
    pub open: tokio::sync::Semaphore,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            entered: tokio::sync::Notify::new(),
            open: tokio::sync::Semaphore::new(0),
        })
    }

    pub fn release(&self) {
        self.open.add_permits(1 << 20);
    }
}

/// Another writer of the journal: on the `at`-th re-wrap, sets the rotation's phase in the
/// store behind the rotator's back.
#[derive(Debug)]
pub struct Interloper {
    pub at: usize,
    pub store: Arc<dyn KeyStore>,
    pub journal: String,
    pub phase: &'static str,
}

/// The in-memory provider behind the test decorator: counts unwraps and re-wraps, and can hold
/// re-wraps at a [`Gate`] ([`hold_rewraps`]) or let an [`Interloper`] write the journal
/// ([`interfere`]).
pub fn hooked() -> Arc<Instrumented> {
    Arc::new(Instrumented::new(Arc::new(InMemoryMekProvider::new())))
}

/// Each `rewrap_tek` call announces itself on the gate's `entered` and waits for a permit of
/// its `open`; [`Instrumented::clear`] of [`Method::RewrapTek`] ends that.
pub fn hold_rewraps(p: &Instrumented, gate: Arc<Gate>) {
    p.before(Method::RewrapTek, move |_| {
        let g = gate.clone();
        Box::pin(async move {
            g.entered.notify_one();
            let _permit = g.open.acquire().await.unwrap();
            Ok(())
        })
    });
}

/// Lets `i` write the journal during the `i.at`-th re-wrap (counted since the provider was
/// made), before that re-wrap runs.
pub fn interfere(p: &Instrumented, i: Interloper) {
    let i = Arc::new(i);
    p.before(Method::RewrapTek, move |call| {
        let i = i.clone();
        Box::pin(async move {
            if call.n == i.at as u64 {
                let raw = i.store.get_journal(&i.journal).await.unwrap().unwrap();
                let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
                v["phase"] = i.phase.into();
                i.store
                    .apply(
                        StoreBatch::new()
                            .put_journal(i.journal.clone(), serde_json::to_vec(&v).unwrap()),
                    )
                    .await
                    .unwrap();
            }
            Ok(())
        })
    });
}

impl World {
    /// Replaces a stored record (as damage or a bad writer would).
    pub async fn put_record(&self, rec: TekRecord) {
        self.store
            .apply(StoreBatch::new().upsert(rec))
            .await
            .unwrap();
    }

    pub async fn record(&self, id: &str) -> TekRecord {
        let id: TekId = id.parse().unwrap();
        self.store.get_tek(&id).await.unwrap().unwrap()
    }

    /// The state of one MEK version in the provider.
    pub async fn mek_state(&self, mek: &MekRef) -> heliosdb_tde_core::KeyState {
        let info = self.provider.mek_info(&self.mek_id).await.unwrap();
        info.versions.iter().find(|v| &v.mek == mek).unwrap().state
    }
}
