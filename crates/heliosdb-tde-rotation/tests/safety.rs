//! Rotation safety (issue 9, items 13, 14 and 15): trial unwraps before a wrap becomes the only
//! copy, one rotation step at a time, compare-and-set journal writes, and the TEK side of an
//! emergency rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gate, Interloper, World};
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, StoreBatch, StoreOp, TableKey, TdeError, TekId, Timestamp,
    WrapContext,
};
use heliosdb_tde_rotation::{Phase, journal_name, trial_sample_size};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

fn later() -> Timestamp {
    Timestamp::now().saturating_add(31 * DAY)
}

async fn hooked(teks: usize) -> (World, Arc<Instrumented>) {
    let p = common::hooked();
    (World::new(p.clone(), teks).await, p)
}

// ---------------------------------------------------------------- item 13: trial unwraps

#[test]
fn the_trial_sample_is_all_up_to_100_then_at_least_100_and_1_percent() {
    assert_eq!(trial_sample_size(0), 0);
    assert_eq!(trial_sample_size(7), 7);
    assert_eq!(trial_sample_size(100), 100);
    assert_eq!(trial_sample_size(101), 100);
    assert_eq!(trial_sample_size(10_000), 100);
    assert_eq!(trial_sample_size(10_001), 101);
    assert_eq!(trial_sample_size(1_000_000), 10_000);
}

#[tokio::test]
async fn deactivation_trial_unwraps_a_sample_of_each_mek_version() {
    let (w, p) = hooked(250).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    rot.rewrap(&w.mek_id, None).await.unwrap();
    p.reset_counts();
    rot.deactivate_old(&w.mek_id, later()).await.unwrap();
    // Before deactivating: 100 current wraps, each compared with its kept wrap (200 unwraps);
    // before clearing the kept wraps (the old version no longer unwraps): 100 more.
    assert_eq!(p.calls(Method::UnwrapTek), 300);
}

#[tokio::test]
async fn deactivation_is_refused_when_a_current_wrap_does_not_unwrap() {
    let w = World::memory(60).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    rot.rewrap(&w.mek_id, None).await.unwrap();
    // A wrap that looks right in the metadata (it names the new MEK version) but belongs to
    // another TEK.
    let good = w.record("t00042@v1").await;
    let mut bad = good.clone();
    bad.wrapped = w.record("t00043@v1").await.wrapped;
    w.put_record(bad).await;
    let e = rot.deactivate_old(&w.mek_id, later()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("t00042@v1") && msg.contains("deactivate the old MEK version"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    // Nothing changed: the old version still unwraps and every kept wrap is there.
    assert_eq!(w.mek_state(&w.v1).await, KeyState::DecryptOnly);
    assert!(
        w.store
            .scan_teks(None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .all(|r| r.previous_wrap.is_some())
    );
    w.put_record(good).await;
    rot.deactivate_old(&w.mek_id, later()).await.unwrap();
}

#[tokio::test]
async fn deactivation_is_refused_when_the_two_wraps_of_a_tek_disagree() {
    let w = World::memory(30).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    let new = st.new.unwrap();
    // The current wrap unwraps, but to another key than the one the data was sealed with.
    let mut rec = w.record("t00005@v1").await;
    let other = TableKey::generate(rec.id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    rec.wrapped = w
        .provider
        .wrap_tek(&new, &other, &WrapContext::table_key(&rec.id))
        .await
        .unwrap();
    w.put_record(rec).await;
    let e = rot
        .deactivate_old(&w.mek_id, later())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t00005@v1") && e.contains("different keys"),
        "{e}"
    );
    assert_eq!(w.mek_state(&w.v1).await, KeyState::DecryptOnly);
}

#[tokio::test]
async fn a_rollback_does_not_finish_when_a_restored_wrap_does_not_unwrap() {
    let w = World::memory(50).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    let new = st.new.unwrap();
    // The kept wrap the rollback will restore is damaged (another TEK's).
    let mut rec = w.record("t00011@v1").await;
    let intact = rec.clone();
    rec.previous_wrap = w.record("t00012@v1").await.previous_wrap;
    w.put_record(rec).await;
    let e = rot.rollback(&w.mek_id, None).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("t00011@v1") && msg.contains("finish the rollback"),
        "{msg}"
    );
    // The new version was not deactivated: it still holds the only good copy.
    assert_eq!(w.mek_state(&new).await, KeyState::DecryptOnly);
    assert_eq!(
        rot.status(&w.mek_id).await.unwrap().unwrap().phase,
        Phase::RollingBack
    );
    w.provider
        .unwrap_tek(&intact.wrapped, &WrapContext::table_key(&intact.id))
        .await
        .unwrap();
}

// ---------------------------------------------------------------- item 14: mutual exclusion

#[tokio::test]
async fn a_second_rotation_step_in_the_same_process_is_refused_while_one_runs() {
    let (w, p) = hooked(20).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let gate = Gate::new();
    common::hold_rewraps(&p, gate.clone());
    let other = w.rotator(); // another rotator (as the key manager makes per call)
    let check = async {
        gate.entered.notified().await; // the re-wrap is inside the provider now
        let busy = [
            other.prepare(&w.mek_id, false).await.unwrap_err(),
            other.rewrap(&w.mek_id, None).await.unwrap_err(),
            other.verify(&w.mek_id).await.unwrap_err(),
            other.rollback(&w.mek_id, None).await.unwrap_err(),
            other.deactivate_old(&w.mek_id, later()).await.unwrap_err(),
        ];
        for e in busy {
            let msg = e.to_string();
            assert!(matches!(e, TdeError::RotationPhase { .. }), "{msg}");
            assert!(msg.contains("a rotation step is already running"), "{msg}");
        }
        // Reading the status is not a step.
        assert_eq!(
            other.status(&w.mek_id).await.unwrap().unwrap().phase,
            Phase::Rewrapping
        );
        p.clear(Method::RewrapTek);
        gate.release();
    };
    let (st, ()) = tokio::join!(rot.rewrap(&w.mek_id, None), check);
    assert_eq!(st.unwrap().phase, Phase::DualActive);
    // The lock is released with the step.
    assert_eq!(other.verify(&w.mek_id).await.unwrap().stranded, 0);
}

/// A step that cannot write to the store (another process holds it; here: a store opened
/// read-only) must stop before it changes anything in the provider.
#[tokio::test]
async fn a_step_that_cannot_write_the_store_changes_nothing_in_the_provider() {
    let mut w = World::memory(10).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    rot.verify(&w.mek_id).await.unwrap();
    drop(rot);
    let path = w.dir.path().join(heliosdb_tde_keystore::STORE_FILE_NAME);
    let placeholder = tempfile::tempdir().unwrap();
    w.store = Arc::new(heliosdb_tde_keystore::RedbKeyStore::open_dir(placeholder.path()).unwrap());
    w.store = Arc::new(heliosdb_tde_keystore::RedbKeyStore::open_read_only(&path).unwrap());
    let rot = w.rotator();
    // Verified, grace over: the old version would be deactivated first, then the journal saved.
    rot.deactivate_old(&w.mek_id, later()).await.unwrap_err();
    assert_eq!(w.mek_state(&w.v1).await, KeyState::DecryptOnly);
    // An emergency request writes its flag before touching the provider.
    rot.prepare(&w.mek_id, true).await.unwrap_err();
    assert_eq!(w.mek_state(&w.v1).await, KeyState::DecryptOnly);
    // A rollback would make the old version active again.
    rot.rollback(&w.mek_id, None).await.unwrap_err();
    assert_eq!(w.mek_state(&w.v1).await, KeyState::DecryptOnly);
    assert_eq!(
        w.mek_state(st.new.as_ref().unwrap()).await,
        KeyState::Active
    );
}

#[tokio::test]
async fn a_journal_changed_behind_a_step_is_not_overwritten() {
    let (w, p) = hooked(200).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    // During the second page (64 TEKs a page) another writer moves the rotation on.
    common::interfere(
        &p,
        Interloper {
            at: 70,
            store: w.store.clone(),
            journal: journal_name(&w.mek_id),
            phase: "rolling_back",
        },
    );
    let e = rot.rewrap(&w.mek_id, None).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TdeError::RotationPhase { .. }), "{msg}");
    assert!(
        msg.contains("compare-and-set") && msg.contains("rolling-back"),
        "{msg}"
    );
    // The other writer's journal stands, and the refused page's re-wraps were not written.
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::RollingBack);
    let new = st.new.unwrap();
    assert_eq!(w.check_all_unwrap(&new).await, 64, "only the first page");
}

#[tokio::test]
async fn the_store_compare_and_set_of_a_journal_entry() {
    let w = World::memory(0).await;
    let s = &w.store;
    // Absent expected, absent found: written.
    s.apply(
        StoreBatch::new()
            .check_journal("j", None)
            .put_journal("j", b"1".to_vec()),
    )
    .await
    .unwrap();
    // Absent expected, present found: refused, nothing written.
    let e = s
        .apply(
            StoreBatch::new()
                .check_journal("j", None)
                .put_journal("j", b"2".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TdeError::RotationPhase { phase, .. } if phase == heliosdb_tde_core::store::JOURNAL_CHANGED),
        "{e}"
    );
    assert_eq!(s.get_journal("j").await.unwrap().unwrap(), b"1");
    // The right value expected: written; a stale one: refused.
    s.apply(
        StoreBatch::new()
            .check_journal("j", Some(b"1".to_vec()))
            .delete_journal("j"),
    )
    .await
    .unwrap();
    assert!(s.get_journal("j").await.unwrap().is_none());
    s.apply(
        StoreBatch::new()
            .push(StoreOp::CheckJournal {
                name: "j".into(),
                expect: Some(b"1".to_vec()),
            })
            .put_journal("j", b"3".to_vec()),
    )
    .await
    .unwrap_err();
    assert!(s.get_journal("j").await.unwrap().is_none());
}

// ---------------------------------------------------------------- item 15: emergency TEKs

/// What the key manager does for an emergency: a new TEK version for `tables` (the old
/// versions become decrypt-only).
async fn rotate_tables(w: &mut World, tables: &[&str]) {
    for t in tables {
        let old: TekId = format!("{t}@v1").parse().unwrap();
        let prefix = t.trim_end_matches(|c: char| c.is_ascii_digit());
        let n: usize = t[prefix.len()..].parse().unwrap();
        // add_teks_under names keys `{prefix}{i:05}@v1`; build the v2 record by hand instead.
        let info = w.provider.mek_info(&w.mek_id).await.unwrap();
        let mek = heliosdb_tde_core::MekRef::new(w.mek_id.clone(), info.active_version().unwrap());
        let id: TekId = format!("{prefix}{n:05}@v2").parse().unwrap();
        let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
        let wrapped = w
            .provider
            .wrap_tek(&mek, &tek, &WrapContext::table_key(&id))
            .await
            .unwrap();
        let meta = heliosdb_tde_core::KeyMetadata::new_active(
            heliosdb_tde_core::KeyId::Table(id.clone()),
            EncryptionAlgorithm::Aes256Gcm,
            Some(mek),
        );
        w.keys.insert(id.clone(), *tek.bytes().expose_secret());
        w.store
            .apply(
                StoreBatch::new()
                    .insert(heliosdb_tde_core::TekRecord::new(id, meta, wrapped).unwrap())
                    .push(StoreOp::SetState {
                        id: old,
                        state: KeyState::DecryptOnly,
                    }),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_emergency_marks_the_old_tek_versions_compromised_across_an_interrupted_run() {
    let mut w = World::memory(6).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, true).await.unwrap();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    // A first run rotated two tables, then was interrupted before anything else.
    rotate_tables(&mut w, &["t00000", "t00001"]).await;
    assert!(rot.tables_needing_reencryption().await.unwrap().is_empty());
    // The second run rotates the rest and marks what the compromised MEK protected.
    rotate_tables(&mut w, &["t00002", "t00003", "t00004", "t00005"]).await;
    assert_eq!(rot.mark_compromised_teks(&st.old).await.unwrap(), 6);
    let tables: Vec<String> = rot
        .tables_needing_reencryption()
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(
        tables,
        ["t00000", "t00001", "t00002", "t00003", "t00004", "t00005"],
        "tables rotated by the interrupted run are included"
    );
    for r in w.store.scan_teks(None, usize::MAX).await.unwrap() {
        let want = if r.id.version.get() == 1 {
            KeyState::Compromised
        } else {
            KeyState::Active
        };
        assert_eq!(r.metadata.state, want, "{}", r.id);
    }
    // Marking again changes nothing; compromised TEKs still unwrap (decrypt only).
    assert_eq!(rot.mark_compromised_teks(&st.old).await.unwrap(), 0);
    assert_eq!(w.check_all_unwrap(st.new.as_ref().unwrap()).await, 12);
}

#[tokio::test]
async fn a_compromised_mek_version_is_deactivated_without_the_grace_period() {
    let w = World::memory(25).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, true).await.unwrap();
    rot.rewrap(&w.mek_id, None).await.unwrap();
    let done = rot
        .deactivate_old(&w.mek_id, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(done.phase, Phase::OldDeactivated);
    assert_eq!(w.mek_state(&w.v1).await, KeyState::Deactivated);
    // The TEKs it protected were marked before their kept wraps (the evidence) were dropped.
    let all = w.store.scan_teks(None, usize::MAX).await.unwrap();
    assert!(
        all.iter()
            .all(|r| r.metadata.state == KeyState::Compromised && r.previous_wrap.is_none())
    );
    assert_eq!(rot.tables_needing_reencryption().await.unwrap().len(), 25);

    // A normal rotation still waits for the grace period.
    let w = World::memory(5).await;
    let rot = w.rotator();
    rot.prepare(&w.mek_id, false).await.unwrap();
    rot.rewrap(&w.mek_id, None).await.unwrap();
    let e = rot
        .deactivate_old(&w.mek_id, Timestamp::now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("grace period"), "{e}");
}
