//! Validation of a [`TdeConfig`] into the typed values the subsystem runs on.

use super::Result;
use super::config::TdeConfig;
use super::migration::MigrationSourceConfig;
use heliosdb_tde_core::{
    AwsKmsConfig, AzureKeyVaultConfig, HsmConfig, KmsConfig, MekId, SecureFileConfig, SecurityMode,
    TdeError, VaultTransitConfig,
};

impl TdeConfig {
    /// Checks every field; errors name the field and say what is accepted.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(drop)
    }

    /// Checks every field and returns the typed values the subsystem runs on, so that nothing
    /// below this edge parses a string again.
    pub(crate) fn checked(&self) -> Result<CheckedConfig> {
        if self.cache_limit == 0 {
            return Err(TdeError::config(
                "cache_limit",
                "must be at least 1 (the number of table keys kept unwrapped in memory)",
            ));
        }
        let default_mek_id = MekId::new(self.default_mek_id.clone())
            .map_err(|e| TdeError::config("default_mek_id", e.to_string()))?;
        if self.key_storage_path.as_os_str().is_empty() {
            return Err(TdeError::config(
                "key_storage_path",
                "must name the directory of the key store, e.g. /var/lib/heliosdb/keys",
            ));
        }
        if self.tek_usage_soft_limit == 0 || self.tek_usage_soft_limit > 1 << 32 {
            return Err(TdeError::config(
                "tek_usage_soft_limit",
                "must be between 1 and 2^32 (4294967296), the nonce's 32-bit \
                 invocation number (NIST SP 800-38D 8.2.1)",
            ));
        }
        self.check_schedules()?;
        let security_mode = self
            .security_mode
            .as_deref()
            .map(str::parse::<SecurityMode>)
            .transpose()?;
        let provider = check_sections(
            self.secure_file_config.as_ref(),
            self.kms_config.as_ref(),
            self.hsm_config.as_ref(),
            security_mode,
        )?;
        let migration_source = match &self.migration_source {
            None => None,
            Some(src) => Some(check_source(
                src,
                &default_mek_id,
                &provider,
                security_mode,
            )?),
        };
        let checked = CheckedConfig {
            default_mek_id,
            security_mode,
            provider,
            migration_source,
        };
        if let Some(mode) = security_mode {
            checked.check_migration_mode(mode)?;
        }
        Ok(checked)
    }
}

/// Checks the provider sections of a configuration (the main ones, or those of
/// `migration_source`, whose caller prefixes the field names) and returns the one selected.
fn check_sections(
    secure_file_config: Option<&SecureFileConfig>,
    kms_config: Option<&KmsConfig>,
    hsm_config: Option<&HsmConfig>,
    security_mode: Option<SecurityMode>,
) -> Result<ConfiguredProvider> {
    let configured = [
        kms_config.is_some(),
        secure_file_config.is_some(),
        hsm_config.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if configured > 1 {
        return Err(TdeError::config(
            "kms_config / secure_file_config / hsm_config",
            "configure exactly one MEK provider",
        ));
    }
    if let Some(f) = secure_file_config {
        if f.storage_path.as_os_str().is_empty() {
            return Err(TdeError::config(
                "secure_file_config.storage_path",
                "must name the directory of the MEK files, e.g. /var/lib/heliosdb/mek",
            ));
        }
        if let Some(v) = &f.passphrase_env_var
            && (v.is_empty() || v.contains('=') || v.contains('\0'))
        {
            return Err(TdeError::config(
                "secure_file_config.passphrase_env_var",
                format!("{v:?} is not a valid environment variable name"),
            ));
        }
    }
    if let Some(h) = hsm_config {
        if h.pkcs11_library_path.is_empty() {
            return Err(TdeError::config(
                "hsm_config.pkcs11_library_path",
                "must name the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so",
            ));
        }
        if h.timeout_secs == 0 {
            return Err(TdeError::config(
                "hsm_config.timeout_secs",
                "must be at least 1",
            ));
        }
    }
    match kms_config {
        Some(KmsConfig::Vault(v)) => check_vault(v)?,
        Some(KmsConfig::Aws(a)) => check_aws(a, security_mode)?,
        Some(KmsConfig::Azure(a)) => check_azure(a, security_mode)?,
        _ => {}
    }
    let provider = match (kms_config, secure_file_config, hsm_config) {
        (Some(k), _, _) => ConfiguredProvider::Kms(k.clone()),
        (_, Some(f), _) => ConfiguredProvider::SecureFile(f.clone()),
        (_, _, Some(h)) => ConfiguredProvider::Hsm(h.clone()),
        (None, None, None) => ConfiguredProvider::InMemory,
    };
    Ok(provider)
}

/// The MEK provider a configuration selects (at most one is allowed).
#[derive(Clone, Debug)]
pub(crate) enum ConfiguredProvider {
    /// None configured: the insecure in-memory provider.
    InMemory,
    /// `secure_file_config`.
    SecureFile(SecureFileConfig),
    /// `kms_config`.
    Kms(KmsConfig),
    /// `hsm_config`.
    Hsm(HsmConfig),
}

impl ConfiguredProvider {
    /// The provider and where it is, for messages about a start that cannot reach it.
    pub(crate) fn label(&self) -> String {
        match self {
            ConfiguredProvider::InMemory => "the in-memory MEK provider".into(),
            ConfiguredProvider::SecureFile(f) => {
                format!("the secure file provider at {}", f.storage_path.display())
            }
            ConfiguredProvider::Hsm(h) => format!("the PKCS#11 HSM ({})", h.pkcs11_library_path),
            ConfiguredProvider::Kms(KmsConfig::Vault(v)) => {
                format!("HashiCorp Vault Transit at {}", v.address)
            }
            ConfiguredProvider::Kms(KmsConfig::Aws(a)) => format!(
                "AWS KMS key {} in {} at {}",
                a.key_id,
                a.region,
                a.endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", a.region))
            ),
            ConfiguredProvider::Kms(KmsConfig::Azure(a)) => {
                format!("Azure Key Vault key {} at {}", a.key_name, a.vault_url)
            }
            ConfiguredProvider::Kms(k) => k.name().to_string(),
        }
    }

    /// The provider's kind as [`heliosdb_tde_core::ProviderKind::name`] writes it
    /// (`secure-file`, `pkcs11-hsm`, `vault`...), for messages naming a member of a migration.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            ConfiguredProvider::InMemory => "in-memory",
            ConfiguredProvider::SecureFile(_) => "secure-file",
            ConfiguredProvider::Hsm(_) => "pkcs11-hsm",
            ConfiguredProvider::Kms(k) => k.feature(),
        }
    }

    /// Whether `self` and `other` are the same provider instance by their configuration: the
    /// same secure-file directory, the same PKCS#11 module, slot and token, or the same KMS
    /// section.
    pub(crate) fn same_place(&self, other: &ConfiguredProvider) -> bool {
        match (self, other) {
            (ConfiguredProvider::InMemory, ConfiguredProvider::InMemory) => false,
            (ConfiguredProvider::SecureFile(a), ConfiguredProvider::SecureFile(b)) => {
                a.storage_path == b.storage_path
            }
            (ConfiguredProvider::Hsm(a), ConfiguredProvider::Hsm(b)) => {
                a.pkcs11_library_path == b.pkcs11_library_path
                    && a.slot_id == b.slot_id
                    && a.token_label == b.token_label
            }
            (ConfiguredProvider::Kms(a), ConfiguredProvider::Kms(b)) => a == b,
            _ => false,
        }
    }

    /// The HSM settings, when an HSM is configured.
    pub(crate) fn hsm_mut(&mut self) -> Option<&mut HsmConfig> {
        match self {
            ConfiguredProvider::Hsm(h) => Some(h),
            _ => None,
        }
    }
}

/// A [`TdeConfig`] after validation, in the typed values the subsystem uses.
#[derive(Clone, Debug)]
pub(crate) struct CheckedConfig {
    /// `default_mek_id`.
    pub(crate) default_mek_id: MekId,
    /// `security_mode`, parsed (the environment and the build type are applied later).
    pub(crate) security_mode: Option<SecurityMode>,
    /// The one configured provider (the target, during a provider migration).
    pub(crate) provider: ConfiguredProvider,
    /// `migration_source`, checked: the previous provider during a provider migration.
    pub(crate) migration_source: Option<CheckedSource>,
}

/// A [`MigrationSourceConfig`] after validation.
#[derive(Clone, Debug)]
pub(crate) struct CheckedSource {
    /// `migration_source.default_mek_id`: the MEK the existing TEKs are wrapped under.
    pub(crate) default_mek_id: MekId,
    /// The source provider.
    pub(crate) provider: ConfiguredProvider,
}

impl CheckedConfig {
    /// The rules of a provider migration that depend on the security mode: production refuses
    /// an in-memory source (a test database moving to real keys is a development-mode affair)
    /// and an in-memory target. Checked with the configured mode at validation and again with
    /// the resolved one at start.
    pub(crate) fn check_migration_mode(&self, mode: SecurityMode) -> Result<()> {
        let Some(src) = &self.migration_source else {
            return Ok(());
        };
        if !mode.is_production() {
            return Ok(());
        }
        if matches!(src.provider, ConfiguredProvider::InMemory) {
            return Err(TdeError::config(
                "migration_source",
                "in-memory is allowed as a migration source only in development mode; in \
                 production mode describe the provider that holds the existing MEK \
                 (secure_file_config, kms_config or hsm_config)",
            ));
        }
        if matches!(self.provider, ConfiguredProvider::InMemory) {
            return Err(TdeError::config(
                "kms_config / secure_file_config / hsm_config",
                "a provider migration to the in-memory provider is refused in production mode \
                 (its keys are lost when the process exits); configure the target provider in \
                 the main sections",
            ));
        }
        Ok(())
    }
}

/// Prefixes the field of a configuration error about the source's sections with
/// `migration_source.`.
fn in_source(e: TdeError) -> TdeError {
    match e {
        TdeError::InvalidConfig { field, reason } => TdeError::InvalidConfig {
            field: field
                .split(" / ")
                .map(|f| format!("migration_source.{f}"))
                .collect::<Vec<_>>()
                .join(" / "),
            reason,
        },
        other => other,
    }
}

/// Checks `migration_source` against the target (`target_mek` in `target`).
fn check_source(
    src: &MigrationSourceConfig,
    target_mek: &MekId,
    target: &ConfiguredProvider,
    security_mode: Option<SecurityMode>,
) -> Result<CheckedSource> {
    let default_mek_id = MekId::new(src.default_mek_id.clone())
        .map_err(|e| TdeError::config("migration_source.default_mek_id", e.to_string()))?;
    let provider = check_sections(
        src.secure_file_config.as_ref(),
        src.kms_config.as_ref(),
        src.hsm_config.as_ref(),
        security_mode,
    )
    .map_err(in_source)?;
    let same_place = provider.same_place(target);
    if default_mek_id == *target_mek {
        return Err(heliosdb_tde_core::shared_mek_id(
            same_place,
            &provider.label(),
            provider.kind_name(),
            target.kind_name(),
            &default_mek_id,
        ));
    }
    if same_place && matches!(provider, ConfiguredProvider::SecureFile(_)) {
        return Err(TdeError::config(
            "migration_source",
            format!(
                "the source and the target are the same secure-file directory ({}); a \
                 provider migration moves the wraps to another provider. To move the table keys \
                 to a new MEK in the same directory, rotate the MEK (`heliosdb-cli security mek \
                 rotate`) instead",
                target.label()
            ),
        ));
    }
    Ok(CheckedSource {
        default_mek_id,
        provider,
    })
}

/// Checks the fields of a Vault configuration; errors name the field (`kms_config.<field>`).
fn check_vault(v: &VaultTransitConfig) -> Result<()> {
    let field = |name: &str| format!("kms_config.{name}");
    let rest = v
        .address
        .strip_prefix("https://")
        .or_else(|| v.address.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if !host
        .is_some_and(|h| !h.is_empty() && !h.starts_with(':') && !h.contains(char::is_whitespace))
    {
        return Err(TdeError::config(
            field("address"),
            format!(
                "{:?} is not a Vault address; write the server's URL, e.g. \
                 https://vault.example.com:8200 (VAULT_ADDR overrides it)",
                v.address
            ),
        ));
    }
    if v.timeout_secs == 0 {
        return Err(TdeError::config(
            field("timeout_secs"),
            "must be at least 1 (seconds per request)",
        ));
    }
    if v.max_retries > 10 {
        return Err(TdeError::config(
            field("max_retries"),
            "must be at most 10; longer outages are retried by the caller",
        ));
    }
    let path_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
    };
    for (name, value) in [
        ("mount", v.mount.as_deref().unwrap_or("transit")),
        ("state_mount", v.state_mount.as_str()),
        ("state_path", v.state_path.as_str()),
    ] {
        if !path_ok(value) {
            return Err(TdeError::config(
                field(name),
                format!(
                    "{value:?} is not a mount or path: use letters, digits, _ - . and inner \
                     slashes"
                ),
            ));
        }
    }
    if let Some(prefix) = &v.key_prefix
        && !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(TdeError::config(
            field("key_prefix"),
            format!("{prefix:?}: a Transit key name takes letters, digits and _ - . only"),
        ));
    }
    if let Some(var) = &v.token_env_var
        && (var.is_empty() || var.contains('=') || var.contains('\0'))
    {
        return Err(TdeError::config(
            field("token_env_var"),
            format!("{var:?} is not a valid environment variable name"),
        ));
    }
    for (name, value) in [("token_file", &v.token_file), ("ca_cert", &v.ca_cert)] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(TdeError::config(
                field(name),
                "is empty; name a file or leave the field out",
            ));
        }
    }
    Ok(())
}

/// Checks the fields of an AWS KMS configuration; errors name the field (`kms_config.<field>`).
/// An `http://` endpoint is refused when `mode` is production (the subsystem calls this again
/// with the resolved mode). The rules are the provider crate's
/// (`heliosdb_tde_aws_kms::check_config`), so that there is one set; a build without the
/// `aws-kms` feature has no rules to apply and refuses the configuration at start-up, naming
/// the feature.
pub(crate) fn check_aws(a: &AwsKmsConfig, mode: Option<SecurityMode>) -> Result<()> {
    #[cfg(feature = "aws-kms")]
    {
        heliosdb_tde_aws_kms::check_config(a, mode.unwrap_or(SecurityMode::Development))
    }
    #[cfg(not(feature = "aws-kms"))]
    {
        let _ = (a, mode);
        Ok(())
    }
}

/// Checks the fields of an Azure Key Vault configuration; errors name the field
/// (`kms_config.<field>`). Production mode refuses an `http://` vault URL and
/// `verify_challenge_resource = false` (the subsystem calls this again with the resolved mode).
/// The rules are the provider crate's (`heliosdb_tde_azure_kv::check_config`); a build without
/// the `azure-kv` feature checks that the two required fields are present and refuses the
/// configuration at start-up, naming the feature.
pub(crate) fn check_azure(a: &AzureKeyVaultConfig, mode: Option<SecurityMode>) -> Result<()> {
    #[cfg(feature = "azure-kv")]
    {
        heliosdb_tde_azure_kv::check_config(a, mode.unwrap_or(SecurityMode::Development))
    }
    #[cfg(not(feature = "azure-kv"))]
    {
        let _ = mode;
        for (name, value) in [("vault_url", &a.vault_url), ("key_name", &a.key_name)] {
            if value.trim().is_empty() {
                return Err(TdeError::config(
                    format!("kms_config.{name}"),
                    "is empty; it is required for provider = \"azure\"",
                ));
            }
        }
        Ok(())
    }
}
