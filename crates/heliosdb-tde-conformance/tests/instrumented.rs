//! The `Instrumented` decorator: transparent (the provider suite passes through it), counts
//! every method, and injects failures per method until cleared.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, TableKey, TdeError, WrapContext};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

fn decorated() -> Arc<Instrumented> {
    Arc::new(Instrumented::new(Arc::new(InMemoryMekProvider::new())))
}

#[tokio::test]
async fn the_provider_suite_passes_through_the_decorator() {
    let p = decorated();
    provider::run_all(p.clone()).await;
    for m in [
        Method::GenerateMek,
        Method::WrapTek,
        Method::UnwrapTek,
        Method::RewrapTek,
        Method::MekInfo,
        Method::RotateMek,
        Method::SetMekState,
    ] {
        assert!(p.calls(m) > 0, "{m:?} was not counted");
    }
}

#[tokio::test]
async fn failures_are_injected_per_method_and_cleared() {
    let p = decorated();
    let id = provider::fresh_mek_id("instr");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    p.fail_when(Method::WrapTek, |call| {
        assert_eq!(call.table(), "t");
        (call.n == 1).then(|| TdeError::ProviderUnavailable {
            provider: "test".into(),
            reason: "outage".into(),
            retryable: true,
        })
    });
    let e = p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    assert_eq!(p.calls(Method::WrapTek), 2);
    // Other methods are untouched.
    p.unwrap_tek(&w, &ctx).await.unwrap();
    p.fail_when(Method::UnwrapTek, |_| {
        Some(TdeError::ProviderUnavailable {
            provider: "test".into(),
            reason: "down".into(),
            retryable: false,
        })
    });
    p.unwrap_tek(&w, &ctx).await.unwrap_err();
    p.clear(Method::UnwrapTek);
    p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(p.calls(Method::UnwrapTek), 3);
    p.reset_counts();
    assert_eq!(p.calls(Method::UnwrapTek), 0);
    assert_eq!(p.kind(), p.inner().kind());
    assert_eq!(p.description(), p.inner().description());
}
