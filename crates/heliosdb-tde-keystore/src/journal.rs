//! Journal entries (checksummed frames) and the commit generation counter.

use crate::{Db, GENERATION, KEY_GENERATION, META, RedbKeyStore};
use heliosdb_tde_core::{Result, TdeError};
use redb::ReadableTable;
use std::sync::atomic::Ordering;

impl RedbKeyStore {
    /// A stored journal value without its checksum, checked (format 2 on).
    pub(crate) fn unframe_journal(&self, name: &str, raw: &[u8]) -> Result<Vec<u8>> {
        if self.format.load(Ordering::SeqCst) < 2 {
            return Ok(raw.to_vec());
        }
        let bad = || {
            TdeError::corrupt(
                "key store journal entry",
                format!("{} ({name})", self.loc()),
                "checksum mismatch: the entry was damaged on disk",
            )
        };
        let split = raw.len().checked_sub(4).ok_or_else(bad)?;
        let (body, crc) = raw.split_at(split);
        if journal_crc(name, body).to_be_bytes() != crc {
            return Err(bad());
        }
        Ok(body.to_vec())
    }

    /// The store's commit generation (0 before the first counted commit).
    pub(crate) fn generation(&self, db: &Db) -> Result<u64> {
        let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        Ok(meta
            .get(GENERATION)
            .map_err(|e| self.err("read generation", e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Counts a change of keys or journal (see
    /// [`StoreIdentity::generation`](heliosdb_tde_core::StoreIdentity)): called inside every
    /// `apply` and integrity-key transaction, never for a nonce reservation.
    pub(crate) fn bump_key_generation(&self, txn: &redb::WriteTransaction) -> Result<()> {
        let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        let g = meta
            .get(KEY_GENERATION)
            .map_err(|e| self.err("read key generation", e))?
            .map(|v| v.value())
            .unwrap_or(0);
        meta.insert(KEY_GENERATION, g.saturating_add(1))
            .map_err(|e| self.err("write key generation", e))?;
        Ok(())
    }

    /// Counts a commit: called inside every write transaction.
    pub(crate) fn bump_generation(&self, txn: &redb::WriteTransaction) -> Result<()> {
        let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        let g = meta
            .get(GENERATION)
            .map_err(|e| self.err("read generation", e))?
            .map(|v| v.value())
            .unwrap_or(0);
        meta.insert(GENERATION, g.wrapping_add(1))
            .map_err(|e| self.err("write generation", e))?;
        Ok(())
    }
}

/// The checksum of a journal entry: CRC-32 over the name's length (u32), the name and the value.
pub(crate) fn journal_crc(name: &str, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(name.as_bytes());
    h.update(body);
    h.finalize()
}

/// A journal value as stored from format 2 on: the value, then its checksum.
pub(crate) fn frame_journal(name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(&journal_crc(name, body).to_be_bytes());
    out
}
