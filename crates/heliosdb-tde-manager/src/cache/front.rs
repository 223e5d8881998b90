//! The per-thread front of the TEK cache: a small map of `Weak<TableKey>` that answers repeat
//! hits without touching the shared cache.
//!
//! It holds only weak references, so it never keeps a key alive: a key the shared cache
//! evicted and nobody else holds is dropped, and its bytes zeroized, exactly as without the
//! front. An entry is served only while the cache's invalidation epoch is the one it was filled
//! under (see [`super::TekCache`]).
//!
//! Entries are keyed by the hash of the [`TekId`], not by the id itself, so that filling the
//! front copies no id (no allocation on a miss); an entry is served only if the key it points
//! to carries the id asked for, so two ids with one hash can only cost a miss, never serve the
//! wrong key.

use crate::stats::ThreadCounts;
use heliosdb_tde_core::{TableKey, TekId};
use quick_cache::DefaultHashBuilder;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};

/// The most entries one thread's front holds (fewer if the cache limit is lower).
pub(super) const FRONT_MAX: usize = 4096;

/// One thread's state for one manager: its front map and its counters. Aligned so that two
/// threads' entries (which `thread_local` lays out side by side) never share a cache line:
/// every lookup writes the `RefCell` flag.
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct Local {
    pub(super) front: RefCell<Front>,
    /// Also listed in the cache's registry, which sums them for the statistics.
    pub(super) counts: Arc<ThreadCounts>,
}

/// A thread's map from TEK id to a weak reference to the cached key.
#[derive(Debug)]
pub(super) struct Front {
    /// The invalidation epoch every entry of `map` was filled under.
    epoch: u64,
    /// At most this many entries; the map is emptied when it is full.
    cap: usize,
    hasher: DefaultHashBuilder,
    map: HashMap<u64, Weak<TableKey>, BuildHasherDefault<Prehashed>>,
}

/// The hasher of the front's map, whose keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the map's keys are `u64`); fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Front {
    pub(super) fn new(cap: usize, epoch: u64) -> Self {
        Self {
            epoch,
            cap: cap.max(1),
            hasher: DefaultHashBuilder::default(),
            map: HashMap::default(),
        }
    }

    /// The key `id` if this front has it, it is still alive, and no invalidation happened since
    /// it was filled (`epoch` is the cache's current epoch). Dead entries are dropped; an epoch
    /// change empties the whole map.
    pub(super) fn lookup(&mut self, id: &TekId, epoch: u64) -> Option<Arc<TableKey>> {
        if self.epoch != epoch {
            self.map.clear();
            self.epoch = epoch;
            return None;
        }
        let h = self.hasher.hash_one(id);
        match self.map.get(&h)?.upgrade() {
            Some(key) if key.id() == id => Some(key),
            // Another id with the same hash: a miss (the entry stays for that id).
            Some(_) => None,
            None => {
                self.map.remove(&h);
                None
            }
        }
    }

    /// Remembers `key` under `id`, read from the shared cache after the epoch `epoch` was
    /// loaded. An entry read under an older epoch than this front's is not kept: an
    /// invalidation may have happened since.
    pub(super) fn put(&mut self, id: &TekId, key: &Arc<TableKey>, epoch: u64) {
        if epoch > self.epoch {
            self.map.clear();
            self.epoch = epoch;
        }
        if epoch != self.epoch {
            return;
        }
        let h = self.hasher.hash_one(id);
        if self.map.len() >= self.cap && !self.map.contains_key(&h) {
            self.map.clear();
        }
        self.map.insert(h, Arc::downgrade(key));
    }

    /// [`Front::put`], unless the front is full under the current epoch.
    pub(super) fn put_if_room(&mut self, id: &TekId, key: &Arc<TableKey>, epoch: u64) {
        if epoch == self.epoch && self.map.len() >= self.cap {
            return;
        }
        self.put(id, key, epoch);
    }

    /// Drops the entry for `id`.
    pub(super) fn forget(&mut self, id: &TekId) {
        self.map.remove(&self.hasher.hash_one(id));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use heliosdb_tde_core::EncryptionAlgorithm;

    fn key(id: &str) -> Arc<TableKey> {
        Arc::new(TableKey::generate(id.parse().unwrap(), EncryptionAlgorithm::default()).unwrap())
    }

    #[test]
    fn an_entry_is_served_only_under_its_epoch_and_while_alive() {
        let mut f = Front::new(4, 0);
        let a = key("a@v1");
        f.put(a.id(), &a, 0);
        assert!(Arc::ptr_eq(&f.lookup(a.id(), 0).unwrap(), &a));
        // An invalidation (epoch 1) empties the front.
        assert!(f.lookup(a.id(), 1).is_none());
        assert_eq!(f.len(), 0);
        // A key read under epoch 0, put after the front moved to epoch 1, is not kept.
        f.put(a.id(), &a, 0);
        assert!(f.lookup(a.id(), 1).is_none());
        assert_eq!(f.len(), 0);
        // A key nobody holds is not served and its entry goes.
        let b = key("b@v1");
        f.put(b.id(), &b, 1);
        let id = b.id().clone();
        drop(b);
        assert!(f.lookup(&id, 1).is_none());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn an_entry_whose_key_has_another_id_is_a_miss() {
        let mut f = Front::new(4, 0);
        let a = key("a@v1");
        let b = key("b@v1");
        // Plant `b` under the hash of `a`, as a hash collision would.
        let h = f.hasher.hash_one(a.id());
        f.map.insert(h, Arc::downgrade(&b));
        assert!(f.lookup(a.id(), 0).is_none(), "never the key of another id");
        f.put(a.id(), &a, 0);
        assert!(Arc::ptr_eq(&f.lookup(a.id(), 0).unwrap(), &a));
    }

    #[test]
    fn a_miss_fills_only_a_front_with_room() {
        let mut f = Front::new(2, 0);
        let keys: Vec<_> = (0..3).map(|i| key(&format!("t{i}@v1"))).collect();
        f.put_if_room(keys[0].id(), &keys[0], 0);
        f.put_if_room(keys[1].id(), &keys[1], 0);
        f.put_if_room(keys[2].id(), &keys[2], 0);
        assert_eq!(f.len(), 2);
        assert!(
            f.lookup(keys[0].id(), 0).is_some(),
            "a full front is not emptied"
        );
        assert!(f.lookup(keys[2].id(), 0).is_none());
        // Under a newer epoch the old entries are gone, so there is room again.
        f.put_if_room(keys[2].id(), &keys[2], 1);
        assert_eq!(f.len(), 1);
        assert!(f.lookup(keys[2].id(), 1).is_some());
    }

    #[test]
    fn a_full_front_is_emptied_and_never_exceeds_its_cap() {
        let mut f = Front::new(3, 0);
        let keys: Vec<_> = (0..10).map(|i| key(&format!("t{i}@v1"))).collect();
        for k in &keys {
            f.put(k.id(), k, 0);
            assert!(f.len() <= 3);
        }
        // Refreshing an entry already present does not empty a full front.
        let last = &keys[9];
        let before = f.len();
        f.put(last.id(), last, 0);
        assert_eq!(f.len(), before);
        assert!(f.lookup(last.id(), 0).is_some());
    }
}
