//! The MEK lifecycle policy (`heliosdb_tde_core::lifecycle`): unit tests of each rule, and
//! proptests over sequences of generate / rotate / set-state / rollback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::lifecycle::{MekLifecycle, Transition, mek_not_found};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekRef, MekVersion, MekVersionInfo, ProviderKind, Result,
    TdeError, Timestamp,
};
use proptest::prelude::*;

/// Every state, by code.
fn all() -> Vec<KeyState> {
    (1..=5).filter_map(KeyState::from_code).collect()
}

fn id(s: &str) -> MekId {
    MekId::new(s).unwrap()
}

fn generate(lc: &mut MekLifecycle, mek_id: &MekId) -> MekRef {
    let mek = lc.plan_generate(mek_id).unwrap();
    lc.insert(MekVersionInfo::active(
        mek.clone(),
        EncryptionAlgorithm::Aes256Gcm,
        Timestamp(1),
    ));
    mek
}

fn rotate(lc: &mut MekLifecycle, mek_id: &MekId) -> MekVersionInfo {
    let r = lc.plan_rotation(mek_id).unwrap().unwrap();
    lc.apply_rotation(&r, Timestamp(2))
}

fn transition(lc: &mut MekLifecycle, mek: &MekRef, next: KeyState) -> Result<Transition> {
    let t = lc.plan_transition(mek, next).expect("known version")?;
    lc.set_state(mek, next);
    Ok(t)
}

#[test]
fn generate_creates_version_one_once() {
    let mut lc = MekLifecycle::new();
    let k = id("k");
    let v1 = generate(&mut lc, &k);
    assert_eq!(v1.version, MekVersion::FIRST);
    assert_eq!(lc.state(&v1), Some(KeyState::Active));
    let e = lc.plan_generate(&k).unwrap_err();
    assert!(
        matches!(&e, TdeError::AlreadyExists { key } if key == "mek:k"),
        "{e}"
    );
    // Even a destroyed MEK keeps its id taken.
    transition(&mut lc, &v1, KeyState::Deactivated).unwrap();
    transition(&mut lc, &v1, KeyState::Destroyed).unwrap();
    assert!(lc.plan_generate(&k).is_err());
}

#[test]
fn rotation_demotes_every_active_version_and_numbers_on() {
    let mut lc = MekLifecycle::new();
    let k = id("k");
    let v1 = generate(&mut lc, &k);
    let other = generate(&mut lc, &id("other"));
    let r = lc.plan_rotation(&k).unwrap().unwrap();
    assert_eq!(r.previous, MekVersion::FIRST);
    assert_eq!(r.next.version.get(), 2);
    assert_eq!(r.demote, vec![v1.clone()]);
    let v2 = lc.apply_rotation(&r, Timestamp(5));
    assert_eq!(v2.state, KeyState::Active);
    assert_eq!(v2.created_at, Timestamp(5));
    assert_eq!(lc.state(&v1), Some(KeyState::DecryptOnly));
    assert_eq!(
        lc.state(&other),
        Some(KeyState::Active),
        "other MEKs untouched"
    );
    // The newest version's number counts even when it is destroyed.
    transition(&mut lc, &v2.mek, KeyState::Deactivated).unwrap();
    transition(&mut lc, &v2.mek, KeyState::Destroyed).unwrap();
    let r = lc.plan_rotation(&k).unwrap().unwrap();
    assert_eq!(r.next.version.get(), 3);
    assert!(r.demote.is_empty());
    assert!(lc.plan_rotation(&id("unknown")).is_none());
}

#[test]
fn rotation_refuses_to_overflow() {
    let k = id("k");
    let last = MekRef::new(k.clone(), MekVersion::new(u32::MAX).unwrap());
    let lc = MekLifecycle::from_versions([MekVersionInfo::active(
        last,
        EncryptionAlgorithm::Aes256Gcm,
        Timestamp(0),
    )]);
    assert!(lc.plan_rotation(&k).unwrap().is_err());
}

#[test]
fn transitions_follow_key_state_exactly() {
    let k = id("k");
    for from in all() {
        for to in all() {
            let mek = MekRef::new(k.clone(), MekVersion::FIRST);
            let lc = MekLifecycle::from_versions([MekVersionInfo::new(
                mek.clone(),
                from,
                EncryptionAlgorithm::Aes256Gcm,
                Timestamp(0),
            )]);
            let planned = lc.plan_transition(&mek, to).unwrap();
            match (from.check_transition(to, &format!("mek:{mek}")), planned) {
                (Ok(()), Ok(t)) => {
                    let want = if from == to {
                        Transition::Unchanged
                    } else {
                        Transition::Change { from, to }
                    };
                    assert_eq!(t, want);
                    assert_eq!(
                        t.destroys_material(),
                        from != to && to == KeyState::Destroyed
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{from} -> {to}: {a:?} vs {b:?}"),
            }
        }
    }
    let lc = MekLifecycle::new();
    assert!(
        lc.plan_transition(&MekRef::new(k, MekVersion::FIRST), KeyState::Active)
            .is_none()
    );
}

#[test]
fn info_and_ids() {
    let mut lc = MekLifecycle::new();
    let a = id("a");
    let b = id("b");
    generate(&mut lc, &b);
    generate(&mut lc, &a);
    rotate(&mut lc, &a);
    assert_eq!(lc.ids(), vec![a.clone(), b.clone()]);
    let info = lc.mek_info(&a, ProviderKind::InMemory, "here").unwrap();
    assert_eq!(info.id, a);
    assert_eq!(info.provider, ProviderKind::InMemory);
    assert_eq!(info.location, "here");
    let versions: Vec<u32> = info.versions.iter().map(|v| v.mek.version.get()).collect();
    assert_eq!(versions, vec![1, 2], "oldest first");
    assert_eq!(info.active_version().map(|v| v.get()), Some(2));
    assert!(
        lc.mek_info(&id("c"), ProviderKind::InMemory, "here")
            .is_none()
    );
    assert_eq!(lc.len(), 3);
    assert!(!lc.is_empty());
}

#[test]
fn normalize_keeps_the_newest_active() {
    let k = id("k");
    let v = |n: u32, state| {
        MekVersionInfo::new(
            MekRef::new(k.clone(), MekVersion::new(n).unwrap()),
            state,
            EncryptionAlgorithm::Aes256Gcm,
            Timestamp(0),
        )
    };
    let mut lc = MekLifecycle::from_versions([
        v(1, KeyState::Active),
        v(2, KeyState::Active),
        v(3, KeyState::Deactivated),
    ]);
    let demoted = lc.normalize_active();
    assert_eq!(demoted, vec![v(1, KeyState::Active).mek]);
    assert_eq!(
        lc.state(&v(1, KeyState::Active).mek),
        Some(KeyState::DecryptOnly)
    );
    assert_eq!(
        lc.state(&v(2, KeyState::Active).mek),
        Some(KeyState::Active)
    );
    assert!(lc.normalize_active().is_empty());
}

#[test]
fn not_found_names_the_mek() {
    let e = mek_not_found(&"k@v2", "generate it");
    assert!(
        matches!(&e, TdeError::KeyNotFound { key, hint } if key == "mek:k@v2" && hint == "generate it")
    );
}

/// One step of a provider's life, as the policy sees it.
#[derive(Clone, Debug)]
enum Op {
    Generate(u8),
    Rotate(u8),
    /// Moves a version (chosen among the MEK's versions) to any state but active.
    SetState(u8, prop::sample::Index, KeyState),
    /// The rotation orchestrator's rollback: the version before the newest becomes active
    /// again, then the newest is demoted.
    Rollback(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop::sample::select(vec![
        KeyState::DecryptOnly,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Destroyed,
    ]);
    prop_oneof![
        (0u8..3).prop_map(Op::Generate),
        (0u8..3).prop_map(Op::Rotate),
        (0u8..3, any::<prop::sample::Index>(), state).prop_map(|(m, i, s)| Op::SetState(m, i, s)),
        (0u8..3).prop_map(Op::Rollback),
    ]
}

fn mek_id(n: u8) -> MekId {
    id(&format!("mek{n}"))
}

/// Runs one op; refused ops (by the policy) change nothing.
fn run(lc: &mut MekLifecycle, op: &Op) {
    match op {
        Op::Generate(m) => {
            if let Ok(mek) = lc.plan_generate(&mek_id(*m)) {
                lc.insert(MekVersionInfo::active(
                    mek,
                    EncryptionAlgorithm::Aes256Gcm,
                    Timestamp(0),
                ));
            }
        }
        Op::Rotate(m) => {
            if let Some(Ok(r)) = lc.plan_rotation(&mek_id(*m)) {
                lc.apply_rotation(&r, Timestamp(0));
            }
        }
        Op::SetState(m, i, s) => {
            let versions: Vec<MekRef> = lc.versions(&mek_id(*m)).map(|v| v.mek.clone()).collect();
            if versions.is_empty() {
                return;
            }
            let mek = &versions[i.index(versions.len())];
            if let Some(Ok(_)) = lc.plan_transition(mek, *s) {
                lc.set_state(mek, *s);
            }
        }
        Op::Rollback(m) => {
            // As the rotation orchestrator rolls back: the old version becomes active
            // again unless it is, then the new one is demoted if it is active.
            let id = mek_id(*m);
            let versions: Vec<MekRef> = lc.versions(&id).map(|v| v.mek.clone()).collect();
            let [.., old, new] = versions.as_slice() else {
                return;
            };
            if lc.state(old) != Some(KeyState::Active) {
                match lc.plan_transition(old, KeyState::Active) {
                    Some(Ok(_)) => {
                        lc.set_state(old, KeyState::Active);
                    }
                    _ => return,
                }
            }
            if lc.state(new) == Some(KeyState::Active)
                && let Some(Ok(_)) = lc.plan_transition(new, KeyState::DecryptOnly)
            {
                lc.set_state(new, KeyState::DecryptOnly);
            }
        }
    }
}

proptest! {
    #[test]
    fn any_sequence_keeps_the_lifecycle_rules(ops in prop::collection::vec(op(), 0..60)) {
        let mut lc = MekLifecycle::new();
        for op in &ops {
            let before = lc.clone();
            run(&mut lc, op);
            for m in 0..3u8 {
                let id = mek_id(m);
                let versions: Vec<&MekVersionInfo> = lc.versions(&id).collect();
                // At most one active version per MEK.
                let active = versions.iter().filter(|v| v.state == KeyState::Active).count();
                prop_assert!(active <= 1, "{op:?}: {active} active versions of {id}");
                // Versions are numbered 1..=n, none skipped, none reused.
                for (i, v) in versions.iter().enumerate() {
                    prop_assert_eq!(v.mek.version.get() as usize, i + 1);
                }
                for v in &versions {
                    match before.state(&v.mek) {
                        // Nothing leaves Compromised except to Deactivated or Destroyed;
                        // nothing leaves Destroyed.
                        Some(KeyState::Compromised) => prop_assert!(
                            matches!(v.state, KeyState::Compromised | KeyState::Deactivated | KeyState::Destroyed),
                            "{op:?}: compromised {} became {}", v.mek, v.state
                        ),
                        Some(KeyState::Destroyed) => prop_assert_eq!(v.state, KeyState::Destroyed),
                        Some(s) => prop_assert!(s.can_transition_to(v.state)),
                        None => prop_assert_eq!(v.state, KeyState::Active, "new versions are active"),
                    }
                }
            }
            // Versions are never forgotten.
            prop_assert!(before.iter().all(|v| lc.get(&v.mek).is_some()));
        }
    }

    /// A compromised version is never made active (nor decrypt-only) again: every planned
    /// move out of Compromised goes to Deactivated or Destroyed. (A version that was
    /// deactivated afterwards follows the deactivated rules: `KeyState::can_transition_to`
    /// allows Deactivated -> DecryptOnly -> Active, and the policy keeps that.)
    #[test]
    fn a_compromised_version_is_never_reactivated(ops in prop::collection::vec(op(), 0..60)) {
        let mut lc = MekLifecycle::new();
        for op in &ops {
            run(&mut lc, op);
            for v in lc.iter() {
                if v.state != KeyState::Compromised {
                    continue;
                }
                for next in all() {
                    let allowed = lc.plan_transition(&v.mek, next).unwrap().is_ok();
                    prop_assert_eq!(
                        allowed,
                        matches!(next, KeyState::Compromised | KeyState::Deactivated | KeyState::Destroyed),
                        "{} -> {}", v.mek, next
                    );
                }
            }
        }
    }
}
