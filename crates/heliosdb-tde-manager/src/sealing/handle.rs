//! The per-table sealing handle [`TableSealer`]: a fast path over the calling thread's copy of
//! the table's current [`Encryptor`], and the slow path that reserves nonce budget and rotates the key at its usage
//! limit.

use crate::KeyManager;
use arc_swap::ArcSwapOption;
use heliosdb_tde_cipher::{
    Backend, CipherError, HARD_LIMIT, HEADER_LEN, SealedParts, TableCipher, UsageLimits,
};
use heliosdb_tde_core::{Result, TableId, TableKey, TdeError};
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use thread_local::ThreadLocal;

/// A page sealer for one TEK version over one block of invocation numbers reserved durably in
/// the key store.
pub(crate) struct Encryptor {
    pub(crate) cipher: TableCipher,
    pub(crate) block_end: u64,
    /// Set before the encryptor is swapped out (block spent, table rotation): a handle that
    /// still sees it takes the slow path.
    retired: AtomicBool,
    /// Held by the one seal that rotates the key once this encryptor reached the soft limit.
    rotating: AtomicBool,
}

impl Encryptor {
    fn is_live(&self) -> bool {
        !self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

/// The sealing state of one table, shared by the manager and every handle to the table.
///
/// Entries are never removed from the manager's map (there is one per table sealed by this
/// process), so a handle and the manager always agree on which encryptor is current.
#[derive(Default)]
pub(crate) struct TableSeal {
    current: ArcSwapOption<Encryptor>,
    /// Each sealing thread's copy of `current`, so that a seal writes nothing shared (not even
    /// a reference count): it is replaced when the thread finds it retired. Every replacement
    /// of `current` retires the previous encryptor first, so the `retired` flag is all a copy
    /// needs. The price: a thread that stops sealing this table keeps its retired copy (the
    /// expanded key of a version the manager also still holds to open pages) until the
    /// manager is dropped.
    local: ThreadLocal<RefCell<Option<Arc<Encryptor>>>>,
    /// Bumped by every retirement from outside the slow path (a table rotation, dropping all
    /// sealers): the slow path re-checks it after publishing a new encryptor, so an encryptor
    /// made from a key read before a rotation is never kept after it.
    epoch: AtomicU64,
}

impl TableSeal {
    /// The current encryptor, if there is one and it is not retired.
    fn live(&self) -> Option<Arc<Encryptor>> {
        self.current.load_full().filter(|e| e.is_live())
    }

    /// Retires `enc` and swaps it out if it is still current.
    fn retire(&self, enc: &Arc<Encryptor>) {
        enc.retire();
        let _previous = self.current.compare_and_swap(&Some(enc.clone()), None);
    }

    /// Retires whatever encryptor is current: the table's key changed.
    pub(crate) fn retire_current(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.current.load().as_deref() {
            e.retire();
        }
        if let Some(e) = self.current.swap(None) {
            e.retire();
        }
    }

    /// Encryptions counted by the current encryptor (absolute, including earlier reservations).
    pub(crate) fn invocations(&self) -> Option<u64> {
        self.current
            .load()
            .as_deref()
            .map(|e| e.cipher.usage().invocations)
    }
}

/// What the fast path did.
enum Fast {
    /// Sealed, under the soft limit.
    Sealed(SealedParts),
    /// Sealed, and the key reached its soft limit: rotate.
    AtLimit(SealedParts, Arc<Encryptor>),
    /// Not sealed: no live encryptor.
    Slow,
    /// Not sealed: this encryptor's block is spent.
    Spent(Arc<Encryptor>),
    /// Not sealed: the cipher refused (the error is converted off the common path, so that
    /// the common result stays small).
    Failed(CipherError),
}

/// The sealing handle of one table: made once by [`KeyManager::table_sealer`], then each
/// [`TableSealer::seal_in_place`] reads the calling thread's copy of the table's current
/// encryptor and seals: no allocation, lock, lookup, shared write (not even a reference count)
/// or await on the common path. The slow path (once per
/// reserved block, at the usage limit, after a rotation) reserves the next block durably in the
/// key store and rotates the key when due.
///
/// The handle follows the table: after a table rotation, an emergency MEK rotation or a spent
/// block, its next seal uses the new encryptor. Any number of handles to one table may exist
/// and be shared between threads; they share the manager's one budget per key.
pub struct TableSealer<'a> {
    km: &'a KeyManager,
    table: TableId,
    seal: Arc<TableSeal>,
}

impl fmt::Debug for TableSealer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSealer")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl TableSealer<'_> {
    /// The table.
    pub fn table(&self) -> &TableId {
        &self.table
    }

    /// Encryptions counted so far by this process's current encryptor for the table's active
    /// TEK (including the budget reserved by earlier processes), if it has one.
    pub fn invocations(&self) -> Option<u64> {
        self.seal.invocations()
    }

    /// Seals `page` in place with the table's active TEK; returns the page header (naming the
    /// TEK version) and the tag. See [`KeyManager::seal_page_in_place`] for the accounting.
    pub async fn seal_in_place(&self, aad: &[u8], page: &mut [u8]) -> Result<SealedParts> {
        // The rare paths are boxed, so that this future stays small: the common case
        // neither allocates nor moves a large state machine.
        match self.fast(aad, page) {
            Fast::Sealed(parts) => Ok(parts),
            Fast::Failed(e) => Err(e.into()),
            Fast::AtLimit(parts, enc) => {
                Box::pin(self.km.usage_limit_reached(&self.table, &self.seal, &enc)).await;
                Ok(parts)
            }
            Fast::Slow => Box::pin(self.slow(aad, page, None)).await,
            Fast::Spent(enc) => Box::pin(self.slow(aad, page, Some(enc))).await,
        }
    }

    /// Seals `plaintext` into `header || ciphertext || tag`.
    pub async fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        let parts = self.seal_in_place(aad, &mut out[HEADER_LEN..]).await?;
        out[..HEADER_LEN].copy_from_slice(&parts.header);
        out.extend_from_slice(&parts.tag);
        Ok(out)
    }

    /// The common case, synchronous: this thread's copy of the current encryptor seals.
    #[inline]
    fn fast(&self, aad: &[u8], page: &mut [u8]) -> Fast {
        let local = self.seal.local.get_or_default();
        if let Some(enc) = local.borrow().as_ref()
            && enc.is_live()
        {
            return self.seal_with(enc, aad, page);
        }
        // Refresh this thread's copy (dropping a retired one) from the shared current one.
        let current = self.seal.current.load_full().filter(|e| e.is_live());
        local.replace(current.clone());
        match current {
            Some(enc) => self.seal_with(&enc, aad, page),
            None => Fast::Slow,
        }
    }

    #[inline]
    fn seal_with(&self, enc: &Arc<Encryptor>, aad: &[u8], page: &mut [u8]) -> Fast {
        // The count this seal returns is its own (its invocation number + 1): no second load
        // of the shared counter.
        match enc.cipher.seal_in_place_counted(aad, page) {
            Ok((parts, count)) if count >= self.km.config.usage.soft_limit => {
                Fast::AtLimit(parts, enc.clone())
            }
            Ok((parts, _)) => Fast::Sealed(parts),
            Err(CipherError::NonceBudgetExhausted { .. }) => Fast::Spent(enc.clone()),
            Err(e) => Fast::Failed(e),
        }
    }

    /// The slow path: reserve a block (or rotate at 2^32) until a live encryptor seals.
    async fn slow(
        &self,
        aad: &[u8],
        page: &mut [u8],
        mut spent: Option<Arc<Encryptor>>,
    ) -> Result<SealedParts> {
        loop {
            if let Some(enc) = spent.take() {
                // The reserved block is spent: reserve the next one (or rotate at 2^32).
                self.seal.retire(&enc);
                if enc.block_end >= HARD_LIMIT {
                    self.km.rotate_for_usage(&self.table, &enc).await?;
                }
            }
            let enc = self.km.encryptor(&self.table, &self.seal).await?;
            match enc.cipher.seal_in_place_counted(aad, page) {
                Ok((parts, count)) => {
                    if count >= self.km.config.usage.soft_limit {
                        self.km
                            .usage_limit_reached(&self.table, &self.seal, &enc)
                            .await;
                    }
                    return Ok(parts);
                }
                Err(CipherError::NonceBudgetExhausted { .. }) => spent = Some(enc),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl KeyManager {
    /// The sealing handle for `table`'s pages. Fails early if the table has no key or its
    /// newest version cannot encrypt, or if the table is reserved (`_heliosdb...`: HeliosDB's
    /// own keys never seal pages); the table id is validated once, here.
    pub async fn table_sealer(
        &self,
        table: &(impl heliosdb_tde_core::AsTableId + ?Sized),
    ) -> Result<TableSealer<'_>> {
        let table = table.as_table_id()?.into_owned();
        if table.is_reserved() {
            return Err(crate::reserved_table_error(&table));
        }
        self.encrypting_key(&table).await?;
        let seal = self.table_seal_entry(&table)?;
        Ok(TableSealer {
            km: self,
            table,
            seal,
        })
    }

    /// The handle for `table`, checking the table's key only the first time this process seals
    /// it (the per-name sealing path).
    pub(crate) async fn cached_table_sealer(&self, table: TableId) -> Result<TableSealer<'_>> {
        let known = self
            .encryptors
            .read()
            .map_err(|_| crate::poisoned())?
            .get(&table)
            .cloned();
        let seal = match known {
            Some(seal) => seal,
            None => {
                // HeliosDB's own keys (the audit key) never seal pages.
                if table.is_reserved() {
                    return Err(crate::reserved_table_error(&table));
                }
                self.encrypting_key(&table).await?;
                self.table_seal_entry(&table)?
            }
        };
        Ok(TableSealer {
            km: self,
            table,
            seal,
        })
    }

    fn table_seal_entry(&self, table: &TableId) -> Result<Arc<TableSeal>> {
        let mut map = self.encryptors.write().map_err(|_| crate::poisoned())?;
        Ok(map.entry(table.clone()).or_default().clone())
    }

    /// Retires every table's encryptor (the next seal of each reserves anew with the then
    /// active key).
    pub(crate) fn drop_encryptors(&self) -> Result<()> {
        let map = self.encryptors.read().map_err(|_| crate::poisoned())?;
        for seal in map.values() {
            seal.retire_current();
        }
        Ok(())
    }

    /// Retires `table`'s encryptor: call after its active version changed.
    pub(crate) fn retire_encryptor(&self, table: &TableId) -> Result<()> {
        let map = self.encryptors.read().map_err(|_| crate::poisoned())?;
        if let Some(seal) = map.get(table) {
            seal.retire_current();
        }
        Ok(())
    }

    /// Encryptions counted by `table`'s current encryptor, if it has one.
    pub(crate) fn table_invocations(&self, table: &TableId) -> Option<u64> {
        let map = self.encryptors.read().ok()?;
        map.get(table).and_then(|s| s.invocations())
    }

    /// The live encryptor of `table`, creating it (and reserving nonce budget) if needed.
    async fn encryptor(&self, table: &TableId, seal: &TableSeal) -> Result<Arc<Encryptor>> {
        if let Some(e) = seal.live() {
            return Ok(e);
        }
        let _guard = self.encryptor_lock.lock().await;
        loop {
            if let Some(e) = seal.live() {
                return Ok(e);
            }
            let epoch = seal.epoch.load(Ordering::SeqCst);
            let enc = Arc::new(self.new_encryptor(table).await?);
            seal.current.store(Some(enc.clone()));
            // Either this load sees a concurrent retirement's bump, or that retirement's swap
            // sees (and retires) the encryptor just stored: both are sequentially consistent.
            if seal.epoch.load(Ordering::SeqCst) == epoch {
                return Ok(enc);
            }
            seal.retire(&enc);
        }
    }

    /// The key that encrypts `table`'s new pages: its active version; or, during a rotation
    /// (by this manager, in flight, or by another manager over the same store) that already
    /// made the version this process knows decrypt-only, the store's newest version if it can
    /// encrypt, rather than fail the page.
    async fn encrypting_key(&self, table: &TableId) -> Result<Arc<TableKey>> {
        match self.active_table_key(table).await {
            Ok(key) => Ok(key),
            Err(e @ TdeError::InvalidKeyState { .. }) => {
                match self.store.latest_tek(table).await? {
                    Some(r) if r.metadata.state.can_encrypt() => self.get_tek(&r.id).await,
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// An encryptor for `table`'s active TEK over a freshly reserved block.
    async fn new_encryptor(&self, table: &TableId) -> Result<Encryptor> {
        let key = self.encrypting_key(table).await?;
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
        // The block's numbers are this encryptor's nonces (`S || N`, N absolute, S drawn for
        // this block at its first seal): no two sealers over this store history share an N.
        let block_end = block.end;
        let limits = UsageLimits::new(block_end, block_end)?;
        let cipher = TableCipher::with_reservation(&key, Backend::default(), limits, block)?;
        Ok(Encryptor {
            cipher,
            block_end,
            retired: AtomicBool::new(false),
            rotating: AtomicBool::new(false),
        })
    }

    /// The page is sealed and the key reached its soft limit: rotate the key. Whatever happens
    /// to the rotation, the caller must get the header and tag, or the page could never be
    /// opened: a failed rotation is logged and counted, and tried again at the next seal (the
    /// key is still over its soft limit then).
    ///
    /// Of the seals that find one encryptor at its limit (several threads may), one rotates
    /// while the others return at once. The encryptor keeps sealing from its reserved block
    /// (under the hard limit) until the rotation retires it, so a failing rotation wastes no
    /// block; and usage rotations run under the sealer lock, so a seal that reaches the limit
    /// on the old version after a rotation finds the new version and rotates no second time.
    async fn usage_limit_reached(&self, table: &TableId, seal: &TableSeal, enc: &Arc<Encryptor>) {
        if !enc.is_live() || enc.rotating.swap(true, Ordering::AcqRel) {
            return;
        }
        let rotated = {
            // Released however this ends, a cancelled seal future included.
            let _rotating = Release(&enc.rotating);
            let _guard = self.encryptor_lock.lock().await;
            self.rotate_for_usage(table, enc).await
        };
        match rotated {
            // Rotated here (which retired the encryptor), or by someone else already, possibly
            // another manager over the store: the next seal reserves with the newest version.
            Ok(()) => seal.retire(enc),
            Err(e) => {
                self.counters
                    .usage_rotation_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "heliosdb::tde",
                    tek = %enc.cipher.tek(),
                    "the table key reached its usage limit but could not be rotated ({e}); the \
                     page was sealed, and the rotation is retried at the next seal"
                );
            }
        }
    }
}

/// Clears a flag when dropped.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
