//! The PKCS#11 HSM MEK provider.
//!
//! MEKs are AES-256 secret-key objects generated inside the token and never exported. TEKs are
//! wrapped with `CKM_AES_GCM` inside the token: the provider payload of the envelope is
//! `IV (12) || ciphertext (32) || tag (16)`, and the GCM associated data is the core binding
//! ([`WrapContext::aad`]) of table, TEK version, MEK id and version, and purpose.
//!
//! Objects on the token, all `CKA_TOKEN` and `CKA_PRIVATE` (invisible before login):
//!
//! | object | label | content |
//! | --- | --- | --- |
//! | the MEK version | `heliosdb-mek:<id>:v<N>` | AES-256, sensitive, not extractable |
//! | its lifecycle record | `heliosdb-mek-state:<id>:v<N>` | data object: state and creation time |
//!
//! A destroyed version loses its key object and keeps its record, so its number is not reused.
//!
//! The provider runs its HSM calls on Tokio's blocking pool and bounds them with Tokio timers:
//! use it inside a runtime with time enabled (`#[tokio::main]` or `Builder::enable_all`).
//!
//! Every test of this crate runs against a real SoftHSM2 token (`tests/`); there are no unit
//! tests that could pass without one.

// The only `unsafe`-adjacent code is inside cryptoki; this crate needs none.

mod pool;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use heliosdb_tde_core::{
    EncryptionAlgorithm, HSM_PIN_ENV, HsmConfig, KEY_LEN, KeyBytes, KeyState, MekId, MekInfo,
    MekProvider, MekRef, MekVersion, MekVersionInfo, ProviderHealth, ProviderKind, Result,
    SecurityMode, TableKey, TdeError, Timestamp, WrapContext, WrappedTek,
};
use pool::SessionPool;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of the provider payload: IV, encrypted TEK, tag.
pub const PAYLOAD_LEN: usize = IV_LEN + KEY_LEN + TAG_LEN;
const KEY_PREFIX: &str = "heliosdb-mek:";
const STATE_PREFIX: &str = "heliosdb-mek-state:";

/// Where the PIN came from, for the security checklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// `HELIOSDB_HSM_PIN`.
    Environment,
    /// A PIN file.
    File,
    /// The configuration file (development only).
    ConfigFile,
}

/// Resolves the user PIN: `HELIOSDB_HSM_PIN`, else `pin_file`, else the configured `pin`.
/// A PIN from the configuration file is accepted; the security checklist fails it in
/// production mode.
pub fn resolve_pin(config: &HsmConfig, mode: SecurityMode) -> Result<(SecretString, PinSource)> {
    if let Ok(v) = std::env::var(HSM_PIN_ENV)
        && !v.is_empty()
    {
        return Ok((SecretString::from(v), PinSource::Environment));
    }
    if let Some(path) = &config.pin_file {
        check_pin_file(path, mode)?;
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| TdeError::io(path, e))?);
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(TdeError::config(
                "hsm_config.pin_file",
                format!("{} is empty", path.display()),
            ));
        }
        return Ok((SecretString::from(pin.to_string()), PinSource::File));
    }
    if let Some(pin) = &config.pin {
        // Allowed; `heliosdb-cli security status` fails its checklist item in production mode.
        let _ = mode;
        return Ok((pin.secret().clone(), PinSource::ConfigFile));
    }
    Err(TdeError::config(
        "hsm_config.pin",
        format!("no HSM user PIN: set {HSM_PIN_ENV} or hsm_config.pin_file"),
    ))
}

fn check_pin_file(path: &Path, mode: SecurityMode) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bits = std::fs::metadata(path)
        .map_err(|e| TdeError::io(path, e))?
        .permissions()
        .mode()
        & 0o777;
    if bits & 0o077 != 0 && mode.is_production() {
        return Err(TdeError::InsecurePermissions {
            path: path.to_path_buf(),
            mode: bits,
            expected: 0o600,
        });
    }
    Ok(())
}

/// How to reach the token.
#[derive(Clone)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module.
    pub library_path: PathBuf,
    /// The token label (preferred: slot ids change after initialisation).
    pub token_label: Option<String>,
    /// The slot id, used when no label is given.
    pub slot_id: u64,
    /// The user PIN.
    pub pin: SecretString,
    /// Time allowed for one HSM operation.
    pub timeout: Duration,
    /// Log each operation (never key material or the PIN).
    pub enable_logging: bool,
    /// Sessions kept for concurrent operations.
    pub pool_size: usize,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("library_path", &self.library_path)
            .field("token_label", &self.token_label)
            .field("slot_id", &self.slot_id)
            .field("pin", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Settings {
    /// Settings from the guide's `HsmConfig` and a resolved PIN.
    pub fn from_config(config: &HsmConfig, pin: SecretString) -> Self {
        Self {
            library_path: PathBuf::from(&config.pkcs11_library_path),
            token_label: config.token_label.clone(),
            slot_id: config.slot_id,
            pin,
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            enable_logging: config.enable_logging,
            pool_size: config.session_pool_size.unwrap_or(4).max(1),
        }
    }
}

/// Maps a cryptoki error to a typed error with the guide's wording where it has one.
pub(crate) fn hsm_error(e: &CkError, what: &str) -> TdeError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => TdeError::Provider {
            provider: "HSM".into(),
            message: "CKR_PIN_INCORRECT".into(),
            hint: format!(
                "{what}: the HSM user PIN is wrong. Check HELIOSDB_HSM_PIN (or the PIN file) and \
                 that the token is not locked: `softhsm2-util --show-slots`. A locked token must \
                 be re-initialised, which destroys its keys"
            ),
        },
        CkError::Pkcs11(RvError::PinLocked, _) => TdeError::Provider {
            provider: "HSM".into(),
            message: "CKR_PIN_LOCKED".into(),
            hint: format!(
                "{what}: the token's user PIN is locked after too many wrong attempts; the \
                 security officer must unlock it (re-initialising the token destroys its keys)"
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

/// A lifecycle record, stored as the value of a token data object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    state: KeyState,
    created_at: Timestamp,
    /// Incremented by each state change. Data-object values are read-only on some tokens, so
    /// a change writes a new record and then destroys the old one; after a crash in between,
    /// the highest sequence wins.
    seq: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        format!(
            "v1;state={};created={};seq={}",
            self.state.code(),
            self.created_at.as_millis(),
            self.seq
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(';');
        if parts.next()? != "v1" {
            return None;
        }
        let state = parts.next()?.strip_prefix("state=")?.parse::<u8>().ok()?;
        let created = parts
            .next()?
            .strip_prefix("created=")?
            .parse::<u64>()
            .ok()?;
        let seq = parts.next()?.strip_prefix("seq=")?.parse::<u64>().ok()?;
        Some(Self {
            state: KeyState::from_code(state)?,
            created_at: Timestamp(created),
            seq,
        })
    }
}

/// Finds a key object by label inside the session that uses it: handles from an earlier
/// session may be invalid after the token logged out or reloaded its objects.
fn find_key(s: &Session, label: &[u8]) -> std::result::Result<ObjectHandle, CkError> {
    token_read(|| {
        s.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.to_vec()),
        ])
    })?
    .into_iter()
    .next()
    .ok_or(CkError::Pkcs11(
        RvError::KeyHandleInvalid,
        cryptoki::context::Function::FindObjects,
    ))
}

fn key_label(mek: &MekRef) -> String {
    format!("{KEY_PREFIX}{}:v{}", mek.id, mek.version.get())
}

fn state_label(mek: &MekRef) -> String {
    format!("{STATE_PREFIX}{}:v{}", mek.id, mek.version.get())
}

fn parse_label(label: &str, prefix: &str) -> Option<MekRef> {
    let rest = label.strip_prefix(prefix)?;
    let (id, v) = rest.rsplit_once(":v")?;
    Some(MekRef::new(
        MekId::new(id).ok()?,
        MekVersion::new(v.parse().ok()?).ok()?,
    ))
}

/// One MEK version as found on the token.
#[derive(Clone, Debug, Default)]
struct Entry {
    key: Option<ObjectHandle>,
    record: Option<(ObjectHandle, Record)>,
    /// Older records left by an interrupted state change.
    stale: Vec<ObjectHandle>,
}

impl Entry {
    fn state(&self) -> KeyState {
        match (&self.key, &self.record) {
            (None, _) => KeyState::Destroyed,
            (Some(_), Some((_, r))) => r.state,
            (Some(_), None) => KeyState::Active,
        }
    }

    fn created_at(&self) -> Timestamp {
        self.record.map(|r| r.1.created_at).unwrap_or(Timestamp(0))
    }

    fn seq(&self) -> u64 {
        self.record.map(|r| r.1.seq).unwrap_or(0)
    }
}

/// Master keys inside a PKCS#11 token.
pub struct Pkcs11MekProvider {
    pool: Arc<SessionPool>,
    settings: Pkcs11Settings,
    token: String,
}

impl fmt::Debug for Pkcs11MekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11MekProvider")
            .field("token", &self.token)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

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
static TOKEN_OBJECTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn token_write<T>(f: impl FnOnce() -> T) -> T {
    let _g = TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner());
    f()
}

fn token_read<T>(f: impl FnOnce() -> T) -> T {
    let _g = TOKEN_OBJECTS.read().unwrap_or_else(|p| p.into_inner());
    f()
}

/// The process-wide context of a PKCS#11 module. A module is process-global state: it is
/// initialised once, shared by every provider in the process, and never finalised while the
/// process runs (finalising it under another provider's open sessions crashes some modules).
fn context(path: &Path) -> Result<Pkcs11> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
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

impl Pkcs11MekProvider {
    /// Loads the module, finds the token, and logs in (checking the PIN now, not at first use).
    pub async fn open(settings: Pkcs11Settings) -> Result<Self> {
        let s = settings.clone();
        let (pool, token) =
            tokio::task::spawn_blocking(move || -> Result<(SessionPool, String)> {
                let path = &s.library_path;
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
                let (slot, label) = find_slot(&ctx, &s)?;
                let pool = SessionPool::new(ctx, slot, s.pin.clone(), s.pool_size);
                pool.check_login()?;
                Ok((pool, label))
            })
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
        })
    }

    /// Runs `f` with a pooled, logged-in session on a blocking thread, within the timeout;
    /// after a token or library reset, logs in again and retries once.
    async fn with_session<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl Fn(&Session) -> std::result::Result<T, CkError> + Send + Sync + 'static,
    ) -> Result<T> {
        let start = Instant::now();
        let pool = self.pool.clone();
        let job = tokio::task::spawn_blocking(move || pool.run(what, &f));
        let r = match tokio::time::timeout(self.settings.timeout, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(TdeError::ProviderUnavailable {
                provider: "HSM".into(),
                reason: format!("{what}: the HSM worker failed: {e}"),
                retryable: false,
            }),
            Err(_) => Err(TdeError::ProviderUnavailable {
                provider: "HSM".into(),
                reason: format!(
                    "{what} took longer than {} s (hsm_config.timeout_secs)",
                    self.settings.timeout.as_secs()
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

    /// Every MEK version and its newest lifecycle record on the token. Objects that vanish while
    /// they are listed (another process changing a record) are skipped.
    async fn inventory(&self) -> Result<BTreeMap<MekRef, Entry>> {
        self.with_session("listing MEKs", |s| {
            token_read(|| {
                let gone =
                    |e: &CkError| matches!(e, CkError::Pkcs11(RvError::ObjectHandleInvalid, _));
                let mut out: BTreeMap<MekRef, Entry> = BTreeMap::new();
                for h in s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])? {
                    let attrs = match s.get_attributes(h, &[AttributeType::Label]) {
                        Ok(a) => a,
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    if let Some(Attribute::Label(l)) = attrs.into_iter().next()
                        && let Some(m) = parse_label(&String::from_utf8_lossy(&l), KEY_PREFIX)
                    {
                        out.entry(m).or_default().key = Some(h);
                    }
                }
                for h in s.find_objects(&[Attribute::Class(ObjectClass::DATA)])? {
                    let attrs =
                        match s.get_attributes(h, &[AttributeType::Label, AttributeType::Value]) {
                            Ok(a) => a,
                            Err(e) if gone(&e) => continue,
                            Err(e) => return Err(e),
                        };
                    let mut label = None;
                    let mut value = None;
                    for a in attrs {
                        match a {
                            Attribute::Label(l) => {
                                label = Some(String::from_utf8_lossy(&l).into_owned())
                            }
                            Attribute::Value(v) => value = Some(v),
                            _ => {}
                        }
                    }
                    if let (Some(l), Some(v)) = (label, value)
                        && let (Some(m), Some(r)) =
                            (parse_label(&l, STATE_PREFIX), Record::decode(&v))
                    {
                        let e = out.entry(m).or_default();
                        match e.record {
                            Some((_, cur)) if cur.seq >= r.seq => e.stale.push(h),
                            Some((old, _)) => {
                                e.stale.push(old);
                                e.record = Some((h, r));
                            }
                            None => e.record = Some((h, r)),
                        }
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    /// One MEK version, looked up by its labels (not by listing the whole token): this is on
    /// the path of every wrap and unwrap.
    async fn entry(&self, mek: &MekRef) -> Result<Option<Entry>> {
        let key = key_label(mek).into_bytes();
        let rec = state_label(mek).into_bytes();
        self.with_session("looking up an MEK", move |s| {
            token_read(|| {
                let mut e = Entry {
                    key: None,
                    record: None,
                    stale: Vec::new(),
                };
                e.key = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::Label(key.clone()),
                    ])?
                    .into_iter()
                    .next();
                for h in s.find_objects(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Label(rec.clone()),
                ])? {
                    let value = match s.get_attributes(h, &[AttributeType::Value]) {
                        Ok(a) => a.into_iter().find_map(|a| match a {
                            Attribute::Value(v) => Record::decode(&v),
                            _ => None,
                        }),
                        Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => None,
                        Err(err) => return Err(err),
                    };
                    if let Some(r) = value {
                        match e.record {
                            Some((_, cur)) if cur.seq >= r.seq => e.stale.push(h),
                            Some((old, _)) => {
                                e.stale.push(old);
                                e.record = Some((h, r));
                            }
                            None => e.record = Some((h, r)),
                        }
                    }
                }
                Ok((e.key.is_some() || e.record.is_some()).then_some(e))
            })
        })
        .await
    }

    async fn version(&self, mek: &MekRef) -> Result<(ObjectHandle, KeyState)> {
        match self.entry(mek).await? {
            Some(e @ Entry { key: Some(h), .. }) => Ok((h, e.state())),
            Some(e) => Err(TdeError::InvalidKeyState {
                key: format!("mek:{mek}"),
                state: e.state(),
                operation: "use it".into(),
                hint: "its key object was destroyed in the HSM".into(),
            }),
            None => Err(self.not_found(mek)),
        }
    }

    fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        TdeError::KeyNotFound {
            key: format!("mek:{mek}"),
            hint: format!(
                "no such key on HSM token {:?}; generate it with `heliosdb-cli security mek \
                 generate`",
                self.token
            ),
        }
    }

    /// Generates one MEK version in the token, checks its attributes, and records its state.
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
        self.with_session("generating an MEK", move |s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.clone()),
                Attribute::Id(label.clone()),
            ];
            let h = token_write(|| s.generate_key(&Mechanism::AesKeyGen, &template))?;
            // Read back what the token actually made; refuse a key that could leave it.
            let attrs = s.get_attributes(
                h,
                &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Token, AttributeType::Private],
            )?;
            let ok = attrs.iter().all(|a| match a {
                Attribute::Sensitive(v) | Attribute::Token(v) | Attribute::Private(v) => *v,
                Attribute::Extractable(v) => !*v,
                _ => true,
            }) && attrs.len() == 4;
            if !ok {
                let _ = token_write(|| s.destroy_object(h));
                return Err(CkError::NotSupported);
            }
            token_write(|| s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(record_label.clone()),
                Attribute::Value(record.clone()),
            ]))?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            TdeError::Provider { message, .. } if message.contains("not supported") => TdeError::SecurityPolicy(
                format!("the HSM generated {mek} as extractable or readable; it was destroyed. Use a token that honours CKA_SENSITIVE and CKA_EXTRACTABLE"),
            ),
            other => other,
        })?;
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
        let label = state_label(mek).into_bytes();
        let mut old: Vec<ObjectHandle> = entry.stale.clone();
        if let Some((h, _)) = entry.record {
            old.push(h);
        }
        self.with_session("updating an MEK state", move |s| {
            token_write(|| {
                s.create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Label(label.clone()),
                    Attribute::Value(value.clone()),
                ])?;
                for h in &old {
                    match s.destroy_object(*h) {
                        Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
        })
        .await
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
        if self.inventory().await?.keys().any(|m| &m.id == mek_id) {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{mek_id}"),
            });
        }
        let mek = MekRef::new(mek_id.clone(), MekVersion::FIRST);
        let created_at = self.create_version(&mek, KeyState::Active).await?;
        Ok(MekVersionInfo {
            mek,
            state: KeyState::Active,
            algorithm,
            created_at,
        })
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        ctx.ensure_names(tek)?;
        let (_, state) = self.version(mek).await?;
        state.ensure_can_encrypt(&format!("mek:{}", mek), "wrap a TEK")?;
        let label = key_label(mek).into_bytes();
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| TdeError::Random(e.to_string()))?;
        let aad = ctx.aad(mek);
        let plain = Zeroizing::new(tek.bytes().expose_secret().to_vec());
        let ct = self
            .with_session("wrapping a TEK", move |s| {
                let mut iv = iv;
                let handle = find_key(s, &label)?;
                let params = GcmParams::new(&mut iv, &aad, 128.into())?;
                s.encrypt(&Mechanism::AesGcm(params), handle, &plain)
            })
            .await?;
        if ct.len() != KEY_LEN + TAG_LEN {
            return Err(TdeError::Provider {
                provider: "HSM".into(),
                message: format!(
                    "CKM_AES_GCM returned {} bytes, expected {}",
                    ct.len(),
                    KEY_LEN + TAG_LEN
                ),
                hint: "the token's AES-GCM does not behave as PKCS#11 specifies".into(),
            });
        }
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(&iv);
        payload.extend_from_slice(&ct);
        Ok(WrappedTek {
            algorithm: tek.algorithm(),
            provider: ProviderKind::Pkcs11,
            mek: mek.clone(),
            payload,
        })
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
        let (_, state) = self.version(&wrapped.mek).await?;
        state.ensure_can_decrypt(&format!("mek:{}", &wrapped.mek), "unwrap a TEK")?;
        let label = key_label(&wrapped.mek).into_bytes();
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped.payload[..IV_LEN]);
        let ct = wrapped.payload[IV_LEN..].to_vec();
        let aad = ctx.aad(&wrapped.mek);
        let plain = self
            .with_session("unwrapping a TEK", move |s| {
                let mut iv = iv;
                let handle = find_key(s, &label)?;
                let params = GcmParams::new(&mut iv, &aad, 128.into())?;
                s.decrypt(&Mechanism::AesGcm(params), handle, &ct)
                    .map(Zeroizing::new)
            })
            .await
            .map_err(|e| match e {
                // SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR; real HSMs use
                // CKR_ENCRYPTED_DATA_INVALID. Either way the data or its binding is wrong.
                TdeError::Provider { message, .. }
                    if message.contains("GeneralError")
                        || message.contains("EncryptedDataInvalid") =>
                {
                    TdeError::AuthenticationFailed { what: what.clone() }
                }
                other => other,
            })?;
        let bytes = KeyBytes::from_slice(&plain)?;
        Ok(TableKey::new(ctx.tek_id(), wrapped.algorithm, bytes))
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let inv = self.inventory().await?;
        let versions: Vec<MekVersionInfo> = inv
            .iter()
            .filter(|(m, _)| &m.id == mek_id)
            .map(|(m, e)| MekVersionInfo {
                mek: m.clone(),
                state: e.state(),
                algorithm: EncryptionAlgorithm::Aes256Gcm,
                created_at: e.created_at(),
            })
            .collect();
        if versions.is_empty() {
            return Err(self.not_found(mek_id));
        }
        Ok(MekInfo {
            id: mek_id.clone(),
            provider: ProviderKind::Pkcs11,
            location: format!("HSM token {:?}", self.token),
            versions,
        })
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let mut ids: Vec<MekId> = self
            .inventory()
            .await?
            .keys()
            .map(|m| m.id.clone())
            .collect();
        ids.dedup();
        Ok(ids)
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        let inv = self.inventory().await?;
        let latest = inv
            .keys()
            .filter(|m| &m.id == mek_id)
            .map(|m| m.version)
            .max()
            .ok_or_else(|| self.not_found(mek_id))?;
        let mek = MekRef::new(mek_id.clone(), latest.next()?);
        let created_at = self.create_version(&mek, KeyState::Active).await?;
        for (m, e) in &inv {
            if &m.id == mek_id && e.key.is_some() && e.state() == KeyState::Active {
                self.write_state(m, e, KeyState::DecryptOnly).await?;
            }
        }
        Ok(MekVersionInfo {
            mek,
            state: KeyState::Active,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            created_at,
        })
    }

    async fn set_mek_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        let inv = self.inventory().await?;
        let entry = inv.get(mek).ok_or_else(|| self.not_found(mek))?;
        let current = entry.state();
        current.check_transition(next, &format!("mek:{mek}"))?;
        if current == next {
            return Ok(());
        }
        self.write_state(mek, entry, next).await?;
        if next == KeyState::Destroyed && entry.key.is_some() {
            let label = key_label(mek).into_bytes();
            self.with_session("destroying an MEK", move |s| {
                let h = find_key(s, &label)?;
                token_write(|| s.destroy_object(h))
            })
            .await?;
        }
        Ok(())
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let r = self
            .with_session("health check", |s| s.get_session_info().map(|_| ()))
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
