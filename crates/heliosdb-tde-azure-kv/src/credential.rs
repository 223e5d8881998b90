//! The credential the provider signs in with, built from `kms_config.credential`: every one
//! gets the provider's transport (timeouts, `ca_cert`) and retry policy, and an explicit
//! authority host, so `AZURE_AUTHORITY_HOST` cannot send the client secret elsewhere.

use crate::settings::{client_id, tenant_id};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientOptions;
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use heliosdb_tde_core::{AzureKeyVaultConfig, Result, SecurityMode, TdeError};
use secrecy::{ExposeSecret, SecretString};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A credential, its type name, and a development-mode warning.
pub(crate) struct Built {
    pub(crate) credential: Arc<dyn TokenCredential>,
    pub(crate) warning: Option<String>,
}

/// Builds the credential `config.credential` names.
pub(crate) fn build(
    config: &AzureKeyVaultConfig,
    mode: SecurityMode,
    mut options: ClientOptions,
) -> Result<Built> {
    let cloud = match &config.authority_host {
        Some(host) => {
            let mut c = CustomConfiguration::default();
            c.authority_host = host.clone();
            CloudConfiguration::from(c)
        }
        None => CloudConfiguration::AzurePublic,
    };
    options.cloud = Some(Arc::new(cloud));
    let sdk = |what: &str, e: azure_core::Error| TdeError::InvalidConfig {
        field: "kms_config.credential".into(),
        reason: format!(
            "cannot set up the {what} credential: {}",
            crate::errors::chain(&e)
        ),
    };
    let mut warning = None;
    let credential: Arc<dyn TokenCredential> = match config.credential.as_str() {
        "client_secret" => {
            let (secret, w) = client_secret(config, mode)?;
            warning = w;
            let tenant = tenant_id(config).unwrap_or_default();
            let client = client_id(config).unwrap_or_default();
            // The SDK keeps its own copy (`Secret`, redacted in Debug, not zeroized).
            ClientSecretCredential::new(
                &tenant,
                client,
                Secret::new(secret.expose_secret().to_owned()),
                Some(ClientSecretCredentialOptions {
                    client_options: options,
                }),
            )
            .map_err(|e| sdk("client_secret", e))?
        }
        "workload_identity" => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options,
                },
                client_id: client_id(config),
                tenant_id: tenant_id(config),
                token_file_path: None,
            }))
            .map_err(|e| sdk("workload_identity", e))?
        }
        "managed_identity" => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id(config).map(UserAssignedId::ClientId),
                client_options: options,
            }))
            .map_err(|e| sdk("managed_identity", e))?
        }
        "azure_cli" => AzureCliCredential::new(Some(azure_identity::AzureCliCredentialOptions {
            tenant_id: tenant_id(config),
            ..Default::default()
        }))
        .map_err(|e| sdk("azure_cli", e))?,
        "developer_tools" => {
            DeveloperToolsCredential::new(None).map_err(|e| sdk("developer_tools", e))?
        }
        other => {
            return Err(TdeError::config(
                "kms_config.credential",
                format!("{other:?} is not a credential type"),
            ));
        }
    };
    Ok(Built {
        credential,
        warning,
    })
}

/// The client secret: from `client_secret_file` (mode 0600 in production; the mode is read
/// from the opened file, so it is the file that is read), else from the variable
/// `client_secret_env_var`.
pub(crate) fn client_secret(
    config: &AzureKeyVaultConfig,
    mode: SecurityMode,
) -> Result<(SecretString, Option<String>)> {
    if let Some(path) = &config.client_secret_file {
        return read_secret_file(path, mode);
    }
    let var = &config.client_secret_env_var;
    match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => {
            let s = Zeroizing::new(s);
            Ok((SecretString::from(s.trim().to_string()), None))
        }
        _ => Err(TdeError::InvalidConfig {
            field: "kms_config.client_secret_env_var".into(),
            reason: format!(
                "the client secret variable {var} is not set (or empty); export {var}, or set kms_config.client_secret_file to a file holding the secret"
            ),
        }),
    }
}

fn read_secret_file(path: &Path, mode: SecurityMode) -> Result<(SecretString, Option<String>)> {
    let io = |e: std::io::Error| TdeError::InvalidConfig {
        field: "kms_config.client_secret_file".into(),
        reason: format!("cannot read the client secret file {}: {e}", path.display()),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(TdeError::InvalidConfig {
            field: "kms_config.client_secret_file".into(),
            reason: format!("{} is not a regular file", path.display()),
        });
    }
    let mut warning = None;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = meta.permissions().mode() & 0o777;
        if m & 0o077 != 0 {
            if mode.is_production() {
                return Err(TdeError::InsecurePermissions {
                    path: path.to_path_buf(),
                    mode: m,
                    expected: 0o600,
                });
            }
            warning = Some(format!(
                "the client secret file {} has mode {m:04o}: others can read the secret; chmod 600 it (production mode refuses it)",
                path.display()
            ));
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io)?;
    let t = text.trim();
    if t.is_empty() {
        return Err(TdeError::InvalidConfig {
            field: "kms_config.client_secret_file".into(),
            reason: format!("the client secret file {} is empty", path.display()),
        });
    }
    Ok((SecretString::from(t.to_string()), warning))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_others_can_read_is_refused_in_production_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = AzureKeyVaultConfig::new("https://v.vault.azure.net", "k");
        c.credential = "client_secret".into();
        c.client_secret_file = Some(path.clone());
        let e = client_secret(&c, SecurityMode::Production).err().unwrap();
        assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
        assert!(!e.to_string().contains("s3cr3t"));
        let (s, w) = client_secret(&c, SecurityMode::Development).unwrap();
        assert_eq!(s.expose_secret(), "s3cr3t-value");
        assert!(w.unwrap().contains("0644"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (s, w) = client_secret(&c, SecurityMode::Production).unwrap();
        assert_eq!(s.expose_secret(), "s3cr3t-value");
        assert!(w.is_none());
    }

    #[test]
    fn a_missing_or_empty_secret_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = AzureKeyVaultConfig::new("https://v.vault.azure.net", "k");
        c.client_secret_file = Some(path);
        let e = client_secret(&c, SecurityMode::Production).err().unwrap();
        assert!(e.to_string().contains("empty"), "{e}");
        c.client_secret_file = None;
        c.client_secret_env_var = "HELIOSDB_TEST_AZURE_KV_UNSET_SECRET_VAR".into();
        let e = client_secret(&c, SecurityMode::Production).err().unwrap();
        assert!(
            e.to_string().contains("kms_config.client_secret_env_var"),
            "{e}"
        );
    }
}
