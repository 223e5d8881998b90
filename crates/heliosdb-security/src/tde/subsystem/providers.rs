//! Building the MEK provider a checked configuration names, one function per backend; a
//! backend whose cargo feature is off is refused, naming the feature.

use crate::tde::Result;
use crate::tde::checked::{CheckedConfig, CheckedSource, ConfiguredProvider};
use heliosdb_tde_core::{MekId, MekProvider, SecurityMode, TdeError};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

pub(super) fn missing_feature(what: &str, feature: &str) -> TdeError {
    // Features of this crate that exist but may be switched off.
    const KNOWN: &[&str] = &["secure-file", "pkcs11-hsm", "vault", "aws-kms", "azure-kv"];
    let hint = if KNOWN.contains(&feature) {
        format!(
            "build heliosdb-security with the cargo feature `{feature}` (features = \
             [\"{feature}\"]), or configure another MEK provider"
        )
    } else {
        format!(
            "the `{feature}` backend (cargo feature `{feature}`) is not part of this release of \
             heliosdb-security; configure the secure file provider instead"
        )
    };
    TdeError::Unsupported {
        what: format!(
            "{what} is configured, but this build of heliosdb-security has no {what} backend"
        ),
        hint,
    }
}

/// What the provider set-up found out, for the checklist.
#[derive(Default)]
pub(crate) struct ProviderFacts {
    pub(crate) warnings: Vec<String>,
    /// Where the HSM PIN came from (`environment`, `file`, `configuration file`).
    pub(crate) pin_source: Option<&'static str>,
    /// During a provider migration between two secure-file directories that read their
    /// passphrase from the same environment variable: its value, read before the target's
    /// provider took it out of the environment, for the source ([`shared_passphrase`]).
    pub(crate) source_passphrase: Option<secrecy::SecretString>,
    /// The migration source as a provider already running in this process
    /// ([`crate::tde::TdeSubsystem::migrate_to`]): used instead of building one from
    /// `migration_source` (which for the in-memory provider would start empty).
    pub(crate) running_source: Option<Arc<dyn MekProvider>>,
}

/// When the target and the source of a provider migration are both secure-file directories
/// whose passphrase comes from the same environment variable (no `passphrase_file` on either),
/// its value, read without removing it: the provider that opens first removes the variable
/// from the environment, and the other one opens with this copy.
pub(crate) fn shared_passphrase(checked: &CheckedConfig) -> Option<secrecy::SecretString> {
    let src = checked.migration_source.as_ref()?;
    let (ConfiguredProvider::SecureFile(t), ConfiguredProvider::SecureFile(s)) =
        (&checked.provider, &src.provider)
    else {
        return None;
    };
    if t.passphrase_file.is_some()
        || s.passphrase_file.is_some()
        || t.passphrase_var() != s.passphrase_var()
    {
        return None;
    }
    let value = zeroize::Zeroizing::new(std::env::var(s.passphrase_var()).ok()?);
    Some(secrecy::SecretString::from(value.as_str()))
}

/// Builds the MEK provider the configuration names.
pub(crate) async fn build_provider(
    selected: &ConfiguredProvider,
    default_mek: &MekId,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    match selected {
        ConfiguredProvider::InMemory => Ok((
            Arc::new(InMemoryMekProvider::new()),
            ProviderFacts::default(),
        )),
        ConfiguredProvider::Kms(heliosdb_tde_core::KmsConfig::Vault(vault)) => {
            build_vault(vault, mode).await
        }
        ConfiguredProvider::Kms(heliosdb_tde_core::KmsConfig::Aws(aws)) => {
            build_aws(aws, default_mek, mode).await
        }
        ConfiguredProvider::Kms(heliosdb_tde_core::KmsConfig::Azure(azure)) => {
            build_azure(azure, default_mek, mode).await
        }
        ConfiguredProvider::Kms(kms) => Err(missing_feature(kms.name(), kms.feature())),
        ConfiguredProvider::Hsm(hsm) => build_hsm(hsm, mode).await,
        ConfiguredProvider::SecureFile(file) => build_secure_file(file, mode),
    }
}

/// Builds the source provider of a provider migration with the same per-backend functions as
/// the target. Nothing is created on the source's side: a secure-file directory that does not
/// exist is an error (the provider would create it) rather than an empty source.
///
/// `passphrase` is [`ProviderFacts::source_passphrase`]: the secure-file passphrase read from
/// the environment variable the target shares with the source.
pub(crate) async fn build_source(
    src: &CheckedSource,
    mode: SecurityMode,
    passphrase: Option<&secrecy::SecretString>,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    if let ConfiguredProvider::SecureFile(f) = &src.provider {
        match std::fs::symlink_metadata(&f.storage_path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TdeError::KeyNotFound {
                    key: format!("MEK directory {}", f.storage_path.display()),
                    hint: format!(
                        "the directory does not exist, so it cannot hold MEK {}, the MEK the \
                         existing table keys are wrapped under; point \
                         migration_source.secure_file_config.storage_path at the previous \
                         provider's directory. Nothing was created",
                        src.default_mek_id
                    ),
                });
            }
            Err(e) => return Err(TdeError::io(&f.storage_path, e)),
        }
        #[cfg(feature = "secure-file")]
        if let Some(pass) = passphrase {
            use secrecy::ExposeSecret;
            let p = heliosdb_tde_file::SecureFileMekProvider::open_with_passphrase(
                f,
                mode,
                secrecy::SecretString::from(pass.expose_secret()),
                Vec::new(),
            )?;
            let facts = ProviderFacts {
                warnings: p.warnings(),
                ..ProviderFacts::default()
            };
            return Ok((Arc::new(p), facts));
        }
    }
    let _ = passphrase;
    build_provider(&src.provider, &src.default_mek_id, mode).await
}

async fn build_hsm(
    hsm: &heliosdb_tde_core::HsmConfig,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    #[cfg(feature = "pkcs11-hsm")]
    {
        use heliosdb_tde_pkcs11::{PinSource, Pkcs11MekProvider, Pkcs11Settings, resolve_pin};
        let (pin, source) = resolve_pin(hsm, mode)?;
        let p = Pkcs11MekProvider::open(Pkcs11Settings::from_config(hsm, pin)).await?;
        let mut facts = ProviderFacts {
            warnings: Vec::new(),
            source_passphrase: None,
            running_source: None,
            pin_source: Some(match source {
                PinSource::Environment => "environment",
                PinSource::File => "file",
                PinSource::ConfigFile => "configuration file",
                _ => "another source",
            }),
        };
        if source == PinSource::ConfigFile {
            facts.warnings.push(
                "the HSM PIN is written in the configuration file; use HELIOSDB_HSM_PIN or \
                     hsm_config.pin_file (production mode refuses a PIN in the configuration file)"
                    .into(),
            );
        }
        Ok((Arc::new(p), facts))
    }
    #[cfg(not(feature = "pkcs11-hsm"))]
    {
        let _ = (hsm, mode);
        Err(missing_feature("PKCS#11 HSM", "pkcs11-hsm"))
    }
}

async fn build_vault(
    vault: &heliosdb_tde_core::VaultTransitConfig,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    #[cfg(feature = "vault")]
    {
        let p = heliosdb_tde_vault::VaultMekProvider::open(vault, mode).await?;
        let facts = ProviderFacts {
            warnings: p.warnings(),
            pin_source: None,
            source_passphrase: None,
            running_source: None,
        };
        Ok((Arc::new(p), facts))
    }
    #[cfg(not(feature = "vault"))]
    {
        let _ = (vault, mode);
        Err(missing_feature("HashiCorp Vault Transit", "vault"))
    }
}

async fn build_aws(
    aws: &heliosdb_tde_core::AwsKmsConfig,
    default_mek: &MekId,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    // The configured mode was checked with the fields; this is the resolved one (environment,
    // build type), which may turn an http:// endpoint into an error.
    crate::tde::checked::check_aws(aws, Some(mode))?;
    #[cfg(feature = "aws-kms")]
    {
        let p = heliosdb_tde_aws_kms::AwsKmsMekProvider::open(aws, default_mek, mode).await?;
        let facts = ProviderFacts {
            warnings: p.warnings(),
            pin_source: None,
            source_passphrase: None,
            running_source: None,
        };
        Ok((Arc::new(p), facts))
    }
    #[cfg(not(feature = "aws-kms"))]
    {
        let _ = (aws, default_mek, mode);
        Err(missing_feature("AWS KMS", "aws-kms"))
    }
}

async fn build_azure(
    azure: &heliosdb_tde_core::AzureKeyVaultConfig,
    default_mek: &MekId,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    // The resolved mode may refuse what the configured one allowed (http://, no challenge
    // check).
    crate::tde::checked::check_azure(azure, Some(mode))?;
    #[cfg(feature = "azure-kv")]
    {
        let p = heliosdb_tde_azure_kv::AzureKvMekProvider::open(azure, default_mek, mode).await?;
        let facts = ProviderFacts {
            warnings: p.warnings(),
            pin_source: None,
            source_passphrase: None,
            running_source: None,
        };
        Ok((Arc::new(p), facts))
    }
    #[cfg(not(feature = "azure-kv"))]
    {
        let _ = (azure, default_mek, mode);
        Err(missing_feature("Azure Key Vault", "azure-kv"))
    }
}

fn build_secure_file(
    file: &heliosdb_tde_core::SecureFileConfig,
    mode: SecurityMode,
) -> Result<(Arc<dyn MekProvider>, ProviderFacts)> {
    #[cfg(feature = "secure-file")]
    {
        let p = heliosdb_tde_file::SecureFileMekProvider::open(file, mode)?;
        let facts = ProviderFacts {
            warnings: p.warnings(),
            pin_source: None,
            source_passphrase: None,
            running_source: None,
        };
        Ok((Arc::new(p), facts))
    }
    #[cfg(not(feature = "secure-file"))]
    {
        let _ = (file, mode);
        Err(missing_feature("secure file", "secure-file"))
    }
}
