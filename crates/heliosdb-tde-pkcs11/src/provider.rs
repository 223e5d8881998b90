//! [`Pkcs11MekProvider`]: the [`MekProvider`] over a token, built from the pieces of this
//! crate (the session pool, the key objects, the inventory and the lifecycle records).

use crate::cache::VersionCache;
use crate::context::{connect, token_write};
use crate::error::OpError;
use crate::inventory::{self, Entry, create_record, key_label, state_label};
use crate::keys::{check_key, lookup_key, mek_template};
use crate::pool::{Fast, SessionPool};
use crate::record::Record;
use crate::settings::Pkcs11Settings;
use crate::version::{Need, not_found, resolve};
use crate::{IV_LEN, PAYLOAD_LEN, gcm};
use async_trait::async_trait;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use heliosdb_tde_core::lifecycle::{MekLifecycle, Transition};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyState, MekBackupItem, MekId, MekInfo, MekProvider, MekRef,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, TableKey, TdeError, Timestamp,
    WrapContext, WrappedTek,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Master keys inside a PKCS#11 token.
pub struct Pkcs11MekProvider {
    pool: Arc<SessionPool>,
    settings: Pkcs11Settings,
    token: String,
    /// Key handles and lifecycle states per MEK version, and the key objects that passed
    /// [`check_key`] in this provider.
    cache: Arc<VersionCache>,
}

impl fmt::Debug for Pkcs11MekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11MekProvider")
            .field("token", &self.token)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pkcs11MekProvider {
    /// Loads the module, finds the token, and logs in (checking the PIN now, not at first use).
    pub async fn open(settings: Pkcs11Settings) -> Result<Self> {
        let s = settings.clone();
        let (pool, token) = tokio::task::spawn_blocking(move || connect(&s))
            .await
            .map_err(|e| TdeError::ProviderUnavailable {
                provider: "HSM".into(),
                reason: format!("the HSM worker failed: {e}"),
                retryable: false,
            })??;
        Ok(Self {
            pool: Arc::new(pool),
            settings,
            token,
            cache: Arc::default(),
        })
    }

    /// Runs `f` with a pooled, logged-in session on a blocking thread, within the timeout;
    /// after a token or library reset, logs in again and retries once.
    async fn with_session<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl Fn(&Session) -> std::result::Result<T, OpError> + Send + Sync + 'static,
    ) -> Result<T> {
        self.hop(what, self.deadline(), move |pool| pool.run(what, &f))
            .await
    }

    /// When an operation that starts now must have finished (`timeout`).
    fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now.checked_add(self.settings.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
    }

    /// Runs `job` on the pool on a blocking thread, abandoning it at `deadline`; logs the
    /// operation when `enable_logging` is set.
    async fn hop<T: Send + 'static>(
        &self,
        what: &'static str,
        deadline: tokio::time::Instant,
        job: impl FnOnce(&SessionPool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let start = Instant::now();
        let pool = self.pool.clone();
        let job = tokio::task::spawn_blocking(move || job(&pool));
        let r = match tokio::time::timeout_at(deadline, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(TdeError::ProviderUnavailable {
                provider: "HSM".into(),
                reason: format!("{what}: the HSM worker failed: {e}"),
                retryable: false,
            }),
            Err(_) => Err(TdeError::ProviderUnavailable {
                provider: "HSM".into(),
                reason: format!(
                    "{what} took longer than {:?} (hsm_config.timeout_secs): the token did not \
                     answer, or every pooled session was busy",
                    self.settings.timeout
                ),
                retryable: true,
            }),
        };
        if self.settings.enable_logging {
            match &r {
                Ok(_) => {
                    tracing::info!(target: "heliosdb::tde::hsm", op = what, token = %self.token, micros = start.elapsed().as_micros() as u64, "HSM operation")
                }
                Err(e) => {
                    tracing::warn!(target: "heliosdb::tde::hsm", op = what, token = %self.token, "HSM operation failed: {e}")
                }
            }
        }
        r
    }

    /// Runs `op` with `mek`'s key object, if the version's state allows `need`, within one
    /// timeout:
    /// * with a handle and state read less than `state_refresh` ago: the state is checked in
    ///   the process and `op` is the only thing the session does (no login check, no search);
    /// * otherwise, or when the token refuses the cached handle or the login: one hop that
    ///   checks the login, looks the version up ([`resolve`]) and runs `op`.
    async fn with_version<T: Send + 'static>(
        &self,
        what: &'static str,
        mek: &MekRef,
        need: Need,
        op: impl Fn(&Session, ObjectHandle) -> std::result::Result<T, OpError> + Send + Sync + 'static,
    ) -> Result<T> {
        let deadline = self.deadline();
        let op = Arc::new(op);
        if let Some(c) = self.cache.fresh(mek, self.settings.state_refresh) {
            need.check(c.state, mek)?;
            let f = op.clone();
            let fast = self
                .hop(what, deadline, move |pool| {
                    pool.run_fast(what, &|s| f(s, c.key))
                })
                .await?;
            match fast {
                Fast::Done(v) => return Ok(v),
                Fast::Stale { .. } => self.cache.forget(mek),
            }
        }
        let epoch = self.cache.epoch();
        let cache = self.cache.clone();
        let token = self.token.clone();
        let mek = mek.clone();
        self.hop(what, deadline, move |pool| {
            pool.run(what, &|s| {
                let key = resolve(s, &mek, need, &cache, epoch, &token)?;
                op(s, key)
            })
        })
        .await
    }

    /// Every MEK version and its newest lifecycle record on the token
    /// ([`inventory::scan`]).
    async fn inventory(&self) -> Result<BTreeMap<MekRef, Entry>> {
        self.with_session("listing MEKs", inventory::scan).await
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        not_found(&self.token, mek)
    }

    /// Generates one MEK version in the token with [`mek_template`], reads the attributes back
    /// (a key that came out otherwise is destroyed and refused), and records its state.
    async fn create_version(&self, mek: &MekRef, state: KeyState) -> Result<Timestamp> {
        let label = key_label(mek).into_bytes();
        let record_label = state_label(mek).into_bytes();
        let created = Timestamp::now();
        let record = Record {
            state,
            created_at: created,
            seq: 1,
        }
        .encode();
        let target = mek.clone();
        let made = self
            .with_session("generating an MEK", move |s| {
                let mek = &target;
                // A key object that already claims this label or id was not made by us.
                if let Some(h) = lookup_key(s, mek)? {
                    return Err(OpError::Refused(TdeError::SecurityPolicy(format!(
                        "a secret key labelled as MEK {mek} is already on the HSM token (handle \
                         {h}) although HeliosDB never generated that version: someone planted \
                         it. Nothing was generated; remove it (e.g. `pkcs11-tool --delete-object`)"
                    ))));
                }
                let h =
                    token_write(|| s.generate_key(&Mechanism::AesKeyGen, &mek_template(&label)))?;
                // Read back what the token actually made; refuse a key that could leave it.
                if let Err(e) = check_key(s, h, mek, true) {
                    let _ = token_write(|| s.destroy_object(h));
                    return Err(e);
                }
                token_write(|| create_record(s, &record_label, &record))?;
                Ok(h)
            })
            .await;
        self.cache.invalidate(mek);
        self.cache.mark_checked(mek, made?);
        Ok(created)
    }

    /// Records a new state: writes a record with the next sequence number, then removes the
    /// older ones.
    async fn write_state(&self, mek: &MekRef, entry: &Entry, state: KeyState) -> Result<()> {
        let rec = Record {
            state,
            created_at: entry.created_at(),
            seq: entry.seq() + 1,
        };
        let value = rec.encode();
        let mut old: Vec<ObjectHandle> = entry.stale.clone();
        if let Some((h, _)) = entry.record {
            old.push(h);
        }
        let target = mek.clone();
        let r = self
            .with_session("updating an MEK state", move |s| {
                inventory::replace_record(s, &target, &value, &old)
            })
            .await;
        self.cache.invalidate(mek);
        r
    }
}

#[async_trait]
impl MekProvider for Pkcs11MekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pkcs11
    }

    fn description(&self) -> String {
        format!(
            "PKCS#11 HSM (token {:?} via {})",
            self.token,
            self.settings.library_path.display()
        )
    }

    fn is_secure(&self) -> bool {
        true
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        let mek = lifecycle(&self.inventory().await?).plan_generate(mek_id)?;
        let created_at = self.create_version(&mek, KeyState::Active).await?;
        Ok(MekVersionInfo::active(mek, algorithm, created_at))
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        ctx.ensure_names(tek)?;
        let header = WrappedTek::new(
            tek.algorithm(),
            ProviderKind::Pkcs11,
            mek.clone(),
            Vec::new(),
        );
        let aad = ctx.aad_for(&header);
        // The session pool runs the call on its own thread, so the closure owns its copy of
        // the TEK: one in the locked key arena, not on the heap.
        let plain = KeyBytes::from_slice(tek.bytes().expose_secret())?;
        let what = format!("TEK {} under {mek}", ctx.tek_id());
        let target = mek.clone();
        let (iv, ct) = self
            .with_version("wrapping a TEK", mek, Need::Encrypt, move |s, key| {
                gcm::encrypt_checked(s, key, &target, &aad, plain.expose_secret(), &what)
            })
            .await?;
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(&iv);
        payload.extend_from_slice(&ct);
        Ok(WrappedTek { payload, ..header })
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let what = format!("TEK {} wrapped by {}", ctx.tek_id(), wrapped.mek);
        if wrapped.payload.len() != PAYLOAD_LEN {
            return Err(TdeError::corrupt(
                "HSM-wrapped TEK",
                what,
                format!(
                    "expected {PAYLOAD_LEN} bytes, found {}",
                    wrapped.payload.len()
                ),
            ));
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped.payload[..IV_LEN]);
        let ct = wrapped.payload[IV_LEN..].to_vec();
        let aad = ctx.aad_for(wrapped);
        let plain = self
            .with_version(
                "unwrapping a TEK",
                &wrapped.mek,
                Need::Decrypt,
                move |s, key| gcm::decrypt(s, key, iv, &aad, &ct, &what),
            )
            .await?;
        let bytes = KeyBytes::from_slice(&plain)?;
        Ok(TableKey::new(ctx.tek_id(), wrapped.algorithm, bytes))
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        lifecycle(&self.inventory().await?)
            .mek_info(
                mek_id,
                ProviderKind::Pkcs11,
                format!("HSM token {:?}", self.token),
            )
            .ok_or_else(|| self.not_found(mek_id))
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        Ok(lifecycle(&self.inventory().await?).ids())
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let inv = self.inventory().await?;
        let mut lc = lifecycle(&inv);
        let rotation = lc
            .plan_rotation(mek_id)
            .ok_or_else(|| self.not_found(mek_id))??;
        // The new version first, then the demotions (the order `Rotation::demote` documents).
        let created_at = self
            .create_version(&rotation.next, KeyState::Active)
            .await?;
        for m in &rotation.demote {
            if let Some(e) = inv.get(m) {
                self.write_state(m, e, KeyState::DecryptOnly).await?;
            }
        }
        Ok(lc.apply_rotation(&rotation, created_at))
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        let inv = self.inventory().await?;
        let (Some(entry), Some(plan)) = (inv.get(mek), lifecycle(&inv).plan_transition(mek, next))
        else {
            return Err(self.not_found(mek));
        };
        let transition = plan?;
        if transition == Transition::Unchanged {
            return Ok(());
        }
        self.write_state(mek, entry, next).await?;
        if transition.destroys_material() && entry.key.is_some() {
            let target = mek.clone();
            let r = self
                .with_session("destroying an MEK", move |s| {
                    if let Some(h) = lookup_key(s, &target)? {
                        token_write(|| s.destroy_object(h))?;
                    }
                    Ok(())
                })
                .await;
            self.cache.invalidate(mek);
            r?;
        }
        Ok(())
    }

    async fn backup_material(&self, meks: &[MekRef]) -> Result<Vec<MekBackupItem>> {
        // The key objects never leave the token: a bundle records where they are, after
        // checking that the token holds each one.
        let mut out = Vec::with_capacity(meks.len());
        let mut known: Vec<MekInfo> = Vec::new();
        for mek in meks {
            if !known.iter().any(|i| i.id == mek.id) {
                known.push(self.mek_info(&mek.id).await?);
            }
            let held = known
                .iter()
                .any(|i| i.id == mek.id && i.versions.iter().any(|v| v.mek == *mek));
            if !held {
                return Err(heliosdb_tde_core::lifecycle::mek_not_found(
                    mek,
                    format!(
                        "the token {:?} holds no key object for this version",
                        self.token
                    ),
                ));
            }
            out.push(MekBackupItem::reference(
                mek.clone(),
                format!(
                    "token {:?}, key object label {:?}, lifecycle record label {:?}",
                    self.token,
                    crate::inventory::key_label(mek),
                    crate::inventory::state_label(mek)
                ),
            ));
        }
        Ok(out)
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let r = self
            .with_session("health check", |s| Ok(s.get_session_info().map(|_| ())?))
            .await;
        Ok(ProviderHealth {
            healthy: r.is_ok(),
            latency: start.elapsed(),
            detail: match r {
                Ok(()) => format!("token {:?} answers", self.token),
                Err(e) => e.to_string(),
            },
        })
    }
}

/// The lifecycle view of the versions found on the token: every version, with its state and
/// creation time from its record, reported as AES-256-GCM (the only MEK the token holds).
fn lifecycle(inv: &BTreeMap<MekRef, Entry>) -> MekLifecycle {
    MekLifecycle::from_versions(inv.iter().map(|(m, e)| {
        MekVersionInfo::new(
            m.clone(),
            e.state(),
            EncryptionAlgorithm::Aes256Gcm,
            e.created_at(),
        )
    }))
}
