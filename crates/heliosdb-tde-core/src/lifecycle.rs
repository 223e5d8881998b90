//! The MEK lifecycle policy shared by every provider.
//!
//! Every [`MekProvider`](crate::MekProvider) applies the same rules to the versions of its
//! master keys:
//!
//! * `generate_mek` creates version 1, active, and refuses an id that already has a version
//!   ([`TdeError::AlreadyExists`]);
//! * `rotate_mek` creates the version after the newest one (whatever its state, so a number is
//!   never reused, not even after a version was destroyed), active, with the newest version's
//!   algorithm, and demotes every active version of that MEK to [`KeyState::DecryptOnly`];
//! * `set_mek_state` moves one version only along [`KeyState::can_transition_to`] (a
//!   compromised version never becomes usable for wrapping again, a destroyed one never comes
//!   back), and moving a version to the state it has changes nothing;
//! * `mek_info` lists the versions of one MEK oldest first, `list_meks` every id once.
//!
//! [`MekLifecycle`] holds these rules once. It is pure: it performs no I/O and creates no key
//! material. A provider keeps (or rebuilds, from its service) a [`MekLifecycle`] with one
//! [`MekVersionInfo`] per version, asks it what an operation means (a `plan_*` method), does
//! what only the provider can do (create key material, persist a state record, destroy a key),
//! and then records the outcome ([`MekLifecycle::insert`], [`MekLifecycle::set_state`],
//! [`MekLifecycle::apply_rotation`]).
//!
//! ```
//! use heliosdb_tde_core::lifecycle::{MekLifecycle, Transition};
//! use heliosdb_tde_core::{EncryptionAlgorithm, KeyState, MekId, MekVersionInfo, Timestamp};
//!
//! let mut lc = MekLifecycle::new();
//! let id = MekId::new("master_key_001").unwrap();
//! // generate_mek: the provider creates the key for this reference, then records it.
//! let v1 = lc.plan_generate(&id).unwrap();
//! lc.insert(MekVersionInfo::active(v1.clone(), EncryptionAlgorithm::Aes256Gcm, Timestamp::now()));
//! // rotate_mek: the provider creates the key of `rotation.next`, then records the rotation.
//! let rotation = lc.plan_rotation(&id).expect("known id").unwrap();
//! assert_eq!(rotation.demote, vec![v1.clone()]);
//! let v2 = lc.apply_rotation(&rotation, Timestamp::now());
//! assert_eq!(v2.mek.version.get(), 2);
//! assert_eq!(lc.state(&v1), Some(KeyState::DecryptOnly));
//! // set_mek_state: checked against the lifecycle before anything is persisted.
//! let t = lc.plan_transition(&v1, KeyState::Deactivated).expect("known version").unwrap();
//! assert_eq!(t, Transition::Change { from: KeyState::DecryptOnly, to: KeyState::Deactivated });
//! lc.set_state(&v1, KeyState::Deactivated);
//! assert!(lc.plan_transition(&v1, KeyState::Active).unwrap().is_err());
//! ```

use crate::envelope::ProviderKind;
use crate::error::{Result, TdeError};
use crate::ids::{MekId, MekRef, MekVersion};
use crate::metadata::{EncryptionAlgorithm, KeyState};
use crate::provider::{MekInfo, MekVersionInfo};
use crate::time::Timestamp;
use std::collections::BTreeMap;
use std::fmt;

/// The error every provider returns for an MEK (or MEK version) it does not hold:
/// [`TdeError::KeyNotFound`] with the key `mek:<mek>` and the provider's `hint` (what to do
/// about it, in the provider's terms).
pub fn mek_not_found(mek: &dyn fmt::Display, hint: impl Into<String>) -> TdeError {
    TdeError::KeyNotFound {
        key: format!("mek:{mek}"),
        hint: hint.into(),
    }
}

/// What a rotation of one MEK does, decided by [`MekLifecycle::plan_rotation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The newest version before the rotation.
    pub previous: MekVersion,
    /// The version to create: the one after [`Rotation::previous`].
    pub next: MekRef,
    /// The algorithm of the new version (the newest version's).
    pub algorithm: EncryptionAlgorithm,
    /// The versions that are active now and become [`KeyState::DecryptOnly`], oldest first.
    ///
    /// A provider that persists states creates the new version first and demotes these
    /// afterwards: a crash in between leaves two active versions, which
    /// [`MekLifecycle::normalize_active`] resolves in favour of the newest.
    pub demote: Vec<MekRef>,
}

impl Rotation {
    /// The description of the new version, active, created at `created_at`.
    pub fn new_version(&self, created_at: Timestamp) -> MekVersionInfo {
        MekVersionInfo::active(self.next.clone(), self.algorithm, created_at)
    }
}

/// What a state change of one MEK version does, decided by [`MekLifecycle::plan_transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The version already has the requested state: nothing is to be done or persisted.
    Unchanged,
    /// The version moves from one state to another, which the lifecycle allows.
    Change {
        /// The state it has now.
        from: KeyState,
        /// The state it moves to.
        to: KeyState,
    },
}

impl Transition {
    /// Whether the provider must destroy the version's key material (the move to
    /// [`KeyState::Destroyed`]).
    pub fn destroys_material(&self) -> bool {
        matches!(
            self,
            Transition::Change {
                to: KeyState::Destroyed,
                ..
            }
        )
    }
}

/// The versions of a provider's MEKs and their states, with the lifecycle rules applied to
/// them. See the [module documentation](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MekLifecycle {
    versions: BTreeMap<MekRef, MekVersionInfo>,
}

impl MekLifecycle {
    /// No versions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The versions a provider holds (read from disk, from a token, from a service).
    pub fn from_versions(versions: impl IntoIterator<Item = MekVersionInfo>) -> Self {
        Self {
            versions: versions.into_iter().map(|v| (v.mek.clone(), v)).collect(),
        }
    }

    /// Records one version (created, loaded, or with a changed description); returns the
    /// description it replaces, if any.
    pub fn insert(&mut self, info: MekVersionInfo) -> Option<MekVersionInfo> {
        self.versions.insert(info.mek.clone(), info)
    }

    /// The description of one version.
    pub fn get(&self, mek: &MekRef) -> Option<&MekVersionInfo> {
        self.versions.get(mek)
    }

    /// The state of one version.
    pub fn state(&self, mek: &MekRef) -> Option<KeyState> {
        self.get(mek).map(|v| v.state)
    }

    /// How many versions (of all MEKs) are known.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no version is known.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Every version of every MEK, ordered by id, then version.
    pub fn iter(&self) -> impl Iterator<Item = &MekVersionInfo> {
        self.versions.values()
    }

    /// The versions of one MEK, oldest first.
    pub fn versions<'a>(&'a self, id: &'a MekId) -> impl Iterator<Item = &'a MekVersionInfo> {
        self.versions.values().filter(move |v| &v.mek.id == id)
    }

    /// Whether the MEK has any version.
    pub fn contains_id(&self, id: &MekId) -> bool {
        self.versions(id).next().is_some()
    }

    /// The newest version of one MEK, whatever its state.
    pub fn latest_version(&self, id: &MekId) -> Option<MekVersion> {
        self.versions(id).map(|v| v.mek.version).max()
    }

    /// Every MEK id, once each, in order (`list_meks`).
    pub fn ids(&self) -> Vec<MekId> {
        let mut ids: Vec<MekId> = self.versions.keys().map(|m| m.id.clone()).collect();
        ids.dedup();
        ids
    }

    /// The description of one MEK and its versions, oldest first (`mek_info`); `None` when
    /// the id has no version.
    pub fn mek_info(
        &self,
        id: &MekId,
        provider: ProviderKind,
        location: impl Into<String>,
    ) -> Option<MekInfo> {
        let versions: Vec<MekVersionInfo> = self.versions(id).cloned().collect();
        if versions.is_empty() {
            return None;
        }
        Some(MekInfo {
            id: id.clone(),
            provider,
            location: location.into(),
            versions,
        })
    }

    /// The first version of a new MEK (`generate_mek`), or [`TdeError::AlreadyExists`] when
    /// the id has a version already (in any state, destroyed included).
    pub fn plan_generate(&self, id: &MekId) -> Result<MekRef> {
        if self.contains_id(id) {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{id}"),
            });
        }
        Ok(MekRef::new(id.clone(), MekVersion::FIRST))
    }

    /// What rotating one MEK does (`rotate_mek`): `None` when the id has no version, an error
    /// when the version number would overflow.
    pub fn plan_rotation(&self, id: &MekId) -> Option<Result<Rotation>> {
        let newest = self.versions(id).last()?;
        let previous = newest.mek.version;
        let algorithm = newest.algorithm;
        Some(previous.next().map(|v| {
            Rotation {
                previous,
                next: MekRef::new(id.clone(), v),
                algorithm,
                demote: self
                    .versions(id)
                    .filter(|v| v.state == KeyState::Active)
                    .map(|v| v.mek.clone())
                    .collect(),
            }
        }))
    }

    /// Records a rotation once the provider has created (and persisted) the new version and
    /// demoted the old ones: every version in [`Rotation::demote`] becomes
    /// [`KeyState::DecryptOnly`] and the new version is recorded, active. Returns the new
    /// version's description.
    pub fn apply_rotation(&mut self, rotation: &Rotation, created_at: Timestamp) -> MekVersionInfo {
        for m in &rotation.demote {
            self.set_state(m, KeyState::DecryptOnly);
        }
        let info = rotation.new_version(created_at);
        self.insert(info.clone());
        info
    }

    /// What moving one version to `next` does (`set_mek_state`): `None` when the version is
    /// unknown; the error of [`KeyState::check_transition`] when the lifecycle forbids it (for
    /// example a compromised version back to active, or anything out of destroyed).
    ///
    /// Moving a version to [`KeyState::Active`] does not demote another active version of the
    /// same MEK: the rotation orchestrator's rollback reactivates the old version and demotes
    /// the new one in two steps.
    pub fn plan_transition(&self, mek: &MekRef, next: KeyState) -> Option<Result<Transition>> {
        let current = self.state(mek)?;
        Some(
            current
                .check_transition(next, &format!("mek:{mek}"))
                .map(|()| {
                    if current == next {
                        Transition::Unchanged
                    } else {
                        Transition::Change {
                            from: current,
                            to: next,
                        }
                    }
                }),
        )
    }

    /// Records the state of one version after the provider has persisted it. Returns whether
    /// the version is known. (It does not check the transition: that is
    /// [`MekLifecycle::plan_transition`]'s job, before anything is persisted.)
    pub fn set_state(&mut self, mek: &MekRef, state: KeyState) -> bool {
        match self.versions.get_mut(mek) {
            Some(v) => {
                v.state = state;
                true
            }
            None => false,
        }
    }

    /// Leaves at most one active version per MEK: the newest. Older active versions become
    /// [`KeyState::DecryptOnly`] and are returned, in order. Two active versions are what a
    /// crash between creating a new version and demoting the old one leaves behind.
    pub fn normalize_active(&mut self) -> Vec<MekRef> {
        let mut newest_active: BTreeMap<&MekId, MekVersion> = BTreeMap::new();
        for v in self.versions.values() {
            if v.state == KeyState::Active {
                let e = newest_active.entry(&v.mek.id).or_insert(v.mek.version);
                *e = (*e).max(v.mek.version);
            }
        }
        let demote: Vec<MekRef> = self
            .versions
            .values()
            .filter(|v| {
                v.state == KeyState::Active && newest_active.get(&v.mek.id) != Some(&v.mek.version)
            })
            .map(|v| v.mek.clone())
            .collect();
        for m in &demote {
            self.set_state(m, KeyState::DecryptOnly);
        }
        demote
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [KeyState; 5] = [
        KeyState::Active,
        KeyState::DecryptOnly,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Destroyed,
    ];

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
        for from in ALL {
            for to in ALL {
                let mek = MekRef::new(k.clone(), MekVersion::FIRST);
                let lc = MekLifecycle::from_versions([MekVersionInfo {
                    mek: mek.clone(),
                    state: from,
                    algorithm: EncryptionAlgorithm::Aes256Gcm,
                    created_at: Timestamp(0),
                }]);
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
        let v = |n: u32, state| MekVersionInfo {
            mek: MekRef::new(k.clone(), MekVersion::new(n).unwrap()),
            state,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            created_at: Timestamp(0),
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
            (0u8..3, any::<prop::sample::Index>(), state)
                .prop_map(|(m, i, s)| Op::SetState(m, i, s)),
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
                let versions: Vec<MekRef> =
                    lc.versions(&mek_id(*m)).map(|v| v.mek.clone()).collect();
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
                    for next in ALL {
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
}
