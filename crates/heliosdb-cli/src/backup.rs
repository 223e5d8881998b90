//! `security backup`, `security backup verify`, `security restore`, and the backup part of
//! the lost-MEK report of `security status`.

use crate::output::Out;
use crate::{BackupArgs, BackupCommand};
use heliosdb_security::tde::{
    self, BackupTarget, KeyAvailability, RestoreOptions, TdeConfig, TdeError,
};
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a verification that found problems.
const EXIT_PROBLEMS: u8 = 1;

pub(crate) async fn run(
    config: TdeConfig,
    args: BackupArgs,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    if let Some(BackupCommand::Verify {
        file,
        with_provider,
    }) = args.command
    {
        return verify(&config, &file, with_provider, out).await;
    }
    let target = match (args.out, args.out_dir) {
        (Some(f), _) => BackupTarget::File(f),
        (None, Some(d)) => BackupTarget::Dir(d),
        (None, None) => {
            return Err(TdeError::config(
                "out",
                "say where to write the bundle: --out FILE or --out-dir DIR",
            ));
        }
    };
    let r = tde::backup_offline(config, target, args.force).await?;
    let m = &r.manifest;
    out.message(&format!(
        "wrote {} ({} bytes, mode 0600): {} keys ({} tables), store {} at generation {}, \
         provider {} ({} MEK versions{}). Keep it apart from the database's data and from the \
         passphrase; check it with `heliosdb-cli security backup verify {} --with-provider`",
        r.path.display(),
        r.bytes,
        m.counts.teks,
        m.counts.tables,
        m.store.id,
        m.store.generation,
        m.provider.kind,
        m.mek_versions.len(),
        if m.counts.material > 0 {
            format!(
                ", {} MEK files encrypted under the passphrase",
                m.counts.material
            )
        } else {
            ", references only".to_string()
        },
        r.path.display()
    ));
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    config: &TdeConfig,
    file: &Path,
    with_provider: bool,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    if !with_provider {
        let c = match tde::verify_bundle(file).await {
            Ok(c) => c,
            Err(e) => {
                let event = tde::AuditEvent::failure(
                    tde::AuditAction::BackupVerified,
                    None,
                    &e,
                    format!("{} (structure)", file.display()),
                );
                tde::record_audit_event(config, event).await;
                return Err(e);
            }
        };
        let event = if c.problems.is_empty() {
            tde::AuditEvent::success(
                tde::AuditAction::BackupVerified,
                None,
                format!("{} (structure)", file.display()),
            )
        } else {
            let e = TdeError::corrupt(
                "backup bundle",
                file.display().to_string(),
                format!("{} problems", c.problems.len()),
            );
            tde::AuditEvent::failure(
                tde::AuditAction::BackupVerified,
                None,
                &e,
                format!("{} (structure)", file.display()),
            )
        };
        tde::record_audit_event(config, event).await;
        let m = &c.manifest;
        for p in &c.problems {
            out.message(&format!("problem: {p}"));
        }
        out.message(&format!(
            "{} {}: structure and checksums intact; {} keys ({} tables), store {} at \
             generation {}, taken {} by HeliosDB {}, provider {}; MEK versions: {}",
            if c.problems.is_empty() {
                "verified"
            } else {
                "NOT verified"
            },
            file.display(),
            m.counts.teks,
            m.counts.tables,
            m.store.id,
            m.store.generation,
            m.created_at,
            m.heliosdb_version,
            m.provider.kind,
            m.mek_versions
                .iter()
                .map(|v| format!("{} ({} keys)", v.mek, v.teks))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(if c.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_PROBLEMS)
        });
    }
    let c = tde::verify_bundle_with_provider(config, file).await?;
    for p in &c.bundle.problems {
        out.message(&format!("problem: {p}"));
    }
    for (mek, why) in &c.missing_meks {
        out.message(&format!("problem: MEK version {mek}: {why}"));
    }
    if let Some(k) = &c.key_check {
        out.message(&format!(
            "problem: the key check value does not unwrap: {k}"
        ));
    }
    for (id, mek, why) in &c.unwraps.failed {
        out.message(&format!(
            "problem: table key {id} (under {mek}) does not unwrap: {why}"
        ));
    }
    if c.ok() {
        out.message(&format!(
            "verified {} with the provider: all {} table keys unwrap; every MEK version is \
             present",
            file.display(),
            c.unwraps.total
        ));
        Ok(ExitCode::SUCCESS)
    } else {
        let tables = c.unwraps.failed_tables();
        out.message(&format!(
            "NOT verified {}: {} of {} table keys do not unwrap{}",
            file.display(),
            c.unwraps.failed.len(),
            c.unwraps.total,
            if tables.is_empty() {
                String::new()
            } else {
                format!("; tables affected: {}", tables.join(", "))
            }
        ));
        Ok(ExitCode::from(EXIT_PROBLEMS))
    }
}

pub(crate) async fn restore(
    config: TdeConfig,
    file: &Path,
    force: bool,
    no_rotate: bool,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    let r = tde::restore(
        &config,
        file,
        RestoreOptions::new()
            .with_force(force)
            .with_no_rotate(no_rotate),
    )
    .await?;
    for w in &r.warnings {
        out.message(&format!("warning: {w}"));
    }
    for d in &r.moved_aside {
        out.message(&format!("moved aside (kept): {}", d.display()));
    }
    out.message(&format!(
        "restored {}{}: {} table keys of store {} into {}; MEK files put in place: {}; tables \
         given a new active key: {}",
        file.display(),
        if r.resumed {
            " (finished an interrupted restore)"
        } else {
            ""
        },
        r.teks,
        r.manifest.store.id,
        config.key_storage_path.display(),
        if r.mek_files_added.is_empty() {
            "none".to_string()
        } else {
            r.mek_files_added.join(", ")
        },
        r.rotated.len()
    ));
    Ok(ExitCode::SUCCESS)
}

/// For `security status` when tables are unreadable: the newest bundle in `backup_dir` that
/// holds the missing MEK versions and the command to restore it, or a plain statement that the
/// data of those tables is lost.
pub(crate) fn lost_mek_report(config: &TdeConfig, keys: &KeyAvailability) -> Option<String> {
    let missing: Vec<_> = keys
        .meks
        .iter()
        .filter(|m| !m.unwraps)
        .map(|m| m.mek.clone())
        .collect();
    if missing.is_empty() {
        return None;
    }
    let names = missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let found = config
        .backup_dir
        .as_deref()
        .and_then(|d| tde::bundle_holding(d, &missing));
    Some(match found {
        Some((path, m)) => format!(
            "lost MEK: {names}. The newest backup holding it is {} (taken {}); stop HeliosDB and \
             run `heliosdb-cli security restore {} --force` (the current key store is moved \
             aside and kept)",
            path.display(),
            m.created_at,
            path.display()
        ),
        None => format!(
            "lost MEK: {names}. No backup bundle in {} holds it: unless a copy of that MEK exists \
             elsewhere, the data of the tables listed as unreadable is lost",
            config
                .backup_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "backup_dir (not configured)".into())
        ),
    })
}
