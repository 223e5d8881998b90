//! After the token logs the application out (as after a token or library reset), the provider
//! logs in again and retries. Its own test binary: the logout affects the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{EncryptionAlgorithm, MekId, MekProvider, TableKey, WrapContext};

mod common;

#[tokio::test]
async fn the_provider_logs_in_again_after_a_reset() {
    let mut settings = common::settings(&common::pin());
    settings.pool_size = 2;
    let Some(p) = common::provider().await else {
        return;
    };
    let id = MekId::new(format!("reset_{}", std::process::id())).unwrap();
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("t@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();

    // Log the whole application out of the token from another session of the same module,
    // which invalidates the provider's login, as a token reset does.
    let module = cryptoki::context::Pkcs11::new(&settings.library_path).unwrap();
    let module = std::mem::ManuallyDrop::new(module); // never finalise under the provider
    let slot = module
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            module.get_token_info(*s).unwrap().label().trim()
                == settings.token_label.as_deref().unwrap()
        })
        .unwrap();
    let other = module.open_ro_session(slot).unwrap();
    other.logout().unwrap();

    // The provider notices, logs in again, and the operation succeeds.
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
}
