//! Crash at every fail point in turn, restart, and check that every TEK unwraps, the rotation
//! completes, and the counts add up.
//!
//! A "crash" is the injected error at the fail point: the operation stops there and the rotator
//! is dropped with everything it held in memory; the "restart" is a new rotator over the same
//! store and provider, which must continue from the journal alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use heliosdb_tde_core::{KeyState, Timestamp};
use heliosdb_tde_rotation::{Phase, Rotator};
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

/// What an operator does: look at the journal and carry on from its phase.
async fn drive(
    rot: &Rotator,
    w: &World,
) -> heliosdb_tde_core::Result<heliosdb_tde_rotation::RotationState> {
    let phase = rot.status(&w.mek_id).await?.map(|s| s.phase);
    if matches!(
        phase,
        None | Some(Phase::Preparing | Phase::NewMekReady | Phase::Rewrapping)
    ) {
        rot.prepare(&w.mek_id, false).await?;
        rot.rewrap(&w.mek_id, None).await?;
    }
    if phase != Some(Phase::OldDeactivated) {
        let v = rot.verify(&w.mek_id).await?;
        assert_eq!(v.stranded, 0);
    }
    let later = Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400));
    rot.deactivate_old(&w.mek_id, later).await
}

#[tokio::test]
async fn crash_at_every_rotation_fail_point() {
    let scenario = fail::FailScenario::setup();
    for point in ROTATE_POINTS {
        let w = World::memory(300).await;
        // Page fail points fire on their second hit, in the middle of the pass.
        let action = if point.contains("page") {
            "1*off->return"
        } else {
            "return"
        };
        fail::cfg(*point, action).unwrap();
        let crashed = drive(&w.rotator(), &w).await;
        fail::remove(*point);
        let e = crashed.expect_err(point);
        assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        // Whatever state the crash left, every TEK still unwraps.
        let _ = w.check_all_unwrap(&w.v1).await;

        let done = drive(&w.rotator(), &w)
            .await
            .unwrap_or_else(|e| panic!("{point}: resume failed: {e}"));
        assert_eq!(done.phase, Phase::OldDeactivated, "{point}");
        let new = done.new.clone().unwrap();
        assert_eq!(
            new.version.get(),
            2,
            "{point}: the provider rotated exactly once"
        );
        assert_eq!(done.reencrypted, 300, "{point}: the counts add up");
        assert_eq!(w.check_all_unwrap(&new).await, 300, "{point}");
        let info = w.provider.mek_info(&w.mek_id).await.unwrap();
        assert_eq!(info.versions.len(), 2, "{point}");
        assert_eq!(info.versions[0].state, KeyState::Deactivated, "{point}");
        assert!(
            w.rotator().status(&w.mek_id).await.unwrap().is_none(),
            "{point}"
        );
    }
    scenario.teardown();
}

#[tokio::test]
async fn crash_at_every_rollback_fail_point() {
    let scenario = fail::FailScenario::setup();
    for point in ROLLBACK_POINTS {
        let mut w = World::memory(200).await;
        let rot = w.rotator();
        rot.prepare(&w.mek_id, false).await.unwrap();
        rot.rewrap(&w.mek_id, None).await.unwrap();
        w.add_teks(10, "dual").await;
        let action = if point.contains("page") {
            "1*off->return"
        } else {
            "return"
        };
        fail::cfg(*point, action).unwrap();
        let e = w
            .rotator()
            .rollback(&w.mek_id, None)
            .await
            .expect_err(point);
        fail::remove(*point);
        assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        assert_eq!(
            w.rotator().status(&w.mek_id).await.unwrap().unwrap().phase,
            Phase::RollingBack,
            "{point}"
        );
        let st = w.rotator().rollback(&w.mek_id, None).await.unwrap();
        assert_eq!(st.phase, Phase::RolledBack, "{point}");
        assert_eq!(w.check_all_unwrap(&w.v1).await, 210, "{point}");
    }
    scenario.teardown();
}

const MIGRATION_POINTS: &[&str] = &[
    "rotation::migration_started",
    "rotation::before_page_commit",
    "rotation::after_page_commit",
    "rotation::dual_active_saved",
    "rotation::verified_saved",
    "rotation::migrated_saved",
];

/// An operator driving a provider migration from whatever phase its journal is in.
async fn drive_migration(
    rot: &Rotator,
    w: &World,
    target: &heliosdb_tde_core::MekRef,
) -> heliosdb_tde_core::Result<heliosdb_tde_rotation::RotationState> {
    let phase = rot.status(&w.mek_id).await?.map(|s| s.phase);
    if matches!(phase, None | Some(Phase::NewMekReady | Phase::Rewrapping)) {
        let info = heliosdb_tde_rotation::MigrationInfo::new("in-memory", "in-memory");
        rot.prepare_migration(&w.mek_id, target, info).await?;
        rot.rewrap(&w.mek_id, None).await?;
    }
    if phase != Some(Phase::Migrated) {
        let v = rot.verify(&w.mek_id).await?;
        assert_eq!(v.stranded, 0);
    }
    let later = Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400));
    rot.finish_migration(&w.mek_id, later).await
}

#[tokio::test]
async fn crash_at_every_migration_fail_point() {
    use heliosdb_tde_core::{EncryptionAlgorithm, MekId, MekProvider, ProviderSet, WrapContext};
    use std::sync::Arc;
    let scenario = fail::FailScenario::setup();
    for point in MIGRATION_POINTS {
        let mut w = World::memory(300).await;
        let source = w.provider.clone();
        let target: Arc<dyn MekProvider> =
            Arc::new(heliosdb_tde_memory::InMemoryMekProvider::new());
        let dst = MekId::new("dst_mek").unwrap();
        let target_mek = target
            .generate_mek(&dst, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap()
            .mek;
        w.provider = Arc::new(
            ProviderSet::new(target.clone(), dst, source.clone(), w.mek_id.clone()).unwrap(),
        );
        let action = if point.contains("page") {
            "1*off->return"
        } else {
            "return"
        };
        fail::cfg(*point, action).unwrap();
        let crashed = drive_migration(&w.rotator(), &w, &target_mek).await;
        fail::remove(*point);
        let e = crashed.expect_err(point);
        assert!(e.to_string().contains("injected failure"), "{point}: {e}");
        // Whatever the crash left, every TEK unwraps through the set.
        let _ = w.check_all_unwrap(&target_mek).await;

        let done = drive_migration(&w.rotator(), &w, &target_mek)
            .await
            .unwrap_or_else(|e| panic!("{point}: resume failed: {e}"));
        assert_eq!(done.phase, Phase::Migrated, "{point}");
        assert_eq!(done.reencrypted, 300, "{point}: the counts add up");
        assert_eq!(w.check_all_unwrap(&target_mek).await, 300, "{point}");
        for r in w.store.scan_teks(None, usize::MAX).await.unwrap() {
            assert!(r.previous_wrap.is_none(), "{point}: {}", r.id);
            assert!(
                source
                    .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id))
                    .await
                    .is_err(),
                "{point}: the source alone still unwraps {}",
                r.id
            );
        }
        assert!(
            w.rotator().status(&w.mek_id).await.unwrap().is_none(),
            "{point}"
        );
    }
    scenario.teardown();
}
