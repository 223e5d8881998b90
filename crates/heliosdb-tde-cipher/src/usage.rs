//! Invocation counting for random-nonce AES-GCM (NIST SP 800-38D section 8.3).

use crate::error::CipherError;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most encryptions one key may perform with random 96-bit nonces: 2^32.
pub const HARD_LIMIT: u64 = 1 << 32;

/// When a key should be rotated (soft) and when it must stop encrypting (hard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageLimits {
    soft: u64,
    hard: u64,
}

impl UsageLimits {
    /// Limits with the given soft limit and the NIST hard limit of 2^32.
    pub fn with_soft_limit(soft: u64) -> Result<Self, CipherError> {
        Self::new(soft, HARD_LIMIT)
    }

    /// Custom limits; `soft <= hard <= 2^32` and `soft > 0`. A hard limit below 2^32 is for
    /// stricter policies and for tests.
    pub fn new(soft: u64, hard: u64) -> Result<Self, CipherError> {
        if hard > HARD_LIMIT {
            return Err(CipherError::InvalidArgument(format!(
                "hard limit {hard} exceeds 2^32, the NIST SP 800-38D bound for random nonces"
            )));
        }
        if soft == 0 || soft > hard {
            return Err(CipherError::InvalidArgument(format!(
                "soft limit {soft} must be between 1 and the hard limit {hard}"
            )));
        }
        Ok(Self { soft, hard })
    }

    /// The soft limit: rotation is due from here on.
    pub fn soft(self) -> u64 {
        self.soft
    }

    /// The hard limit: sealing is refused from here on.
    pub fn hard(self) -> u64 {
        self.hard
    }
}

impl Default for UsageLimits {
    /// Soft limit 2^31 (half the budget), hard limit 2^32.
    fn default() -> Self {
        Self {
            soft: HARD_LIMIT / 2,
            hard: HARD_LIMIT,
        }
    }
}

/// A point-in-time view of a key's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageSnapshot {
    /// Encryptions performed (including any counted before this process, see
    /// [`crate::TableCipher::with_invocations`]).
    pub invocations: u64,
    /// The limits in force.
    pub limits: UsageLimits,
}

impl UsageSnapshot {
    /// Whether the soft limit has been reached.
    pub fn rotation_due(&self) -> bool {
        self.invocations >= self.limits.soft
    }

    /// Encryptions left before the hard limit.
    pub fn remaining(&self) -> u64 {
        self.limits.hard.saturating_sub(self.invocations)
    }
}

#[derive(Debug)]
pub(crate) struct Counter {
    count: AtomicU64,
    limits: UsageLimits,
}

impl Counter {
    pub(crate) fn new(start: u64, limits: UsageLimits) -> Self {
        Self {
            count: AtomicU64::new(start),
            limits,
        }
    }

    /// Takes one invocation from the budget, or refuses when it is spent.
    pub(crate) fn take(&self) -> Result<(), CipherError> {
        // A compare-and-swap loop, so that the counter never passes the hard limit and a refused
        // call costs nothing.
        let hard = self.limits.hard;
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < hard).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|n| CipherError::NonceBudgetExhausted { invocations: n })
    }

    pub(crate) fn snapshot(&self) -> UsageSnapshot {
        UsageSnapshot {
            invocations: self.count.load(Ordering::Relaxed),
            limits: self.limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        assert!(UsageLimits::new(1, HARD_LIMIT + 1).is_err());
        assert!(UsageLimits::new(0, 10).is_err());
        assert!(UsageLimits::new(11, 10).is_err());
        assert_eq!(UsageLimits::default().hard(), 1 << 32);
        assert_eq!(UsageLimits::with_soft_limit(5).unwrap().hard(), 1 << 32);
    }

    #[test]
    fn counter_stops_at_the_hard_limit() {
        let c = Counter::new(0, UsageLimits::new(2, 3).unwrap());
        c.take().unwrap();
        assert!(!c.snapshot().rotation_due());
        c.take().unwrap();
        assert!(c.snapshot().rotation_due());
        c.take().unwrap();
        assert_eq!(
            c.take(),
            Err(CipherError::NonceBudgetExhausted { invocations: 3 })
        );
        assert_eq!(c.snapshot().invocations, 3, "a refused call is not counted");
        assert_eq!(c.snapshot().remaining(), 0);
    }

    #[test]
    fn counter_is_exact_under_contention() {
        let c = std::sync::Arc::new(Counter::new(0, UsageLimits::new(5_000, 10_000).unwrap()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..5_000).filter(|_| c.take().is_ok()).count())
            })
            .collect();
        let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(ok, 10_000, "exactly the budget is granted");
        assert_eq!(c.snapshot().invocations, 10_000);
    }
}
