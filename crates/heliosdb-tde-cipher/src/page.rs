//! The sealed page format and [`TableCipher`].
//!
//! ```text
//!  0        1                 5                          17
//!  +--------+-----------------+--------------------------+------------------+-----------+
//!  | format | TEK version     | nonce (96 bits)          | ciphertext       | tag       |
//!  | u8 = 1 | u32 big-endian  | S (8 B) || N (4 B)       | len(plaintext)   | 16 bytes  |
//!  +--------+-----------------+--------------------------+------------------+-----------+
//!  \_____________ header, 17 bytes _____________________/
//! ```
//!
//! The nonce is built as NIST SP 800-38D section 8.2.1 describes: a 64-bit random salt `S`,
//! drawn at the cipher's first seal and again after `fork`, followed by the 32-bit invocation
//! number `N` of the seal (see [`TableCipher::with_reservation`]). Readers treat it as opaque.
//!
//! The GCM associated data is the 17 header bytes followed by the caller's associated data
//! (for example table id and page number), so neither the header nor the page's location can
//! be changed without the open failing. The in-place API keeps header and tag detached, for
//! pages whose size is fixed by the storage engine; the `Vec` API lays them out as drawn.

use crate::aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN};
use crate::error::CipherError;
use crate::nonce::NonceGen;
use crate::usage::{Counter, HARD_LIMIT, UsageLimits, UsageSnapshot};
use heliosdb_tde_core::{TableKey, TekId, TekVersion};
use std::fmt;
use std::ops::Range;

/// The page format version this crate writes.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the page header.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Associated data up to this length is assembled on the stack.
const INLINE_AAD: usize = 128;

/// The parsed header of a sealed page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// The TEK version the page was sealed under.
    pub tek_version: TekVersion,
    /// The page's nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl PageHeader {
    /// Parses a header from the first [`HEADER_LEN`] bytes of `bytes`. Any input gives `Ok` or
    /// [`CipherError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Self, CipherError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(CipherError::Malformed(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte page header",
                bytes.len()
            )));
        };
        if h[0] != FORMAT_VERSION {
            return Err(CipherError::Malformed(format!(
                "page format version {} is not supported (this build reads {FORMAT_VERSION})",
                h[0]
            )));
        }
        let v = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let tek_version = TekVersion::new(v)
            .map_err(|_| CipherError::Malformed("TEK version 0 in page header".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&h[5..HEADER_LEN]);
        Ok(Self { tek_version, nonce })
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = FORMAT_VERSION;
        h[1..5].copy_from_slice(&self.tek_version.get().to_be_bytes());
        h[5..].copy_from_slice(&self.nonce);
        h
    }
}

/// Header and tag of a page sealed in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedParts {
    /// The encoded header; store it with the page.
    pub header: [u8; HEADER_LEN],
    /// The authentication tag; store it with the page.
    pub tag: [u8; TAG_LEN],
}

/// Seals and opens pages under one TEK version.
///
/// Cheap to share across threads (`Send + Sync`); the invocation counter is atomic. A seal
/// takes one invocation number `n` from the counter and uses the nonce `S || N`: `S` is a
/// 64-bit salt drawn from the OS at the first seal (and again at the first seal after a
/// `fork`), `N` a 32-bit invocation number. For [`TableCipher::with_reservation`], `N = n`;
/// for [`TableCipher::new`] and [`TableCipher::with_invocations`], `N = base + n mod 2^32`
/// with a random `base` drawn with the salt. Sealing makes no system call after the first
/// seal, takes no lock and allocates nothing for associated data up to 111 bytes.
pub struct TableCipher {
    key: AeadKey,
    tek: TekId,
    counter: Counter,
    nonces: NonceGen,
}

impl fmt::Debug for TableCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCipher")
            .field("tek", &self.tek.to_string())
            .field("backend", &self.key.backend())
            .field("usage", &self.counter.snapshot())
            .field("reserved", &self.nonces.reserved())
            .finish_non_exhaustive()
    }
}

fn with_full_aad<R>(header: &[u8; HEADER_LEN], aad: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let len = HEADER_LEN + aad.len();
    if len <= INLINE_AAD {
        let mut buf = [0u8; INLINE_AAD];
        buf[..HEADER_LEN].copy_from_slice(header);
        buf[HEADER_LEN..len].copy_from_slice(aad);
        f(&buf[..len])
    } else {
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(header);
        buf.extend_from_slice(aad);
        f(&buf)
    }
}

impl TableCipher {
    /// A cipher for `key` on `backend`, with a fresh invocation count.
    ///
    /// Its nonces are `S || base + n` with a random salt `S` and a random `base`: two such
    /// ciphers on one key (or one after a restart) share a nonce only if both random values
    /// line up, with a probability no higher than with fully random nonces. The key manager
    /// uses [`TableCipher::with_reservation`] instead, whose numbers never repeat.
    pub fn new(key: &TableKey, backend: Backend, limits: UsageLimits) -> Result<Self, CipherError> {
        Self::with_invocations(key, backend, limits, 0)
    }

    /// A cipher whose invocation count starts at `invocations`: the count persisted for this
    /// key by earlier processes, so that the budget is never reset by a restart. Nonces as for
    /// [`TableCipher::new`].
    pub fn with_invocations(
        key: &TableKey,
        backend: Backend,
        limits: UsageLimits,
        invocations: u64,
    ) -> Result<Self, CipherError> {
        Ok(Self {
            key: AeadKey::new(backend, key.bytes().expose_secret())?,
            tek: key.id().clone(),
            counter: Counter::new(invocations, limits),
            nonces: NonceGen::new(false),
        })
    }

    /// A cipher that seals with the invocation numbers of `block` only, a range that the
    /// caller reserved durably for this key (the key manager's `reserve_encryptions`), so that
    /// no other cipher, process or restart ever uses them.
    ///
    /// The first seal gets number `block.start`; sealing is refused with
    /// [`CipherError::NonceBudgetExhausted`] once `block.end` (or `limits.hard()`, if lower) is
    /// reached. The nonce is `S || N` with `N` the absolute invocation number and `S` a salt
    /// drawn for this cipher: make one cipher per reserved block. Usage ([`Self::usage`]) counts
    /// from `block.start`, so it is the key's total, and the limits apply to that total.
    ///
    /// Refuses a block that ends before it starts or beyond 2^32 ([`HARD_LIMIT`], the capacity
    /// of the 32-bit invocation field).
    pub fn with_reservation(
        key: &TableKey,
        backend: Backend,
        limits: UsageLimits,
        block: Range<u64>,
    ) -> Result<Self, CipherError> {
        if block.start > block.end || block.end > HARD_LIMIT {
            return Err(CipherError::InvalidArgument(format!(
                "reserved invocation block {}..{} is not a range within 0..2^32 (the 32-bit \
                 invocation field of the page nonce); reserve a block below the hard limit",
                block.start, block.end
            )));
        }
        Ok(Self {
            key: AeadKey::new(backend, key.bytes().expose_secret())?,
            tek: key.id().clone(),
            counter: Counter::with_stop(block.start, limits, block.end),
            nonces: NonceGen::new(true),
        })
    }

    /// The TEK this cipher uses.
    pub fn tek(&self) -> &TekId {
        &self.tek
    }

    /// The invocation count and limits.
    pub fn usage(&self) -> UsageSnapshot {
        self.counter.snapshot()
    }

    /// Whether the soft limit is reached and the table key should be rotated.
    pub fn rotation_due(&self) -> bool {
        self.usage().rotation_due()
    }

    /// The salt of this cipher's current nonces, once the first seal (in this process, after
    /// the last fork) has drawn it. For diagnostics and tests; the salt is not secret, it is
    /// written in every page header.
    pub fn nonce_salt(&self) -> Option<u64> {
        self.nonces.current_salt()
    }

    fn check_header(&self, header: &[u8]) -> Result<PageHeader, CipherError> {
        let h = PageHeader::parse(header)?;
        if h.tek_version != self.tek.version {
            return Err(CipherError::KeyVersionMismatch {
                expected: self.tek.version,
                found: h.tek_version,
            });
        }
        Ok(h)
    }

    /// Encrypts `page` in place and returns the detached header and tag.
    pub fn seal_in_place(&self, aad: &[u8], page: &mut [u8]) -> Result<SealedParts, CipherError> {
        self.seal_in_place_counted(aad, page)
            .map(|(parts, _)| parts)
    }

    /// [`TableCipher::seal_in_place`], also returning the invocation count after this seal
    /// (its invocation number + 1), so that the caller can compare it with the soft limit
    /// without reading the counter again. Under concurrent seals, the count is this seal's own,
    /// not the latest.
    #[inline]
    pub fn seal_in_place_counted(
        &self,
        aad: &[u8],
        page: &mut [u8],
    ) -> Result<(SealedParts, u64), CipherError> {
        let n = self.counter.take()?;
        let nonce = self.nonces.nonce(n)?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = FORMAT_VERSION;
        header[1..5].copy_from_slice(&self.tek.version.get().to_be_bytes());
        header[5..].copy_from_slice(&nonce);
        let tag = with_full_aad(&header, aad, |full| {
            self.key.seal_detached(&nonce, full, page)
        })?;
        Ok((SealedParts { header, tag }, n + 1))
    }

    /// Decrypts `page` in place. On failure the page buffer is cleared.
    pub fn open_in_place(
        &self,
        parts: &SealedParts,
        aad: &[u8],
        page: &mut [u8],
    ) -> Result<(), CipherError> {
        let h = self.check_header(&parts.header)?;
        with_full_aad(&parts.header, aad, |full| {
            self.key.open_detached(&h.nonce, full, page, &parts.tag)
        })
    }

    /// Seals `plaintext` into `header || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        let parts = self.seal_in_place(aad, &mut out[HEADER_LEN..])?;
        out[..HEADER_LEN].copy_from_slice(&parts.header);
        out.extend_from_slice(&parts.tag);
        Ok(out)
    }

    /// Opens what [`TableCipher::seal`] produced.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(CipherError::Malformed(format!(
                "{} bytes is shorter than header and tag ({} bytes)",
                sealed.len(),
                HEADER_LEN + TAG_LEN
            )));
        }
        let (header_bytes, rest) = sealed.split_at(HEADER_LEN);
        let (ct, tag_bytes) = rest.split_at(rest.len() - TAG_LEN);
        let mut parts = SealedParts {
            header: [0u8; HEADER_LEN],
            tag: [0u8; TAG_LEN],
        };
        parts.header.copy_from_slice(header_bytes);
        parts.tag.copy_from_slice(tag_bytes);
        let mut out = ct.to_vec();
        self.open_in_place(&parts, aad, &mut out)?;
        Ok(out)
    }
}

/// The TEK version a sealed buffer (`Vec` layout) was sealed under, so that the caller can
/// fetch the right key before opening it.
pub fn sealed_tek_version(sealed: &[u8]) -> Result<TekVersion, CipherError> {
    Ok(PageHeader::parse(sealed)?.tek_version)
}
