//! The provider's cache of key handles and lifecycle states (`Pkcs11Settings::state_refresh`)
//! against a real SoftHSM2 token: what an operation within the interval does not look at, and
//! what it sees once the interval has passed. (Another process's changes: `cross_process.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::object::Attribute;
use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekProvider, TableKey, TdeError, WrapContext,
};
use std::time::Duration;

mod common;

use common::plant;

/// With a state refresh interval, a key planted next to a version in use is refused once the
/// interval has passed; until then the operations use the real key's cached handle, never the
/// planted key (every wrap made meanwhile unwraps under the real key once the planted one is
/// gone).
#[tokio::test]
async fn a_planted_key_is_refused_once_the_state_refresh_interval_has_passed() {
    let _serial = common::serial().await;
    let Some(p) = common::provider_with_refresh(Duration::from_millis(200)).await else {
        return;
    };
    let id = provider::fresh_mek_id("hsm_plant_later");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let session = common::independent_session();
    let real = session
        .find_objects(&[Attribute::Label(label.clone())])
        .unwrap()[0];
    let planted = plant(&session, Some(&label), Some(&label));

    let made_meanwhile = std::cell::RefCell::new(Vec::new());
    let e = common::wait_for("the planted key refused", || {
        let (p, mek, tek, ctx, made) = (&p, &mek, &tek, &ctx, &made_meanwhile);
        async move {
            match p.wrap_tek(mek, tek, ctx).await {
                Ok(w) => {
                    made.borrow_mut().push(w);
                    None
                }
                Err(e) => Some(e),
            }
        }
    })
    .await;
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("planted"), "{text}");
    assert!(
        text.contains(&format!("handles {real} and {planted}"))
            || text.contains(&format!("handles {planted} and {real}")),
        "{text}"
    );
    // Once seen, every operation is refused while the planted key is there.
    let e = p.unwrap_tek(&w, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");

    session.destroy_object(planted).unwrap();
    let made_meanwhile = made_meanwhile.into_inner();
    for w in std::iter::once(&w).chain(&made_meanwhile) {
        let back = p.unwrap_tek(w, &ctx).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    }
}

/// Within the state refresh interval, a wrap or unwrap of a version in use makes no object
/// search: a key planted next to it is not even seen (the operations use the cached handle of
/// the real key, and their results check out under it), and this process's own state change
/// still takes effect at once.
#[tokio::test]
async fn within_the_interval_an_operation_uses_the_cached_handle_without_a_search() {
    let _serial = common::serial().await;
    let Some(p) = common::provider_with_refresh(Duration::from_secs(3600)).await else {
        return;
    };
    let id = provider::fresh_mek_id("hsm_cached");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    let label = format!("heliosdb-mek:{id}:v1").into_bytes();
    let session = common::independent_session();
    let planted = plant(&session, Some(&label), Some(&label));
    let w2 = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    for w in [&w, &w2] {
        let back = p.unwrap_tek(w, &ctx).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    }
    // A provider that reads the token (a new process) refuses the version while the planted
    // key is there: the cached provider did not look.
    let fresh = common::provider_with_refresh(Duration::ZERO).await.unwrap();
    let e = fresh.unwrap_tek(&w2, &ctx).await.unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    session.destroy_object(planted).unwrap();
    // This process's own change is not cached: refused at the next call.
    p.set_mek_state(&mek, KeyState::DecryptOnly).await.unwrap();
    let e = p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::InvalidKeyState {
                state: KeyState::DecryptOnly,
                ..
            }
        ),
        "{e}"
    );
    let back = fresh.unwrap_tek(&w2, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
}
