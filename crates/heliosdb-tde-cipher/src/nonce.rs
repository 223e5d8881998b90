//! Deterministic page nonces (NIST SP 800-38D section 8.2.1).
//!
//! A page nonce is 96 bits: a 64-bit salt `S` followed by a 32-bit invocation number `N`,
//! both big-endian. `S` is drawn from the operating system's CSPRNG lazily, at a cipher's first
//! seal, and again at the first seal after a `fork` (see [`crate::fork`]). `N` is the number
//! the cipher's invocation counter granted to the seal: `N = n` for a cipher made with
//! [`crate::TableCipher::with_reservation`] (its numbers are absolute, from a block reserved
//! durably by the key manager), and `N = base + n mod 2^32` with a random 32-bit `base` drawn
//! with the salt for the other constructors. The uniqueness argument is in
//! `docs/formats/page.md`.
//!
//! The per-seal cost is one relaxed load of the fork generation and three loads of this
//! cipher's salt state; the OS is asked for randomness only on the cold path.

use crate::error::CipherError;
use crate::fork;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Length of the salt `S` in bytes.
pub(crate) const SALT_LEN: usize = 8;

/// The salt and invocation-number base of one cipher, per fork generation.
#[derive(Debug)]
pub(crate) struct NonceGen {
    /// `S`, valid when `ready` holds the current generation + 1.
    salt: AtomicU64,
    /// Added to the invocation number (0 when reserved).
    base: AtomicU32,
    /// Fork generation + 1 that `salt` and `base` belong to; 0 until the first draw.
    ready: AtomicU64,
    /// Fork generation + 1 of the thread drawing a salt right now; 0 when none. A claim left
    /// by an older generation belongs to a thread that does not exist in this process (it was
    /// drawing when another thread forked), so a thread of the current generation takes over.
    claim: AtomicU64,
    /// Whether invocation numbers are absolute (`base` stays 0).
    reserved: bool,
}

impl NonceGen {
    pub(crate) fn new(reserved: bool) -> Self {
        Self {
            salt: AtomicU64::new(0),
            base: AtomicU32::new(0),
            ready: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            reserved,
        }
    }

    /// Whether invocation numbers are absolute.
    pub(crate) fn reserved(&self) -> bool {
        self.reserved
    }

    /// The nonce for invocation number `n`.
    #[inline]
    pub(crate) fn nonce(&self, n: u64) -> Result<[u8; 12], CipherError> {
        let tag = fork::generation().wrapping_add(1);
        if self.ready.load(Ordering::Acquire) != tag {
            self.resalt()?;
        }
        Ok(compose(
            self.salt.load(Ordering::Relaxed),
            self.base.load(Ordering::Relaxed),
            n,
        ))
    }

    /// The salt of the current generation, if one has been drawn (for tests and `Debug`).
    pub(crate) fn current_salt(&self) -> Option<u64> {
        let tag = fork::generation().wrapping_add(1);
        (self.ready.load(Ordering::Acquire) == tag).then(|| self.salt.load(Ordering::Relaxed))
    }

    /// Draws the salt (and base) for the current fork generation, unless another thread of
    /// this generation did so meanwhile.
    #[cold]
    #[inline(never)]
    fn resalt(&self) -> Result<(), CipherError> {
        // Registering before the draw means any fork after it is seen.
        let tag = fork::registered_generation()?.wrapping_add(1);
        loop {
            if self.ready.load(Ordering::Acquire) == tag {
                return Ok(());
            }
            let current = self.claim.load(Ordering::Acquire);
            if current == tag {
                // Another thread of this generation is drawing: wait for it (one getrandom).
                std::thread::yield_now();
                continue;
            }
            if self
                .claim
                .compare_exchange(current, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            // Re-check under the claim: an earlier holder may have finished.
            if self.ready.load(Ordering::Acquire) == tag {
                self.claim.store(0, Ordering::Release);
                return Ok(());
            }
            let drawn = draw();
            if let Ok((salt, base)) = drawn {
                self.salt.store(salt, Ordering::Relaxed);
                self.base
                    .store(if self.reserved { 0 } else { base }, Ordering::Relaxed);
                self.ready.store(tag, Ordering::Release);
            }
            self.claim.store(0, Ordering::Release);
            return drawn.map(|_| ());
        }
    }
}

/// `S || (base + n mod 2^32)`, big-endian.
#[inline]
fn compose(salt: u64, base: u32, n: u64) -> [u8; 12] {
    // Truncation intended: the counter keeps `n` below 2^32 (see `usage::HARD_LIMIT`).
    let number = base.wrapping_add(n as u32);
    let mut out = [0u8; 12];
    out[..SALT_LEN].copy_from_slice(&salt.to_be_bytes());
    out[SALT_LEN..].copy_from_slice(&number.to_be_bytes());
    out
}

/// A fresh salt and base from the OS CSPRNG (or the salt forced by a test hook).
fn draw() -> Result<(u64, u32), CipherError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| CipherError::Random(e.to_string()))?;
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&bytes[..8]);
    let mut base = [0u8; 4];
    base.copy_from_slice(&bytes[8..]);
    let salt = u64::from_be_bytes(salt);
    #[cfg(feature = "test-hooks")]
    let salt = crate::testing::forced_salt().unwrap_or(salt);
    Ok((salt, u32::from_be_bytes(base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_salt_then_number() {
        assert_eq!(
            compose(0x0102_0304_0506_0708, 0, 0x0a0b_0c0d),
            [1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d]
        );
        assert_eq!(
            compose(0, u32::MAX, 2)[8..],
            [0, 0, 0, 1],
            "the number wraps"
        );
    }

    #[test]
    fn the_salt_is_drawn_once_and_reserved_numbers_are_absolute() {
        let g = NonceGen::new(true);
        assert_eq!(g.current_salt(), None, "drawn lazily");
        let a = g.nonce(7).unwrap();
        let b = g.nonce(8).unwrap();
        assert_eq!(a[..8], b[..8], "one salt per generation");
        assert_eq!(a[8..], 7u32.to_be_bytes());
        assert_eq!(b[8..], 8u32.to_be_bytes());
        assert_eq!(
            g.current_salt().map(u64::to_be_bytes),
            Some(a[..8].try_into().unwrap())
        );
    }

    #[test]
    fn concurrent_first_seals_agree_on_one_salt_and_base() {
        let g = std::sync::Arc::new(NonceGen::new(false));
        let salts: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.nonce(0))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        assert!(salts.iter().all(|s| *s == salts[0]), "{salts:?}");
        assert_eq!(
            g.current_salt(),
            Some(u64::from_be_bytes(salts[0][..8].try_into().unwrap()))
        );
    }
}
