//! From an AWS SDK error to a [`TdeError`] that says what happened and what to do.

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use heliosdb_tde_core::{KeyState, TdeError};
use std::error::Error;

/// What a failed call was about, for the error text.
pub(crate) struct Call<'a> {
    /// The provider's description, `AWS KMS (<region>, <alias prefix>)`.
    pub(crate) provider: &'a str,
    /// The KMS action, for example `Encrypt`.
    pub(crate) action: &'a str,
    /// What it was called on: an alias name, a key ARN or a key id.
    pub(crate) target: &'a str,
    /// The region.
    pub(crate) region: &'a str,
    /// Where the SDK sends requests (the custom endpoint, or AWS's own).
    pub(crate) endpoint: &'a str,
    /// The whole-operation timeout, in seconds.
    pub(crate) timeout_secs: u64,
}

/// The error codes KMS uses for a transient condition.
const TRANSIENT: &[&str] = &[
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// The error codes of bad or expired credentials, or of a skewed clock.
const CREDENTIALS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "RequestExpired",
    "MissingAuthenticationToken",
];

fn credentials_error(e: &(dyn Error + 'static)) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Maps a failed SDK call.
pub(crate) fn map<E>(
    call: &Call<'_>,
    e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> TdeError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    let chain = DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = e.code().unwrap_or_default().to_string();
            let message = e.message().unwrap_or_default().to_string();
            service_error(call, status, &code, &message)
        }
        SdkError::TimeoutError(_) => TdeError::ProviderUnavailable {
            provider: call.provider.to_string(),
            reason: format!(
                "{} on {} got no answer from {} within kms_config.timeout_secs ({} s, every attempt included)",
                call.action, call.target, call.endpoint, call.timeout_secs
            ),
            retryable: true,
        },
        SdkError::DispatchFailure(d) => {
            if credentials_error(&e) {
                no_credentials(call, &chain)
            } else if d.is_user() {
                TdeError::Provider {
                    provider: call.provider.to_string(),
                    message: format!("{} could not be sent to {}: {chain}", call.action, call.endpoint),
                    hint: "check kms_config.endpoint and the TLS setup (the CA bundle the system trusts)".into(),
                }
            } else {
                TdeError::ProviderUnavailable {
                    provider: call.provider.to_string(),
                    reason: format!(
                        "{} on {}: cannot reach {} after the SDK's retries ({chain})",
                        call.action, call.target, call.endpoint
                    ),
                    retryable: true,
                }
            }
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            TdeError::Provider {
                provider: call.provider.to_string(),
                message: format!(
                    "the answer of {} (HTTP {status}) to {} is not an AWS KMS response: {chain}",
                    call.endpoint, call.action
                ),
                hint: "check that kms_config.endpoint is a KMS endpoint (or leave it out for AWS's own)".into(),
            }
        }
        _ => {
            if credentials_error(&e) {
                no_credentials(call, &chain)
            } else {
                TdeError::Provider {
                    provider: call.provider.to_string(),
                    message: format!("{} on {} failed: {chain}", call.action, call.target),
                    hint: "check kms_config (see docs/providers/aws-kms.md, Troubleshooting)"
                        .into(),
                }
            }
        }
    }
}

fn no_credentials(call: &Call<'_>, chain: &str) -> TdeError {
    TdeError::Provider {
        provider: call.provider.to_string(),
        message: format!("no AWS credentials were found for {}: {chain}", call.action),
        hint: "the SDK looked, in order, at the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the shared profile (kms_config.profile or AWS_PROFILE, in ~/.aws/config and ~/.aws/credentials, SSO included), web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), the ECS container endpoint and the EC2 instance metadata service; provide credentials through one of them".into(),
    }
}

/// Maps an error answer of KMS: `status` and its error `code` and `message`.
pub(crate) fn service_error(call: &Call<'_>, status: u16, code: &str, message: &str) -> TdeError {
    let key = format!("kms key {} ({})", call.target, call.region);
    match code {
        "NotFoundException" => TdeError::KeyNotFound {
            key,
            hint: format!(
                "KMS in region {} has no such key or alias ({message}); check kms_config.key_id, kms_config.region and kms_config.alias_prefix",
                call.region
            ),
        },
        "DisabledException" => TdeError::InvalidKeyState {
            key,
            state: KeyState::Deactivated,
            operation: call.action.to_string(),
            hint: format!(
                "KMS reports the key as Disabled ({message}). If it was not deactivated through HeliosDB, enable it: `aws kms enable-key --key-id {}`",
                call.target
            ),
        },
        "KMSInvalidStateException" => {
            let pending = message.to_ascii_lowercase().contains("pending");
            TdeError::InvalidKeyState {
                key,
                state: KeyState::Deactivated,
                operation: call.action.to_string(),
                hint: if pending {
                    format!(
                        "KMS reports the key as PendingDeletion ({message}). Cancel the deletion and enable the key: `aws kms cancel-key-deletion --key-id {t}` then `aws kms enable-key --key-id {t}`",
                        t = call.target
                    )
                } else {
                    format!(
                        "KMS refuses the key in its current state ({message}); `aws kms describe-key --key-id {}` shows the state",
                        call.target
                    )
                },
            }
        }
        "InvalidCiphertextException" | "IncorrectKeyException" => TdeError::AuthenticationFailed {
            what: format!(
                "TEK wrapped under {} ({code}: the ciphertext, the key or the encryption context does not match)",
                call.target
            ),
        },
        "AccessDeniedException" => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!("kms:{} on {} was denied: {message}", call.action, call.target),
            hint: format!(
                "grant kms:{} on the key to the identity HeliosDB runs as (docs/providers/aws-kms.md lists the policy)",
                call.action
            ),
        },
        c if CREDENTIALS.contains(&c) => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!("KMS refused the credentials ({code}: {message})"),
            hint: "the access key is wrong or the session token expired, or the system clock is skewed by more than 5 minutes; refresh the credentials or fix the clock".into(),
        },
        c if TRANSIENT.contains(&c) || status >= 500 || status == 429 => {
            TdeError::ProviderUnavailable {
                provider: call.provider.to_string(),
                reason: format!(
                    "{} on {} still failed after the SDK's retries (HTTP {status} {code}: {message})",
                    call.action, call.target
                ),
                retryable: true,
            }
        }
        "" | "UnknownOperationException" | "UnknownOperation" => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!(
                "{} answered {} with HTTP {status} and no KMS error code ({message})",
                call.endpoint, call.action
            ),
            hint: "check that kms_config.endpoint is a KMS endpoint (or leave it out for AWS's own)".into(),
        },
        _ => TdeError::Provider {
            provider: call.provider.to_string(),
            message: format!("{} on {} failed: {code}: {message}", call.action, call.target),
            hint: "see docs/providers/aws-kms.md, Troubleshooting".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call<'static> {
        Call {
            provider: "AWS KMS (us-east-1, alias/heliosdb)",
            action: "Decrypt",
            target: "arn:aws:kms:us-east-1:1:key/k",
            region: "us-east-1",
            endpoint: "https://kms.us-east-1.amazonaws.com",
            timeout_secs: 10,
        }
    }

    #[test]
    fn codes_map_to_typed_errors() {
        let c = call();
        assert!(matches!(
            service_error(&c, 400, "NotFoundException", "x"),
            TdeError::KeyNotFound { .. }
        ));
        assert!(matches!(
            service_error(&c, 400, "IncorrectKeyException", "x"),
            TdeError::AuthenticationFailed { .. }
        ));
        assert!(matches!(
            service_error(&c, 400, "InvalidCiphertextException", "x"),
            TdeError::AuthenticationFailed { .. }
        ));
        assert!(matches!(
            service_error(&c, 400, "ThrottlingException", "Rate exceeded"),
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ));
        assert!(matches!(
            service_error(&c, 503, "Whatever", ""),
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ));
        let denied = service_error(&c, 400, "AccessDeniedException", "no").to_string();
        assert!(denied.contains("kms:Decrypt"), "{denied}");
        let pending = service_error(
            &c,
            400,
            "KMSInvalidStateException",
            "key is pending deletion",
        )
        .to_string();
        assert!(
            pending.contains("PendingDeletion") && pending.contains("cancel-key-deletion"),
            "{pending}"
        );
        let disabled = service_error(&c, 400, "DisabledException", "disabled").to_string();
        assert!(disabled.contains("enable-key"), "{disabled}");
        let creds = service_error(&c, 400, "ExpiredTokenException", "expired").to_string();
        assert!(creds.contains("clock"), "{creds}");
        let odd = service_error(&c, 404, "", "").to_string();
        assert!(odd.contains("kms_config.endpoint"), "{odd}");
    }
}
