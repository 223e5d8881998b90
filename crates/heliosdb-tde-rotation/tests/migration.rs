//! Provider migration on the rotation machinery, against real parts: two in-memory providers
//! (the source and the target) behind a `ProviderSet`, and a redb store on disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekProvider, MekRef, ProviderSet, TdeError, Timestamp,
    WrapContext,
};
use heliosdb_tde_memory::InMemoryMekProvider;
use heliosdb_tde_rotation::{MigrationInfo, Phase, Rotator};
use std::sync::Arc;
use std::time::Duration;

struct Migration {
    w: World,
    source: Arc<dyn MekProvider>,
    target: Arc<dyn MekProvider>,
    target_mek: MekRef,
}

fn info() -> MigrationInfo {
    MigrationInfo::new("in-memory", "in-memory")
}

fn later() -> Timestamp {
    Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400))
}

/// `teks` TEKs under the source's MEK (`rot_mek`), a target with its own MEK (`dst_mek`), and
/// the world's provider replaced by the set of the two.
async fn migration(teks: usize) -> Migration {
    let mut w = World::memory(teks).await;
    let source = w.provider.clone();
    let target: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let dst = MekId::new("dst_mek").unwrap();
    let target_mek = target
        .generate_mek(&dst, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let set = ProviderSet::new(target.clone(), dst, source.clone(), w.mek_id.clone()).unwrap();
    w.provider = Arc::new(set);
    Migration {
        w,
        source,
        target,
        target_mek,
    }
}

impl Migration {
    fn rotator(&self) -> Rotator {
        self.w.rotator()
    }

    async fn run_to_dual_active(&self) {
        let rot = self.rotator();
        let st = rot
            .prepare_migration(&self.w.mek_id, &self.target_mek, info())
            .await
            .unwrap();
        assert_eq!(st.phase, Phase::NewMekReady);
        assert!(st.is_migration());
        let st = rot.rewrap(&self.w.mek_id, None).await.unwrap();
        assert_eq!(st.phase, Phase::DualActive);
    }

    /// How many TEKs `p` alone unwraps (to their original bytes).
    async fn unwrapped_by(&self, p: &Arc<dyn MekProvider>) -> usize {
        let mut n = 0;
        for r in self.w.store.scan_teks(None, usize::MAX).await.unwrap() {
            if let Ok(k) = p
                .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id))
                .await
            {
                assert_eq!(k.bytes().expose_secret(), &self.w.keys[&r.id]);
                n += 1;
            }
        }
        n
    }
}

#[tokio::test]
async fn a_whole_migration_moves_every_wrap_to_the_target_and_finish_drops_the_source_wraps() {
    let m = migration(300).await;
    m.run_to_dual_active().await;
    let rot = m.rotator();
    let st = rot.status(&m.w.mek_id).await.unwrap().unwrap();
    assert_eq!(st.reencrypted, 300);
    assert_eq!(st.new.as_ref(), Some(&m.target_mek));
    assert_eq!(m.w.check_all_unwrap(&m.target_mek).await, 300);
    // Every TEK unwraps through the target alone; the source wraps are still kept.
    assert_eq!(m.unwrapped_by(&m.target).await, 300);
    let kept = m.w.store.scan_teks(None, usize::MAX).await.unwrap();
    assert!(kept.iter().all(|r| {
        r.previous_wrap
            .as_ref()
            .is_some_and(|p| p.mek.id == m.w.mek_id)
    }));

    // Finish before verification: refused, nothing changes.
    let e = rot
        .finish_migration(&m.w.mek_id, later())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("verify it first"), "{e}");
    let v = rot.verify(&m.w.mek_id).await.unwrap();
    assert_eq!(v.stranded, 0);
    assert_eq!(v.state.phase, Phase::Verified);
    // Before the grace period ends: refused.
    let e = rot
        .finish_migration(&m.w.mek_id, Timestamp::now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("grace period"), "{e}");
    let done = rot.finish_migration(&m.w.mek_id, later()).await.unwrap();
    assert_eq!(done.phase, Phase::Migrated);
    assert!(rot.status(&m.w.mek_id).await.unwrap().is_none());
    let after = m.w.store.scan_teks(None, usize::MAX).await.unwrap();
    assert!(after.iter().all(|r| r.previous_wrap.is_none()));
    assert_eq!(m.unwrapped_by(&m.target).await, 300);
    assert_eq!(m.unwrapped_by(&m.source).await, 0);
    // The source's MEK is left as it was: backups taken before still need it.
    let info = m.source.mek_info(&m.w.mek_id).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Active);
}

#[tokio::test]
async fn every_version_of_the_source_mek_is_moved() {
    let mut m = migration(100).await;
    // A finished rotation of the source left v1 decrypt-only with TEKs still under it.
    let v2 = m.source.rotate_mek(&m.w.mek_id).await.unwrap().mek;
    m.w.add_teks_under(50, "u", v2.clone()).await;
    m.run_to_dual_active().await;
    let rot = m.rotator();
    assert_eq!(
        rot.status(&m.w.mek_id).await.unwrap().unwrap().old,
        v2,
        "the journal names the active source version"
    );
    assert_eq!(m.w.check_all_unwrap(&m.target_mek).await, 150);
    assert_eq!(rot.verify(&m.w.mek_id).await.unwrap().stranded, 0);
}

#[tokio::test]
async fn rollback_halfway_and_after_completion_returns_every_tek_to_the_source() {
    for halfway in [true, false] {
        let mut m = migration(200).await;
        let rot = m.rotator();
        rot.prepare_migration(&m.w.mek_id, &m.target_mek, info())
            .await
            .unwrap();
        if !halfway {
            rot.rewrap(&m.w.mek_id, None).await.unwrap();
        }
        // TEKs created during the migration are wrapped under the target.
        m.w.add_teks_under(20, "new", m.target_mek.clone()).await;
        let st = rot.rollback(&m.w.mek_id, None).await.unwrap();
        assert_eq!(st.phase, Phase::RolledBack, "halfway={halfway}");
        assert!(rot.status(&m.w.mek_id).await.unwrap().is_none());
        assert_eq!(m.unwrapped_by(&m.source).await, 220, "halfway={halfway}");
        assert_eq!(m.unwrapped_by(&m.target).await, 0, "halfway={halfway}");
        // The target's MEK is left alone (another provider's key).
        let t = m.target.mek_info(&m.target_mek.id).await.unwrap();
        assert_eq!(t.versions[0].state, KeyState::Active);
        // And the migration can be started again.
        rot.prepare_migration(&m.w.mek_id, &m.target_mek, info())
            .await
            .unwrap();
        rot.rewrap(&m.w.mek_id, None).await.unwrap();
        assert_eq!(m.w.check_all_unwrap(&m.target_mek).await, 220);
    }
}

#[tokio::test]
async fn finish_is_refused_while_a_tek_depends_on_the_source() {
    let mut m = migration(50).await;
    m.run_to_dual_active().await;
    let rot = m.rotator();
    rot.verify(&m.w.mek_id).await.unwrap();
    // A writer that knows only the source adds a TEK under it after the verification.
    let v1 = m.w.v1.clone();
    m.w.add_teks_under(1, "late", v1).await;
    let before = m.w.store.scan_teks(None, usize::MAX).await.unwrap();
    let e = rot
        .finish_migration(&m.w.mek_id, later())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("1 TEK(s) can only be unwrapped through the source"),
        "{text}"
    );
    assert!(text.contains("late00000@v1"), "{text}");
    assert_eq!(
        m.w.store.scan_teks(None, usize::MAX).await.unwrap(),
        before,
        "a refused finish changes nothing"
    );
    // Migrating again moves it; then the finish goes through.
    rot.rewrap(&m.w.mek_id, None).await.unwrap();
    rot.verify(&m.w.mek_id).await.unwrap();
    rot.finish_migration(&m.w.mek_id, later()).await.unwrap();
    assert_eq!(m.unwrapped_by(&m.target).await, 51);
}

#[tokio::test]
async fn rotations_and_migrations_of_one_mek_exclude_each_other() {
    // A migration in progress refuses the rotation steps.
    let m = migration(10).await;
    m.run_to_dual_active().await;
    let rot = m.rotator();
    let e = rot.prepare(&m.w.mek_id, false).await.unwrap_err();
    assert!(e.to_string().contains("provider migration"), "{e}");
    let e = rot.deactivate_old(&m.w.mek_id, later()).await.unwrap_err();
    assert!(e.to_string().contains("provider migration"), "{e}");
    // A migration to another target is refused while this one runs.
    let other = MekRef::new(MekId::new("other").unwrap(), m.target_mek.version);
    let e = rot
        .prepare_migration(&m.w.mek_id, &other, info())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a migration to dst_mek@v1"), "{e}");

    // A rotation in progress refuses a migration and its finish.
    let w = World::memory(10).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let e = rot
        .prepare_migration(&w.mek_id, &other, info())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("MEK rotation of this MEK"), "{e}");
    let e = rot.finish_migration(&w.mek_id, later()).await.unwrap_err();
    assert!(matches!(e, TdeError::RotationPhase { .. }), "{e:?}");
    assert!(e.to_string().contains("not a migration"), "{e}");
}

#[tokio::test]
async fn a_paused_migration_resumes_from_its_cursor() {
    use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
    let mut w = World::memory(0).await;
    let source = w.provider.clone();
    let hooked = Arc::new(Instrumented::new(source.clone()));
    // Source TEKs are made before the outage.
    w.add_teks(300, "t").await;
    let target: Arc<dyn MekProvider> = Arc::new(InMemoryMekProvider::new());
    let dst = MekId::new("dst_mek").unwrap();
    let target_mek = target
        .generate_mek(&dst, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    w.provider = Arc::new(
        ProviderSet::new(
            target.clone(),
            dst,
            hooked.clone() as Arc<dyn MekProvider>,
            w.mek_id.clone(),
        )
        .unwrap(),
    );
    let config = common::config()
        .with_batch_size(50)
        .with_concurrency(2)
        .with_max_attempts(2)
        .with_abort_after_consecutive_failures(4);
    let rot = Rotator::new(w.provider.clone(), w.store.clone(), config.clone());
    rot.prepare_migration(&w.mek_id, &target_mek, info())
        .await
        .unwrap();
    // The source goes away after 120 unwraps.
    hooked.fail_when(Method::UnwrapTek, |call| {
        (call.n > 120).then(|| TdeError::ProviderUnavailable {
            provider: "source".into(),
            reason: "token removed".into(),
            retryable: true,
        })
    });
    let e = rot.rewrap(&w.mek_id, None).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(
        e.to_string()
            .contains("MEK migration of mek:rot_mek paused"),
        "{e}"
    );
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::Rewrapping);
    assert!(
        st.reencrypted >= 100 && st.reencrypted < 300,
        "{}",
        st.reencrypted
    );
    assert_eq!(st.failed_total, 0, "a pause records no failure");
    // Back: the same command resumes and completes; nothing is moved twice.
    hooked.clear(Method::UnwrapTek);
    let rot = Rotator::new(w.provider.clone(), w.store.clone(), config);
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    assert_eq!(st.reencrypted, 300);
    assert_eq!(w.check_all_unwrap(&target_mek).await, 300);
}
