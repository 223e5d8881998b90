//! `TdeConfig`: the TDE configuration (`enabled`, `algorithm`, `key_storage_path`,
//! `default_mek_id`, `cache_limit`, the provider sections, `security_mode`, the rotation and
//! backup schedules, the source of a provider migration), from code, a TOML file and the
//! environment.

use super::Result;
use super::memory::MemoryProtectionConfig;
use super::migration::MigrationSourceConfig;
use heliosdb_tde_core::{EncryptionAlgorithm, HsmConfig, KmsConfig, SecureFileConfig, TdeError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override configuration fields.
pub const ENV_PREFIX: &str = "HELIOSDB_TDE_";

/// The TDE configuration. Applications build it as a struct literal that ends with
/// `..Default::default()`, so its fields keep their names and types.
///
/// At most one of `kms_config`, `secure_file_config` and `hsm_config` may be set; with none,
/// the insecure in-memory provider is used, which production mode refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TdeConfig {
    /// Whether TDE is on.
    pub enabled: bool,
    /// The algorithm of table keys.
    pub algorithm: EncryptionAlgorithm,
    /// The directory of the TEK store (`tek-store.redb`), created `0700`.
    pub key_storage_path: PathBuf,
    /// The MEK that wraps table keys, for example `master_key_001`.
    pub default_mek_id: String,
    /// The most table keys kept unwrapped in memory.
    pub cache_limit: usize,
    /// A cloud KMS provider.
    pub kms_config: Option<KmsConfig>,
    /// The secure file provider.
    pub secure_file_config: Option<SecureFileConfig>,
    /// A PKCS#11 HSM provider.
    pub hsm_config: Option<HsmConfig>,
    /// `production` or `development`; `None` means the build type decides. The environment
    /// variable `HELIOSDB_SECURITY_MODE` overrides it.
    pub security_mode: Option<String>,
    /// A hash-chained audit log of every key operation (JSON lines, mode 0600). Optional;
    /// `None` disables audit logging, which `security status` reports.
    pub audit_log_path: Option<PathBuf>,
    /// Size in bytes at which the audit log's current file is renamed
    /// `<log>.<first seq>-<last seq>` and the chain continues in a new file (default 64 MiB;
    /// at least 4096). HeliosDB never deletes an audit file.
    pub audit_max_file_bytes: u64,
    /// When audit records reach the disk: `always` (every record is fsynced before the
    /// operation returns) or `batched` (the default: records that change key state are fsynced
    /// before the operation returns; `tek.unwrapped` records of cache misses are fsynced
    /// together at most 100 ms later).
    pub audit_fsync: String,
    /// Days both MEK versions stay valid after a rotation before the old one may be
    /// deactivated (default: 30).
    pub rotation_grace_days: u64,
    /// Encryptions after which a table key used through the key manager is rotated
    /// automatically (at most 2^32, NIST SP 800-38D; default 2^31).
    pub tek_usage_soft_limit: u64,
    /// Seconds a start keeps retrying a remote MEK provider (Vault, a KMS) that answers with a
    /// retryable error (unreachable, sealed, throttled) before giving up; default 30, 0 to fail
    /// at once.
    pub provider_startup_wait_secs: u64,
    /// The directory that receives key backups (`heliosdb-cli security backup --out-dir DIR`),
    /// on another filesystem than `key_storage_path`. Optional; the Security Checklist fails its
    /// backup item while it is `None`.
    pub backup_dir: Option<PathBuf>,
    /// Days after which the newest backup in `backup_dir` counts as stale in the Security
    /// Checklist (default: 7).
    pub backup_max_age_days: u64,
    /// Days after which the active MEK version is due for rotation in the Security Checklist
    /// (default: 365, the guide's minimum; 90 for high security). At least 1.
    pub mek_rotation_days: u64,
    /// The previous MEK provider during a provider migration (`[migration_source]`): the main
    /// sections then describe the target. `None` (the default): no migration. See
    /// [`MigrationSourceConfig`].
    pub migration_source: Option<MigrationSourceConfig>,
    /// How key memory and the process are protected (`[memory_protection]`): locked key pages,
    /// left out of core dumps, and core dumps disabled in production. See
    /// [`MemoryProtectionConfig`].
    pub memory_protection: MemoryProtectionConfig,
}

impl Default for TdeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            key_storage_path: PathBuf::from("/var/lib/heliosdb/keys"),
            default_mek_id: "master_key_001".into(),
            cache_limit: 1000,
            kms_config: None,
            secure_file_config: None,
            hsm_config: None,
            security_mode: None,
            audit_log_path: None,
            audit_max_file_bytes: 64 * 1024 * 1024,
            audit_fsync: "batched".into(),
            rotation_grace_days: 30,
            tek_usage_soft_limit: 1 << 31,
            provider_startup_wait_secs: 30,
            backup_dir: None,
            backup_max_age_days: 7,
            mek_rotation_days: 365,
            migration_source: None,
            memory_protection: MemoryProtectionConfig::default(),
        }
    }
}

fn env_err(var: &str, value: &str, accepted: &str) -> TdeError {
    TdeError::config(var, format!("{value:?} is not valid; {accepted}"))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column + offset.saturating_sub(text.len()))
}

/// The dotted key path of the deepest entry whose key or value spans byte `offset`, as the TOML
/// parser reads the document (recovering from syntax errors where it can).
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        offset: usize,
        prefix: &mut Vec<String>,
        best: &mut Option<Vec<String>>,
    ) {
        for (key, value) in table {
            prefix.push(key.get_ref().to_string());
            let (k, v) = (key.span(), value.span());
            let spans_offset = (k.start <= offset && offset < k.end.max(k.start + 1))
                || (v.start <= offset && offset <= v.end);
            if spans_offset && best.as_ref().is_none_or(|b| b.len() < prefix.len()) {
                *best = Some(prefix.clone());
            }
            match value.get_ref() {
                toml::de::DeValue::Table(t) => walk(t, offset, prefix, best),
                toml::de::DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            if let Some(last) = prefix.last_mut() {
                                last.push_str(&format!("[{i}]"));
                            }
                            walk(t, offset, prefix, best);
                            if let Some(last) = prefix.last_mut() {
                                *last = key.get_ref().to_string();
                            }
                        }
                    }
                }
                _ => {}
            }
            prefix.pop();
        }
    }
    let (doc, _errors) = toml::de::DeTable::parse_recoverable(text);
    let mut best = None;
    walk(doc.get_ref(), offset, &mut Vec::new(), &mut best);
    best.map(|p| p.join("."))
}

/// A TOML error as one line: where (`origin:line:column`), the field as the parser knows it,
/// then the parser's own detail.
fn toml_error(text: &str, origin: Option<&Path>, e: &toml::de::Error) -> TdeError {
    let detail = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let origin = origin.map(|p| p.display().to_string());
    let Some(span) = e.span() else {
        return TdeError::config(origin.unwrap_or_else(|| "TOML document".into()), detail);
    };
    let (line, column) = line_column(text, span.start);
    let location = match origin {
        Some(o) => format!("{o}:{line}:{column}"),
        None => format!("line {line}, column {column}"),
    };
    match key_path_at(text, span.start) {
        Some(field) => TdeError::config(format!("{location}: {field}"), detail),
        None => TdeError::config(location, detail),
    }
}

impl TdeConfig {
    /// Checks the rotation and backup schedule fields (`mek_rotation_days` at least 1); part of
    /// [`TdeConfig::validate`].
    pub(crate) fn check_schedules(&self) -> Result<()> {
        if self.audit_max_file_bytes < 4096 {
            return Err(TdeError::config(
                "audit_max_file_bytes",
                format!(
                    "{} is too small: use at least 4096 bytes (the default is 67108864, 64 MiB)",
                    self.audit_max_file_bytes
                ),
            ));
        }
        if !matches!(self.audit_fsync.as_str(), "always" | "batched") {
            return Err(TdeError::config(
                "audit_fsync",
                format!(
                    "{:?} is not a policy: use \"always\" or \"batched\" (the default)",
                    self.audit_fsync
                ),
            ));
        }
        if self.mek_rotation_days == 0 {
            return Err(TdeError::config(
                "mek_rotation_days",
                "must be at least 1 (days after which the active MEK version is due for \
                 rotation; the guide's minimum is 365, 90 for high security)",
            ));
        }
        if self
            .backup_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(TdeError::config(
                "backup_dir",
                "must name the directory of key backups, e.g. /mnt/backup/heliosdb-keys, \
                 or be left out",
            ));
        }
        Ok(())
    }

    /// Parses a TOML document. Unknown fields are errors, so typos do not pass silently.
    ///
    /// An error is one line: [`TdeError::InvalidConfig`] whose `field` is `line L, column C:`
    /// and the dotted key path the parser was reading there (when there is one), and whose
    /// `reason` is the parser's detail.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| toml_error(text, None, &e))
    }

    /// Reads a TOML file. Errors are as for [`TdeConfig::from_toml_str`], located as
    /// `FILE:LINE:COLUMN`, for example:
    ///
    /// ```text
    /// invalid configuration: /etc/heliosdb/tde.toml:3:15: cache_limit: invalid value: integer `-1`, expected usize
    /// ```
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TdeError::io(path, e))?;
        toml::from_str(&text).map_err(|e| toml_error(&text, Some(path), &e))
    }

    /// Applies overrides from the process environment; see [`TdeConfig::apply_env_with`].
    pub fn apply_env(&mut self) -> Result<()> {
        self.apply_env_with(|k| std::env::var(k).ok())
    }

    /// Applies overrides from `get` (the environment, or a map in tests):
    ///
    /// | variable | field |
    /// | --- | --- |
    /// | `HELIOSDB_TDE_ENABLED` | `enabled` (`true`/`false`) |
    /// | `HELIOSDB_TDE_ALGORITHM` | `algorithm` |
    /// | `HELIOSDB_TDE_KEY_STORAGE_PATH` | `key_storage_path` |
    /// | `HELIOSDB_TDE_DEFAULT_MEK_ID` | `default_mek_id` |
    /// | `HELIOSDB_TDE_CACHE_LIMIT` | `cache_limit` |
    /// | `HELIOSDB_TDE_AUDIT_LOG_PATH` | `audit_log_path` |
    /// | `HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES` | `audit_max_file_bytes` |
    /// | `HELIOSDB_TDE_AUDIT_FSYNC` | `audit_fsync` (`always` / `batched`) |
    /// | `HELIOSDB_TDE_ROTATION_GRACE_DAYS` | `rotation_grace_days` |
    /// | `HELIOSDB_TDE_PROVIDER_STARTUP_WAIT_SECS` | `provider_startup_wait_secs` |
    /// | `HELIOSDB_TDE_BACKUP_DIR` | `backup_dir` |
    /// | `HELIOSDB_TDE_BACKUP_MAX_AGE_DAYS` | `backup_max_age_days` |
    /// | `HELIOSDB_TDE_MEK_ROTATION_DAYS` | `mek_rotation_days` |
    /// | `HELIOSDB_TDE_LOCK_KEYS` | `memory_protection.lock_keys` (`true`/`false`) |
    /// | `HELIOSDB_TDE_DISABLE_CORE_DUMPS` | `memory_protection.disable_core_dumps` (`true`/`false`) |
    /// | `HELIOSDB_TDE_MEK_STORAGE_PATH` | `secure_file_config.storage_path` (enables it) |
    /// | `HELIOSDB_TDE_PASSPHRASE_FILE` | `secure_file_config.passphrase_file` |
    /// | `HELIOSDB_KMS_KEY_ID`, `AWS_REGION` | `kms_config` (AWS) `key_id`, `region` |
    /// | `VAULT_ADDR`, `VAULT_NAMESPACE`, `VAULT_CACERT` | `kms_config` (Vault) `address`, `namespace`, `ca_cert` |
    ///
    /// `HELIOSDB_SECURITY_MODE` is not copied into `security_mode`: it is read when the mode is
    /// resolved, where it takes precedence. None of these variables changes `migration_source`:
    /// they describe the configured provider (the target of a migration).
    pub fn apply_env_with(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let var = |name: &str| get(&format!("{ENV_PREFIX}{name}"));
        let flag = |name: &str| -> Result<Option<bool>> {
            let Some(v) = var(name) else { return Ok(None) };
            match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(env_err(
                    &format!("{ENV_PREFIX}{name}"),
                    &v,
                    "use true or false",
                )),
            }
        };
        if let Some(on) = flag("ENABLED")? {
            self.enabled = on;
        }
        if let Some(on) = flag("LOCK_KEYS")? {
            self.memory_protection.lock_keys = on;
        }
        if let Some(on) = flag("DISABLE_CORE_DUMPS")? {
            self.memory_protection.disable_core_dumps = Some(on);
        }
        if let Some(v) = var("ALGORITHM") {
            self.algorithm = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_ALGORITHM",
                    &v,
                    "the accepted value is Aes256Gcm",
                )
            })?;
        }
        if let Some(v) = var("KEY_STORAGE_PATH") {
            self.key_storage_path = v.into();
        }
        if let Some(v) = var("DEFAULT_MEK_ID") {
            self.default_mek_id = v;
        }
        if let Some(v) = var("CACHE_LIMIT") {
            self.cache_limit = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_CACHE_LIMIT",
                    &v,
                    "use a whole number of keys, e.g. 1000",
                )
            })?;
        }
        if let Some(v) = var("ROTATION_GRACE_DAYS") {
            self.rotation_grace_days = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_ROTATION_GRACE_DAYS",
                    &v,
                    "use a whole number of days",
                )
            })?;
        }
        if let Some(v) = var("PROVIDER_STARTUP_WAIT_SECS") {
            self.provider_startup_wait_secs = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_PROVIDER_STARTUP_WAIT_SECS",
                    &v,
                    "use a whole number of seconds, e.g. 30 (0 fails at once)",
                )
            })?;
        }
        if let Some(v) = var("AUDIT_LOG_PATH") {
            self.audit_log_path = Some(v.into());
        }
        if let Some(v) = var("AUDIT_MAX_FILE_BYTES") {
            self.audit_max_file_bytes = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES",
                    &v,
                    "use a whole number of bytes, at least 4096, e.g. 67108864",
                )
            })?;
        }
        if let Some(v) = var("AUDIT_FSYNC") {
            self.audit_fsync = v;
        }
        if let Some(v) = var("BACKUP_DIR") {
            self.backup_dir = Some(v.into());
        }
        if let Some(v) = var("BACKUP_MAX_AGE_DAYS") {
            self.backup_max_age_days = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_BACKUP_MAX_AGE_DAYS",
                    &v,
                    "use a whole number of days, e.g. 7",
                )
            })?;
        }
        if let Some(v) = var("MEK_ROTATION_DAYS") {
            self.mek_rotation_days = v.parse().map_err(|_| {
                env_err(
                    "HELIOSDB_TDE_MEK_ROTATION_DAYS",
                    &v,
                    "use a whole number of days, at least 1, e.g. 365",
                )
            })?;
        }
        if let Some(v) = var("MEK_STORAGE_PATH") {
            match &mut self.secure_file_config {
                Some(c) => c.storage_path = v.into(),
                None => self.secure_file_config = Some(SecureFileConfig::new(v)),
            }
        }
        if let Some(v) = var("PASSPHRASE_FILE") {
            match &mut self.secure_file_config {
                Some(c) => c.passphrase_file = Some(v.into()),
                None => {
                    return Err(TdeError::config(
                        "HELIOSDB_TDE_PASSPHRASE_FILE",
                        "set only together with a secure file provider \
                         (secure_file_config or HELIOSDB_TDE_MEK_STORAGE_PATH)",
                    ));
                }
            }
        }
        if let Some(KmsConfig::Vault(vault)) = &mut self.kms_config {
            if let Some(v) = get("VAULT_ADDR") {
                vault.address = v;
            }
            if let Some(v) = get("VAULT_NAMESPACE") {
                vault.namespace = Some(v);
            }
            if let Some(v) = get("VAULT_CACERT") {
                vault.ca_cert = Some(v);
            }
        }
        if let Some(KmsConfig::Azure(azure)) = &mut self.kms_config {
            if let Some(v) = get("AZURE_KEYVAULT_URL") {
                azure.vault_url = v;
            }
            // The identity variables fill only what the configuration leaves unset.
            if azure.tenant_id.is_none() {
                azure.tenant_id = get("AZURE_TENANT_ID");
            }
            if azure.client_id.is_none() {
                azure.client_id = get("AZURE_CLIENT_ID");
            }
        }
        if let Some(KmsConfig::Aws(aws)) = &mut self.kms_config {
            if let Some(v) = get("HELIOSDB_KMS_KEY_ID") {
                aws.key_id = v;
            }
            if let Some(v) = get("AWS_REGION") {
                aws.region = v;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
