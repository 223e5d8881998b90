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
#[non_exhaustive]
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
#[non_exhaustive]
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
            deletion_protection: None,
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
