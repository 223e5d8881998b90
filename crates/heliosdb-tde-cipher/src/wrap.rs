//! Local TEK wrapping under an in-process master key.
//!
//! Used by the providers that hold MEK material in process (in-memory, secure file). The
//! provider payload inside the [`WrappedTek`] envelope is
//!
//! ```text
//! nonce (12 bytes, random) | encrypted TEK (32 bytes) | tag (16 bytes)
//! ```
//!
//! and the associated data is [`WrapContext::aad`] for the MEK version named in the envelope.

use crate::aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN, random_nonce};
use heliosdb_tde_core::{
    KEY_LEN, KeyBytes, MasterKey, ProviderKind, Result, TableKey, TdeError, WrapContext, WrappedTek,
};

/// Length of the local wrap payload.
pub const PAYLOAD_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// Wraps `tek` under `master`, bound to `ctx`.
pub fn wrap_tek(
    backend: Backend,
    master: &MasterKey,
    provider: ProviderKind,
    tek: &TableKey,
    ctx: &WrapContext,
) -> Result<WrappedTek> {
    ctx.ensure_names(tek)?;
    let key = AeadKey::new(backend, master.bytes().expose_secret())?;
    let nonce = random_nonce()?;
    let mut payload = vec![0u8; PAYLOAD_LEN];
    payload[..NONCE_LEN].copy_from_slice(&nonce);
    payload[NONCE_LEN..NONCE_LEN + KEY_LEN].copy_from_slice(tek.bytes().expose_secret());
    let tag = key.seal_detached(
        &nonce,
        &ctx.aad(master.mek()),
        &mut payload[NONCE_LEN..NONCE_LEN + KEY_LEN],
    )?;
    payload[NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
    Ok(WrappedTek {
        algorithm: tek.algorithm(),
        provider,
        mek: master.mek().clone(),
        payload,
    })
}

/// Unwraps a TEK wrapped by [`wrap_tek`]. `master` must be the MEK version named in the
/// envelope, and `ctx` the context the TEK was wrapped with.
pub fn unwrap_tek(
    backend: Backend,
    master: &MasterKey,
    wrapped: &WrappedTek,
    ctx: &WrapContext,
) -> Result<TableKey> {
    let what = || format!("TEK {} wrapped by {}", ctx.tek_id(), wrapped.mek);
    if &wrapped.mek != master.mek() {
        return Err(TdeError::KeyNotFound {
            key: format!("mek:{}", wrapped.mek),
            hint: format!(
                "{} is wrapped by {}, but {} was supplied",
                ctx.tek_id(),
                wrapped.mek,
                master.mek()
            ),
        });
    }
    if wrapped.payload.len() != PAYLOAD_LEN {
        return Err(TdeError::corrupt(
            "wrapped TEK payload",
            what(),
            format!(
                "expected {PAYLOAD_LEN} bytes, found {}",
                wrapped.payload.len()
            ),
        ));
    }
    let key = AeadKey::new(backend, master.bytes().expose_secret())?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped.payload[..NONCE_LEN]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&wrapped.payload[NONCE_LEN + KEY_LEN..]);
    let aad = ctx.aad(&wrapped.mek);
    let bytes = KeyBytes::try_fill_with(|buf| {
        buf.copy_from_slice(&wrapped.payload[NONCE_LEN..NONCE_LEN + KEY_LEN]);
        key.open_detached(&nonce, &aad, buf, &tag)
    })
    .map_err(|_| TdeError::AuthenticationFailed { what: what() })?;
    Ok(TableKey::new(ctx.tek_id(), wrapped.algorithm, bytes))
}
