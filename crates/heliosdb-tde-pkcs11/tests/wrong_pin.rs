//! A wrong PIN gives the `CKR_PIN_INCORRECT` error. Its own test binary: PKCS#11 login state
//! belongs to the whole process, so once any provider in a process has logged in, another login
//! (right or wrong PIN) is answered with CKR_USER_ALREADY_LOGGED_IN and cannot be checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pin, settings};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;

#[tokio::test]
async fn a_wrong_pin_gives_the_guides_error() {
    if common::token_present().is_none() {
        return;
    }
    let e = Pkcs11MekProvider::open(settings("000000-wrong"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("HSM error: CKR_PIN_INCORRECT"), "{text}");
    assert!(text.contains("softhsm2-util --show-slots"), "{text}");
    // A locked user PIN is unlocked by the security officer; re-initialising destroys keys.
    assert!(text.contains("security officer can unlock it"), "{text}");
    assert!(text.contains("C_InitPIN"), "{text}");
    assert!(!text.contains("must be re-initialised"), "{text}");
    assert!(text.contains("do not re-initialise the token"), "{text}");
    // And the right PIN still works afterwards.
    Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
}
