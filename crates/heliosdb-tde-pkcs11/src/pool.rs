//! A pool of logged-in sessions. A cryptoki `Session` is `Send` but not `Sync`, so each
//! operation takes a session out of the pool, uses it on one thread, and puts it back.

use crate::{hsm_error, is_reset};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use heliosdb_tde_core::{Result, TdeError};
use secrecy::SecretString;
use std::sync::{Condvar, Mutex};

pub(crate) struct SessionPool {
    ctx: Pkcs11,
    slot: Slot,
    pin: SecretString,
    size: usize,
    idle: Mutex<(Vec<Session>, usize)>,
    freed: Condvar,
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
        }
    }

    fn open(&self) -> std::result::Result<Session, CkError> {
        let s = self.ctx.open_rw_session(self.slot)?;
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// Makes sure the application is logged in. A token that was reset (or logged out by
    /// another session) answers searches for private objects with nothing instead of an
    /// error, which would read as "key not found"; so the login state is checked before every
    /// operation (one C_GetSessionInfo call).
    fn ensure_login(&self, s: &Session) -> std::result::Result<(), CkError> {
        let state = s.get_session_info()?.session_state();
        if matches!(state, SessionState::RoUser | SessionState::RwUser) {
            return Ok(());
        }
        tracing::warn!(target: "heliosdb::tde::hsm", "the token logged this application out; logging in again");
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens one session and logs in, so that a wrong PIN is reported at start. (PKCS#11 login
    /// state belongs to the process: if another provider of this process is already logged in
    /// to the token, the token answers CKR_USER_ALREADY_LOGGED_IN and this PIN is not checked.)
    pub(crate) fn check_login(&self) -> Result<()> {
        let s = self
            .open()
            .map_err(|e| hsm_error(&e, "logging in to the token"))?;
        self.put(s);
        Ok(())
    }

    fn take(&self) -> std::result::Result<Session, CkError> {
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

    /// Runs `f` with a session; on a reset-type error, re-opens, logs in and retries once.
    pub(crate) fn run<T>(
        &self,
        what: &str,
        f: &dyn Fn(&Session) -> std::result::Result<T, CkError>,
    ) -> Result<T> {
        for attempt in 0..2 {
            let s = self.take().map_err(|e| hsm_error(&e, what))?;
            match self.ensure_login(&s).and_then(|()| f(&s)) {
                Ok(v) => {
                    self.put(s);
                    return Ok(v);
                }
                Err(e) if attempt == 0 && is_reset(&e) => {
                    tracing::warn!(target: "heliosdb::tde::hsm", "{what}: {e}; logging in again and retrying");
                    self.discard(s);
                    self.reset();
                }
                Err(e) => {
                    if is_reset(&e) {
                        self.discard(s);
                    } else {
                        self.put(s);
                    }
                    return Err(hsm_error(&e, what));
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
