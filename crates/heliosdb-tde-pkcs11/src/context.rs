//! The PKCS#11 module context: loaded and initialised once per process and never finalised;
//! finding the token's slot; the process-wide order of token object access; and connecting a
//! session pool to the token.

use crate::error::hsm_error;
use crate::pool::SessionPool;
use crate::settings::Pkcs11Settings;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use heliosdb_tde_core::{Result, TdeError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};

/// Loads the module (once per process), finds the token and logs in one session, so that a
/// wrong PIN is reported now rather than at first use. Blocking: run it off the async runtime.
/// Returns the pool and the token's label.
pub(crate) fn connect(settings: &Pkcs11Settings) -> Result<(SessionPool, String)> {
    let path = &settings.library_path;
    if !path.exists() {
        return Err(TdeError::config(
            "hsm_config.pkcs11_library_path",
            format!(
                "{} does not exist; install your HSM's PKCS#11 module (for SoftHSM: \
                 apt-get install softhsm2 gives /usr/lib/softhsm/libsofthsm2.so)",
                path.display()
            ),
        ));
    }
    let ctx = context(path)?;
    let (slot, label) = find_slot(&ctx, settings)?;
    let pool = SessionPool::new(ctx, slot, settings.pin.clone(), settings.pool_size);
    pool.check_login()?;
    Ok((pool, label))
}

/// The slot of the token named by `settings` (its label, else its slot id), and the token's
/// label.
fn find_slot(ctx: &Pkcs11, settings: &Pkcs11Settings) -> Result<(Slot, String)> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| hsm_error(&e, "listing slots"))?;
    match &settings.token_label {
        Some(label) => {
            let mut seen = Vec::new();
            for s in slots {
                let info = ctx
                    .get_token_info(s)
                    .map_err(|e| hsm_error(&e, "reading token info"))?;
                let l = info.label().trim().to_string();
                if &l == label {
                    return Ok((s, l));
                }
                seen.push(l);
            }
            Err(TdeError::KeyNotFound {
                key: format!("HSM token labelled {label:?}"),
                hint: format!(
                    "no token with that label in {} (tokens present: {}). Initialise it, e.g. \
                     `softhsm2-util --init-token --free --label {label}`, or fix \
                     hsm_config.token_label",
                    settings.library_path.display(),
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    }
                ),
            })
        }
        None => {
            let s = slots
                .into_iter()
                .find(|s| s.id() == settings.slot_id)
                .ok_or_else(|| TdeError::KeyNotFound {
                    key: format!("HSM slot {}", settings.slot_id),
                    hint: "no initialised token in that slot; slot ids change after \
                           initialisation, so configure hsm_config.token_label instead"
                        .into(),
                })?;
            let label = ctx
                .get_token_info(s)
                .map(|i| i.label().trim().to_string())
                .unwrap_or_default();
            Ok((s, label))
        }
    }
}

/// Orders object-store access within this process: creating or destroying token objects is
/// exclusive, finding and reading them is shared. SoftHSM's file object store fails some
/// operations (CKR_GENERAL_ERROR, CKR_ATTRIBUTE_VALUE_INVALID) when a search or read races
/// with a creation in another session. Encryption and decryption themselves run in parallel.
static TOKEN_OBJECTS: RwLock<()> = RwLock::new(());

/// Runs `f` while no other thread of this process finds, reads, creates or destroys token
/// objects.
pub(crate) fn token_write<T>(f: impl FnOnce() -> T) -> T {
    let _g = TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner());
    f()
}

/// Runs `f` while no other thread of this process creates or destroys token objects.
pub(crate) fn token_read<T>(f: impl FnOnce() -> T) -> T {
    let _g = TOKEN_OBJECTS.read().unwrap_or_else(|p| p.into_inner());
    f()
}

/// The process-wide context of a PKCS#11 module. A module is process-global state: it is
/// initialised once, shared by every provider in the process, and never finalised while the
/// process runs (finalising it under another provider's open sessions crashes some modules).
fn context(path: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = map.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        TdeError::config(
            "hsm_config.pkcs11_library_path",
            format!("{} is not a PKCS#11 module: {e}", path.display()),
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(hsm_error(&e, "initialising the PKCS#11 module")),
    }
    map.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}
