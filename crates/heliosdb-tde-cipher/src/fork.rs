//! Fork detection for the page nonce salt.
//!
//! A page nonce is `salt || invocation number` (see [`crate::TableCipher`]). After `fork` the
//! child holds a copy of every cipher, counters included, so it must draw a new salt before it
//! seals: otherwise parent and child would seal under the same nonces. This module keeps a
//! process-wide *fork generation*, bumped in the child by a `pthread_atfork` handler that is
//! registered before the first salt is drawn (normally once per process). A cipher remembers
//! the generation its salt belongs to and draws a new one when the generation has moved on.
//!
//! `pthread_atfork` handlers run for libc's `fork`, not for a raw `clone` or `SYS_fork` system
//! call that bypasses libc, nor for `vfork` or `posix_spawn`, whose child may only `exec` or
//! `_exit`. A child created by such a raw call must not seal pages.
//!
//! This is the only module of the crate with `unsafe` code: the registration call.

#![allow(unsafe_code)]

use crate::error::CipherError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The fork generation: 0 in the process that loaded the crate, higher in the child of each fork.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Whether the handler is registered. Not a `Once`/`OnceLock`: a fork while another thread is
/// inside one would leave the child waiting for ever. Threads racing at the first seal may each
/// register a handler; a fork then bumps the generation more than once, which is harmless.
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// The current fork generation. One relaxed load: the generation changes only in a child
/// right after `fork`, while the child runs a single thread, so there is nothing to order.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Registers the fork handler (once per process) and returns the current generation. Call it
/// before drawing a salt, so that any fork after the draw is seen.
pub(crate) fn registered_generation() -> Result<u64, CipherError> {
    if !REGISTERED.load(Ordering::Acquire) {
        register().map_err(|errno| {
            CipherError::Random(format!(
                "cannot register the fork handler that keeps page nonces unique after fork \
                 (pthread_atfork failed with error {errno}); the process is probably out of \
                 memory, retry when memory is available"
            ))
        })?;
        REGISTERED.store(true, Ordering::Release);
    }
    Ok(generation())
}

/// Called by libc in the child after `fork`, while the child runs only this thread. It only
/// performs an atomic increment, which is async-signal-safe.
#[cfg(unix)]
extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

#[cfg(unix)]
fn register() -> Result<(), i32> {
    // SAFETY: `pthread_atfork` only records the three function pointers. The prepare and
    // parent handlers are absent; the child handler is a plain `extern "C" fn` with no
    // arguments that does one atomic increment on a `static`, so it is valid for the whole
    // life of the process (handlers cannot be unregistered, and a `static` is never freed)
    // and is async-signal-safe, as POSIX requires of code run in the child of a multithreaded
    // process. Registering it more than once only makes a fork bump the generation more.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    if rc == 0 { Ok(()) } else { Err(rc) }
}

#[cfg(not(unix))]
fn register() -> Result<(), i32> {
    // No fork on this platform: the generation stays 0.
    Ok(())
}
