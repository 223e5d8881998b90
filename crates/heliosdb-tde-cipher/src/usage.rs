//! Invocation counting for page sealing: each seal takes one invocation number, which is also
//! the 32-bit invocation field of its nonce (NIST SP 800-38D section 8.2.1, see
//! [`crate::TableCipher`]).

use crate::error::CipherError;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most encryptions one key may perform: 2^32, the capacity of the 32-bit invocation field
/// of the page nonce (NIST SP 800-38D section 8.2.1). No limit may exceed it, so invocation
/// numbers never wrap.
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
                "hard limit {hard} exceeds 2^32, the capacity of the 32-bit invocation field of \
                 the page nonce (NIST SP 800-38D 8.2.1); use at most 4294967296"
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
    /// Numbers from here on are refused: the hard limit, or the end of a reserved block if
    /// that comes first. Never above [`HARD_LIMIT`].
    stop: u64,
}

impl Counter {
    pub(crate) fn new(start: u64, limits: UsageLimits) -> Self {
        Self::with_stop(start, limits, limits.hard)
    }

    /// A counter that also refuses numbers from `stop` on (the end of a reserved block).
    pub(crate) fn with_stop(start: u64, limits: UsageLimits, stop: u64) -> Self {
        Self {
            count: AtomicU64::new(start),
            limits,
            stop: stop.min(limits.hard),
        }
    }

    /// Takes one invocation from the budget and returns its number `n` (the count before
    /// this call; the count is `n + 1` after it), or refuses when the budget is spent.
    #[inline]
    pub(crate) fn take(&self) -> Result<u64, CipherError> {
        // A compare-and-swap loop, so that the counter never passes the stop and a refused
        // call costs nothing. Each `n` is granted exactly once.
        let stop = self.stop;
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < stop).then_some(n + 1)
            })
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
        assert_eq!(c.take(), Ok(0));
        assert!(!c.snapshot().rotation_due());
        assert_eq!(c.take(), Ok(1));
        assert!(c.snapshot().rotation_due());
        assert_eq!(c.take(), Ok(2));
        assert_eq!(
            c.take(),
            Err(CipherError::NonceBudgetExhausted { invocations: 3 })
        );
        assert_eq!(c.snapshot().invocations, 3, "a refused call is not counted");
        assert_eq!(c.snapshot().remaining(), 0);
    }

    #[test]
    fn counter_stops_at_the_end_of_a_reserved_block() {
        let c = Counter::with_stop(10, UsageLimits::new(100, 1000).unwrap(), 12);
        assert_eq!(c.take(), Ok(10));
        assert_eq!(c.take(), Ok(11));
        assert_eq!(
            c.take(),
            Err(CipherError::NonceBudgetExhausted { invocations: 12 })
        );
        assert_eq!(
            c.snapshot().invocations,
            12,
            "a refused call is not counted"
        );
        assert_eq!(
            c.snapshot().remaining(),
            988,
            "the key's budget is not the block's"
        );
        let c = Counter::with_stop(0, UsageLimits::new(1, 2).unwrap(), 5);
        assert_eq!((c.take(), c.take()), (Ok(0), Ok(1)));
        assert!(
            c.take().is_err(),
            "the hard limit comes before the block's end"
        );
    }

    #[test]
    fn counter_is_exact_under_contention() {
        let c = std::sync::Arc::new(Counter::new(0, UsageLimits::new(5_000, 10_000).unwrap()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..5_000).filter_map(|_| c.take().ok()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut granted: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        granted.sort_unstable();
        assert_eq!(
            granted,
            (0..10_000).collect::<Vec<_>>(),
            "each number of the budget is granted once"
        );
        assert_eq!(c.snapshot().invocations, 10_000);
    }
}
