//! The provider conformance suite.
//!
//! Every MEK provider's tests call [`run_all`] (or the individual checks) against a real
//! instance: the in-memory provider, a secure-file directory, a SoftHSM2 token, an OpenBao
//! server, a moto server. Each check uses fresh, randomly named MEK ids, so checks can share a
//! provider whose state outlives the test (a token, a server).
//!
//! What is checked:
//! * round trip: a wrapped TEK unwraps to the same bytes, and the envelope names the MEK
//!   version and the provider kind;
//! * AAD binding: an envelope presented for another table, TEK version or purpose, or relabelled
//!   to another MEK version, fails with `AuthenticationFailed` (or `KeyNotFound` for an unknown
//!   version) and never yields a key;
//! * versions: rotation creates the next version and makes it active; old versions still
//!   unwrap; rewrap moves a TEK to the new version; a deactivated version neither wraps nor
//!   unwraps; reactivation and lifecycle refusals; `mek_info` reports all of it;
//! * errors: generating an existing MEK, using an unknown MEK;
//! * concurrency: many tasks wrapping and unwrapping at once all succeed and agree;
//! * secrecy: `Debug` of the provider and of its errors shows no key bytes.

use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekProvider, MekRef, MekVersion, TableKey, TdeError,
    TekId, WrapContext, WrapPurpose, WrappedTek,
};
use std::sync::Arc;

/// A fresh MEK id with a random suffix, so checks never collide on a shared provider.
pub fn fresh_mek_id(prefix: &str) -> MekId {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).expect("OS random");
    let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
    MekId::new(format!("{prefix}_{suffix}")).expect("valid id")
}

fn tek(id: &str) -> TableKey {
    TableKey::generate(id.parse::<TekId>().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap()
}

fn ctx(id: &str) -> WrapContext {
    WrapContext::table_key(&id.parse::<TekId>().unwrap())
}

async fn new_mek(p: &dyn MekProvider, prefix: &str) -> MekRef {
    let id = fresh_mek_id(prefix);
    let info = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_or_else(|e| panic!("generate_mek({id}) failed: {e}"));
    assert_eq!(info.mek.id, id);
    assert_eq!(info.mek.version, MekVersion::FIRST);
    assert_eq!(info.state, KeyState::Active);
    info.mek
}

fn assert_rejected(result: Result<TableKey, TdeError>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: a mis-bound wrapped TEK unwrapped"),
        Err(TdeError::AuthenticationFailed { .. } | TdeError::KeyNotFound { .. }) => {}
        Err(other) => panic!("{what}: expected an authentication failure, got: {other}"),
    }
}

/// Wrap then unwrap gives back the same key, with a well-formed envelope.
pub async fn round_trip(p: &dyn MekProvider) {
    let mek = new_mek(p, "conf_rt").await;
    for id in ["users@v1", "public.orders@v7", "t_9@v4294967295"] {
        let key = tek(id);
        let wrapped = p.wrap_tek(&mek, &key, &ctx(id)).await.unwrap();
        assert_eq!(wrapped.mek, mek, "the envelope names the MEK version used");
        assert_eq!(wrapped.provider, p.kind());
        assert_eq!(wrapped.algorithm, EncryptionAlgorithm::Aes256Gcm);
        let bytes = wrapped.encode();
        assert!(
            !bytes
                .windows(8)
                .any(|w| key.bytes().expose_secret().windows(8).any(|k| k == w)),
            "the envelope contains TEK bytes in the clear"
        );
        let decoded = WrappedTek::decode(&bytes).unwrap();
        let back = p.unwrap_tek(&decoded, &ctx(id)).await.unwrap();
        assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
        assert_eq!(back.id().to_string(), id);
        // Wrapping twice gives different envelopes (fresh randomness) that both unwrap.
        let again = p.wrap_tek(&mek, &key, &ctx(id)).await.unwrap();
        assert_ne!(again.payload, wrapped.payload, "wrap is not randomized");
    }
}

/// An envelope presented with another context, or relabelled, never unwraps.
pub async fn aad_binding(p: &dyn MekProvider) {
    let mek = new_mek(p, "conf_aad").await;
    let key = tek("users@v1");
    let w = p.wrap_tek(&mek, &key, &ctx("users@v1")).await.unwrap();
    assert_rejected(p.unwrap_tek(&w, &ctx("orders@v1")).await, "another table");
    assert_rejected(
        p.unwrap_tek(&w, &ctx("users@v2")).await,
        "another TEK version",
    );
    let mut backup = ctx("users@v1");
    backup.purpose = WrapPurpose::Backup;
    assert_rejected(p.unwrap_tek(&w, &backup).await, "another purpose");
    // The envelope's header fields are bound too (format 2): a downgraded format or another
    // provider kind in the header never unwraps.
    assert_eq!(w.format, heliosdb_tde_core::envelope::FORMAT_VERSION);
    let mut downgraded = w.clone();
    downgraded.format = heliosdb_tde_core::envelope::OLDEST_FORMAT_VERSION;
    assert_rejected(
        p.unwrap_tek(&downgraded, &ctx("users@v1")).await,
        "a downgraded envelope format",
    );
    let mut other_kind = w.clone();
    other_kind.provider = heliosdb_tde_core::ProviderKind::ALL
        .iter()
        .copied()
        .find(|k| *k != w.provider)
        .unwrap_or(w.provider);
    assert_rejected(
        p.unwrap_tek(&other_kind, &ctx("users@v1")).await,
        "another provider kind in the header",
    );
    // Relabel the envelope as wrapped by the next version of the same MEK.
    let v2 = p.rotate_mek(&mek.id).await.unwrap().mek;
    let mut relabelled = w.clone();
    relabelled.mek = v2;
    assert_rejected(
        p.unwrap_tek(&relabelled, &ctx("users@v1")).await,
        "relabelled MEK version",
    );
    // A wrap for a context that does not name the key's own identity is refused.
    assert!(
        p.wrap_tek(&mek, &key, &ctx("orders@v1")).await.is_err(),
        "a TEK was wrapped for another table's context"
    );
    // The genuine context still works after all that.
    let back = p.unwrap_tek(&w, &ctx("users@v1")).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
}

/// Rotation, rewrap, lifecycle states and `mek_info`.
pub async fn versions(p: &dyn MekProvider) {
    let v1 = new_mek(p, "conf_ver").await;
    let key = tek("accounts@v1");
    let c = ctx("accounts@v1");
    let w1 = p.wrap_tek(&v1, &key, &c).await.unwrap();

    let v2 = p.rotate_mek(&v1.id).await.unwrap();
    assert_eq!(v2.mek.version.get(), 2);
    assert_eq!(v2.state, KeyState::Active);
    let info = p.mek_info(&v1.id).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.active_version(), Some(v2.mek.version));
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
    assert!(p.list_meks().await.unwrap().contains(&v1.id));

    // The old version still unwraps but no longer wraps.
    assert!(p.unwrap_tek(&w1, &c).await.is_ok());
    assert!(
        p.wrap_tek(&v1, &key, &c).await.is_err(),
        "a DecryptOnly MEK version wrapped a new TEK"
    );

    // Rewrap moves the TEK to v2 and keeps its bytes.
    let w2 = p.rewrap_tek(&w1, &c, &v2.mek).await.unwrap();
    assert_eq!(w2.mek, v2.mek);
    let back = p.unwrap_tek(&w2, &c).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());

    // Deactivate v1: it neither wraps nor unwraps; v2 is untouched.
    p.deactivate_mek_version(&v1).await.unwrap();
    let e = p.unwrap_tek(&w1, &c).await.unwrap_err();
    assert!(
        matches!(e, TdeError::InvalidKeyState { .. }),
        "unwrap under a deactivated MEK: {e}"
    );
    assert!(p.unwrap_tek(&w2, &c).await.is_ok());
    let info = p.mek_info(&v1.id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);

    // Lifecycle: Deactivated cannot jump back to Active, but can be reactivated to DecryptOnly.
    assert!(p.set_mek_state(&v1, KeyState::Active).await.is_err());
    p.set_mek_state(&v1, KeyState::DecryptOnly).await.unwrap();
    assert!(
        p.unwrap_tek(&w1, &c).await.is_ok(),
        "reactivated version unwraps"
    );

    // A third rotation continues the numbering.
    let v3 = p.rotate_mek(&v1.id).await.unwrap();
    assert_eq!(v3.mek.version.get(), 3);
    let info = p.mek_info(&v1.id).await.unwrap();
    assert_eq!(info.versions.len(), 3);
    assert_eq!(info.versions[1].state, KeyState::DecryptOnly);
}

/// Errors a user can cause, with the right variants.
pub async fn errors(p: &dyn MekProvider) {
    let mek = new_mek(p, "conf_err").await;
    let e = p
        .generate_mek(&mek.id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");

    let unknown = fresh_mek_id("conf_unknown");
    let e = p.mek_info(&unknown).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(p.rotate_mek(&unknown).await.is_err());
    let unknown_ref = MekRef::new(unknown, MekVersion::FIRST);
    let e = p
        .wrap_tek(&unknown_ref, &tek("x@v1"), &ctx("x@v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    let missing_version = MekRef::new(mek.id.clone(), MekVersion::new(99).unwrap());
    assert!(
        p.set_mek_state(&missing_version, KeyState::Deactivated)
            .await
            .is_err()
    );
    assert!(p.health().await.unwrap().healthy);
}

/// Many tasks wrapping and unwrapping at once.
pub async fn concurrency(p: Arc<dyn MekProvider>) {
    let mek = new_mek(p.as_ref(), "conf_conc").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u32 {
        let p = p.clone();
        let mek = mek.clone();
        tasks.spawn(async move {
            for round in 1..=4u32 {
                let id = format!("t{i}@v{round}");
                let key = tek(&id);
                let w = p.wrap_tek(&mek, &key, &ctx(&id)).await.unwrap();
                let back = p.unwrap_tek(&w, &ctx(&id)).await.unwrap();
                assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
            }
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, 32);
}

/// `Debug` of the provider and of errors shows no key bytes.
pub async fn secrecy(p: &dyn MekProvider) {
    let mek = new_mek(p, "conf_sec").await;
    let key = tek("s@v1");
    let w = p.wrap_tek(&mek, &key, &ctx("s@v1")).await.unwrap();
    let e = p.unwrap_tek(&w, &ctx("s@v2")).await.unwrap_err();
    let text = format!("{p:?} {e} {e:?} {key:?}").to_lowercase();
    let secret = key.bytes().expose_secret();
    for window in secret.windows(4) {
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex), "key bytes leaked into: {text}");
    }
}

/// Every check, in order.
pub async fn run_all(p: Arc<dyn MekProvider>) {
    round_trip(p.as_ref()).await;
    aad_binding(p.as_ref()).await;
    versions(p.as_ref()).await;
    errors(p.as_ref()).await;
    concurrency(p.clone()).await;
    secrecy(p.as_ref()).await;
}
