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
    RotationConfig {
        concurrency: 4,
        batch_size: 64,
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        grace_period: Duration::from_secs(30 * 86_400),
    }
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
