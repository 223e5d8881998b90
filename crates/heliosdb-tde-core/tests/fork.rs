//! Key bytes across a real `fork`: the arena's pages are `MADV_WIPEONFORK`, so the child of a
//! process that holds keys sees them as zeros, while the parent's keys are untouched, and the
//! child can still make keys of its own.
//!
//! Its own binary (`harness = false`) and single-threaded, because `fork` in a multithreaded
//! process leaves the child with one thread and whatever locks the others held. The child
//! reports through its exit code. Prints `N passed, M failed` and exits non-zero on a failure.

// fork, waitpid and _exit are unsafe libc calls; tidy scans only `src/`, and the crate's library
// allows unsafe code only in `src/memory/arena.rs`.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(target_os = "linux")]
fn main() {
    use heliosdb_tde_core::KeyBytes;
    use heliosdb_tde_core::memory::{self, Protection};

    let stats = memory::reserve(1);
    let mut failed = 0;
    if stats.wipe_on_fork != Protection::Active {
        println!(
            "FAILED: MADV_WIPEONFORK is not in force: {:?}",
            stats.wipe_on_fork
        );
        failed += 1;
    }
    let held = KeyBytes::from_slice(&[0x5A; 32]).unwrap();
    // SAFETY: the process has one thread, so the child inherits no lock held by another.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Child: 0 = the inherited key reads as zeros and a new key works; 1 and 2 otherwise.
        let code = if held.expose_secret() != &[0u8; 32] {
            1
        } else {
            match KeyBytes::from_slice(&[0x33; 32]) {
                Ok(k) if k.expose_secret() == &[0x33; 32] => 0,
                _ => 2,
            }
        };
        // SAFETY: `_exit` ends the child at once, without running the parent's destructors or
        // atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child and `status` a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    match code {
        0 => println!("ok: the child saw the inherited key as zeros and made a key of its own"),
        1 => {
            println!("FAILED: the child read the parent's key bytes");
            failed += 1;
        }
        other => {
            println!("FAILED: the child could not make a key of its own (exit {other})");
            failed += 1;
        }
    }
    if held.expose_secret() != &[0x5A; 32] {
        println!("FAILED: the parent's key changed across the fork");
        failed += 1;
    }
    println!("{} passed, {failed} failed", 3 - failed.min(3));
    if failed > 0 {
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("0 passed, 0 failed (MADV_WIPEONFORK exists only on Linux)");
}
