//! Tests of the subsystem module.
use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn outage() -> TdeError {
    TdeError::ProviderUnavailable {
        provider: "test".into(),
        reason: "connection refused".into(),
        retryable: true,
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_waits_for_a_provider_that_comes_back() {
    let calls = AtomicU32::new(0);
    let r = with_startup_retry(Duration::from_secs(30), "Vault at http://x", || async {
        if calls.fetch_add(1, Ordering::SeqCst) < 3 {
            Err(outage())
        } else {
            Ok(7)
        }
    })
    .await;
    assert_eq!(r.unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_start_gives_up_after_the_wait_and_names_the_provider() {
    let calls = AtomicU32::new(0);
    let e = with_startup_retry(
        Duration::from_secs(10),
        "Vault at http://x:8200",
        || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(outage())
        },
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(text.contains("Vault at http://x:8200"), "{text}");
    assert!(text.contains("provider_startup_wait_secs"), "{text}");
    let n = calls.load(Ordering::SeqCst);
    assert!((3..=8).contains(&n), "{n} attempts in 10 s of paused time");

    // 0: fail at once; a non-retryable error is never retried.
    let e = with_startup_retry(Duration::ZERO, "p", || async { Err::<(), _>(outage()) })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1 attempt"), "{e}");
    calls.store(0, Ordering::SeqCst);
    let e = with_startup_retry(Duration::from_secs(30), "p", || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(TdeError::config("x", "bad"))
    })
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
