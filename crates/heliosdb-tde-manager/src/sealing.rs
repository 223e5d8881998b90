//! Page sealing through the key manager: [`UsagePolicy`], the per-table page sealer with its
//! persisted nonce-budget reservation, and the automatic TEK rotation at the usage limit.

use crate::{KeyManager, poisoned};
use heliosdb_tde_cipher::{
    Backend, CipherError, HARD_LIMIT, SealedParts, TableCipher, UsageLimits,
};
use heliosdb_tde_core::{AsTableId, Result, TableId, TdeError};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Nonce-budget policy for table keys used through the key manager.
///
/// Built from [`UsagePolicy::default`] and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsagePolicy {
    /// Encryptions after which a table key is rotated automatically (at most 2^32).
    pub soft_limit: u64,
    /// Encryptions reserved (persisted) ahead of use, per reservation.
    pub reservation_block: u64,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            soft_limit: HARD_LIMIT / 2,
            reservation_block: 1 << 16,
        }
    }
}

impl UsagePolicy {
    /// Sets [`UsagePolicy::soft_limit`], the encryptions after which a table key is rotated.
    #[must_use]
    pub fn with_soft_limit(mut self, soft_limit: u64) -> Self {
        self.soft_limit = soft_limit;
        self
    }

    /// Sets [`UsagePolicy::reservation_block`], the encryptions reserved ahead of use.
    #[must_use]
    pub fn with_reservation_block(mut self, reservation_block: u64) -> Self {
        self.reservation_block = reservation_block;
        self
    }
}

/// A page sealer for one TEK version with a persisted reservation of nonce budget.
pub(crate) struct Encryptor {
    cipher: TableCipher,
    block_end: u64,
}

impl KeyManager {
    pub(crate) fn drop_encryptors(&self) -> Result<()> {
        self.encryptors.write().map_err(|_| poisoned())?.clear();
        Ok(())
    }

    /// The sealer for `table`, creating it (and reserving nonce budget) if needed.
    pub(crate) async fn encryptor(&self, table: &TableId) -> Result<Arc<Encryptor>> {
        if let Some(e) = self.encryptors.read().map_err(|_| poisoned())?.get(table) {
            return Ok(e.clone());
        }
        let _guard = self.encryptor_lock.lock().await;
        if let Some(e) = self.encryptors.read().map_err(|_| poisoned())?.get(table) {
            return Ok(e.clone());
        }
        let key = self.active_table_key(table.as_str()).await?;
        // Everything reserved before may have been used (a crash loses the exact count), so
        // this process starts counting at the reservation and takes the next block, read and
        // raised in one store transaction: no other sealer, here or in another process, can be
        // handed the same invocation numbers.
        let block = self
            .store
            .reserve_encryptions(
                key.id(),
                self.config.usage.reservation_block.max(1),
                HARD_LIMIT,
            )
            .await?;
        if block.is_empty() {
            return Err(TdeError::NonceBudgetExhausted {
                key: format!("tek:{}", key.id()),
                invocations: block.start,
            });
        }
        let (start, block_end) = (block.start, block.end);
        let limits = UsageLimits::new(block_end, block_end)?;
        let cipher = TableCipher::with_invocations(&key, Backend::default(), limits, start)?;
        let enc = Arc::new(Encryptor { cipher, block_end });
        self.encryptors
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), enc.clone());
        Ok(enc)
    }

    pub(crate) fn retire_encryptor(&self, table: &TableId, enc: &Arc<Encryptor>) -> Result<()> {
        let mut map = self.encryptors.write().map_err(|_| poisoned())?;
        if map.get(table).is_some_and(|e| Arc::ptr_eq(e, enc)) {
            map.remove(table);
        }
        Ok(())
    }

    /// Seals a page of `table` in place with its active TEK, counting against the key's nonce
    /// budget (persisted ahead of use in blocks). When the key reaches the soft limit, the
    /// table key is rotated automatically and later pages use the new version.
    pub async fn seal_page_in_place(
        &self,
        table: &(impl AsTableId + ?Sized),
        aad: &[u8],
        page: &mut [u8],
    ) -> Result<SealedParts> {
        let table = table.as_table_id()?;
        loop {
            let enc = self.encryptor(&table).await?;
            match enc.cipher.seal_in_place(aad, page) {
                Ok(parts) => {
                    if enc.cipher.usage().invocations >= self.config.usage.soft_limit {
                        // The page is sealed: whatever happens to the rotation, the caller
                        // must get the header and tag, or the page could never be opened.
                        // A failed rotation is logged and counted, and tried again at the next
                        // seal (the key is still over its soft limit then).
                        let rotated = match self.retire_encryptor(&table, &enc) {
                            Ok(()) => self.rotate_for_usage(&table, &enc).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = rotated {
                            self.counters
                                .usage_rotation_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                target: "heliosdb::tde",
                                tek = %enc.cipher.tek(),
                                "the table key reached its usage limit but could not be rotated \
                                 ({e}); the page was sealed, and the rotation is retried at the \
                                 next seal"
                            );
                        }
                    }
                    return Ok(parts);
                }
                Err(CipherError::NonceBudgetExhausted { .. }) => {
                    // The reserved block is spent: reserve the next one (or rotate at 2^32).
                    self.retire_encryptor(&table, &enc)?;
                    if enc.block_end >= HARD_LIMIT {
                        self.rotate_for_usage(&table, &enc).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Seals `plaintext` of `table` into `header || ciphertext || tag`; see
    /// [`KeyManager::seal_page_in_place`].
    pub async fn seal_page(
        &self,
        table: &(impl AsTableId + ?Sized),
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(heliosdb_tde_cipher::HEADER_LEN + plaintext.len() + 16);
        out.extend_from_slice(&[0u8; heliosdb_tde_cipher::HEADER_LEN]);
        out.extend_from_slice(plaintext);
        let parts = self
            .seal_page_in_place(table, aad, &mut out[heliosdb_tde_cipher::HEADER_LEN..])
            .await?;
        out[..heliosdb_tde_cipher::HEADER_LEN].copy_from_slice(&parts.header);
        out.extend_from_slice(&parts.tag);
        Ok(out)
    }

    /// Opens what [`KeyManager::seal_page`] produced, with the TEK version named in its header.
    pub async fn open_page(
        &self,
        table: &(impl AsTableId + ?Sized),
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let version = heliosdb_tde_cipher::sealed_tek_version(sealed)?;
        let key = self.get_table_key(table, Some(version)).await?;
        let cipher = TableCipher::new(&key, Backend::default(), UsageLimits::default())?;
        Ok(cipher.open(aad, sealed)?)
    }

    /// Encryptions counted so far by this process's sealer for the active TEK of `table`
    /// (including the budget reserved by earlier processes), if it has one.
    pub fn sealer_invocations(&self, table: &(impl AsTableId + ?Sized)) -> Option<u64> {
        let table = table.as_table_id().ok()?;
        let map = self.encryptors.read().ok()?;
        map.get(&table).map(|e| e.cipher.usage().invocations)
    }

    pub(crate) async fn rotate_for_usage(&self, table: &TableId, enc: &Encryptor) -> Result<()> {
        // Only rotate if nobody did already.
        let latest = self.store.latest_tek(table).await?;
        if latest.is_some_and(|r| r.id.version > enc.cipher.tek().version) {
            return Ok(());
        }
        tracing::info!(
            target: "heliosdb::tde",
            tek = %enc.cipher.tek(),
            invocations = enc.cipher.usage().invocations,
            "usage limit reached: rotating the table key"
        );
        self.rotate_table(table).await?;
        Ok(())
    }
}
