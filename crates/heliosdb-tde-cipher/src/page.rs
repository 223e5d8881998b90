//! The sealed page format and [`TableCipher`].
//!
//! ```text
//!  0        1                 5                          17
//!  +--------+-----------------+--------------------------+------------------+-----------+
//!  | format | TEK version     | nonce (96 bits, random)  | ciphertext       | tag       |
//!  | u8 = 1 | u32 big-endian  | 12 bytes                 | len(plaintext)   | 16 bytes  |
//!  +--------+-----------------+--------------------------+------------------+-----------+
//!  \_____________ header, 17 bytes _____________________/
//! ```
//!
//! The GCM associated data is the 17 header bytes followed by the caller's associated data
//! (for example table id and page number), so neither the header nor the page's location can
//! be changed without the open failing. The in-place API keeps header and tag detached, for
//! pages whose size is fixed by the storage engine; the `Vec` API lays them out as drawn.

use crate::aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN, random_nonce};
use crate::error::CipherError;
use crate::usage::{Counter, UsageLimits, UsageSnapshot};
use heliosdb_tde_core::{TableKey, TekId, TekVersion};
use std::fmt;

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
/// Cheap to share across threads (`Send + Sync`); the invocation counter is atomic.
pub struct TableCipher {
    key: AeadKey,
    tek: TekId,
    counter: Counter,
}

impl fmt::Debug for TableCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCipher")
            .field("tek", &self.tek.to_string())
            .field("backend", &self.key.backend())
            .field("usage", &self.counter.snapshot())
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
    pub fn new(key: &TableKey, backend: Backend, limits: UsageLimits) -> Result<Self, CipherError> {
        Self::with_invocations(key, backend, limits, 0)
    }

    /// A cipher whose invocation count starts at `invocations`: the count persisted for this
    /// key by earlier processes, so that the budget is never reset by a restart.
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

    fn new_header(&self) -> Result<[u8; HEADER_LEN], CipherError> {
        self.counter.take()?;
        Ok(PageHeader {
            tek_version: self.tek.version,
            nonce: random_nonce()?,
        }
        .encode())
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
        let header = self.new_header()?;
        let h = PageHeader::parse(&header)?;
        let tag = with_full_aad(&header, aad, |full| {
            self.key.seal_detached(&h.nonce, full, page)
        })?;
        Ok(SealedParts { header, tag })
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
