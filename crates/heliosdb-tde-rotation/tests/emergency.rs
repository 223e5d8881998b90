//! Emergency rotations that take over an interrupted one (issue 9, items 3 and 15).
//!
//! A normal rotation stalls at every fail point in turn; then the operator asks for an
//! emergency rotation, which itself crashes at the same fail point, and is finally resumed by a
//! plain (non-emergency) request. The emergency must stick: the old MEK version ends
//! compromised (or deactivated, which is stronger), rollback is refused, every TEK unwraps
//! under the new version, and the old version can be deactivated at once, without the grace
//! period.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use heliosdb_tde_core::{KeyState, Result, Timestamp};
use heliosdb_tde_rotation::{Phase, RotationState, Rotator};
use std::time::Duration;

const ROTATE_POINTS: &[&str] = &[
    "rotation::preparing_saved",
    "rotation::after_provider_rotate",
    "rotation::new_mek_ready_saved",
    "rotation::before_page_commit",
    "rotation::after_page_commit",
    "rotation::dual_active_saved",
    "rotation::verified_saved",
    "rotation::after_provider_deactivate",
    "rotation::old_deactivated_saved",
];

const ROLLBACK_POINTS: &[&str] = &[
    "rotation::rollback_provider_done",
    "rotation::rollback_page_committed",
];

const TEKS: usize = 150;

fn action(point: &str) -> &'static str {
    // Page fail points fire on their second hit, in the middle of a pass.
    if point.contains("page") {
        "1*off->return"
    } else {
        "return"
    }
}

/// A normal rotation as the operator drives it, from whatever phase the journal is in.
async fn drive_normal(rot: &Rotator, w: &World) -> Result<RotationState> {
    let phase = rot.status(&w.mek_id).await?.map(|s| s.phase);
    if matches!(
        phase,
        None | Some(Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping)
    ) {
        rot.prepare(&w.mek_id, false).await?;
        rot.rewrap(&w.mek_id, None).await?;
    }
    if phase != Some(Phase::OldDeactivated) {
        rot.verify(&w.mek_id).await?;
    }
    let later = Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400));
    rot.deactivate_old(&w.mek_id, later).await
}

/// `mek rotate` (with or without `--emergency`) on an existing journal: prepare, then re-wrap
/// where the phase allows it.
async fn rotate(rot: &Rotator, w: &World, emergency: bool) -> Result<RotationState> {
    let st = rot.prepare(&w.mek_id, emergency).await?;
    match st.phase {
        Phase::NewMekReady | Phase::Rewrapping | Phase::DualActive | Phase::Verified => {
            rot.rewrap(&w.mek_id, None).await
        }
        _ => Ok(st),
    }
}

/// Checks the end state of an emergency that took over, then deactivates the old version
/// without waiting for the grace period.
async fn check_and_finish(w: &World, point: &str, old_deactivated_before: bool) {
    let rot = w.rotator();
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert!(st.emergency, "{point}: the emergency flag is persisted");
    let old_state = w.mek_state(&w.v1).await;
    if old_deactivated_before {
        assert_eq!(old_state, KeyState::Deactivated, "{point}");
    } else {
        assert_eq!(old_state, KeyState::Compromised, "{point}");
    }
    let e = rot.rollback(&w.mek_id, None).await.unwrap_err();
    if st.phase != Phase::OldDeactivated {
        assert!(e.to_string().contains("compromised"), "{point}: {e}");
    }
    assert!(
        rot.status(&w.mek_id).await.unwrap().is_some(),
        "{point}: a refused rollback changes nothing"
    );
    // Item 15: no grace period for a compromised version.
    let done = rot
        .deactivate_old(&w.mek_id, Timestamp::now())
        .await
        .unwrap_or_else(|e| panic!("{point}: deactivation without grace failed: {e}"));
    assert_eq!(done.phase, Phase::OldDeactivated, "{point}");
    assert!(done.emergency, "{point}");
    let new = done.new.clone().unwrap();
    assert_eq!(new.version.get(), 2, "{point}: the provider rotated once");
    assert_eq!(w.check_all_unwrap(&new).await, TEKS, "{point}");
    assert_eq!(w.mek_state(&w.v1).await, KeyState::Deactivated, "{point}");
    assert_eq!(w.mek_state(&new).await, KeyState::Active, "{point}");
    assert!(rot.status(&w.mek_id).await.unwrap().is_none(), "{point}");
}

#[tokio::test]
async fn an_emergency_request_takes_over_a_rotation_stalled_at_every_fail_point() {
    let scenario = fail::FailScenario::setup();
    for point in ROTATE_POINTS {
        let w = World::memory(TEKS).await;
        // 1. A normal rotation stalls.
        fail::cfg(*point, action(point)).unwrap();
        let e = drive_normal(&w.rotator(), &w).await.expect_err(point);
        fail::remove(*point);
        assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        let old_deactivated_before = matches!(
            *point,
            "rotation::after_provider_deactivate" | "rotation::old_deactivated_saved"
        );
        // 2. The operator asks for an emergency rotation, which crashes at the same point if
        //    it reaches it.
        fail::cfg(*point, action(point)).unwrap();
        let crashed = rotate(&w.rotator(), &w, true).await;
        fail::remove(*point);
        if let Err(e) = &crashed {
            assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        }
        assert!(
            w.rotator()
                .status(&w.mek_id)
                .await
                .unwrap()
                .unwrap()
                .emergency,
            "{point}: the emergency is recorded even when the run crashed"
        );
        // 3. A plain `mek rotate` resumes it: the emergency sticks.
        rotate(&w.rotator(), &w, false)
            .await
            .unwrap_or_else(|e| panic!("{point}: resume failed: {e}"));
        check_and_finish(&w, point, old_deactivated_before).await;
    }
    scenario.teardown();
}

#[tokio::test]
async fn an_emergency_request_reverses_a_rollback_stalled_at_every_fail_point() {
    let scenario = fail::FailScenario::setup();
    let points = ROLLBACK_POINTS
        .iter()
        .copied()
        .chain(["rotation::emergency_reversed_in_provider"]);
    for point in points {
        let w = World::memory(TEKS).await;
        let rot = w.rotator();
        rot.prepare(&w.mek_id, false).await.unwrap();
        rot.rewrap(&w.mek_id, None).await.unwrap();
        // 1. A rollback stalls (for the reversal's own fail point: at the provider step).
        let stall = if point.starts_with("rotation::rollback") {
            point
        } else {
            "rotation::rollback_provider_done"
        };
        fail::cfg(stall, action(stall)).unwrap();
        rot.rollback(&w.mek_id, None).await.expect_err(point);
        fail::remove(stall);
        assert_eq!(
            rot.status(&w.mek_id).await.unwrap().unwrap().phase,
            Phase::RollingBack
        );
        // 2. Emergency: the rollback must not finish making the compromised version active.
        fail::cfg(point, action(point)).unwrap();
        let crashed = rotate(&rot, &w, true).await;
        fail::remove(point);
        if let Err(e) = &crashed {
            assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        }
        // 3. A plain request resumes it.
        let st = rotate(&rot, &w, false)
            .await
            .unwrap_or_else(|e| panic!("{point}: resume failed: {e}"));
        assert_eq!(st.phase, Phase::DualActive, "{point}");
        check_and_finish(&w, point, false).await;
    }
    scenario.teardown();
}

#[tokio::test]
async fn an_emergency_rotation_crashing_when_recording_the_flag_stays_an_emergency() {
    let scenario = fail::FailScenario::setup();
    for stall in ["rotation::preparing_saved", "rotation::dual_active_saved"] {
        let w = World::memory(TEKS).await;
        fail::cfg(stall, "return").unwrap();
        drive_normal(&w.rotator(), &w).await.expect_err(stall);
        fail::remove(stall);
        fail::cfg("rotation::emergency_saved", "return").unwrap();
        rotate(&w.rotator(), &w, true).await.expect_err(stall);
        fail::remove("rotation::emergency_saved");
        // The flag was saved before the crash; the provider may not have been told yet.
        rotate(&w.rotator(), &w, false).await.unwrap();
        check_and_finish(&w, stall, false).await;
    }
    scenario.teardown();
}

/// Item 13: resuming the clean-up after the old version was deactivated trial-unwraps the
/// current wraps before dropping the kept ones.
#[tokio::test]
async fn clearing_the_kept_wraps_is_refused_when_a_current_wrap_does_not_unwrap() {
    let scenario = fail::FailScenario::setup();
    let w = World::memory(40).await;
    fail::cfg("rotation::old_deactivated_saved", "return").unwrap();
    drive_normal(&w.rotator(), &w).await.unwrap_err();
    fail::remove("rotation::old_deactivated_saved");
    let rot = w.rotator();
    assert_eq!(
        rot.status(&w.mek_id).await.unwrap().unwrap().phase,
        Phase::OldDeactivated
    );
    // Damage: one TEK's current wrap is another TEK's (it names the right MEK version).
    let good = w.record("t00007@v1").await;
    let mut bad = good.clone();
    bad.wrapped = w.record("t00008@v1").await.wrapped;
    w.put_record(bad).await;
    let later = Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400));
    let e = rot.deactivate_old(&w.mek_id, later).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, heliosdb_tde_core::TdeError::Corrupt { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("t00007@v1") && msg.contains("trial unwrap"),
        "{msg}"
    );
    let all = w.store.scan_teks(None, usize::MAX).await.unwrap();
    assert!(
        all.iter().all(|r| r.previous_wrap.is_some()),
        "no kept wrap was dropped"
    );
    assert!(rot.status(&w.mek_id).await.unwrap().is_some());
    // Repaired, the clean-up finishes.
    w.put_record(good).await;
    let done = rot.deactivate_old(&w.mek_id, later).await.unwrap();
    assert_eq!(done.phase, Phase::OldDeactivated);
    assert!(
        w.store
            .scan_teks(None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .all(|r| r.previous_wrap.is_none())
    );
    scenario.teardown();
}
