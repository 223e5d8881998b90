//! `timeout_secs` bounds every HSM operation. The operations timed out here cannot finish
//! while the test holds them (a fail point pauses the HSM call that holds the pool's only
//! session), so the result does not depend on how fast the machine or the token is. Its own
//! test binary: the pause acts on every operation of the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{MekProvider, TdeError};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;
use std::time::Duration;

mod common;

use common::{pin, settings};

const HOLD: &str = "pkcs11-holding-session";

fn assert_timed_out(e: &TdeError) {
    assert!(matches!(e, TdeError::ProviderUnavailable { .. }), "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("hsm_config.timeout_secs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_is_honoured() {
    if common::token_present().is_none() {
        return;
    }
    let mut s = settings(&pin());
    s.pool_size = 1;
    // Any length works: nothing below can finish before the test releases the pause.
    s.timeout = Duration::from_secs(1);
    let p = Pkcs11MekProvider::open(s).await.unwrap();

    fail::cfg(HOLD, "pause").unwrap();
    // The first operation takes the only session and hangs in the "HSM call".
    let hung = p.list_meks().await;
    // The second waits for the session the first one holds.
    let waiting = p.health().await.unwrap();
    let queued = p.list_meks().await;
    fail::cfg(HOLD, "off").unwrap();

    assert_timed_out(&hung.unwrap_err());
    assert_timed_out(&queued.unwrap_err());
    assert!(!waiting.healthy, "{}", waiting.detail);
    assert!(
        waiting.detail.contains("hsm_config.timeout_secs"),
        "{}",
        waiting.detail
    );

    // A provider with the default timeout still works once the HSM call returns.
    let other = Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
    other.list_meks().await.unwrap();
}
