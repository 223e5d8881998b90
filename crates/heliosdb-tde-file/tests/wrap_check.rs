//! Every wrap the secure file provider returns has been unwrapped once and compared (issue 9,
//! item 5): a wrap that does not give back the same TEK is an error and is never returned.
//! The fail point `secure_file::wrap_tek` (feature `failpoints`) damages the wrap; it is
//! process-global, so these tests live in their own binary and run one after the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS_A, open};
use heliosdb_tde_core::{
    EncryptionAlgorithm, MekId, MekProvider, MekRef, SecurityMode, TableKey, TdeError, WrapContext,
};

#[tokio::test]
async fn a_wrap_that_does_not_unwrap_to_the_same_tek_is_an_error() {
    let scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let p = open(&tmp.path().join("mek"), PASS_A, SecurityMode::Production).unwrap();
    let id = MekId::new("master_key_001").unwrap();
    let v1: MekRef = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek =
        TableKey::generate("users@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let good = p.wrap_tek(&v1, &tek, &ctx).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;

    for how in ["ciphertext", "other_key"] {
        fail::cfg("secure_file::wrap_tek", &format!("return({how})")).unwrap();
        let e = p.wrap_tek(&v2, &tek, &ctx).await.unwrap_err();
        assert!(matches!(e, TdeError::Provider { .. }), "{how}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("did not unwrap to the same key") && text.contains("users@v1"),
            "{how}: {text}"
        );
        // A re-wrap (MEK rotation) goes through the same check.
        let e = p.rewrap_tek(&good, &ctx, &v2).await.unwrap_err();
        assert!(e.to_string().contains("self-check"), "{how}: {e}");
        fail::remove("secure_file::wrap_tek");
    }
    let rewrapped = p.rewrap_tek(&good, &ctx, &v2).await.unwrap();
    let back = p.unwrap_tek(&rewrapped, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    scenario.teardown();
}
