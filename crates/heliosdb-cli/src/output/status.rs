//! `security status`: the provider, its health and security level, the AWS KMS and Azure Key
//! Vault views, key availability, the memory protection in force and the Security Checklist,
//! as a table or one JSON document.

use super::rotation::{rotation_json, service_rotation_note};
use super::{Out, outln, table};
use heliosdb_security::tde::{
    AZURE_RSA_LIMITATION, AzureWrapAlgorithm, CheckItem, DeletionProtection, KeyAvailability,
    KmsConfig, MekInfo, MemoryProtection, MemoryProtectionConfig, Protection, ProviderHealth,
    ProviderKind, ServiceRotation, TdeSubsystem,
};
use serde_json::json;

/// The security level of each provider kind, from 5/5 (HSM) down to 0/5 (insecure).
fn level(kind: ProviderKind, secure: bool) -> &'static str {
    match kind {
        ProviderKind::Pkcs11 => "5/5 (HSM: highest)",
        ProviderKind::AwsKms | ProviderKind::AzureKeyVault | ProviderKind::Vault => {
            "4/5 (cloud KMS: high)"
        }
        ProviderKind::SecureFile => "3/5 (secure file: medium)",
        _ if !secure => "0/5 (INSECURE: testing only)",
        _ => "unknown",
    }
}

/// What `security status` shows about an AWS KMS provider: the region and endpoint, the
/// active version's key and the state KMS reports for it (the health check's detail), and the
/// service rotation of that key.
pub(crate) struct KmsView {
    region: String,
    endpoint: Option<String>,
    active_version: Option<u32>,
    active_key: Option<String>,
    key_state: Option<String>,
    service_rotation: Option<ServiceRotation>,
    rotation_note: Option<String>,
}

impl KmsView {
    /// The view for `tde` when its provider is AWS KMS; `mek` is the default MEK's info, if it
    /// could be read, and `health` the provider's health check.
    pub(crate) fn new(
        tde: &TdeSubsystem,
        mek: Option<&MekInfo>,
        health: Option<&ProviderHealth>,
    ) -> Option<Self> {
        let Some(KmsConfig::Aws(aws)) = &tde.config().kms_config else {
            return None;
        };
        let active = mek.and_then(|m| {
            let v = m.active_version()?;
            m.versions.iter().find(|x| x.mek.version == v)
        });
        Some(Self {
            region: aws.region.clone(),
            endpoint: aws.endpoint.clone(),
            active_version: active.map(|v| v.mek.version.get()),
            active_key: active.and_then(|v| v.key_location.clone()),
            // The health check ends "active key <arn> (MEK <id>@v<N>) is <KeyState>" when the
            // key is usable; otherwise its detail says what is wrong.
            key_state: health.map(|h| match h.detail.rsplit_once(" is ") {
                Some((_, state)) if h.healthy => state.to_string(),
                _ => h.detail.clone(),
            }),
            service_rotation: active.and_then(|v| v.service_rotation.clone()),
            rotation_note: active.and_then(service_rotation_note),
        })
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "region": self.region,
            "endpoint": self.endpoint,
            "active_version": self.active_version,
            "active_key": self.active_key,
            "key_state": self.key_state,
            "service_rotation": rotation_json(self.service_rotation.as_ref()),
            "service_rotation_note": self.rotation_note,
        })
    }
}

/// What `security status` shows about an Azure Key Vault provider: the vault, the key, the
/// wrap algorithm and the credential type from the configuration, the active version's key id
/// and purge protection from the default MEK's info, and, for RSA, what RSA wrapping cannot
/// prove.
pub(crate) struct AzureView {
    vault_url: String,
    key_name: String,
    wrap_algorithm: String,
    credential: String,
    active_key: Option<String>,
    purge_protection: Option<DeletionProtection>,
    rsa_limitation: Option<&'static str>,
}

impl AzureView {
    /// The view for `tde` when its provider is Azure Key Vault; `mek` is the default MEK's
    /// info, if it could be read.
    pub(crate) fn new(tde: &TdeSubsystem, mek: Option<&MekInfo>) -> Option<Self> {
        let Some(KmsConfig::Azure(azure)) = &tde.config().kms_config else {
            return None;
        };
        let active = mek.and_then(|m| {
            let v = m.active_version()?;
            m.versions.iter().find(|x| x.mek.version == v)
        });
        // The provider's own parsing and text (the configuration was checked at start-up, so
        // the algorithm parses).
        let algorithm = AzureWrapAlgorithm::parse(azure.effective_wrap_algorithm()).ok();
        Some(Self {
            vault_url: azure.vault_url.clone(),
            key_name: azure.key_name.clone(),
            rsa_limitation: algorithm
                .filter(|a| a.is_rsa())
                .map(|_| AZURE_RSA_LIMITATION),
            wrap_algorithm: algorithm.map_or_else(
                || azure.effective_wrap_algorithm().to_string(),
                |a| a.to_string(),
            ),
            credential: azure.credential.clone(),
            active_key: active.and_then(|v| v.key_location.clone()),
            purge_protection: mek.and_then(|m| m.deletion_protection.clone()),
        })
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "vault_url": self.vault_url,
            "key_name": self.key_name,
            "wrap_algorithm": self.wrap_algorithm,
            "credential": self.credential,
            "active_key": self.active_key,
            "purge_protection": self.purge_protection.as_ref().map(|p| json!({
                "protected": p.protected,
                "detail": p.detail,
            })),
            "rsa_limitation": self.rsa_limitation,
        })
    }

    fn print(&self, out: &Out) {
        outln!(out, "Azure vault:     {}", self.vault_url);
        outln!(
            out,
            "Azure key:       {} ({}; credential {})",
            self.key_name,
            self.wrap_algorithm,
            self.credential
        );
        match &self.active_key {
            Some(kid) => outln!(out, "Active version:  {kid}"),
            None => outln!(out, "Active version:  none (no active MEK version yet)"),
        }
        match &self.purge_protection {
            Some(p) if p.protected => outln!(out, "Purge protection: on ({})", p.detail),
            Some(p) => outln!(out, "Purge protection: OFF: {}", p.detail),
            None => outln!(out, "Purge protection: unknown (the MEK could not be read)"),
        }
        if let Some(limit) = self.rsa_limitation {
            outln!(out, "RSA limitation:  {limit}");
        }
    }
}

/// Whose memory protection `security status` reports: the protections are process-wide, and
/// the CLI runs the same start-up as the database.
pub(crate) const MEMORY_SCOPE: &str =
    "this heliosdb-cli process, which starts TDE as the database does";

/// Core dumps disabled by start-up (`prctl(PR_SET_DUMPABLE, 0)` and `RLIMIT_CORE` 0).
const CORE_DUMPS_DISABLED: &str = "active (non-dumpable, core limit 0: no core file, and \
                                   debuggers of the same user cannot attach with ptrace)";

/// One protection as JSON: `{"state": "active|off|failed|unavailable", "reason": ...}` (the
/// reason is `null` when active).
pub(crate) fn protection_json(p: &Protection) -> serde_json::Value {
    let (state, reason) = match p {
        Protection::Active => ("active", None),
        Protection::Off => ("off", Some("switched off by configuration".to_string())),
        Protection::Failed { reason } => ("failed", Some(reason.clone())),
        Protection::Unavailable { reason } => ("unavailable", Some(reason.clone())),
        // A state added to the core later: its own words.
        other => ("unknown", Some(other.describe())),
    };
    json!({ "state": state, "reason": reason })
}

/// `n` bytes, with KiB or MiB when it is a whole number of them.
pub(crate) fn bytes_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{n} bytes ({} MiB)", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{n} bytes ({} KiB)", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// What `security status` shows about memory protection: the protections in force in this
/// process (which ran the database's start-up), and the configuration they came from.
struct MemoryView<'a> {
    protection: &'a MemoryProtection,
    config: &'a MemoryProtectionConfig,
}

impl<'a> MemoryView<'a> {
    fn new(tde: &'a TdeSubsystem, protection: &'a MemoryProtection) -> Self {
        Self {
            protection,
            config: tde.memory_protection_config(),
        }
    }
}

impl MemoryView<'_> {
    fn json(&self) -> serde_json::Value {
        let p = self.protection;
        json!({
            "scope": MEMORY_SCOPE,
            "locking": protection_json(&p.locking),
            "dump_exclusion": protection_json(&p.dump_exclusion),
            "wipe_on_fork": protection_json(&p.wipe_on_fork),
            "core_dumps_disabled": protection_json(&p.core_dumps_disabled),
            "dumpable": p.core_dumps.dumpable,
            "core_limit_bytes": p.core_dumps.core_limit,
            "memlock_limit_bytes": p.memlock_limit,
            "lock_beyond_limit": p.lock_beyond_limit,
            "bytes_needed": p.bytes_needed,
            "bytes_locked": p.arena.bytes_locked,
        })
    }

    /// A protection's state, with what switches it on when the configuration switched it off.
    fn state(p: &Protection, setting: &str) -> String {
        match p {
            Protection::Off => format!("off (by configuration: {setting})"),
            other => other.describe(),
        }
    }

    fn print(&self, out: &Out) {
        let p = self.protection;
        outln!(out, "\nMemory protection ({MEMORY_SCOPE}):");
        outln!(
            out,
            "  Key pages locked in RAM:  {}",
            Self::state(
                &p.locking,
                "memory_protection.lock_keys = false or HELIOSDB_TDE_LOCK_KEYS=false; key pages \
                 may be written to swap"
            )
        );
        outln!(
            out,
            "  Left out of core dumps:   {}",
            Self::state(
                &p.dump_exclusion,
                "memory_protection.exclude_from_core_dumps = false"
            )
        );
        outln!(
            out,
            "  Wiped in forked children: {}",
            p.wipe_on_fork.describe()
        );
        let core = match &p.core_dumps_disabled {
            Protection::Active => CORE_DUMPS_DISABLED.to_string(),
            Protection::Off => {
                let why = if self.config.disable_core_dumps.is_none() {
                    "the development-mode default; memory_protection.disable_core_dumps = true \
                     or HELIOSDB_TDE_DISABLE_CORE_DUMPS=true switches it on"
                } else {
                    "by configuration: memory_protection.disable_core_dumps = false or \
                     HELIOSDB_TDE_DISABLE_CORE_DUMPS=false"
                };
                // The environment (`ulimit -c 0`, the application) may have done part of it: a
                // core limit of 0 alone does not stop a debugger attaching.
                let now = match (p.core_dumps.dumpable, p.core_dumps.core_limit) {
                    (Some(false), _) => {
                        "the process is non-dumpable all the same (not by HeliosDB)"
                    }
                    (_, Some(0)) => {
                        "the core limit is 0 (not by HeliosDB), so no core file, but debuggers of \
                         the same user can attach with ptrace"
                    }
                    _ => "core files and ptrace attach by debuggers of the same user are possible",
                };
                format!("off ({why}): {now}")
            }
            other => format!(
                "{} (core files and ptrace attach by debuggers of the same user may be possible)",
                other.describe()
            ),
        };
        outln!(out, "  Core dumps disabled:      {core}");
        outln!(
            out,
            "  RLIMIT_MEMLOCK:           {}{}",
            p.memlock_limit
                .map_or_else(|| "unlimited".to_string(), bytes_text),
            if p.lock_beyond_limit {
                "; not binding: CAP_IPC_LOCK"
            } else {
                ""
            }
        );
        outln!(
            out,
            "  Key memory:               {} locked, {} needed (cache_limit keys plus the reserve)",
            bytes_text(p.arena.bytes_locked as u64),
            bytes_text(p.bytes_needed as u64)
        );
    }
}

/// One provider of a migration as `security status` shows it: its role, kind, MEK and health.
pub(crate) struct MigrationMember {
    /// `source` or `target`.
    pub(crate) role: &'static str,
    /// The provider kind (`secure-file`, `pkcs11-hsm`...).
    pub(crate) provider: String,
    /// The provider and where it keeps its MEKs.
    pub(crate) description: String,
    /// The MEK id, or the MEK version the journal names.
    pub(crate) mek: String,
    /// Whether its health check passed.
    pub(crate) healthy: bool,
    /// What the health check found, or what is wrong.
    pub(crate) detail: String,
}

impl MigrationMember {
    fn json(&self) -> serde_json::Value {
        json!({
            "provider": self.provider,
            "description": self.description,
            "mek": self.mek,
            "healthy": self.healthy,
            "detail": self.detail,
        })
    }

    fn print(&self, out: &Out) {
        outln!(
            out,
            "  {:<15}{} on {}",
            format!("{}:", capitalised(self.role)),
            self.mek,
            self.description
        );
        if self.healthy {
            outln!(out, "  {:<15}healthy ({})", "", self.detail);
        } else {
            outln!(out, "  {:<15}UNHEALTHY: {}", "", self.detail);
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// What `security status` shows about a provider migration (the configuration has
/// `migration_source`): the journal's phase and counts, and both providers.
pub(crate) struct MigrationView {
    /// The journal's phase; `None` before the migration started.
    pub(crate) phase: Option<String>,
    /// TEKs moved to the target so far.
    pub(crate) moved: u64,
    /// TEK wraps under the source's MEK (every TEK that existed when the migration started),
    /// when the key store was read.
    pub(crate) total: Option<u64>,
    /// Keys that failed in the last pass.
    pub(crate) failed: u64,
    /// When `--finish` may drop the source wraps.
    pub(crate) grace_until: Option<String>,
    /// The source, then the target.
    pub(crate) members: Vec<MigrationMember>,
    /// What the operator does next.
    pub(crate) next_step: String,
}

impl MigrationView {
    fn json(&self) -> serde_json::Value {
        let member = |role: &str| {
            self.members
                .iter()
                .find(|m| m.role == role)
                .map(MigrationMember::json)
        };
        json!({
            "in_progress": self.phase.is_some(),
            "phase": self.phase,
            "moved": self.moved,
            "total": self.total,
            "failed": self.failed,
            "grace_until": self.grace_until,
            "source": member("source"),
            "target": member("target"),
            "next_step": self.next_step,
        })
    }

    fn print(&self, out: &Out) {
        match &self.phase {
            Some(phase) => outln!(
                out,
                "Migration:       IN PROGRESS, phase {phase}: {} of {} TEKs moved{}",
                self.moved,
                self.total
                    .map_or_else(|| "?".to_string(), |t| t.to_string()),
                if self.failed > 0 {
                    format!(" ({} failed in the last pass)", self.failed)
                } else {
                    String::new()
                }
            ),
            None => outln!(
                out,
                "Migration:       configured (migration_source), not started"
            ),
        }
        for m in &self.members {
            m.print(out);
        }
        if let Some(t) = &self.grace_until {
            outln!(out, "  Grace period ends: {t}");
        }
        outln!(out, "  Next: {}", self.next_step);
    }
}

/// What `security status` shows beyond the mode, provider and checklist (each part where it
/// was gathered).
#[derive(Default)]
pub(crate) struct StatusParts<'a> {
    pub(crate) keys: Option<&'a KeyAvailability>,
    pub(crate) health: Option<&'a ProviderHealth>,
    pub(crate) kms: Option<&'a KmsView>,
    pub(crate) azure: Option<&'a AzureView>,
    /// The lost-MEK note: the bundle that holds a missing MEK version, or that none does.
    pub(crate) lost_mek: Option<&'a str>,
    /// The provider migration, when the configuration has `migration_source`.
    pub(crate) migration: Option<&'a MigrationView>,
    /// The memory protection in force in this process
    /// ([`TdeSubsystem::memory_protection`]).
    pub(crate) memory: Option<&'a MemoryProtection>,
}

impl Out {
    /// The JSON form of `security status`.
    pub(crate) fn status_value(
        tde: &TdeSubsystem,
        checklist: &[CheckItem],
        parts: &StatusParts<'_>,
    ) -> serde_json::Value {
        let StatusParts {
            keys,
            health,
            kms,
            azure,
            lost_mek,
            migration,
            memory,
        } = *parts;
        let p = &tde.key_manager().mek_provider;
        json!({
            "migration": migration.map(MigrationView::json),
            "aws_kms": kms.map(KmsView::json),
            "azure_key_vault": azure.map(AzureView::json),
            "provider_health": health.map(|h| json!({
                "healthy": h.healthy,
                "detail": h.detail,
                "latency_ms": h.latency.as_millis(),
            })),
            "key_store": keys.map(|k| k.store.clone()),
            "key_availability": keys.map(|k| json!({
                "all_readable": k.all_readable(),
                "unreadable_tables": k.unreadable_tables.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "mek_versions": k.meks.iter().map(|m| json!({
                    "mek": m.mek.to_string(),
                    "teks": m.teks,
                    "in_provider": m.present,
                    "unwraps": m.unwraps,
                    "error": m.error,
                })).collect::<Vec<_>>(),
            })),
            "security_mode": tde.security_mode().to_string(),
            "mode_source": tde.mode_source().to_string(),
            "provider": p.description(),
            "provider_kind": p.kind().name(),
            "provider_secure": p.is_secure(),
            "security_level": level(p.kind(), p.is_secure()),
            "warnings": tde.warnings(),
            "checklist": checklist,
            "lost_mek": lost_mek,
            "memory_protection": memory.map(|m| MemoryView::new(tde, m).json()),
        })
    }

    pub(crate) fn status(
        &self,
        tde: &TdeSubsystem,
        checklist: &[CheckItem],
        parts: &StatusParts<'_>,
    ) {
        if self.is_json() {
            self.json(Self::status_value(tde, checklist, parts));
            return;
        }
        let StatusParts {
            keys,
            health,
            kms,
            azure,
            lost_mek,
            migration,
            memory,
        } = *parts;
        let p = &tde.key_manager().mek_provider;
        let mode = tde.security_mode().to_string();
        let source = tde.mode_source().to_string();
        outln!(self, "Security mode:   {mode} (from {source})");
        outln!(self, "MEK provider:    {}", p.description());
        if let Some(h) = health {
            if h.healthy {
                outln!(
                    self,
                    "Provider health: healthy ({}, {} ms)",
                    h.detail,
                    h.latency.as_millis()
                );
            } else {
                outln!(self, "Provider health: UNHEALTHY: {}", h.detail);
            }
        }
        if let Some(k) = kms {
            outln!(
                self,
                "AWS region:      {}{}",
                k.region,
                k.endpoint
                    .as_deref()
                    .map(|e| format!(" (endpoint {e})"))
                    .unwrap_or_default()
            );
            match (&k.active_key, k.active_version) {
                (Some(key), Some(v)) => outln!(
                    self,
                    "Active key:      {key} (MEK version {v}; {})",
                    k.key_state.as_deref().unwrap_or("state unknown")
                ),
                _ => outln!(self, "Active key:      none (no active MEK version yet)"),
            }
            if let Some(note) = &k.rotation_note {
                outln!(self, "Key rotation:    {note}");
            }
        }
        if let Some(a) = azure {
            a.print(self);
        }
        if let Some(m) = migration {
            m.print(self);
        }
        outln!(
            self,
            "Security level:  {}{}",
            level(p.kind(), p.is_secure()),
            if p.is_secure() {
                ""
            } else {
                " - NOT for production"
            }
        );
        for w in tde.warnings() {
            outln!(self, "Warning:         {w}");
        }
        if let Some(k) = keys {
            outln!(self, "Key store:       {}", k.store);
            if k.all_readable() {
                outln!(
                    self,
                    "Key availability: every table key unwraps ({} MEK version(s) checked)",
                    k.meks.len()
                );
            } else {
                outln!(
                    self,
                    "Key availability: {} table(s) CANNOT BE READ: an MEK version their keys \
                     depend on is missing or does not unwrap. Restore it from its backup before \
                     anything else; do not create or rotate keys meanwhile",
                    k.unreadable_tables.len()
                );
                for m in k.meks.iter().filter(|m| !m.unwraps) {
                    outln!(
                        self,
                        "  {}: {} table key wrap(s); {}",
                        m.mek,
                        m.teks,
                        m.error.as_deref().unwrap_or("does not unwrap")
                    );
                }
                for t in &k.unreadable_tables {
                    outln!(self, "  unreadable table: {t}");
                }
            }
        }
        if let Some(l) = lost_mek {
            outln!(self, "{l}");
        }
        if let Some(m) = memory {
            MemoryView::new(tde, m).print(self);
        }
        outln!(self, "\nSecurity checklist:");
        let rows: Vec<Vec<String>> = checklist
            .iter()
            .map(|c| {
                vec![
                    format!("[{}]", c.status),
                    c.item.to_string(),
                    c.reason.clone(),
                ]
            })
            .collect();
        self.write_stdout(&table(&rows));
    }
}
