//! Local TEK wrapping under an in-process master key.
//!
//! Used by the providers that hold MEK material in process (in-memory, secure file). The
//! provider payload inside the [`WrappedTek`] envelope is
//!
//! ```text
//! nonce (12 bytes, random) | encrypted TEK (32 bytes) | tag (16 bytes)
//! ```
//!
//! and the associated data is [`WrapContext::aad_for`] the envelope.

use crate::aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN, random_nonce};
use heliosdb_tde_core::{
    KEY_LEN, KeyBytes, MasterKey, ProviderKind, Result, TableKey, TdeError, WrapContext, WrappedTek,
};
use zeroize::Zeroizing;

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
    let mut wrapped = WrappedTek::new(tek.algorithm(), provider, master.mek().clone(), Vec::new());
    let key = AeadKey::new(backend, master.bytes().expose_secret())?;
    let nonce = random_nonce()?;
    // The TEK is sealed in place: until the seal succeeds the buffer holds it in the clear, so
    // it is wiped if sealing fails; once sealed, its allocation moves into the envelope.
    let mut payload = Zeroizing::new(vec![0u8; PAYLOAD_LEN]);
    payload[..NONCE_LEN].copy_from_slice(&nonce);
    payload[NONCE_LEN..NONCE_LEN + KEY_LEN].copy_from_slice(tek.bytes().expose_secret());
    let tag = key.seal_detached(
        &nonce,
        &ctx.aad_for(&wrapped),
        &mut payload[NONCE_LEN..NONCE_LEN + KEY_LEN],
    )?;
    payload[NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
    wrapped.payload = std::mem::take(&mut *payload);
    Ok(wrapped)
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
    let aad = ctx.aad_for(wrapped);
    let bytes = KeyBytes::try_fill_with(|buf| {
        buf.copy_from_slice(&wrapped.payload[NONCE_LEN..NONCE_LEN + KEY_LEN]);
        key.open_detached(&nonce, &aad, buf, &tag)
    })
    .map_err(|_| TdeError::AuthenticationFailed { what: what() })?;
    Ok(TableKey::new(ctx.tek_id(), wrapped.algorithm, bytes))
}

/// Whether `wrapped` unwraps under `master` (with `ctx`) to exactly `tek`: the self-check every
/// local provider runs on a new wrap before anyone stores it, so that a fault while wrapping
/// never leaves a TEK that can no longer be unwrapped. Compares without an early exit.
pub fn wrap_gives_back(
    backend: Backend,
    master: &MasterKey,
    wrapped: &WrappedTek,
    tek: &TableKey,
    ctx: &WrapContext,
) -> bool {
    unwrap_tek(backend, master, wrapped, ctx).is_ok_and(|back| {
        let (a, b) = (back.bytes().expose_secret(), tek.bytes().expose_secret());
        back.id() == tek.id()
            && back.algorithm() == tek.algorithm()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

/// The error a provider returns when [`wrap_gives_back`] fails: nothing was stored.
pub fn wrap_check_failed(
    provider: &str,
    mek: &heliosdb_tde_core::MekRef,
    ctx: &WrapContext,
) -> TdeError {
    TdeError::Provider {
        provider: provider.into(),
        message: format!(
            "the new wrap of TEK {} under {mek} did not unwrap to the same key (self-check \
             after wrapping)",
            ctx.tek_id()
        ),
        hint: "The wrap was discarded and nothing was stored. Retry the operation; if it fails \
               again, check the host for memory or CPU faults"
            .into(),
    }
}
