//! The provider conformance suite and the checks through the key manager, against the Key
//! Vault test server, once per wrap algorithm: `RSA-OAEP-256` on a standard vault, `A256KW` and
//! `A256GCM` on a Managed HSM. Each test builds its own provider (a fresh vault namespace, key
//! name and MEK ids) inside its own runtime, signing in with `client_secret` against the
//! server's token endpoint. The outage checks run once, through a TCP fault proxy that passes
//! TLS through untouched.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::{manager, provider};
use heliosdb_tde_core::MekProvider;
use std::sync::Arc;

/// The seven per-algorithm checks, as a module of tests for one algorithm.
macro_rules! suite {
    ($module:ident, $algorithm:expr) => {
        mod $module {
            use super::*;

            fn fixture() -> Option<common::Fixture> {
                common::server().map(|s| s.fixture($algorithm))
            }

            #[tokio::test]
            async fn round_trip() {
                let Some(f) = fixture() else { return };
                provider::round_trip(&f.open().await).await;
            }

            #[tokio::test]
            async fn aad_binding() {
                let Some(f) = fixture() else { return };
                provider::aad_binding(&f.open().await).await;
            }

            #[tokio::test]
            async fn versions() {
                let Some(f) = fixture() else { return };
                provider::versions(&f.open().await).await;
            }

            #[tokio::test]
            async fn errors() {
                let Some(f) = fixture() else { return };
                provider::errors(&f.open().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrency() {
                let Some(f) = fixture() else { return };
                let p: Arc<dyn MekProvider> = Arc::new(f.open().await);
                provider::concurrency(p).await;
            }

            #[tokio::test]
            async fn secrecy() {
                let Some(f) = fixture() else { return };
                let p = f.open().await;
                provider::secrecy(&p).await;
                // Debug names where the provider talks to and how, never a secret or token.
                let debug = format!("{p:?}");
                assert!(debug.contains(&f.vault.url()), "{debug}");
                assert!(debug.contains(&f.key_name), "{debug}");
                assert!(debug.contains($algorithm), "{debug}");
                assert!(debug.contains("client_secret"), "{debug}");
                assert!(
                    !debug.contains(&f.vault.server.client_secret),
                    "the client secret leaked: {debug}"
                );
                assert_eq!(p.wrap_algorithm().to_string(), $algorithm);
                assert_eq!(p.rsa_limitation().is_some(), $algorithm == common::RSA);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn rotation_with_manager() {
                let Some(f) = fixture() else { return };
                manager::rotation_with_manager(Arc::new(f.open().await)).await;
            }
        }
    };
}

suite!(rsa_oaep_256, common::RSA);
suite!(a256kw, common::KW);
suite!(a256gcm, common::GCM);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_cold_cache() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    manager::single_flight_cold_cache(Arc::new(f.open().await)).await;
}

/// A provider reaching its vault through a fresh TCP fault proxy (TLS passes through: the URL
/// keeps the `*.kv.localhost` name, on the proxy's port), with short timeouts and one retry.
/// With `per_request_connections`, the server closes the connection after every answer, so
/// the proxy (which counts connections, not requests, in TCP mode) can cut after N requests.
async fn behind_proxy(
    s: &common::Server,
    per_request_connections: bool,
) -> (Arc<dyn MekProvider>, FaultProxy) {
    let f = s.fixture(common::RSA);
    if per_request_connections {
        f.vault.close_connections().await;
    }
    let proxy = FaultProxy::start(f.vault.upstream()).await.unwrap();
    let p = f.open_at(proxy.addr().port()).await;
    (Arc::new(p), proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_and_recovery() {
    let Some(s) = common::server() else { return };
    let (p, proxy) = behind_proxy(&s, false).await;
    manager::outage_and_recovery(p, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_survives_outage() {
    let Some(s) = common::server() else { return };
    let (p, proxy) = behind_proxy(&s, true).await;
    manager::rotation_survives_outage(p, &proxy).await;
}
