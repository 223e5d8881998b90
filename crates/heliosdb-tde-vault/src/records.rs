//! MEK lifecycle records: one JSON document per MEK in KV version 2, written with
//! check-and-set, cached in memory for at most [`CACHE_TTL`].

use heliosdb_tde_core::{KeyState, MekId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a record read from Vault is trusted without reading it again.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(10);

/// The format of the record documents.
pub(crate) const RECORD_FORMAT: u32 = 1;

/// One MEK version in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub(crate) state: KeyState,
    /// Creation time, milliseconds since the Unix epoch.
    pub(crate) created_at: u64,
    /// Time of the last state change, milliseconds since the Unix epoch.
    pub(crate) changed_at: u64,
}

/// The lifecycle record of one MEK: each version's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) format: u32,
    pub(crate) mek_id: String,
    pub(crate) versions: BTreeMap<u32, VersionRecord>,
}

impl Record {
    /// A record with no versions.
    pub(crate) fn new(id: &MekId) -> Self {
        Self {
            format: RECORD_FORMAT,
            mek_id: id.to_string(),
            versions: BTreeMap::new(),
        }
    }

    /// Sets one version's state (adding the version if new).
    pub(crate) fn set(&mut self, version: u32, state: KeyState, created_at: Option<u64>) {
        let now = Timestamp::now().as_millis();
        let e = self.versions.entry(version).or_insert(VersionRecord {
            state,
            created_at: created_at.unwrap_or(now),
            changed_at: now,
        });
        e.state = state;
        e.changed_at = now;
    }
}

/// A record and the KV version it was read at (0: no record yet), for check-and-set, with the
/// Transit key's properties read at the same time (`None`: no key).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) record: Record,
    pub(crate) kv_version: u64,
    pub(crate) key: Option<crate::transit::KeyProps>,
}

/// Records read recently, by MEK id.
#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<MekId, (Instant, Stored)>>,
}

impl Cache {
    /// A record read less than [`CACHE_TTL`] ago.
    pub(crate) fn get(&self, id: &MekId) -> Option<Stored> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, s)| s.clone())
    }

    /// Remembers a record just read or written.
    pub(crate) fn put(&self, id: &MekId, stored: Stored) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id.clone(), (Instant::now(), stored));
    }

    /// Forgets a record (after a conflict).
    pub(crate) fn forget(&self, id: &MekId) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}
