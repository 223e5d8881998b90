//! Another process changes an MEK version's state while this one has its key handle and
//! state cached (`Pkcs11Settings::state_refresh`): a state change is refused here once the
//! interval has passed, a destroyed key at its next use (the token refuses the handle). Its
//! own test binary: the child processes write to the token while this one waits for them.
//!
//! The child is this test binary again, run with [`CHILD`] set, so that it runs only
//! [`child_sets_states`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekProvider, MekRef, TableKey, TdeError, WrapContext, WrappedTek,
};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;
use std::time::Duration;

mod common;

use common::{pin, settings};

const CHILD: &str = "HELIOSDB_PKCS11_CROSS_CHILD";

/// Short enough for the tests to see another process's change soon; the tests wait for it
/// with [`common::wait_for`], never for a fixed time.
const SHORT: Duration = Duration::from_millis(200);

/// So long that only the token's refusal of the handle can reveal a change during the test.
const LONG: Duration = Duration::from_secs(3600);

/// The other process: opens the token afresh and moves one MEK version through the states
/// in [`CHILD`] (`<mek id>|<version>|<state code>,<state code>...`).
#[tokio::test]
async fn child_sets_states() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split('|');
    let id = parts.next().unwrap().parse().unwrap();
    let version = heliosdb_tde_core::MekVersion::new(parts.next().unwrap().parse().unwrap());
    let mek = MekRef::new(id, version.unwrap());
    let p = Pkcs11MekProvider::open(settings(&pin()).with_state_refresh(Duration::ZERO))
        .await
        .unwrap();
    for code in parts.next().unwrap().split(',') {
        let state = KeyState::from_code(code.parse().unwrap()).unwrap();
        p.set_mek_state(&mek, state).await.unwrap();
    }
    println!("CHILD-OK");
}

/// Runs [`child_sets_states`] in a new process, moving `mek` through `states`.
fn in_another_process(mek: &MekRef, states: &[KeyState]) {
    let codes: Vec<String> = states.iter().map(|s| s.code().to_string()).collect();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sets_states", "--nocapture"])
        .env(
            CHILD,
            format!("{}|{}|{}", mek.id, mek.version.get(), codes.join(",")),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A provider with `refresh`, a new MEK, and a TEK wrapped under it (which caches the
/// version's handle and state).
async fn warm(
    refresh: Duration,
    prefix: &str,
) -> Option<(Pkcs11MekProvider, MekRef, TableKey, WrapContext, WrappedTek)> {
    let p = common::provider_with_refresh(refresh).await?;
    let id = provider::fresh_mek_id(prefix);
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("x@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    Some((p, mek, tek, ctx, w))
}

fn assert_refused_in(e: &TdeError, want: KeyState) {
    match e {
        TdeError::InvalidKeyState { state, .. } => assert_eq!(*state, want, "{e}"),
        other => panic!("expected InvalidKeyState({want:?}), got {other}"),
    }
}

#[tokio::test]
async fn decrypt_only_set_by_another_process_stops_wraps_after_the_interval() {
    let _serial = common::serial().await;
    let Some((p, mek, tek, ctx, w)) = warm(SHORT, "xp_decrypt_only").await else {
        return;
    };
    in_another_process(&mek, &[KeyState::DecryptOnly]);
    let e = common::wait_for("the wrap refused", || async {
        p.wrap_tek(&mek, &tek, &ctx).await.err()
    })
    .await;
    assert_refused_in(&e, KeyState::DecryptOnly);
    // A decrypt-only version still unwraps.
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    // And the refusal holds (the state is cached now, refused without a token call).
    assert_refused_in(
        &p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err(),
        KeyState::DecryptOnly,
    );
}

#[tokio::test]
async fn deactivated_by_another_process_stops_unwraps_after_the_interval() {
    let _serial = common::serial().await;
    let Some((p, mek, tek, ctx, w)) = warm(SHORT, "xp_deactivated").await else {
        return;
    };
    // Unwrapping works before the change.
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    in_another_process(&mek, &[KeyState::Deactivated]);
    let e = common::wait_for("the unwrap refused", || async {
        p.unwrap_tek(&w, &ctx).await.err()
    })
    .await;
    assert_refused_in(&e, KeyState::Deactivated);
    assert_refused_in(
        &p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err(),
        KeyState::Deactivated,
    );
}

#[tokio::test]
async fn a_version_destroyed_by_another_process_is_refused_at_its_next_use() {
    let _serial = common::serial().await;
    // The cached state (active) stays fresh for the whole test: only the token's refusal of
    // the destroyed key's handle can stop the next operation.
    let Some((p, mek, tek, ctx, w)) = warm(LONG, "xp_destroyed").await else {
        return;
    };
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), tek.bytes().expose_secret());
    in_another_process(&mek, &[KeyState::Deactivated, KeyState::Destroyed]);
    assert_refused_in(
        &p.unwrap_tek(&w, &ctx).await.unwrap_err(),
        KeyState::Destroyed,
    );
    assert_refused_in(
        &p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err(),
        KeyState::Destroyed,
    );
    // The listing agrees.
    let info = p.mek_info(&mek.id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Destroyed);
}

#[tokio::test]
async fn without_an_interval_another_process_s_change_is_seen_at_the_next_call() {
    let _serial = common::serial().await;
    let Some((p, mek, tek, ctx, _)) = warm(Duration::ZERO, "xp_zero").await else {
        return;
    };
    in_another_process(&mek, &[KeyState::DecryptOnly]);
    assert_refused_in(
        &p.wrap_tek(&mek, &tek, &ctx).await.unwrap_err(),
        KeyState::DecryptOnly,
    );
}
