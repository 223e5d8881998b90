//! The HTTP client: one reqwest client, the token (held as a `SecretString`, renewed lazily at
//! two thirds of its TTL, re-read from its file when it changes and after a 403), a timeout on
//! every request, and retries with exponential backoff and jitter on transient failures.

use crate::settings::{ReadToken, Settings, TokenSource, read_token, token_mtime};
use heliosdb_tde_core::{Result, TdeError};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;
use zeroize::Zeroize;

/// The provider name in errors.
pub(crate) const PROVIDER: &str = "Vault";

/// What one request came back with, after retries.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The server could not be reached, or kept failing transiently (connection error,
    /// timeout, 429, 5xx) through every retry.
    Unavailable(String),
    /// The TLS handshake failed (an untrusted certificate, a name mismatch): not retried, and
    /// not an outage that waiting fixes.
    Tls(String),
    /// The server answered with this status and these error messages.
    Status(StatusCode, Vec<String>),
    /// The answer was not what the Vault API returns.
    Protocol(String),
}

impl CallError {
    /// Whether the server said "not found" (404).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, CallError::Status(s, _) if *s == StatusCode::NOT_FOUND)
    }

    /// The server's error messages joined, for matching and for error text.
    pub(crate) fn text(&self) -> String {
        match self {
            CallError::Unavailable(r) | CallError::Tls(r) | CallError::Protocol(r) => r.clone(),
            CallError::Status(s, errs) if errs.is_empty() => format!("HTTP {s}"),
            CallError::Status(s, errs) => format!("HTTP {}: {}", s.as_u16(), errs.join("; ")),
        }
    }
}

struct TokenState {
    token: SecretString,
    mtime: Option<SystemTime>,
    /// When to renew (two thirds of the TTL), for a renewable token with a TTL.
    renew_at: Option<Instant>,
}

/// The HTTP side of the provider. Never `Debug`: it holds the token.
pub(crate) struct Client {
    http: reqwest::Client,
    pub(crate) settings: Settings,
    token: Mutex<TokenState>,
}

fn unavailable(address: &str, reason: impl Into<String>) -> TdeError {
    TdeError::ProviderUnavailable {
        provider: format!("{PROVIDER} at {address}"),
        reason: reason.into(),
        retryable: true,
    }
}

impl Client {
    /// Builds the HTTP client (TLS with `ca_cert`) and reads the token.
    pub(crate) fn new(settings: Settings) -> Result<(Self, Option<String>)> {
        let mut b = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .no_proxy();
        if let Some(ca) = &settings.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| TdeError::InvalidConfig {
                field: "kms_config.ca_cert".into(),
                reason: format!("cannot read the CA bundle {}: {e}", ca.display()),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                TdeError::InvalidConfig {
                    field: "kms_config.ca_cert".into(),
                    reason: format!("{} is not a PEM certificate bundle: {e}", ca.display()),
                }
            })?;
            if certs.is_empty() {
                return Err(TdeError::InvalidConfig {
                    field: "kms_config.ca_cert".into(),
                    reason: format!("{} holds no PEM certificate", ca.display()),
                });
            }
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| TdeError::InvalidConfig {
            field: "kms_config.address".into(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
        let ReadToken {
            token,
            mtime,
            warning,
        } = read_token(&settings.token, settings.mode)?;
        Ok((
            Self {
                http,
                settings,
                token: Mutex::new(TokenState {
                    token,
                    mtime,
                    renew_at: None,
                }),
            },
            warning,
        ))
    }

    /// The error for an unreachable server, naming the address.
    pub(crate) fn unavailable(&self, reason: impl Into<String>) -> TdeError {
        unavailable(&self.settings.address, reason)
    }

    /// Maps a failed call to the provider's error: unreachable is retryable, 403 is the
    /// invalid-token error, anything else a `Provider` error with `what` and the server text.
    pub(crate) fn error(&self, what: &str, e: CallError) -> TdeError {
        match e {
            CallError::Unavailable(r) if r.contains("sealed") => self.unavailable(format!(
                "{what}: {r}: Vault is sealed; unseal it with `bao operator unseal`"
            )),
            CallError::Unavailable(r) => self.unavailable(format!("{what}: {r}")),
            CallError::Tls(r) => TdeError::ProviderUnavailable {
                provider: format!("{PROVIDER} at {}", self.settings.address),
                reason: format!("{what}: {r}"),
                retryable: false,
            },
            CallError::Status(s, _) if s == StatusCode::FORBIDDEN => self.forbidden(what),
            e @ CallError::Status(StatusCode::SERVICE_UNAVAILABLE, _) => {
                self.unavailable(format!("{what}: {}", e.text()))
            }
            other => TdeError::Provider {
                provider: format!("{PROVIDER} at {}", self.settings.address),
                message: format!("{what}: {}", other.text()),
                hint: "check that the address is a Vault or OpenBao server and the policy in docs/providers/vault-policy.hcl".into(),
            },
        }
    }

    fn forbidden(&self, what: &str) -> TdeError {
        TdeError::Provider {
            provider: format!("{PROVIDER} at {}", self.settings.address),
            message: format!("{what}: permission denied"),
            hint: "the Vault token is invalid or expired, or its policy lacks this path: check VAULT_TOKEN (kms_config.token_env_var) or kms_config.token_file, and the policy in docs/providers/vault-policy.hcl".into(),
        }
    }

    /// Sets when a renewable token with `ttl` seconds left is renewed.
    pub(crate) async fn schedule_renewal(&self, renewable: bool, ttl: u64) {
        let mut t = self.token.lock().await;
        t.renew_at = renew_time(renewable, ttl);
    }

    /// Before a call: re-reads a token file whose modification time changed, and renews the
    /// token once two thirds of its TTL have passed.
    async fn upkeep(&self) -> Result<SecretString> {
        let mut t = self.token.lock().await;
        if let TokenSource::File(_) = self.settings.token {
            let m = token_mtime(&self.settings.token);
            if m.is_some() && m != t.mtime {
                let r = read_token(&self.settings.token, self.settings.mode)?;
                t.token = r.token;
                t.mtime = r.mtime;
                // The new token's TTL is unknown: try a renewal at the next call (a token that
                // cannot be renewed stops the attempts).
                t.renew_at = Some(Instant::now());
                tracing::info!(target: "heliosdb::tde::vault", "the Vault token file changed; using the new token");
            }
        }
        if t.renew_at.is_some_and(|at| Instant::now() >= at) {
            t.renew_at = None;
            let token = t.token.clone();
            match self
                .send_once(
                    &Method::POST,
                    "auth/token/renew-self",
                    Some(&serde_json::json!({})),
                    &token,
                )
                .await
            {
                Ok(v) => {
                    let ttl = v["auth"]["lease_duration"].as_u64().unwrap_or(0);
                    let renewable = v["auth"]["renewable"].as_bool().unwrap_or(false);
                    t.renew_at = renew_time(renewable, ttl);
                    tracing::debug!(target: "heliosdb::tde::vault", ttl, "renewed the Vault token");
                }
                Err(e) => {
                    // An outage: try again later, well before the token can expire. A refusal
                    // (the token is not renewable, or the policy lacks renew-self): stop.
                    if matches!(e, CallError::Unavailable(_)) {
                        t.renew_at = Instant::now().checked_add(RENEW_RETRY);
                    }
                    tracing::warn!(target: "heliosdb::tde::vault", "renewing the Vault token failed: {}", e.text());
                }
            }
        }
        Ok(t.token.clone())
    }

    /// After a 403 with a token file: re-reads the file; whether the token changed.
    async fn reload_after_forbidden(&self, used: &SecretString) -> bool {
        if !matches!(self.settings.token, TokenSource::File(_)) {
            return false;
        }
        let Ok(r) = read_token(&self.settings.token, self.settings.mode) else {
            return false;
        };
        let mut t = self.token.lock().await;
        let changed = r.token.expose_secret() != used.expose_secret();
        t.token = r.token;
        t.mtime = r.mtime;
        changed
    }

    /// One request, no retries.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        token: &SecretString,
    ) -> std::result::Result<Value, CallError> {
        let url = format!("{}/v1/{}", self.settings.address, path);
        let mut req = self.http.request(method.clone(), &url);
        if !token.expose_secret().is_empty() {
            let mut value =
                reqwest::header::HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                    CallError::Protocol(
                        "the Vault token holds characters an HTTP header cannot carry".into(),
                    )
                })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.settings.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport_error(&e))?;
        let answer = self.answer(status, &bytes);
        // The body of a Transit decrypt holds a TEK in base64. Wiped when this is the only
        // reference to its buffer (a body that arrived in several pieces); a body that is a
        // slice of the connection's read buffer cannot be reached from here.
        if let Ok(mut body) = bytes.try_into_mut() {
            body[..].zeroize();
        }
        answer
    }

    /// The JSON of a successful answer, or the errors Vault gave with a failure status.
    fn answer(&self, status: StatusCode, bytes: &[u8]) -> std::result::Result<Value, CallError> {
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(bytes).map_err(|_| {
                CallError::Protocol(format!(
                    "HTTP {} with a body that is not JSON: is {} a Vault server?",
                    status.as_u16(),
                    self.settings.address
                ))
            });
        }
        let errors = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| {
                v["errors"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        Err(CallError::Status(status, errors))
    }

    /// One call with the token: retried on transient failures with exponential backoff and
    /// jitter, then [`CallError::Unavailable`]; retried once after a 403 if the token file
    /// holds a new token.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<Value, CallError> {
        let token = match self.upkeep().await {
            Ok(t) => t,
            Err(e) => return Err(CallError::Protocol(e.to_string())),
        };
        let r = self.with_retries(&method, path, body, &token).await;
        if matches!(&r, Err(CallError::Status(s, _)) if *s == StatusCode::FORBIDDEN)
            && self.reload_after_forbidden(&token).await
        {
            let token = self.token.lock().await.token.clone();
            return self.with_retries(&method, path, body, &token).await;
        }
        r
    }

    /// One authenticated call without retries, for a request that is not safe to repeat (a
    /// key rotation: a retry after a timeout could create a second version).
    pub(crate) async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<Value, CallError> {
        let token = match self.upkeep().await {
            Ok(t) => t,
            Err(e) => return Err(CallError::Protocol(e.to_string())),
        };
        match self.send_once(&method, path, body, &token).await {
            Err(CallError::Status(st, e)) if matches!(st.as_u16(), 429 | 500 | 502 | 503 | 504) => {
                Err(CallError::Unavailable(format!(
                    "HTTP {} (not retried, since the request may have been applied): {}",
                    st.as_u16(),
                    e.join("; ")
                )))
            }
            other => other,
        }
    }

    /// An unauthenticated call (sys/health), with the same retries.
    pub(crate) async fn call_unauthenticated(
        &self,
        path: &str,
    ) -> std::result::Result<Value, CallError> {
        let none = SecretString::from(String::new());
        self.send_once(&Method::GET, path, None, &none).await
    }

    async fn with_retries(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        token: &SecretString,
    ) -> std::result::Result<Value, CallError> {
        let mut attempt = 0u32;
        loop {
            let r = self.send_once(method, path, body, token).await;
            let transient = match &r {
                Err(CallError::Unavailable(_)) => true,
                Err(CallError::Status(s, e)) => {
                    matches!(s.as_u16(), 429 | 500 | 502 | 503 | 504)
                        // A KV version 2 mount right after it was enabled or upgraded.
                        || e.iter().any(|e| e.contains("Upgrading from non-versioned to versioned"))
                }
                _ => false,
            };
            if !transient || attempt >= self.settings.max_retries {
                return match r {
                    Err(CallError::Status(s, e)) if transient => {
                        Err(CallError::Unavailable(format!(
                            "HTTP {} after {} attempts: {}",
                            s.as_u16(),
                            attempt + 1,
                            e.join("; ")
                        )))
                    }
                    Err(CallError::Unavailable(e)) if attempt > 0 => Err(CallError::Unavailable(
                        format!("{e} (after {} attempts)", attempt + 1),
                    )),
                    other => other,
                };
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

/// How long after a failed renewal (server unreachable) the next attempt is made.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// When a token with `ttl` seconds left is renewed: after two thirds of it (never, for a token
/// that cannot be renewed or has no TTL).
fn renew_time(renewable: bool, ttl: u64) -> Option<Instant> {
    if !renewable || ttl == 0 {
        return None;
    }
    Instant::now().checked_add(Duration::from_secs(ttl / 3 * 2))
}

/// Exponential backoff from 100 ms, capped at 1.6 s, with up to 50% random jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(4).saturating_sub(1);
    let mut r = [0u8; 2];
    let jitter = if getrandom::fill(&mut r).is_ok() {
        u64::from(u16::from_le_bytes(r)) % (base / 2 + 1)
    } else {
        0
    };
    Duration::from_millis(base + jitter)
}

/// A reqwest error as a call error, in one line with its causes: a TLS failure (recognised by
/// type) says which field fixes it and is not retried; anything else is an outage.
fn transport_error(e: &reqwest::Error) -> CallError {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if heliosdb_tde_core::chain_contains::<rustls::Error>(e) {
        text.push_str(" (TLS: the server certificate is not trusted; set kms_config.ca_cert (or VAULT_CACERT) to the PEM bundle of the CA that signed it)");
        return CallError::Tls(text);
    }
    if e.is_timeout() {
        text.push_str(" (timed out; see kms_config.timeout_secs)");
    }
    CallError::Unavailable(text)
}
