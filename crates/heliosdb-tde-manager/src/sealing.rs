//! Page sealing through the key manager: [`UsagePolicy`], the per-table page sealer with its
//! persisted nonce-budget reservation, and the automatic TEK rotation at the usage limit.

use crate::KeyManager;
use heliosdb_tde_cipher::{Backend, HARD_LIMIT, SealedParts, TableCipher, UsageLimits};
use heliosdb_tde_core::{AsTableId, Result, TableId};

/// Nonce-budget policy for table keys used through the key manager.
///
/// Built from [`UsagePolicy::default`] and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsagePolicy {
    /// Encryptions after which a table key is rotated automatically (at most 2^32).
    pub soft_limit: u64,
    /// Encryptions reserved (persisted) ahead of use, per reservation: one key store write
    /// transaction per block, and one nonce salt per block. Default 2^20, so the amortised
    /// durable write costs a few nanoseconds per page; the price is that a crash wastes at most
    /// one block (2^20 of the key's 2^31 soft budget, 1/2048), because a restart starts at the
    /// next block.
    pub reservation_block: u64,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            soft_limit: HARD_LIMIT / 2,
            reservation_block: 1 << 20,
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

mod handle;

pub(crate) use handle::TableSeal;
pub use handle::TableSealer;

impl KeyManager {
    /// Seals a page of `table` in place with its active TEK, counting against the key's nonce
    /// budget (persisted ahead of use in blocks). When the key reaches the soft limit, the
    /// table key is rotated automatically and later pages use the new version.
    ///
    /// Each call resolves the table by name; an engine sealing many pages of one table keeps a
    /// [`KeyManager::table_sealer`] handle instead, which does no lookup per page.
    pub async fn seal_page_in_place(
        &self,
        table: &(impl AsTableId + ?Sized),
        aad: &[u8],
        page: &mut [u8],
    ) -> Result<SealedParts> {
        let table = table.as_table_id()?.into_owned();
        self.cached_table_sealer(table)
            .await?
            .seal_in_place(aad, page)
            .await
    }

    /// Seals `plaintext` of `table` into `header || ciphertext || tag`; see
    /// [`KeyManager::seal_page_in_place`].
    pub async fn seal_page(
        &self,
        table: &(impl AsTableId + ?Sized),
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let table = table.as_table_id()?.into_owned();
        self.cached_table_sealer(table)
            .await?
            .seal(aad, plaintext)
            .await
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
        self.table_invocations(&*table.as_table_id().ok()?)
    }

    pub(crate) async fn rotate_for_usage(
        &self,
        table: &TableId,
        enc: &handle::Encryptor,
    ) -> Result<()> {
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
        self.rotate_table_as(table, crate::tek::Trigger::Usage)
            .await?;
        Ok(())
    }
}
