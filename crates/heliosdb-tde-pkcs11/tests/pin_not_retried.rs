//! After the token refuses the PIN (CKR_PIN_INCORRECT), the provider stops logging in until
//! it is reopened: on a real token every wrong attempt counts towards locking it. Its own
//! test binary: it logs the whole process out of the token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::MekProvider;
use heliosdb_tde_pkcs11::Pkcs11MekProvider;

mod common;

use common::{pin, settings};

#[tokio::test]
async fn a_refused_pin_is_not_tried_again_until_the_provider_is_reopened() {
    if common::token_present().is_none() {
        return;
    }
    // While the process is logged in, opening with a wrong PIN is not checked (PKCS#11 login
    // state belongs to the process): this gives a provider that holds a wrong PIN, as after
    // the PIN was changed on the token under a running server.
    let good = Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
    let bad = Pkcs11MekProvider::open(settings("000000-wrong"))
        .await
        .unwrap();
    // The token logs the application out (a reset); the next operation must log in again.
    common::independent_session().logout().unwrap();

    let first = bad.list_meks().await.unwrap_err().to_string();
    assert!(first.starts_with("HSM error: CKR_PIN_INCORRECT"), "{first}");
    assert!(!first.contains("not tried again"), "{first}");
    // From now on the provider does not call C_Login with that PIN again.
    for _ in 0..3 {
        let again = bad.list_meks().await.unwrap_err().to_string();
        assert!(
            again.starts_with("HSM error: CKR_PIN_INCORRECT (the PIN was not tried again)"),
            "{again}"
        );
        assert!(again.contains("until it is reopened"), "{again}");
    }
    // The provider with the right PIN logs in again and works.
    good.list_meks().await.unwrap();
    // And a reopened provider tries its PIN again (here the process is logged in again).
    Pkcs11MekProvider::open(settings(&pin()))
        .await
        .unwrap()
        .list_meks()
        .await
        .unwrap();
}
