//! Issue 9 item 5: the in-memory provider unwraps every new wrap once and compares it before
//! returning it; a wrap that does not give back the same TEK is an error. The fail point is
//! process-global, so this test has its own binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{EncryptionAlgorithm, MekId, MekProvider, TableKey, TdeError, WrapContext};
use heliosdb_tde_memory::InMemoryMekProvider;

#[tokio::test]
async fn a_wrap_that_does_not_give_back_the_tek_is_refused() {
    let scenario = fail::FailScenario::setup();
    let p = InMemoryMekProvider::new();
    let id = MekId::new("m").unwrap();
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let good = p.wrap_tek(&v1, &tek, &ctx).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;

    fail::cfg("memory::damage_wrap", "return").unwrap();
    let e = p.wrap_tek(&v2, &tek, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::Provider { .. }), "{e:?}");
    assert!(
        e.to_string().contains("did not unwrap to the same key"),
        "{e}"
    );
    // The re-wrap of an MEK rotation goes through the same check.
    let e = p.rewrap_tek(&good, &ctx, &v2).await.unwrap_err();
    assert!(e.to_string().contains("self-check"), "{e}");
    fail::remove("memory::damage_wrap");

    let rewrapped = p.rewrap_tek(&good, &ctx, &v2).await.unwrap();
    let back = p.unwrap_tek(&rewrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    scenario.teardown();
}
