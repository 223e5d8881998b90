//! A pool of logged-in sessions. A cryptoki `Session` is `Send` but not `Sync`, so each
//! operation takes a session out of the pool, uses it on one thread, and puts it back.

use crate::error::OpError;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use heliosdb_tde_core::{HSM_PIN_ENV, Result, TdeError};
use secrecy::SecretString;
use std::sync::{Condvar, Mutex, OnceLock};

/// What an operation on the fast path ([`SessionPool::run_fast`]) came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fast<T> {
    /// It ran.
    Done(T),
    /// The token refused the cached handle, the login or the session: look the key up again.
    Stale {
        /// The session itself is gone (not just the handle or the login): the pool drops its
        /// idle sessions.
        session_lost: bool,
    },
}

/// Sorts the result of a fast-path operation: a refused handle or login
/// ([`OpError::is_stale_handle`]) or a reset-class error ([`OpError::is_reset`]: a lost
/// session, a removed token) is [`Fast::Stale`]; any other error (a GCM tag mismatch, a
/// refusal) is returned as it is.
fn fast_outcome<T>(r: std::result::Result<T, OpError>) -> std::result::Result<Fast<T>, OpError> {
    match r {
        Ok(v) => Ok(Fast::Done(v)),
        Err(e) if e.is_stale_handle() => Ok(Fast::Stale {
            session_lost: false,
        }),
        Err(e) if e.is_reset() => Ok(Fast::Stale { session_lost: true }),
        Err(e) => Err(e),
    }
}

/// Logged-in sessions on one token, at most `size` open at once.
pub(crate) struct SessionPool {
    ctx: Pkcs11,
    slot: Slot,
    pin: SecretString,
    size: usize,
    idle: Mutex<(Vec<Session>, usize)>,
    freed: Condvar,
    /// Set when the token refused the PIN (`CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`): from then
    /// on this pool never calls `C_Login` again, because every wrong attempt counts towards
    /// locking a real token. A new provider (a restart) starts afresh.
    pin_refused: OnceLock<&'static str>,
}

impl SessionPool {
    pub(crate) fn new(ctx: Pkcs11, slot: Slot, pin: SecretString, size: usize) -> Self {
        Self {
            ctx,
            slot,
            pin,
            size,
            idle: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
            pin_refused: OnceLock::new(),
        }
    }

    /// Logs the application in with the PIN, unless the token refused this PIN before.
    fn login(&self, s: &Session) -> std::result::Result<(), OpError> {
        if let Some(code) = self.pin_refused.get() {
            return Err(OpError::Refused(TdeError::Provider {
                provider: "HSM".into(),
                message: format!("{code} (the PIN was not tried again)"),
                hint: format!(
                    "the token refused this provider's user PIN earlier, and the provider does                      not log in again until it is reopened, so that the token's retry counter                      does not lock it. Fix {HSM_PIN_ENV} or hsm_config.pin_file and restart"
                ),
            }));
        }
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e @ CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                let _ = self.pin_refused.set("CKR_PIN_INCORRECT");
                Err(e.into())
            }
            Err(e @ CkError::Pkcs11(RvError::PinLocked, _)) => {
                let _ = self.pin_refused.set("CKR_PIN_LOCKED");
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn open(&self) -> std::result::Result<Session, OpError> {
        let s = self.ctx.open_rw_session(self.slot)?;
        self.login(&s)?;
        Ok(s)
    }

    /// Makes sure the application is logged in. A token that was reset (or logged out by
    /// another session) answers searches for private objects with nothing instead of an
    /// error, which would read as "key not found"; so the login state is checked before every
    /// operation (one C_GetSessionInfo call).
    fn ensure_login(&self, s: &Session) -> std::result::Result<(), OpError> {
        let state = s.get_session_info()?.session_state();
        if matches!(state, SessionState::RoUser | SessionState::RwUser) {
            return Ok(());
        }
        if self.pin_refused.get().is_none() {
            tracing::warn!(target: "heliosdb::tde::hsm", "the token logged this application out; logging in again");
        }
        self.login(s)
    }

    /// Opens one session and logs in, so that a wrong PIN is reported at start. (PKCS#11 login
    /// state belongs to the process: if another provider of this process is already logged in
    /// to the token, the token answers CKR_USER_ALREADY_LOGGED_IN and this PIN is not checked.)
    pub(crate) fn check_login(&self) -> Result<()> {
        let s = self
            .open()
            .map_err(|e| e.into_tde("logging in to the token"))?;
        self.put(s);
        Ok(())
    }

    fn take(&self) -> std::result::Result<Session, OpError> {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = g.0.pop() {
                return Ok(s);
            }
            if g.1 < self.size {
                g.1 += 1;
                drop(g);
                return self.open().inspect_err(|_| {
                    let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    g.1 -= 1;
                });
            }
            g = self.freed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn put(&self, s: Session) {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 == 0 {
            g.1 = 1;
        }
        g.0.push(s);
        self.freed.notify_one();
    }

    /// Forgets a broken session.
    fn discard(&self, s: Session) {
        drop(s);
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = g.1.saturating_sub(1);
        self.freed.notify_one();
    }

    /// Drops every idle session (after a reset they are all invalid).
    fn reset(&self) {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.0.len();
        g.0.clear();
        g.1 = g.1.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Runs `f` with a session and nothing else: no login check (the fast path of an MEK
    /// version whose key handle is cached; it makes no object search, which is what a lost
    /// login would silently empty, and a token answers an operation on a private key while
    /// logged out with `CKR_USER_NOT_LOGGED_IN`). `Ok(Fast::Stale)` when the token refused the
    /// session, the login or the handle ([`OpError::is_reset`]): the caller forgets the handle
    /// and goes through [`SessionPool::run`], which logs in again and looks the key up.
    pub(crate) fn run_fast<T>(
        &self,
        what: &str,
        f: &dyn Fn(&Session) -> std::result::Result<T, OpError>,
    ) -> Result<Fast<T>> {
        let s = self.take().map_err(|e| e.into_tde(what))?;
        crate::hooks::holding_session();
        let r = f(&s);
        match fast_outcome(r) {
            Ok(Fast::Stale { session_lost }) => {
                tracing::debug!(target: "heliosdb::tde::hsm", "{what}: the token refused a cached handle or the session; looking the key up again");
                if session_lost {
                    self.discard(s);
                    self.reset();
                } else {
                    self.put(s);
                }
                Ok(Fast::Stale { session_lost })
            }
            Ok(done) => {
                self.put(s);
                Ok(done)
            }
            Err(e) => {
                self.put(s);
                Err(e.into_tde(what))
            }
        }
    }

    /// Runs `f` with a session; on a reset-type error, re-opens, logs in and retries once.
    pub(crate) fn run<T>(
        &self,
        what: &str,
        f: &dyn Fn(&Session) -> std::result::Result<T, OpError>,
    ) -> Result<T> {
        for attempt in 0..2 {
            let s = self.take().map_err(|e| e.into_tde(what))?;
            crate::hooks::holding_session();
            match self.ensure_login(&s).and_then(|()| f(&s)) {
                Ok(v) => {
                    self.put(s);
                    return Ok(v);
                }
                Err(e) if attempt == 0 && e.is_reset() => {
                    tracing::warn!(target: "heliosdb::tde::hsm", "{what}: {e}; logging in again and retrying");
                    self.discard(s);
                    self.reset();
                }
                Err(e) => {
                    if e.is_reset() {
                        self.discard(s);
                    } else {
                        self.put(s);
                    }
                    return Err(e.into_tde(what));
                }
            }
        }
        Err(TdeError::ProviderUnavailable {
            provider: "HSM".into(),
            reason: format!("{what}: the token kept failing after a re-login"),
            retryable: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn rv(code: RvError) -> std::result::Result<(), OpError> {
        Err(OpError::Hsm(CkError::Pkcs11(code, Function::EncryptInit)))
    }

    #[test]
    fn an_invalid_handle_or_lost_login_is_stale_and_other_errors_are_returned() {
        for code in [
            RvError::KeyHandleInvalid,
            RvError::ObjectHandleInvalid,
            RvError::UserNotLoggedIn,
        ] {
            assert_eq!(
                fast_outcome(rv(code)).unwrap(),
                Fast::Stale {
                    session_lost: false
                },
                "{code:?}: the session is still good"
            );
        }
        for code in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::CryptokiNotInitialized,
        ] {
            assert_eq!(
                fast_outcome(rv(code)).unwrap(),
                Fast::Stale { session_lost: true },
                "{code:?}"
            );
        }
        // A GCM tag mismatch (SoftHSM's CKR_GENERAL_ERROR), a failure and a refusal are not
        // cured by a new lookup.
        for code in [
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::FunctionFailed,
        ] {
            assert!(fast_outcome(rv(code)).is_err(), "{code:?}");
        }
        let refused: std::result::Result<(), OpError> =
            Err(OpError::Refused(TdeError::SecurityPolicy("no".into())));
        assert!(fast_outcome(refused).is_err());
        assert_eq!(fast_outcome(Ok::<_, OpError>(5)).unwrap(), Fast::Done(5));
    }
}
