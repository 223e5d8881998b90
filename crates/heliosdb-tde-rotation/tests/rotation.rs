//! The rotation state machine against real parts (in-memory provider, redb store).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{KeyState, TdeError, Timestamp, WrapContext};
use heliosdb_tde_memory::InMemoryMekProvider;
use heliosdb_tde_rotation::{Phase, Progress};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn full_cycle_rotate_verify_deactivate() {
    let w = World::memory(300).await;
    let rot = w.rotator();
    let seen = Mutex::new(Vec::<Progress>::new());
    let cb = |p: &Progress| seen.lock().unwrap().push(*p);
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, Some(&cb)).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    let new = st.new.clone().unwrap();
    assert_eq!(new.version.get(), 2);
    assert_eq!(st.reencrypted, 300);
    assert!(st.failed.is_empty());
    assert_eq!(w.check_all_unwrap(&new).await, 300);
    let progress = seen.lock().unwrap().clone();
    assert_eq!(progress.len(), 5, "one report per page of 64");
    assert_eq!(progress.last().unwrap().done, 300);
    // Each TEK keeps its old wrapped form during the dual period, and it still unwraps.
    let rec = w.store.scan_teks(None, 1).await.unwrap().remove(0);
    let prev = rec.previous_wrap.unwrap();
    assert_eq!(prev.mek, w.v1);
    w.provider
        .unwrap_tek(&prev, &WrapContext::table_key(&rec.id))
        .await
        .unwrap();

    let v = rot.verify(&w.mek_id).await.unwrap();
    assert_eq!((v.stranded, v.state.phase), (0, Phase::Verified));

    // The grace period defaults to 30 days and is enforced.
    let e = rot
        .deactivate_old(&w.mek_id, Timestamp::now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("grace period"), "{e}");
    let later = Timestamp::now().saturating_add(31 * DAY);
    let done = rot.deactivate_old(&w.mek_id, later).await.unwrap();
    assert_eq!(done.phase, Phase::OldDeactivated);
    let info = w.provider.mek_info(&w.mek_id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);
    assert!(
        rot.status(&w.mek_id).await.unwrap().is_none(),
        "the journal is archived"
    );
    assert!(
        w.store
            .scan_teks(None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .all(|r| r.previous_wrap.is_none())
    );
    assert_eq!(w.check_all_unwrap(&new).await, 300);
}

#[tokio::test]
async fn deactivation_is_refused_while_a_tek_is_stranded() {
    let mut w = World::memory(50).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    rot.rewrap(&w.mek_id, None).await.unwrap();
    // A TEK wrapped under the old version after the pass (for example restored from a backup).
    w.provider
        .set_mek_state(&w.v1, KeyState::Active)
        .await
        .unwrap();
    let v1 = w.v1.clone();
    w.add_teks_under(1, "late", v1).await;
    w.provider
        .set_mek_state(&w.v1, KeyState::DecryptOnly)
        .await
        .unwrap();
    let v = rot.verify(&w.mek_id).await.unwrap();
    assert_eq!(v.stranded, 1);
    assert_eq!(v.examples[0].to_string(), "late00000@v1");
    let later = Timestamp::now().saturating_add(365 * DAY);
    let e = rot
        .deactivate_old(&w.mek_id, later)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 TEK(s) can only be unwrapped by it") && e.contains("late00000@v1"),
        "{e}"
    );
    assert_eq!(
        w.provider.mek_info(&w.mek_id).await.unwrap().versions[0].state,
        KeyState::DecryptOnly,
        "nothing was deactivated"
    );
    // Running the rotation again re-wraps the straggler; then deactivation goes through.
    rot.rewrap(&w.mek_id, None).await.unwrap();
    rot.deactivate_old(&w.mek_id, later).await.unwrap();
}

#[tokio::test]
async fn rollback_restores_the_old_mek_for_every_tek() {
    let mut w = World::memory(130).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    let new = st.new.unwrap();
    w.add_teks(5, "during").await; // created under the new version in the dual period
    let rolled = rot.rollback(&w.mek_id, None).await.unwrap();
    assert_eq!(rolled.phase, Phase::RolledBack);
    assert_eq!(w.check_all_unwrap(&w.v1).await, 135);
    let info = w.provider.mek_info(&w.mek_id).await.unwrap();
    assert_eq!(info.active_version(), Some(w.v1.version));
    assert_eq!(info.versions[1].state, KeyState::Deactivated);
    let _ = new;
    assert!(rot.status(&w.mek_id).await.unwrap().is_none());
    assert!(
        rot.rollback(&w.mek_id, None).await.is_err(),
        "nothing left to roll back"
    );
}

#[tokio::test]
async fn emergency_rotation_marks_the_old_version_compromised_and_cannot_roll_back() {
    let w = World::memory(20).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, true).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    let info = w.provider.mek_info(&w.mek_id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Compromised);
    assert_eq!(w.check_all_unwrap(st.new.as_ref().unwrap()).await, 20);
    let e = rot.rollback(&w.mek_id, None).await.unwrap_err();
    assert!(e.to_string().contains("compromised"), "{e}");
}

/// A real provider that fails some re-wraps: permanently for a chosen set of tables while
/// `healthy` is unset, and with a retryable error on the first attempt for every other key.
fn flaky(broken: HashSet<String>, healthy: Arc<AtomicBool>) -> Arc<Instrumented> {
    let p = Arc::new(Instrumented::new(Arc::new(InMemoryMekProvider::new())));
    let transient_seen = Mutex::new(HashSet::new());
    p.fail_when(Method::RewrapTek, move |call| {
        let table = call.table();
        if !healthy.load(Ordering::SeqCst) && broken.contains(&table) {
            return Some(TdeError::Provider {
                provider: "flaky".into(),
                message: format!("refusing {table}"),
                hint: String::new(),
            });
        }
        transient_seen
            .lock()
            .unwrap()
            .insert(table)
            .then(|| TdeError::ProviderUnavailable {
                provider: "flaky".into(),
                reason: "throttled".into(),
                retryable: true,
            })
    });
    p
}

#[tokio::test]
async fn failing_keys_are_reported_exactly_and_a_rerun_completes_them() {
    let broken: HashSet<String> = ["t00003", "t00077", "t00150"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let healthy = Arc::new(AtomicBool::new(false));
    let flaky = flaky(broken.clone(), healthy.clone());
    let w = World::new(flaky.clone(), 200).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.reencrypted, 197);
    assert_eq!(st.failed_total, 3);
    let failed: HashSet<String> = st
        .failed
        .iter()
        .map(|(k, e)| {
            assert!(e.contains("refusing"), "{e}");
            k.trim_start_matches("tek:")
                .trim_end_matches("@v1")
                .to_string()
        })
        .collect();
    assert_eq!(failed, broken, "failed_keys names exactly the failing keys");
    // Transient errors were retried: every healthy key took two attempts.
    assert!(flaky.calls(Method::RewrapTek) >= 2 * 197);
    let v = rot.verify(&w.mek_id).await.unwrap();
    assert_eq!(v.stranded, 3);

    healthy.store(true, Ordering::SeqCst);
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert!(st.failed.is_empty(), "{:?}", st.failed);
    assert_eq!(st.reencrypted, 200);
    assert_eq!(w.check_all_unwrap(st.new.as_ref().unwrap()).await, 200);
    assert_eq!(rot.verify(&w.mek_id).await.unwrap().stranded, 0);
}
