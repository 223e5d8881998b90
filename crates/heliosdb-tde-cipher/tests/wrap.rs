//! Local TEK wrapping and the associated-data binding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::all_backends;
use heliosdb_tde_cipher::wrap::{PAYLOAD_LEN, unwrap_tek, wrap_tek};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, MasterKey, ProviderKind, TableKey, TdeError, TekId, WrapContext,
    WrapPurpose,
};

fn master(r: &str) -> MasterKey {
    MasterKey::new(
        r.parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    )
}

fn tek(id: &str) -> TableKey {
    TableKey::generate(id.parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap()
}

fn ctx(id: &str) -> WrapContext {
    WrapContext::table_key(&id.parse::<TekId>().unwrap())
}

#[test]
fn round_trip_on_every_backend_and_across_backends() {
    let mek = master("master_key_001@v1");
    let key = tek("users@v1");
    for a in all_backends() {
        let w = wrap_tek(a, &mek, ProviderKind::SecureFile, &key, &ctx("users@v1")).unwrap();
        assert_eq!(w.payload.len(), PAYLOAD_LEN);
        assert_eq!(w.mek.to_string(), "master_key_001@v1");
        for b in all_backends() {
            let back = unwrap_tek(b, &mek, &w, &ctx("users@v1")).unwrap();
            assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
            assert_eq!(back.id().to_string(), "users@v1");
        }
    }
}

#[test]
fn a_wrapped_tek_copied_elsewhere_fails_to_unwrap() {
    let mek = master("master_key_001@v1");
    let key = tek("users@v1");
    let w = wrap_tek(
        Default::default(),
        &mek,
        ProviderKind::SecureFile,
        &key,
        &ctx("users@v1"),
    )
    .unwrap();
    // Copied onto another table.
    let e = unwrap_tek(Default::default(), &mek, &w, &ctx("orders@v1")).unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    assert!(e.to_string().contains("orders@v1"), "{e}");
    // Copied onto another version of the same table.
    let e = unwrap_tek(Default::default(), &mek, &w, &ctx("users@v2")).unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    // Relabelled as wrapped by another MEK version that has the same bytes.
    let same_bytes_v2 = MasterKey::new(
        "master_key_001@v2".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(mek.bytes().expose_secret()).unwrap(),
    );
    let mut relabelled = w.clone();
    relabelled.mek = same_bytes_v2.mek().clone();
    let e = unwrap_tek(
        Default::default(),
        &same_bytes_v2,
        &relabelled,
        &ctx("users@v1"),
    )
    .unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    // Used for another purpose.
    let mut backup = ctx("users@v1");
    backup.purpose = WrapPurpose::Backup;
    assert!(unwrap_tek(Default::default(), &mek, &w, &backup).is_err());
    // The original context still works.
    assert!(unwrap_tek(Default::default(), &mek, &w, &ctx("users@v1")).is_ok());
}

#[test]
fn wrong_master_key_fails_cleanly() {
    let mek = master("master_key_001@v1");
    let other = master("master_key_001@v1");
    let w = wrap_tek(
        Default::default(),
        &mek,
        ProviderKind::InMemory,
        &tek("t@v1"),
        &ctx("t@v1"),
    )
    .unwrap();
    let e = unwrap_tek(Default::default(), &other, &w, &ctx("t@v1")).unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let e = unwrap_tek(Default::default(), &master("other@v1"), &w, &ctx("t@v1")).unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
}

#[test]
fn tampered_or_truncated_payload_fails() {
    let mek = master("m@v1");
    let w = wrap_tek(
        Default::default(),
        &mek,
        ProviderKind::InMemory,
        &tek("t@v1"),
        &ctx("t@v1"),
    )
    .unwrap();
    for bit in 0..PAYLOAD_LEN * 8 {
        let mut t = w.clone();
        t.payload[bit / 8] ^= 1 << (bit % 8);
        assert!(unwrap_tek(Default::default(), &mek, &t, &ctx("t@v1")).is_err());
    }
    for n in 0..PAYLOAD_LEN {
        let mut t = w.clone();
        t.payload.truncate(n);
        let e = unwrap_tek(Default::default(), &mek, &t, &ctx("t@v1")).unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
    }
}

#[test]
fn a_tek_cannot_be_wrapped_for_another_identity() {
    let mek = master("m@v1");
    let e = wrap_tek(
        Default::default(),
        &mek,
        ProviderKind::InMemory,
        &tek("t@v1"),
        &ctx("u@v1"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("own table"), "{e}");
}

#[test]
fn errors_never_contain_key_material() {
    let mek = master("m@v1");
    let key = tek("t@v1");
    let w = wrap_tek(
        Default::default(),
        &mek,
        ProviderKind::InMemory,
        &key,
        &ctx("t@v1"),
    )
    .unwrap();
    let e = unwrap_tek(Default::default(), &master("m@v1"), &w, &ctx("t@v1")).unwrap_err();
    let text = format!("{e} {e:?}").to_lowercase();
    for secret in [key.bytes().expose_secret(), mek.bytes().expose_secret()] {
        let hex = hex::encode(&secret[..6]);
        assert!(!text.contains(&hex), "{text}");
    }
}

/// Issue 9 item 12: new wraps are envelope format 2, whose associated data binds the
/// algorithm, the format and the provider kind; a format-1 wrap of an earlier release (sealed
/// with the identity-only layout) still unwraps, and a downgrade of a format-2 wrap does not.
#[test]
fn format_1_wraps_still_unwrap_and_format_2_binds_the_header() {
    use heliosdb_tde_cipher::{AeadKey, Backend};
    use heliosdb_tde_core::WrappedTek;
    let mek = master("master_key_001@v1");
    let key = tek("users@v1");
    let c = ctx("users@v1");

    let new = wrap_tek(Backend::default(), &mek, ProviderKind::SecureFile, &key, &c).unwrap();
    assert_eq!(new.format, heliosdb_tde_core::envelope::FORMAT_VERSION);
    let mut downgraded = new.clone();
    downgraded.format = 1;
    assert!(matches!(
        unwrap_tek(Backend::default(), &mek, &downgraded, &c),
        Err(TdeError::AuthenticationFailed { .. })
    ));
    let mut relabelled = new.clone();
    relabelled.provider = ProviderKind::InMemory;
    assert!(unwrap_tek(Backend::default(), &mek, &relabelled, &c).is_err());

    // A format-1 wrap as release 0.1 wrote it.
    let mut old = WrappedTek::new(
        EncryptionAlgorithm::Aes256Gcm,
        ProviderKind::SecureFile,
        mek.mek().clone(),
        Vec::new(),
    );
    old.format = 1;
    let aead = AeadKey::new(Backend::default(), mek.bytes().expose_secret()).unwrap();
    let nonce = [7u8; 12];
    let mut body = key.bytes().expose_secret().to_vec();
    let tag = aead
        .seal_detached(&nonce, &c.aad_for(&old), &mut body)
        .unwrap();
    old.payload = [nonce.as_slice(), &body, &tag].concat();
    let decoded = WrappedTek::decode(&old.encode()).unwrap();
    assert_eq!(decoded.format, 1);
    let back = unwrap_tek(Backend::default(), &mek, &decoded, &c).unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
    // Its header is not bound: that is why a rotation re-wraps it in format 2.
    let mut old_relabelled = decoded.clone();
    old_relabelled.provider = ProviderKind::InMemory;
    assert!(unwrap_tek(Backend::default(), &mek, &old_relabelled, &c).is_ok());
}
