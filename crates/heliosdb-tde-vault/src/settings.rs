//! Validated provider settings and the token source (environment variable or token file).

use heliosdb_tde_core::{Result, SecurityMode, TdeError, VaultTransitConfig};
use secrecy::SecretString;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The settings the provider runs with, checked once at `open`.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The server address without a trailing slash.
    pub(crate) address: String,
    pub(crate) mount: String,
    pub(crate) namespace: Option<String>,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) key_prefix: String,
    pub(crate) state_mount: String,
    pub(crate) state_path: String,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) token: TokenSource,
    pub(crate) mode: SecurityMode,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSettings")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .field(
                "state",
                &format!("{}/{}", self.state_mount, self.state_path),
            )
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Where the token comes from. The token itself is never held here.
#[derive(Clone)]
pub(crate) enum TokenSource {
    /// An environment variable, read once at `open`.
    Env(String),
    /// A file, re-read when its modification time changes and after a 403.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Env(v) => write!(f, "env {v}"),
            TokenSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> TdeError {
    TdeError::InvalidConfig {
        field: format!("kms_config.{field}"),
        reason: reason.into(),
    }
}

fn check_segment(field: &str, value: &str) -> Result<String> {
    let v = value.trim_matches('/');
    if v.is_empty()
        || v.split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(['?', '#', ' ', '%']))
    {
        return Err(invalid(
            field,
            format!(
                "{value:?} is not a Vault path (non-empty segments without '?', '#', '%', spaces or '..')"
            ),
        ));
    }
    Ok(v.to_string())
}

impl Settings {
    /// Checks `config` (errors name the field) and decides the token source. Production mode
    /// refuses an `http://` address.
    pub(crate) fn from_config(config: &VaultTransitConfig, mode: SecurityMode) -> Result<Self> {
        let address = config.address.trim().trim_end_matches('/').to_string();
        if address.is_empty() {
            return Err(invalid(
                "address",
                "empty; set the Vault address, for example https://vault.example.com:8200 (or VAULT_ADDR)",
            ));
        }
        let url = reqwest::Url::parse(&address).map_err(|e| {
            invalid(
                "address",
                format!("{address:?} is not a URL ({e}); write it as https://host:8200"),
            )
        })?;
        match url.scheme() {
            "https" => {}
            "http" if mode.is_production() => {
                return Err(invalid(
                    "address",
                    format!(
                        "{address} is plain http://, which production mode refuses: the token and every TEK would cross the network unencrypted. Use https:// (with kms_config.ca_cert for a private CA)"
                    ),
                ));
            }
            "http" => {}
            other => {
                return Err(invalid(
                    "address",
                    format!(
                        "scheme {other:?} in {address:?} is not supported; use https:// (or http:// in development)"
                    ),
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) || url.query().is_some() {
            return Err(invalid(
                "address",
                format!("{address:?} needs a host and no query"),
            ));
        }
        if config.timeout_secs == 0 {
            return Err(invalid(
                "timeout_secs",
                "0 would abandon every request; use a value of 1 or more (default 10)",
            ));
        }
        if config.timeout_secs > 600 {
            return Err(invalid(
                "timeout_secs",
                "more than 600 seconds per request; use a value up to 600 (default 10)",
            ));
        }
        if config.max_retries > 10 {
            return Err(invalid(
                "max_retries",
                "more than 10 retries; longer outages belong to the caller (default 3)",
            ));
        }
        let key_prefix = config.key_prefix.clone().unwrap_or_default();
        if key_prefix.contains(['/', '?', '#', ' ', '%']) {
            return Err(invalid(
                "key_prefix",
                format!("{key_prefix:?} must not contain '/', '?', '#', '%' or spaces"),
            ));
        }
        let token = match &config.token_file {
            Some(f) if f.trim().is_empty() => {
                return Err(invalid(
                    "token_file",
                    "empty; remove it to use the token variable",
                ));
            }
            Some(f) => TokenSource::File(PathBuf::from(f)),
            None => TokenSource::Env(config.token_var().to_string()),
        };
        let namespace = match config.namespace.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(ns) => Some(check_segment("namespace", ns)?),
        };
        Ok(Self {
            address,
            mount: check_segment("mount", config.mount_path())?,
            namespace,
            ca_cert: config
                .ca_cert
                .as_ref()
                .filter(|c| !c.trim().is_empty())
                .map(PathBuf::from),
            key_prefix,
            state_mount: check_segment("state_mount", &config.state_mount)?,
            state_path: check_segment("state_path", &config.state_path)?,
            timeout: Duration::from_secs(config.timeout_secs),
            max_retries: config.max_retries,
            token,
            mode,
        })
    }
}

/// A token as read from its source, with the file's modification time.
pub(crate) struct ReadToken {
    pub(crate) token: SecretString,
    pub(crate) mtime: Option<SystemTime>,
    /// A development-mode warning (a token file readable by others).
    pub(crate) warning: Option<String>,
}

/// Reads the token from `source`. Production mode refuses a token file that group or others
/// can read.
pub(crate) fn read_token(source: &TokenSource, mode: SecurityMode) -> Result<ReadToken> {
    match source {
        TokenSource::Env(var) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(ReadToken {
                token: SecretString::from(t.trim().to_string()),
                mtime: None,
                warning: None,
            }),
            _ => Err(TdeError::InvalidConfig {
                field: "kms_config.token_env_var".into(),
                reason: format!(
                    "the Vault token variable {var} is not set (or empty); export {var}, or set kms_config.token_file to a file holding the token (a Vault Agent sink)"
                ),
            }),
        },
        TokenSource::File(path) => {
            let io = |e: std::io::Error| TdeError::InvalidConfig {
                field: "kms_config.token_file".into(),
                reason: format!("cannot read the Vault token file {}: {e}", path.display()),
            };
            let meta = std::fs::metadata(path).map_err(io)?;
            let mut warning = None;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let m = meta.permissions().mode() & 0o777;
                if m & 0o077 != 0 {
                    let msg = format!(
                        "the Vault token file {} has mode {m:04o}: others can read the token; chmod 600 it",
                        path.display()
                    );
                    if mode.is_production() {
                        return Err(TdeError::InsecurePermissions {
                            path: path.clone(),
                            mode: m,
                            expected: 0o600,
                        });
                    }
                    warning = Some(msg);
                }
            }
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
            let t = text.trim();
            if t.is_empty() {
                return Err(TdeError::InvalidConfig {
                    field: "kms_config.token_file".into(),
                    reason: format!("the Vault token file {} is empty", path.display()),
                });
            }
            Ok(ReadToken {
                token: SecretString::from(t.to_string()),
                mtime: meta.modified().ok(),
                warning,
            })
        }
    }
}

/// The modification time of a token file, if it has one.
pub(crate) fn token_mtime(source: &TokenSource) -> Option<SystemTime> {
    match source {
        TokenSource::File(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
        TokenSource::Env(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_token_file_others_can_read_is_refused_in_production_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s.secret-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = TokenSource::File(path.clone());
        let e = read_token(&src, SecurityMode::Production).err().unwrap();
        assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
        let r = read_token(&src, SecurityMode::Development).unwrap();
        assert!(r.warning.unwrap().contains("0644"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let r = read_token(&src, SecurityMode::Production).unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&r.token),
            "s.secret-token"
        );
        assert!(r.warning.is_none());
        assert!(!format!("{src:?}").contains("secret"));
    }

    #[test]
    fn production_refuses_http_and_debug_has_no_token() {
        let c = VaultTransitConfig::new("http://127.0.0.1:8200");
        let e = Settings::from_config(&c, SecurityMode::Production).unwrap_err();
        assert!(e.to_string().contains("kms_config.address"), "{e}");
        let s = Settings::from_config(&c, SecurityMode::Development).unwrap();
        assert_eq!(s.mount, "transit");
        let d = format!("{s:?}");
        assert!(
            d.contains("127.0.0.1:8200") && d.contains("VAULT_TOKEN"),
            "{d}"
        );
    }
}
