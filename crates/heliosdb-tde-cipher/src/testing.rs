//! Test hooks (feature `test-hooks`, for this workspace's tests only; never enable it in a
//! build that seals real data).

use std::cell::Cell;

thread_local! {
    static FORCED_SALT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Forces the nonce salt `S` of every salt drawn **on the calling thread** from now on (a
/// cipher draws its salt at its first seal, and again at its first seal after a fork), or
/// goes back to random salts with `None`. With a constant salt, nonces are unique only
/// through their invocation numbers, which is what tests of the reservation logic check.
///
/// Thread-local, so that tests running in parallel in one binary do not see each other's
/// salt; ciphers that already drew their salt keep it.
pub fn force_salt(salt: Option<u64>) {
    FORCED_SALT.with(|f| f.set(salt));
}

pub(crate) fn forced_salt() -> Option<u64> {
    FORCED_SALT.with(Cell::get)
}

/// The process's fork generation: 0 in the process that first loaded the crate, higher in the
/// child of each `fork` (one more per registered handler; forks count only once a cipher has
/// drawn a salt, or [`register_fork_handler`] ran, in an ancestor).
pub fn fork_generation() -> u64 {
    crate::fork::generation()
}

/// Registers the fork handler now, as the first salt draw would.
pub fn register_fork_handler() -> Result<(), crate::CipherError> {
    crate::fork::registered_generation().map(|_| ())
}
