//! The GCM calls of a wrap and an unwrap under an MEK version's key object, inside one
//! session: `C_EncryptInit`/`C_Encrypt` and the check `C_DecryptInit`/`C_Decrypt` of the new
//! wrap, or one `C_DecryptInit`/`C_Decrypt`.

use crate::error::{OpError, is_gcm_tag_mismatch};
use crate::hooks;
use crate::{IV_LEN, TAG_LEN};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use heliosdb_tde_core::{KEY_LEN, MekRef, TdeError};
use zeroize::Zeroizing;

/// Encrypts `plain` (a TEK) under `key` with `CKM_AES_GCM`, a fresh IV and `aad`, then decrypts
/// the result once in the HSM and compares it with `plain`; returns the IV the token saw and
/// the ciphertext with its tag. `mek` names the version for the test hooks; `what` names the
/// TEK in errors.
pub(crate) fn encrypt_checked(
    s: &Session,
    key: ObjectHandle,
    mek: &MekRef,
    aad: &[u8],
    plain: &[u8],
    what: &str,
) -> Result<([u8; IV_LEN], Vec<u8>), OpError> {
    // A fresh IV on every attempt (a retry after a reset draws a new one).
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).map_err(|e| TdeError::Random(e.to_string()))?;
    hooks::token_writes_iv(mek, &mut iv);
    let mut ct = {
        let params = GcmParams::new(&mut iv, aad, 128.into())?;
        s.encrypt(&Mechanism::AesGcm(params), key, plain)?
    };
    // `iv` is now the buffer the token saw: a token that generates its own IV writes it
    // there, and that is the IV the wrap needs.
    hooks::corrupt_wrap(mek, &mut ct);
    if ct.len() != KEY_LEN + TAG_LEN {
        return Err(OpError::Refused(TdeError::Provider {
            provider: "HSM".into(),
            message: format!(
                "CKM_AES_GCM returned {} bytes, expected {}",
                ct.len(),
                KEY_LEN + TAG_LEN
            ),
            hint: "the token's AES-GCM does not behave as PKCS#11 specifies; nothing was \
                   stored"
                .into(),
        }));
    }
    // Unwrap the new wrap once, in the HSM, before anyone stores it.
    let mut check_iv = iv;
    let back = {
        let params = GcmParams::new(&mut check_iv, aad, 128.into())?;
        match s.decrypt(&Mechanism::AesGcm(params), key, &ct) {
            Ok(p) => Some(Zeroizing::new(p)),
            Err(e) if is_gcm_tag_mismatch(&e) => None,
            Err(e) => return Err(e.into()),
        }
    };
    if !back.is_some_and(|b| same_bytes(&b, plain)) {
        return Err(OpError::Refused(TdeError::Provider {
            provider: "HSM".into(),
            message: format!("the new wrap of {what} does not unwrap to the same key"),
            hint: "the token's CKM_AES_GCM returned a wrap that fails its check (for example \
                   it used another IV than it reported); nothing was stored. Check the HSM's \
                   firmware and its AES-GCM IV settings"
                .into(),
        }));
    }
    Ok((iv, ct))
}

/// Decrypts `ct` (ciphertext and tag) under `key` with `CKM_AES_GCM`, `iv` and `aad`. A tag
/// that does not verify is [`TdeError::AuthenticationFailed`] naming `what`.
pub(crate) fn decrypt(
    s: &Session,
    key: ObjectHandle,
    mut iv: [u8; IV_LEN],
    aad: &[u8],
    ct: &[u8],
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let params = GcmParams::new(&mut iv, aad, 128.into())?;
    match s.decrypt(&Mechanism::AesGcm(params), key, ct) {
        Ok(p) => Ok(Zeroizing::new(p)),
        // The data or its binding is wrong, and retrying cannot help.
        Err(e) if is_gcm_tag_mismatch(&e) => {
            Err(OpError::Refused(TdeError::AuthenticationFailed {
                what: what.to_string(),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Compares two byte strings in time independent of where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_compares_length_and_content() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(same_bytes(b"", b""));
    }
}
