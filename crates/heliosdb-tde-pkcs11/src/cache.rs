//! The object handle and lifecycle state of each MEK version, kept in the provider so that a
//! steady-state wrap or unwrap makes no object search.
//!
//! * An entry is used for at most `state_refresh` after it was read from the token
//!   ([`VersionCache::fresh`]); after that the next operation reads the token again.
//! * This process's own changes (a new version, a state change, a destruction, a rotation)
//!   drop the entry at once and move the epoch on ([`VersionCache::invalidate`]), so that a
//!   read that began before the change cannot store what it read over it
//!   ([`VersionCache::store`]).
//! * A handle the token no longer accepts (another process destroyed the object, or the
//!   application was logged out) drops the entry ([`VersionCache::forget`]), and the operation
//!   goes through the full lookup once more.
//! * The handles that passed [`check_key`](crate::keys::check_key) in this process are kept
//!   apart from the entries ([`VersionCache::is_checked`]), so that a re-read of the same
//!   object does not read its attributes again.

use cryptoki::object::ObjectHandle;
use heliosdb_tde_core::{KeyState, MekRef};
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the token said about one MEK version, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cached<H = ObjectHandle> {
    /// The version's key object.
    pub(crate) key: H,
    /// The version's lifecycle state.
    pub(crate) state: KeyState,
    read_at: Instant,
}

struct Maps<H> {
    entries: HashMap<MekRef, Cached<H>>,
    checked: HashMap<MekRef, H>,
}

/// Handles and states per MEK version. See the [module documentation](self). (Generic over
/// the handle type only so that the unit tests need no token.)
pub(crate) struct VersionCache<H = ObjectHandle> {
    /// Moved on by every change this process makes to the token's MEK objects.
    epoch: AtomicU64,
    maps: RwLock<Maps<H>>,
}

impl<H> Default for VersionCache<H> {
    fn default() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            maps: RwLock::new(Maps {
                entries: HashMap::new(),
                checked: HashMap::new(),
            }),
        }
    }
}

impl<H: Copy + Eq> VersionCache<H> {
    /// The epoch to pass to [`VersionCache::store`]: read it before reading the token.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The entry of `mek` if it was read less than `refresh` ago (never with a zero
    /// `refresh`).
    pub(crate) fn fresh(&self, mek: &MekRef, refresh: Duration) -> Option<Cached<H>> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.entries
            .get(mek)
            .copied()
            .filter(|c| c.read_at.elapsed() < refresh)
    }

    /// Stores what a read of the token that began at `epoch` found, unless this process
    /// changed the token's MEK objects since then. Returns whether it was stored.
    pub(crate) fn store(&self, mek: &MekRef, key: H, state: KeyState, epoch: u64) -> bool {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        // Compared under the write lock: `invalidate` moves the epoch under the same lock.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        maps.entries.insert(
            mek.clone(),
            Cached {
                key,
                state,
                read_at: Instant::now(),
            },
        );
        true
    }

    /// After this process changed `mek` on the token: drops its entry and its checked handle,
    /// and discards every read that began before.
    pub(crate) fn invalidate(&self, mek: &MekRef) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        maps.entries.remove(mek);
        maps.checked.remove(mek);
    }

    /// Drops the entry of `mek` (the token refused its handle); the next operation reads the
    /// token again.
    pub(crate) fn forget(&self, mek: &MekRef) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        maps.entries.remove(mek);
    }

    /// Whether `key` is the object of `mek` that passed the attribute check in this process.
    pub(crate) fn is_checked(&self, mek: &MekRef, key: H) -> bool {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.checked.get(mek) == Some(&key)
    }

    /// Records that `key` passed the attribute check as `mek`'s object.
    pub(crate) fn mark_checked(&self, mek: &MekRef, key: H) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        maps.checked.insert(mek.clone(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::{MekId, MekVersion};

    fn mek(v: u32) -> MekRef {
        MekRef::new(
            MekId::new("cache_mek").unwrap(),
            MekVersion::new(v).unwrap(),
        )
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_stored_entry_is_fresh_until_the_interval_and_never_with_zero() {
        let c = VersionCache::<u64>::default();
        let h = 7;
        assert!(c.store(&mek(1), h, KeyState::Active, c.epoch()));
        let got = c.fresh(&mek(1), LONG).unwrap();
        assert_eq!((got.key, got.state), (h, KeyState::Active));
        assert_eq!(
            c.fresh(&mek(1), Duration::ZERO),
            None,
            "0 = read every call"
        );
        assert_eq!(c.fresh(&mek(2), LONG), None);
    }

    #[test]
    fn a_read_that_began_before_a_local_change_is_discarded() {
        let c = VersionCache::<u64>::default();
        let m = mek(1);
        let began = c.epoch();
        // This process changes the version while the read is on the token...
        c.invalidate(&m);
        // ...so what the read found (the old state) is not stored.
        assert!(!c.store(&m, 3, KeyState::Active, began));
        assert_eq!(c.fresh(&m, LONG), None);
        // A read that began after the change is stored.
        assert!(c.store(&m, 3, KeyState::DecryptOnly, c.epoch()));
        assert_eq!(c.fresh(&m, LONG).unwrap().state, KeyState::DecryptOnly);
    }

    #[test]
    fn a_local_change_drops_the_entry_and_the_checked_handle() {
        let c = VersionCache::<u64>::default();
        let (m, other) = (mek(1), mek(2));
        let h = 9;
        c.mark_checked(&m, h);
        c.store(&m, h, KeyState::Active, c.epoch());
        c.store(&other, h, KeyState::Active, c.epoch());
        assert!(c.is_checked(&m, h));
        assert!(!c.is_checked(&m, 10), "another object is checked again");
        c.invalidate(&m);
        assert_eq!(c.fresh(&m, LONG), None);
        assert!(!c.is_checked(&m, h));
        assert!(
            c.fresh(&other, LONG).is_some(),
            "other versions keep their entries"
        );
    }

    #[test]
    fn a_refused_handle_is_forgotten_but_stays_checked() {
        let c = VersionCache::<u64>::default();
        let m = mek(1);
        let h = 4;
        c.mark_checked(&m, h);
        c.store(&m, h, KeyState::Active, c.epoch());
        let e = c.epoch();
        c.forget(&m);
        assert_eq!(c.fresh(&m, LONG), None);
        assert!(c.is_checked(&m, h));
        assert_eq!(c.epoch(), e, "forgetting is not a change of the token");
    }
}
