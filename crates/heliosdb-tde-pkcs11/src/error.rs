//! Mapping PKCS#11 return codes to typed errors. Every decision here is made on the cryptoki
//! error value (its `CKR_*` return code) or on the provider's own [`OpError`] variant, never on
//! error text.

use cryptoki::error::{Error as CkError, RvError};
use heliosdb_tde_core::{HSM_PIN_ENV, TdeError};
use std::fmt;

/// Why an operation inside a session failed: the token returned an error (which may call for
/// a re-login and a retry), or the provider refused to go on (a planted key, a wrap that does
/// not check out, a PIN the token refused before, a version in a state that forbids the
/// operation). A refusal is returned as it is.
#[derive(Debug)]
pub(crate) enum OpError {
    /// A PKCS#11 return code.
    Hsm(CkError),
    /// The provider's own refusal; never retried.
    Refused(TdeError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Hsm(e)
    }
}

impl From<TdeError> for OpError {
    fn from(e: TdeError) -> Self {
        OpError::Refused(e)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Hsm(e) => write!(f, "{e}"),
            OpError::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl OpError {
    /// Whether the session or login may be gone, so that a re-login and one retry can help.
    pub(crate) fn is_reset(&self) -> bool {
        match self {
            OpError::Hsm(e) => is_reset(e),
            OpError::Refused(_) => false,
        }
    }

    /// Whether the token refused a key handle or the login, while the session itself is still
    /// good: a cached key handle may be stale (another process destroyed the object, or the
    /// application was logged out). `CKR_KEY_FUNCTION_NOT_PERMITTED` is among them: a token
    /// that keeps a handle to an object another process deleted (SoftHSM2's database object
    /// store) reads its attributes as absent and answers that; the lookup that follows finds
    /// out what happened.
    pub(crate) fn is_stale_handle(&self) -> bool {
        matches!(
            self,
            OpError::Hsm(CkError::Pkcs11(
                RvError::KeyHandleInvalid
                    | RvError::ObjectHandleInvalid
                    | RvError::UserNotLoggedIn
                    | RvError::KeyFunctionNotPermitted,
                _
            ))
        )
    }

    /// The typed error of this failure of `what`.
    pub(crate) fn into_tde(self, what: &str) -> TdeError {
        match self {
            OpError::Hsm(e) => hsm_error(&e, what),
            OpError::Refused(e) => e,
        }
    }
}

/// Maps a cryptoki error to a typed error; a wrong PIN is reported as `CKR_PIN_INCORRECT` with
/// what to check and how to unlock a locked PIN.
pub(crate) fn hsm_error(e: &CkError, what: &str) -> TdeError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => TdeError::Provider {
            provider: "HSM".into(),
            message: "CKR_PIN_INCORRECT".into(),
            hint: format!(
                "{what}: the HSM user PIN is wrong. Check {HSM_PIN_ENV} (or hsm_config.pin_file) \
                 and the token's PIN flags (`softhsm2-util --show-slots`). The provider does not \
                 try this PIN again until it is reopened. If the user PIN is locked, the \
                 security officer can unlock it: log in as SO and set a new user PIN \
                 (C_InitPIN, e.g. `pkcs11-tool --login --login-type so --init-pin`); do not \
                 re-initialise the token, that destroys its keys"
            ),
        },
        CkError::Pkcs11(RvError::PinLocked, _) => TdeError::Provider {
            provider: "HSM".into(),
            message: "CKR_PIN_LOCKED".into(),
            hint: format!(
                "{what}: the token's user PIN is locked after too many wrong attempts. The \
                 security officer can unlock it: log in as SO and set a new user PIN \
                 (C_InitPIN, e.g. `pkcs11-tool --login --login-type so --init-pin`), then set \
                 it in {HSM_PIN_ENV} or hsm_config.pin_file. Do not re-initialise the token: \
                 that destroys its keys"
            ),
        },
        CkError::Pkcs11(
            rv @ (RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::DeviceError),
            _,
        ) => TdeError::ProviderUnavailable {
            provider: "HSM".into(),
            reason: format!("{what}: {rv}"),
            retryable: true,
        },
        CkError::Pkcs11(rv, f) => TdeError::Provider {
            provider: "HSM".into(),
            message: format!("{rv:?} in {f}"),
            hint: what.to_string(),
        },
        other => TdeError::Provider {
            provider: "HSM".into(),
            message: other.to_string(),
            hint: what.to_string(),
        },
    }
}

/// Whether an error means the session or login is gone (token or library reset).
pub(crate) fn is_reset(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

/// Whether a `C_Decrypt` with `CKM_AES_GCM` failed because the tag did not verify: the data or
/// its binding is wrong, and retrying cannot help. SoftHSM2 reports a GCM tag mismatch as
/// `CKR_GENERAL_ERROR`; other tokens use `CKR_ENCRYPTED_DATA_INVALID`.
pub(crate) fn is_gcm_tag_mismatch(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::GeneralError | RvError::EncryptedDataInvalid, _)
    )
}

/// Whether an object vanished between being found and being read or destroyed (another
/// process replaced a lifecycle record).
pub(crate) fn is_gone(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::ObjectHandleInvalid, _))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn rv(code: RvError) -> CkError {
        CkError::Pkcs11(code, Function::Decrypt)
    }

    #[test]
    fn a_wrong_or_locked_pin_names_its_code_and_the_security_officer() {
        for (code, name) in [
            (RvError::PinIncorrect, "CKR_PIN_INCORRECT"),
            (RvError::PinLocked, "CKR_PIN_LOCKED"),
        ] {
            match hsm_error(&CkError::Pkcs11(code, Function::Login), "logging in") {
                TdeError::Provider { message, hint, .. } => {
                    assert_eq!(message, name);
                    assert!(hint.starts_with("logging in: "), "{hint}");
                    assert!(hint.contains("C_InitPIN"), "{hint}");
                    assert!(hint.contains(HSM_PIN_ENV), "{hint}");
                }
                other => panic!("{code:?}: {other:?}"),
            }
            assert!(!is_reset(&CkError::Pkcs11(code, Function::Login)));
        }
    }

    #[test]
    fn an_absent_token_or_session_is_unavailable_and_retryable() {
        for code in [
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::UserNotLoggedIn,
            RvError::CryptokiNotInitialized,
            RvError::DeviceError,
        ] {
            let e = hsm_error(&rv(code), "wrapping a TEK");
            assert!(
                matches!(
                    &e,
                    TdeError::ProviderUnavailable {
                        retryable: true,
                        reason,
                        ..
                    } if reason.starts_with("wrapping a TEK: ")
                ),
                "{code:?}: {e:?}"
            );
            assert!(e.is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn a_reset_is_recognised_by_its_return_code() {
        for code in [
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::UserNotLoggedIn,
            RvError::CryptokiNotInitialized,
            RvError::ObjectHandleInvalid,
            RvError::KeyHandleInvalid,
        ] {
            assert!(is_reset(&rv(code)), "{code:?}");
            assert!(OpError::Hsm(rv(code)).is_reset(), "{code:?}");
        }
        for code in [
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::PinIncorrect,
            RvError::DeviceError,
            RvError::FunctionFailed,
        ] {
            assert!(!is_reset(&rv(code)), "{code:?}");
        }
        assert!(!is_reset(&CkError::NotSupported));
    }

    #[test]
    fn a_gcm_tag_mismatch_is_recognised_by_its_return_code() {
        assert!(is_gcm_tag_mismatch(&rv(RvError::GeneralError)));
        assert!(is_gcm_tag_mismatch(&rv(RvError::EncryptedDataInvalid)));
        for code in [
            RvError::SessionHandleInvalid,
            RvError::KeyHandleInvalid,
            RvError::FunctionFailed,
            RvError::DeviceError,
        ] {
            assert!(!is_gcm_tag_mismatch(&rv(code)), "{code:?}");
        }
        assert!(!is_gcm_tag_mismatch(&CkError::NotSupported));
    }

    #[test]
    fn a_vanished_object_is_recognised_by_its_return_code() {
        assert!(is_gone(&rv(RvError::ObjectHandleInvalid)));
        assert!(!is_gone(&rv(RvError::KeyHandleInvalid)));
        assert!(!is_gone(&rv(RvError::GeneralError)));
    }

    #[test]
    fn other_return_codes_name_the_code_and_the_function() {
        let e = hsm_error(
            &CkError::Pkcs11(RvError::FunctionFailed, Function::Encrypt),
            "wrapping a TEK",
        );
        match e {
            TdeError::Provider { message, hint, .. } => {
                assert_eq!(message, format!("FunctionFailed in {}", Function::Encrypt));
                assert_eq!(hint, "wrapping a TEK");
            }
            other => panic!("{other:?}"),
        }
        match hsm_error(&CkError::NotSupported, "listing slots") {
            TdeError::Provider { hint, .. } => assert_eq!(hint, "listing slots"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_is_returned_as_it_is_and_never_retried() {
        let e = OpError::from(TdeError::SecurityPolicy("planted".into()));
        assert!(!e.is_reset());
        assert!(matches!(e.into_tde("x"), TdeError::SecurityPolicy(m) if m == "planted"));
        let e = OpError::from(rv(RvError::SessionClosed));
        assert!(matches!(e, OpError::Hsm(_)));
    }
}
