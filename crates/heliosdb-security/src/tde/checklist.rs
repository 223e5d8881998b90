//! The Security Checklist, evaluated against a running subsystem: its ten items are the
//! in-memory provider disabled in production, a production MEK provider, the passphrase kept
//! out of code and configuration, file permissions (600 for MEK files, 700 for directories),
//! MEK backup, a rotation schedule, audit logging, access controls, incident response and
//! regular audits.

use super::TdeSubsystem;
use heliosdb_tde_core::{ProviderKind, SecureFileConfig, TdeError, Timestamp};
use heliosdb_tde_manager::backup;
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The outcome of one checklist item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CheckStatus {
    /// The item holds.
    Pass,
    /// The item does not hold.
    Fail,
    /// The item does not apply to this setup, or cannot be verified by software.
    NotApplicable,
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "FAIL",
            CheckStatus::NotApplicable => "n/a",
        })
    }
}

/// One checklist item with its verdict and the reason for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckItem {
    /// The item's fixed wording, for example `MEK rotation schedule defined`.
    pub item: &'static str,
    /// The verdict.
    pub status: CheckStatus,
    /// Why.
    pub reason: String,
}

fn item(item: &'static str, status: CheckStatus, reason: impl Into<String>) -> CheckItem {
    CheckItem {
        item,
        status,
        reason: reason.into(),
    }
}

fn mode_bits(p: &Path) -> Option<u32> {
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Checks `dir` (0700) and every `*.mek` file in it (0600).
fn permission_problems(dir: &Path, files_ext: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    match mode_bits(dir) {
        Some(m) if m & 0o077 != 0 => problems.push(format!(
            "{} is {m:03o} (chmod 700 {})",
            dir.display(),
            dir.display()
        )),
        None => problems.push(format!("{} is missing", dir.display())),
        _ => {}
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let matches = match files_ext {
                Some(ext) => p.extension().is_some_and(|x| x == ext),
                None => p.is_file(),
            };
            if matches
                && let Some(m) = mode_bits(&p)
                && m & 0o077 != 0
            {
                problems.push(format!(
                    "{} is {m:03o} (chmod 600 {})",
                    p.display(),
                    p.display()
                ));
            }
        }
    }
    problems
}

fn passphrase_item(file: &SecureFileConfig) -> CheckItem {
    const ITEM: &str = "MEK passphrase stored securely (not in code or config files)";
    match &file.passphrase_file {
        Some(p) => match mode_bits(p) {
            Some(m) if m & 0o077 == 0 => {
                let inside = p.starts_with(&file.storage_path);
                if inside {
                    item(
                        ITEM,
                        CheckStatus::Fail,
                        format!(
                            "the passphrase file {} sits next to the MEK files it protects; keep \
                             it on another volume or in a secret manager",
                            p.display()
                        ),
                    )
                } else {
                    item(
                        ITEM,
                        CheckStatus::Pass,
                        format!("read from {} (mode {m:03o})", p.display()),
                    )
                }
            }
            Some(m) => item(
                ITEM,
                CheckStatus::Fail,
                format!(
                    "{} has mode {m:03o}; chmod 600 {}",
                    p.display(),
                    p.display()
                ),
            ),
            None => item(
                ITEM,
                CheckStatus::Fail,
                format!("{} is missing", p.display()),
            ),
        },
        None => item(
            ITEM,
            CheckStatus::Pass,
            format!(
                "read from the environment variable {} at start, never written to disk by \
                 HeliosDB",
                file.passphrase_var()
            ),
        ),
    }
}

const DAY_MS: u64 = 86_400_000;

/// The UTC date of `t`, `YYYY-MM-DD`.
fn utc_date(t: Timestamp) -> String {
    let mut s = t.to_string();
    s.truncate(10);
    s
}

/// "The MEK rotation schedule defined" item: the active MEK version's key material must be at
/// most `mek_rotation_days` old.
fn rotation_item(
    tde: &TdeSubsystem,
    mek_info: &super::Result<heliosdb_tde_core::MekInfo>,
    now: Timestamp,
) -> CheckItem {
    const ITEM: &str = "MEK rotation schedule defined";
    let info = match mek_info {
        Ok(info) => info,
        Err(e) => return item(ITEM, CheckStatus::Fail, e.to_string()),
    };
    if let Err(e) = tde.config().check_schedules() {
        return item(ITEM, CheckStatus::Fail, e.to_string());
    }
    let limit_days = tde.config().mek_rotation_days;
    // The later of the version's creation and the service's last rotation of its key material
    // (KMS automatic rotation makes new material without a new version).
    let active = info
        .versions
        .iter()
        .rev()
        .find(|v| v.state.can_encrypt())
        .map(|v| v.material_age_reference());
    let Some((since, by_service)) = active else {
        return item(ITEM, CheckStatus::Fail, "no active MEK version");
    };
    let age_days = now.as_millis().saturating_sub(since.as_millis()) / DAY_MS;
    let due = Timestamp(
        since
            .as_millis()
            .saturating_add(limit_days.saturating_mul(DAY_MS)),
    );
    let what = if by_service {
        "the active MEK version's key material was last rotated by the provider's service"
    } else {
        "the active MEK version was created"
    };
    if now > due {
        item(
            ITEM,
            CheckStatus::Fail,
            format!(
                "{what} {age_days} days ago, more than mek_rotation_days ({limit_days}); rotate \
                 it with `heliosdb-cli security mek rotate`"
            ),
        )
    } else {
        item(
            ITEM,
            CheckStatus::Pass,
            format!(
                "{what} {age_days} days ago; the next rotation is due on {} (UTC), \
                 mek_rotation_days = {limit_days}",
                utc_date(due)
            ),
        )
    }
}

/// The device of `p`, or of its nearest existing ancestor when it does not exist yet.
fn device_of(p: &Path) -> std::io::Result<u64> {
    let mut at = p.to_path_buf();
    loop {
        match std::fs::metadata(&at) {
            Ok(m) => return Ok(m.dev()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent.to_path_buf(),
                // A relative path: its base is the working directory.
                Some(_) if at != Path::new(".") => at = PathBuf::from("."),
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// An age in whole days, or hours under a day.
fn age_text(ms: u64) -> String {
    let days = ms / DAY_MS;
    match (days, ms / 3_600_000) {
        (1, _) => "1 day".to_string(),
        (0, 0) => "less than an hour".to_string(),
        (0, 1) => "1 hour".to_string(),
        (0, hours) => format!("{hours} hours"),
        (days, _) => format!("{days} days"),
    }
}

/// The newest bundle in `backup_dir`, judged against the key store and `now`.
async fn bundle_verdict(tde: &TdeSubsystem, now: Timestamp) -> (CheckStatus, String) {
    let config = tde.config();
    let Some(dir) = config.backup_dir.clone() else {
        return (
            CheckStatus::Fail,
            "no backup_dir is configured; set backup_dir and take backups with \
             `heliosdb-cli security backup --out-dir DIR`"
                .to_string(),
        );
    };
    let take = format!(
        "take one with `heliosdb-cli security backup --out-dir {}`",
        dir.display()
    );
    let take_new = format!(
        "take a new one with `heliosdb-cli security backup --out-dir {}`",
        dir.display()
    );
    match (device_of(&dir), device_of(&config.key_storage_path)) {
        (Ok(a), Ok(b)) if a == b => {
            return (
                CheckStatus::Fail,
                format!(
                    "backup_dir {} is on the same filesystem as key_storage_path {}: a disk \
                     failure would take both the keys and their backups; put backup_dir on \
                     another disk",
                    dir.display(),
                    config.key_storage_path.display()
                ),
            );
        }
        (Err(e), _) => {
            return (
                CheckStatus::Fail,
                format!("cannot read backup_dir {}: {e}", dir.display()),
            );
        }
        (_, Err(e)) => {
            return (
                CheckStatus::Fail,
                format!(
                    "cannot read key_storage_path {}: {e}",
                    config.key_storage_path.display()
                ),
            );
        }
        _ => {}
    }
    if !dir.is_dir() {
        return (
            CheckStatus::Fail,
            format!(
                "no backup: backup_dir {} does not exist; create it and {take}",
                dir.display()
            ),
        );
    }
    let scan_dir = dir.clone();
    let found = tokio::task::spawn_blocking(move || {
        let newest = backup::newest_bundle(&scan_dir)?;
        Ok::<_, TdeError>(newest.map(|(path, _)| {
            let verified = backup::verify_bundle_structure(&path);
            (path, verified)
        }))
    })
    .await;
    let (path, manifest) = match found {
        Ok(Ok(Some((path, Ok(manifest))))) => (path, manifest),
        Ok(Ok(Some((path, Err(e))))) => {
            return (
                CheckStatus::Fail,
                format!(
                    "the newest backup {} is damaged: {e}; {take_new}",
                    path.display()
                ),
            );
        }
        Ok(Ok(None)) => {
            return (
                CheckStatus::Fail,
                format!("no backup bundle (*.hbk) in {}; {take}", dir.display()),
            );
        }
        Ok(Err(e)) => {
            return (
                CheckStatus::Fail,
                format!("cannot read the backups in {}: {e}", dir.display()),
            );
        }
        Err(e) => {
            return (
                CheckStatus::Fail,
                format!("cannot read the backups in {}: {e}", dir.display()),
            );
        }
    };
    let age = now.as_millis().saturating_sub(manifest.created_at_ms);
    let max_days = config.backup_max_age_days;
    if age > max_days.saturating_mul(DAY_MS) {
        return (
            CheckStatus::Fail,
            format!(
                "the newest backup {} is {} old, more than backup_max_age_days ({max_days}); \
                 {take_new}",
                path.display(),
                age_text(age)
            ),
        );
    }
    let identity = match tde.key_manager().store().identity().await {
        Ok(identity) => identity,
        Err(e) => {
            return (
                CheckStatus::Fail,
                format!("cannot read the key store's identity: {e}"),
            );
        }
    };
    if !manifest.store.id.eq_ignore_ascii_case(&identity.id_hex()) {
        return (
            CheckStatus::Fail,
            format!(
                "the newest backup {} is of another key store (id {}; this store is {}); \
                 {take_new}",
                path.display(),
                manifest.store.id,
                identity.id_hex()
            ),
        );
    }
    if manifest.store.generation < identity.generation {
        return (
            CheckStatus::Fail,
            format!(
                "a table key was created or rotated after the newest backup {} (it holds key \
                 generation {}, the store is at {}); {take_new}",
                path.display(),
                manifest.store.generation,
                identity.generation
            ),
        );
    }
    (
        CheckStatus::Pass,
        format!(
            "the newest backup {} is {} old (taken {}; backup_max_age_days = {max_days}) and \
             has every key change of the store",
            path.display(),
            age_text(age),
            manifest.created_at
        ),
    )
}

/// The "MEK backup procedure established" item: a current, intact bundle of this key store in
/// `backup_dir` on another filesystem, and, for a KMS key, the service's protection against
/// permanent deletion (the bundle holds only a reference to such a key).
async fn backup_item(
    tde: &TdeSubsystem,
    now: Timestamp,
    protection: Option<heliosdb_tde_core::DeletionProtection>,
) -> CheckItem {
    const ITEM: &str = "MEK backup procedure established";
    let provider = &tde.key_manager().mek_provider;
    if provider.kind() == ProviderKind::InMemory {
        return item(
            ITEM,
            CheckStatus::NotApplicable,
            "in-memory MEKs cannot be backed up: they are lost at exit",
        );
    }
    let (status, reason) = bundle_verdict(tde, now).await;
    match protection {
        // A KMS key that can be deleted for good is a backup gap no bundle closes: the bundle
        // holds only a reference to it.
        Some(p) if !p.protected => {
            let mut text = format!(
                "the MEK's key in {} can be deleted for good: {}",
                provider.description(),
                p.detail
            );
            if status == CheckStatus::Fail {
                text.push_str("; also ");
                text.push_str(&reason);
            }
            item(ITEM, CheckStatus::Fail, text)
        }
        Some(p) if status == CheckStatus::Pass => item(
            ITEM,
            CheckStatus::Pass,
            format!(
                "{reason}; the service protects the MEK's key against permanent deletion: {}",
                p.detail
            ),
        ),
        None if status == CheckStatus::Pass => {
            let tail = if provider.kind() == ProviderKind::SecureFile {
                "its MEK files are encrypted under the passphrase, which must be backed up \
                 separately"
                    .to_string()
            } else {
                format!(
                    "it names the MEK versions in {} but holds none of their key material: \
                     back them up with the provider's own procedure",
                    provider.description()
                )
            };
            item(ITEM, CheckStatus::Pass, format!("{reason}; {tail}"))
        }
        _ => item(ITEM, status, reason),
    }
}

/// Evaluates every item of the Security Checklist at the current time; see
/// [`security_checklist_at`].
pub async fn security_checklist(tde: &TdeSubsystem) -> Vec<CheckItem> {
    security_checklist_at(tde, Timestamp::now()).await
}

/// Evaluates every item of the Security Checklist as of `now`, which the ages of the active MEK
/// version and of the newest backup are measured against.
pub async fn security_checklist_at(tde: &TdeSubsystem, now: Timestamp) -> Vec<CheckItem> {
    let km = tde.key_manager();
    let provider = &km.mek_provider;
    let mut out = Vec::new();

    out.push(if provider.kind() == ProviderKind::InMemory {
        item(
            "InMemoryMekProvider disabled in production",
            CheckStatus::Fail,
            format!(
                "the in-memory provider is in use ({} mode; production mode refuses it); \
                 configure a secure provider",
                tde.security_mode()
            ),
        )
    } else {
        item(
            "InMemoryMekProvider disabled in production",
            CheckStatus::Pass,
            format!("provider is {}", provider.description()),
        )
    });

    out.push(if provider.is_secure() {
        item(
            "Production MEK provider configured (HSM, Cloud KMS, or Secure File)",
            CheckStatus::Pass,
            provider.description(),
        )
    } else {
        item(
            "Production MEK provider configured (HSM, Cloud KMS, or Secure File)",
            CheckStatus::Fail,
            format!("{} is not a production provider", provider.description()),
        )
    });

    let file = tde.config().secure_file_config.as_ref();
    out.push(match (file, tde.hsm_pin_source()) {
        (Some(f), _) => passphrase_item(f),
        (None, Some("configuration file")) => item(
            "MEK passphrase stored securely (not in code or config files)",
            if tde.security_mode().is_production() {
                CheckStatus::Fail
            } else {
                CheckStatus::NotApplicable
            },
            "the HSM PIN is written in the configuration file; set HELIOSDB_HSM_PIN or \
             hsm_config.pin_file (mode 0600) instead (development mode allows it)",
        ),
        (None, Some(source)) => item(
            "MEK passphrase stored securely (not in code or config files)",
            CheckStatus::Pass,
            format!("the HSM PIN is read from the {source}"),
        ),
        (None, None) if provider.kind() == ProviderKind::AwsKms => item(
            "MEK passphrase stored securely (not in code or config files)",
            CheckStatus::Pass,
            match &tde.config().kms_config {
                Some(heliosdb_tde_core::KmsConfig::Aws(a)) if a.profile.is_some() => format!(
                    "no passphrase or credentials are stored by HeliosDB: AWS credentials come \
                     from the profile {:?}",
                    a.profile.as_deref().unwrap_or_default()
                ),
                _ => "no passphrase or credentials are stored by HeliosDB: AWS credentials come \
                      from the SDK's default chain (environment, profile, SSO, web identity, \
                      ECS, instance metadata)"
                    .to_string(),
            },
        ),
        (None, None) => item(
            "MEK passphrase stored securely (not in code or config files)",
            CheckStatus::NotApplicable,
            "no passphrase: the provider is not the secure file provider",
        ),
    });

    let mut perm = permission_problems(&tde.config().key_storage_path, None);
    if let Some(f) = file {
        perm.extend(permission_problems(&f.storage_path, Some("mek")));
    }
    out.push(if perm.is_empty() {
        item(
            "File permissions set correctly (600 for MEK files, 700 for directories)",
            CheckStatus::Pass,
            "key directories are 700 and key files 600",
        )
    } else {
        item(
            "File permissions set correctly (600 for MEK files, 700 for directories)",
            CheckStatus::Fail,
            perm.join("; "),
        )
    });

    let mek_info = km.mek_info().await;
    let protection = mek_info
        .as_ref()
        .ok()
        .and_then(|i| i.deletion_protection.clone());
    out.push(backup_item(tde, now, protection).await);

    out.push(rotation_item(tde, &mek_info, now));

    // Bounded: only the audit log's current file is read.
    out.push(match super::audit::checklist_item(tde).await {
        Ok(detail) => item("Audit logging enabled", CheckStatus::Pass, detail),
        Err(reason) => item("Audit logging enabled", CheckStatus::Fail, reason),
    });

    for name in [
        "Access controls configured (only authorized personnel)",
        "Incident response plan documented",
        "Regular security audits scheduled",
    ] {
        out.push(item(
            name,
            CheckStatus::NotApplicable,
            "an organisational control; it cannot be verified by software",
        ));
    }
    out
}
