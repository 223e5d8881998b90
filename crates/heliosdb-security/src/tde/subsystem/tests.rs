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

/// Issue 14 item 2: `page_sealer` resolves the table once and fails early for a table without
/// a key; the handle then follows its table through a rotation, and every page it sealed opens.
#[tokio::test]
async fn a_page_sealer_fails_early_and_follows_its_table() {
    assert!(
        std::env::var_os("HELIOSDB_SECURITY_MODE").is_none(),
        "this test sets the security mode through the configuration; unset \
         HELIOSDB_SECURITY_MODE to run it"
    );
    let dir = tempfile::tempdir().unwrap();
    let tde = TdeSubsystem::new(TdeConfig {
        key_storage_path: dir.path().join("keys"),
        security_mode: Some("development".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = tde.page_sealer("public.users").await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    let e = tde.page_sealer("not a table").await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");

    let km = tde.key_manager();
    km.create_table_key("public.users").await.unwrap();
    let sealer = tde.page_sealer("public.users").await.unwrap();
    assert_eq!(sealer.table(), "public.users");
    let mut page = *b"page one";
    let parts = sealer.seal_in_place(b"p/1", &mut page).await.unwrap();
    km.rotate_table(&"public.users".parse().unwrap())
        .await
        .unwrap();
    let sealed = sealer.seal(b"p/2", b"page two").await.unwrap();
    let v2 = heliosdb_tde_cipher::sealed_tek_version(&sealed).unwrap();
    assert_eq!(v2.get(), 2, "the handle follows the rotation");

    let v1 = heliosdb_tde_cipher::PageHeader::parse(&parts.header)
        .unwrap()
        .tek_version;
    assert_eq!(v1.get(), 1);
    let old = tde.page_opener("public.users", v1).await.unwrap();
    old.open_in_place(&parts, b"p/1", &mut page).unwrap();
    assert_eq!(&page, b"page one");
    let new = tde.page_opener("public.users", v2).await.unwrap();
    assert_eq!(new.open(b"p/2", &sealed).unwrap(), b"page two");
}
