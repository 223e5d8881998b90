//! Reading one MEK version from the token for an operation (the full path): its key object
//! and lifecycle state by label, the attribute check on first sight of the object, and the
//! state the operation needs. What was read goes into the [`VersionCache`].

use crate::cache::VersionCache;
use crate::error::OpError;
use crate::inventory;
use crate::keys::check_key;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use heliosdb_tde_core::lifecycle::mek_not_found;
use heliosdb_tde_core::{KeyState, MekRef, TdeError};
use std::fmt;

/// What an operation needs of the version's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Wrapping a TEK: the version must be able to encrypt.
    Encrypt,
    /// Unwrapping a TEK: the version must be able to decrypt.
    Decrypt,
}

impl Need {
    /// `Ok` when a version in `state` may do the operation; otherwise the
    /// [`TdeError::InvalidKeyState`] naming the version.
    pub(crate) fn check(self, state: KeyState, mek: &MekRef) -> Result<(), TdeError> {
        let key = format!("mek:{mek}");
        match self {
            Need::Encrypt => state.ensure_can_encrypt(&key, "wrap a TEK"),
            Need::Decrypt => state.ensure_can_decrypt(&key, "unwrap a TEK"),
        }
    }
}

/// The error for an MEK (or version) that is not on the token named `token`.
pub(crate) fn not_found(token: &str, mek: &dyn fmt::Display) -> TdeError {
    mek_not_found(
        mek,
        format!(
            "no such key on HSM token {token:?}; generate it with `heliosdb-cli security mek \
             generate`"
        ),
    )
}

/// Looks `mek` up on the token ([`inventory::lookup`]: exactly one key object by label and
/// `CKA_ID`, and the newest lifecycle record), checks the key object's attributes the first
/// time this process sees it, stores handle and state in `cache` (unless this process changed
/// the token since `epoch`), and returns the handle if the state allows `need`.
pub(crate) fn resolve(
    s: &Session,
    mek: &MekRef,
    need: Need,
    cache: &VersionCache,
    epoch: u64,
    token: &str,
) -> Result<ObjectHandle, OpError> {
    let Some(entry) = inventory::lookup(s, mek)? else {
        return Err(OpError::Refused(not_found(token, mek)));
    };
    let Some(key) = entry.key else {
        return Err(OpError::Refused(TdeError::InvalidKeyState {
            key: format!("mek:{mek}"),
            state: entry.state(),
            operation: "use it".into(),
            hint: "its key object was destroyed in the HSM".into(),
        }));
    };
    if !cache.is_checked(mek, key) {
        check_key(s, key, mek, false)?;
        cache.mark_checked(mek, key);
    }
    let state = entry.state();
    cache.store(mek, key, state, epoch);
    need.check(state, mek)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_tde_core::{MekId, MekVersion};

    #[test]
    fn each_operation_needs_its_state() {
        let m = MekRef::new(MekId::new("need_mek").unwrap(), MekVersion::FIRST);
        assert!(Need::Encrypt.check(KeyState::Active, &m).is_ok());
        assert!(Need::Decrypt.check(KeyState::DecryptOnly, &m).is_ok());
        for (need, state) in [
            (Need::Encrypt, KeyState::DecryptOnly),
            (Need::Encrypt, KeyState::Deactivated),
            (Need::Decrypt, KeyState::Deactivated),
            (Need::Decrypt, KeyState::Destroyed),
        ] {
            let e = need.check(state, &m).unwrap_err();
            assert!(
                matches!(&e, TdeError::InvalidKeyState { state: s, .. } if *s == state),
                "{need:?} {state:?}: {e}"
            );
            assert!(e.to_string().contains("mek:need_mek"), "{e}");
        }
    }
}
