//! Rotation tuning ([`RotationConfig`]) and what the steps report ([`Progress`], [`Verification`]).

use crate::{Phase, RotationState};
use heliosdb_tde_core::TekId;
use std::time::Duration;

/// Tuning and policy of a rotation.
///
/// Built from [`RotationConfig::default`] and the `with_*` methods, so that a new field is not
/// a breaking change:
///
/// ```
/// # use heliosdb_tde_rotation::RotationConfig;
/// # use std::time::Duration;
/// let config = RotationConfig::default()
///     .with_batch_size(64)
///     .with_grace_period(Duration::from_secs(7 * 86_400));
/// assert_eq!(config.batch_size, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationConfig {
    /// Re-wraps in flight at once (bounds the load on a remote KMS or HSM).
    pub concurrency: usize,
    /// TEKs per store transaction.
    pub batch_size: usize,
    /// Attempts per TEK on retryable errors, the first included.
    pub max_attempts: u32,
    /// First backoff delay; doubles on each retry, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// How long both MEK versions stay valid before the old one may be deactivated.
    pub grace_period: Duration,
    /// The circuit breaker of a re-wrap pass: after this many retryable provider failures in a
    /// row (retries included; any success resets the count) the pass pauses. The pages done are
    /// committed, the journal stays in `Rewrapping` at the last committed cursor, and the step
    /// returns `ProviderUnavailable` (retryable); running the same command again resumes. So an
    /// outage costs a few dozen calls, not `max_attempts` per TEK. 0 is treated as 1.
    pub abort_after_consecutive_failures: u32,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            batch_size: 512,
            max_attempts: 5,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            grace_period: Duration::from_secs(30 * 24 * 3600),
            abort_after_consecutive_failures: 32,
        }
    }
}

impl RotationConfig {
    /// Sets [`RotationConfig::concurrency`], the re-wraps in flight at once.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets [`RotationConfig::batch_size`], the TEKs per store transaction.
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets [`RotationConfig::max_attempts`], the attempts per TEK on retryable errors.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the first and the longest backoff delay ([`RotationConfig::backoff_base`],
    /// [`RotationConfig::backoff_max`]).
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Sets [`RotationConfig::grace_period`], how long both MEK versions stay valid.
    #[must_use]
    pub fn with_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Sets [`RotationConfig::abort_after_consecutive_failures`], the retryable provider
    /// failures in a row after which a re-wrap pass pauses.
    #[must_use]
    pub fn with_abort_after_consecutive_failures(mut self, failures: u32) -> Self {
        self.abort_after_consecutive_failures = failures;
        self
    }
}

/// Progress of a long step, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The step running.
    pub phase: Phase,
    /// TEKs examined so far.
    pub done: u64,
    /// TEKs in the store when the step started.
    pub total: u64,
    /// TEKs that failed so far.
    pub failed: u64,
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Send + Sync);

/// What the verify step found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verification {
    /// TEKs that only the old MEK version can unwrap.
    pub stranded: u64,
    /// The first of them (at most 100), to report.
    pub examples: Vec<TekId>,
    /// The rotation's state after the check.
    pub state: RotationState,
}
