//! From an Azure SDK error to a [`TdeError`] that names the operation, the key and the vault,
//! and says what to do (for a missing permission: the RBAC role that grants it).

use azure_core::error::ErrorKind;
use heliosdb_tde_core::{KeyState, TdeError};

/// A Key Vault operation, for error texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    List,
    Create,
    Update,
    Wrap,
    Unwrap,
    Encrypt,
    Decrypt,
}

impl Op {
    /// The access-policy permission (and the REST operation) name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Update => "update",
            Op::Wrap => "wrapKey",
            Op::Unwrap => "unwrapKey",
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        }
    }

    /// Whether it opens a wrap (a 400 answer is then an authentication failure).
    fn opens(self) -> bool {
        matches!(self, Op::Unwrap | Op::Decrypt)
    }

    /// The built-in role that grants it.
    pub(crate) fn role(self, managed_hsm: bool) -> &'static str {
        let officer = matches!(self, Op::Create | Op::Update);
        match (managed_hsm, officer) {
            (false, false) => "Key Vault Crypto User",
            (false, true) => "Key Vault Crypto Officer",
            (true, false) => "Managed HSM Crypto User",
            (true, true) => "Managed HSM Crypto Officer",
        }
    }
}

/// What a failed call was about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call<'a> {
    pub(crate) provider: &'a str,
    pub(crate) op: Op,
    pub(crate) key: &'a str,
    pub(crate) vault: &'a str,
    pub(crate) credential: &'a str,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) managed_hsm: bool,
}

/// The whole error chain of `e`, outermost first, joined with `: ` (the SDK's outermost text
/// alone is often only "retry policy expired ...").
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The HTTP answer inside an SDK error, if any: status, error code, inner error code, message.
fn http_parts(e: &azure_core::Error) -> Option<(u16, String, String, String)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(az) = err.downcast_ref::<azure_core::Error>()
            && let ErrorKind::HttpResponse {
                status,
                error_code,
                raw_response,
            } = az.kind()
        {
            let (code, inner, message) = raw_response
                .as_ref()
                .map(|r| parse_body(r.body().as_ref()))
                .unwrap_or_default();
            let code = if code.is_empty() {
                error_code.clone().unwrap_or_default()
            } else {
                code
            };
            return Some((u16::from(*status), code, inner, message));
        }
        cur = err.source();
    }
    None
}

/// Whether any error in the chain is a credential failure (the token request failed; its own
/// HTTP answer is inside, in Entra ID's format, not Key Vault's).
fn credential_failed(e: &azure_core::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(az) = err.downcast_ref::<azure_core::Error>()
            && matches!(az.kind(), ErrorKind::Credential)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reads `{"error":{"code","message","innererror":{"code"}}}` (Key Vault's error body).
pub(crate) fn parse_body(body: &[u8]) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let err = &v["error"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&err["code"]),
        s(&err["innererror"]["code"]),
        s(&err["message"]),
    )
}

/// Maps a failed SDK call.
pub(crate) fn map(call: &Call<'_>, e: &azure_core::Error) -> TdeError {
    let text = chain(e);
    if credential_failed(e) {
        return credential_refused(call, &text);
    }
    if let Some((status, code, inner, message)) = http_parts(e) {
        return http_error(call, status, &code, &inner, &message);
    }
    match e.kind() {
        ErrorKind::Credential => credential_refused(call, &text),
        ErrorKind::Connection | ErrorKind::Io => {
            if heliosdb_tde_core::chain_contains::<rustls::Error>(e) {
                TdeError::ProviderUnavailable {
                    provider: call.provider.to_string(),
                    reason: format!(
                        "{} of key {} at {}: the TLS connection failed ({text}); if the vault is behind a TLS-inspecting proxy or is a test server, set kms_config.ca_cert to its CA bundle",
                        call.op.name(),
                        call.key,
                        call.vault
                    ),
                    retryable: false,
                }
            } else {
                unavailable(call, &format!("cannot reach {} ({text})", call.vault))
            }
        }
        _ => {
            let lower = text.to_ascii_lowercase();
            let hint = if lower.contains("challenge resource") {
                "the vault's authentication challenge names a resource the vault URL does not belong to: check kms_config.vault_url (https://<vault>.vault.azure.net or https://<hsm>.managedhsm.azure.net)"
            } else if lower.contains("non-tls") {
                "the Azure SDK sends tokens over HTTPS only: use an https:// kms_config.vault_url"
            } else {
                "see docs/providers/azure-key-vault.md, Troubleshooting"
            };
            TdeError::Provider {
                provider: call.provider.to_string(),
                message: format!(
                    "{} of key {} at {} failed: {text}",
                    call.op.name(),
                    call.key,
                    call.vault
                ),
                hint: hint.into(),
            }
        }
    }
}

fn unavailable(call: &Call<'_>, what: &str) -> TdeError {
    TdeError::ProviderUnavailable {
        provider: call.provider.to_string(),
        reason: format!(
            "{} of key {} at {}: {what}, after kms_config.max_retries retries",
            call.op.name(),
            call.key,
            call.vault
        ),
        retryable: true,
    }
}

fn credential_refused(call: &Call<'_>, detail: &str) -> TdeError {
    TdeError::Provider {
        provider: call.provider.to_string(),
        message: format!(
            "the {} credential (tenant {}) was refused or could not get a token for {} of key {} at {}: {detail}",
            call.credential,
            call.tenant.unwrap_or("not set"),
            call.op.name(),
            call.key,
            call.vault
        ),
        hint: "check kms_config.credential, tenant_id, client_id and the client secret (or the managed / workload identity), and kms_config.authority_host for a sovereign cloud".into(),
    }
}

/// Maps an error answer of the vault: its status, error code, inner error code and message.
pub(crate) fn http_error(
    call: &Call<'_>,
    status: u16,
    code: &str,
    inner: &str,
    message: &str,
) -> TdeError {
    let op = call.op.name();
    // Decided by Key Vault's error code, never by the message text.
    let disabled = inner == "KeyDisabled";
    match status {
        401 => credential_refused(call, &format!("HTTP 401 {code}: {message}")),
        403 if disabled => TdeError::InvalidKeyState {
            key: format!("azure key {} at {}", call.key, call.vault),
            state: KeyState::Deactivated,
            operation: op.to_string(),
            hint: format!(
                "the vault reports the key version as disabled ({message}); if it was not deactivated through HeliosDB, enable it: `az keyvault key set-attributes --vault-name <vault> --name {} --version <version> --enabled true`",
                call.key
            ),
        },
        403 if inner == "KeyOperationForbidden" => TdeError::InvalidKeyState {
            key: format!("azure key {} at {}", call.key, call.vault),
            state: KeyState::DecryptOnly,
            operation: op.to_string(),
            hint: format!(
                "the key version does not allow {op} ({message}): its state allows fewer operations (decrypt-only versions allow only unwrapping), or its key_ops were changed outside HeliosDB"
            ),
        },
        403 => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!(
                "{op} of key {} at {} was denied (HTTP 403 {}{}: {message})",
                call.key,
                call.vault,
                code,
                if inner.is_empty() {
                    String::new()
                } else {
                    format!("/{inner}")
                }
            ),
            hint: format!(
                "grant the identity HeliosDB runs as the role \"{}\" on the key or vault (RBAC), or the key permission {op} in the vault's access policy",
                call.op.role(call.managed_hsm)
            ),
        },
        404 => TdeError::KeyNotFound {
            key: format!("azure key {} at {}", call.key, call.vault),
            hint: format!(
                "the vault has no such key or version ({code}: {message}); check kms_config.vault_url and kms_config.key_name, or create the MEK with `heliosdb-cli security mek generate`"
            ),
        },
        400 if call.op.opens() => TdeError::AuthenticationFailed {
            what: format!(
                "TEK wrapped under key {} at {} (the vault could not open it: {code}: {message})",
                call.key, call.vault
            ),
        },
        408 | 429 | 500..=599 => unavailable(call, &format!("HTTP {status} {code}: {message}")),
        _ => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!(
                "{op} of key {} at {} failed: HTTP {status} {code}: {message}",
                call.key, call.vault
            ),
            hint: "see docs/providers/azure-key-vault.md, Troubleshooting".into(),
        },
    }
}

#[cfg(test)]
#[path = "errors_tests.rs"]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
