//! Issue 14 item 1: nonces of pages sealed through the key manager never repeat under one TEK,
//! whatever the sequence of seals (by handle and by name), restarts (a new manager over the
//! same redb store, as after a crash), table rotations and reservation block sizes.
//!
//! The nonce salt is forced to one constant on the test thread, so that uniqueness must come
//! from the invocation numbers reserved in the store, never from the random salt.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_cipher::testing::force_salt;
use heliosdb_tde_core::{KeyStore, MekId, MekProvider, SecurityMode, TableId};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, UsagePolicy};
use heliosdb_tde_memory::InMemoryMekProvider;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

const SALT: u64 = 0x0123_4567_89ab_cdef;
const TABLE: &str = "public.users";

#[derive(Clone, Debug)]
enum Op {
    /// Seal this many pages through one `table_sealer` handle.
    SealByHandle(u32),
    /// Seal this many pages through `seal_page` by name.
    SealByName(u32),
    /// Drop the manager and its store and open new ones over the same directory.
    Restart,
    /// Rotate the table's key.
    Rotate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..8).prop_map(Op::SealByHandle),
        3 => (1u32..8).prop_map(Op::SealByName),
        2 => Just(Op::Restart),
        1 => Just(Op::Rotate),
    ]
}

fn open(dir: &Path, provider: &Arc<dyn MekProvider>, block: u64, soft: u64) -> KeyManager {
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir).unwrap());
    let config = KeyManagerConfig::new(
        MekId::new("master_key_001").unwrap(),
        SecurityMode::Development,
    )
    .with_usage(
        UsagePolicy::default()
            .with_soft_limit(soft)
            .with_reservation_block(block),
    );
    KeyManager::new(provider.clone(), store, config).unwrap()
}

/// One sealed page (`header || ciphertext || tag`) and its AAD.
struct Sealed {
    aad: [u8; 4],
    bytes: Vec<u8>,
}

async fn run(ops: Vec<Op>, block: u64, soft: u64) {
    force_salt(Some(SALT));
    let dir = tempfile::tempdir().unwrap();
    let provider: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let mut km = open(dir.path(), &provider, block, soft);
    km.ensure_default_mek().await.unwrap();
    km.create_table_key(TABLE).await.unwrap();
    let table: TableId = TABLE.parse().unwrap();

    let mut sealed: Vec<Sealed> = Vec::new();
    let mut next_aad = 0u32;
    let mut aad = || {
        next_aad += 1;
        next_aad.to_be_bytes()
    };
    for op in ops {
        match op {
            Op::SealByHandle(n) => {
                let sealer = km.table_sealer(TABLE).await.unwrap();
                for _ in 0..n {
                    let aad = aad();
                    let bytes = sealer.seal(&aad, b"page").await.unwrap();
                    sealed.push(Sealed { aad, bytes });
                }
            }
            Op::SealByName(n) => {
                for _ in 0..n {
                    let aad = aad();
                    let bytes = km.seal_page(TABLE, &aad, b"page").await.unwrap();
                    sealed.push(Sealed { aad, bytes });
                }
            }
            Op::Restart => {
                drop(km);
                km = open(dir.path(), &provider, block, soft);
                // As at every start: loads the store's integrity key.
                km.ensure_default_mek().await.unwrap();
            }
            Op::Rotate => {
                km.rotate_table(&table).await.unwrap();
            }
        }
    }

    // Per TEK version: distinct nonces, all with the forced salt, and every invocation number
    // below the count the store recorded (reserved) for that version.
    let mut seen: HashMap<u32, HashSet<[u8; 12]>> = HashMap::new();
    for s in &sealed {
        let version = u32::from_be_bytes(s.bytes[1..5].try_into().unwrap());
        let nonce: [u8; 12] = s.bytes[5..17].try_into().unwrap();
        assert_eq!(u64::from_be_bytes(nonce[..8].try_into().unwrap()), SALT);
        assert!(
            seen.entry(version).or_default().insert(nonce),
            "nonce {nonce:02x?} used twice under version {version}"
        );
        let n = u32::from_be_bytes(nonce[8..].try_into().unwrap());
        let rec = km
            .store()
            .get_tek(&format!("{TABLE}@v{version}").parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(
            u64::from(n) < rec.metadata.usage.encryptions,
            "invocation {n} of version {version} is beyond the recorded {}",
            rec.metadata.usage.encryptions
        );
        assert_eq!(
            km.open_page(TABLE, &s.aad, &s.bytes).await.unwrap(),
            b"page"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn nonces_per_tek_never_repeat(
        ops in proptest::collection::vec(op(), 1..16),
        block in 1u64..6,
        soft in prop_oneof![Just(1u64 << 31), 5u64..40],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, block, soft));
    }
}
