//! `heliosdb-cli security mek migrate [--to TARGET.toml] [--verify | --finish | --rollback]` and
//! `security mek migration-status`: the online migration of the MEK from one provider to
//! another.
//!
//! The configuration the CLI runs with (`--config`) describes the SOURCE, the provider the TEKs
//! are wrapped under now; `--to` names the TARGET's configuration file. The migration runs with
//! the target's configuration whose `migration_source` is filled from the current configuration
//! (its `default_mek_id` and provider section). A configuration that already has
//! `migration_source` is the migration's configuration itself: `--to` is then optional, and
//! must describe the same target when it is given.

use crate::output::{MigrationMember, MigrationView, Out, outln};
use heliosdb_security::tde::{
    KeyAvailability, MekProvider, MigrationSourceConfig, RotationPhase, RotationProgress,
    RotationState, TdeConfig, TdeError, TdeSubsystem,
};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code when a pass finished but some keys failed, or `--verify` found TEKs still under
/// the source only: run `mek migrate` again (the code of `mek rotate` and `mek verify`).
const EXIT_PARTIAL: u8 = 4;

/// `security mek migrate`.
#[derive(clap::Args, Debug)]
pub(crate) struct MigrateArgs {
    /// The TARGET provider's configuration file (TdeConfig TOML); the current configuration
    /// is the source. Optional when the current configuration already has `migration_source`.
    #[arg(long, value_name = "TARGET.toml")]
    to: Option<PathBuf>,
    /// Count the TEKs that only the source can unwrap and trial-unwrap a sample through the
    /// target; a verified migration can be finished.
    #[arg(long, conflicts_with_all = ["finish", "rollback"])]
    verify: bool,
    /// After the grace period (`rotation_grace_days`) of a verified migration: drop the source
    /// wraps. Then remove `migration_source` from the configuration.
    #[arg(long, conflicts_with = "rollback")]
    finish: bool,
    /// Return every TEK to the source's MEK (possible until `--finish`). Then put the source
    /// configuration back.
    #[arg(long)]
    rollback: bool,
}

/// `security mek migration-status`.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// The TARGET provider's configuration file, as given to `mek migrate --to`. Without it
    /// (and without `migration_source` in the configuration) the journal is read with the
    /// current configuration alone.
    #[arg(long, value_name = "TARGET.toml")]
    to: Option<PathBuf>,
}

/// Environment overrides that also apply to the target's file: the general settings. The
/// provider sections and `default_mek_id` describe the target itself and are taken from the
/// file as written (a variable meant for the source, such as `HELIOSDB_TDE_MEK_STORAGE_PATH`,
/// must not change the target).
const GENERAL_ENV: &[&str] = &[
    "HELIOSDB_TDE_ENABLED",
    "HELIOSDB_TDE_ALGORITHM",
    "HELIOSDB_TDE_KEY_STORAGE_PATH",
    "HELIOSDB_TDE_CACHE_LIMIT",
    "HELIOSDB_TDE_ROTATION_GRACE_DAYS",
    "HELIOSDB_TDE_PROVIDER_STARTUP_WAIT_SECS",
    "HELIOSDB_TDE_AUDIT_LOG_PATH",
    "HELIOSDB_TDE_AUDIT_MAX_FILE_BYTES",
    "HELIOSDB_TDE_AUDIT_FSYNC",
    "HELIOSDB_TDE_BACKUP_DIR",
    "HELIOSDB_TDE_BACKUP_MAX_AGE_DAYS",
    "HELIOSDB_TDE_MEK_ROTATION_DAYS",
];

fn load_target(path: &Path) -> Result<TdeConfig, TdeError> {
    let mut c = TdeConfig::from_toml_file(path)?;
    c.apply_env_with(|k| {
        GENERAL_ENV
            .contains(&k)
            .then(|| std::env::var(k).ok())
            .flatten()
    })?;
    Ok(c)
}

/// The provider a configuration's sections describe, for messages.
fn provider_name(
    secure_file: Option<&heliosdb_security::tde::SecureFileConfig>,
    kms: Option<&heliosdb_security::tde::KmsConfig>,
    hsm: Option<&heliosdb_security::tde::HsmConfig>,
) -> String {
    use heliosdb_security::tde::KmsConfig;
    if let Some(f) = secure_file {
        return format!("secure file {}", f.storage_path.display());
    }
    if let Some(h) = hsm {
        return match &h.token_label {
            Some(l) => format!("PKCS#11 token {l:?}"),
            None => format!("PKCS#11 slot {}", h.slot_id),
        };
    }
    match kms {
        Some(KmsConfig::Aws(a)) => format!("AWS KMS key {} ({})", a.key_id, a.region),
        Some(KmsConfig::Azure(a)) => format!("Azure Key Vault {} key {}", a.vault_url, a.key_name),
        Some(KmsConfig::Vault(v)) => format!("Vault Transit at {}", v.address),
        Some(_) => "a KMS".into(),
        None => "the in-memory provider".into(),
    }
}

fn main_provider(c: &TdeConfig) -> String {
    provider_name(
        c.secure_file_config.as_ref(),
        c.kms_config.as_ref(),
        c.hsm_config.as_ref(),
    )
}

fn source_provider(s: &MigrationSourceConfig) -> String {
    provider_name(
        s.secure_file_config.as_ref(),
        s.kms_config.as_ref(),
        s.hsm_config.as_ref(),
    )
}

/// The `migration_source` that describes `current` (its MEK id and provider section).
fn source_of(current: &TdeConfig) -> MigrationSourceConfig {
    MigrationSourceConfig::from_config(current)
}

fn same_source(a: &MigrationSourceConfig, b: &MigrationSourceConfig) -> bool {
    a.default_mek_id == b.default_mek_id
        && a.secure_file_config == b.secure_file_config
        && a.kms_config == b.kms_config
        && a.hsm_config == b.hsm_config
}

/// Whether `a` and `b` name the same (main) provider and MEK.
fn same_target(a: &TdeConfig, b: &TdeConfig) -> bool {
    a.default_mek_id == b.default_mek_id
        && a.secure_file_config == b.secure_file_config
        && a.kms_config == b.kms_config
        && a.hsm_config == b.hsm_config
}

fn same_store(current: &TdeConfig, target: &TdeConfig, to: &Path) -> Result<(), TdeError> {
    if current.key_storage_path != target.key_storage_path {
        return Err(TdeError::config(
            "key_storage_path",
            format!(
                "{} names the key store {} but the current configuration uses {}; a migration \
                 moves the TEKs of one key store, so give the target configuration the same \
                 key_storage_path",
                to.display(),
                target.key_storage_path.display(),
                current.key_storage_path.display()
            ),
        ));
    }
    Ok(())
}

/// The configuration a migration runs with: see the module documentation.
pub(crate) fn migration_config(
    current: TdeConfig,
    to: Option<&Path>,
) -> Result<TdeConfig, TdeError> {
    match (current.migration_source.clone(), to) {
        (Some(_), None) => Ok(current),
        (None, None) => Err(TdeError::config(
            "migration_source",
            "the configuration describes no migration: name the target's configuration with \
             `--to TARGET.toml` (the current configuration is the source)",
        )),
        (None, Some(path)) => {
            let mut target = load_target(path)?;
            same_store(&current, &target, path)?;
            let source = source_of(&current);
            if let Some(given) = &target.migration_source
                && !same_source(given, &source)
            {
                return Err(TdeError::config(
                    "migration_source",
                    format!(
                        "{} already has a migration_source (MEK {} in {}) that is not the \
                         current configuration (MEK {} in {}); remove migration_source from \
                         the target file, or run with the configuration it names",
                        path.display(),
                        given.default_mek_id,
                        source_provider(given),
                        source.default_mek_id,
                        source_provider(&source)
                    ),
                ));
            }
            if same_target(&current, &target) {
                return Err(TdeError::config(
                    "migration_source",
                    format!(
                        "{} describes the same provider ({}) and the same MEK ({}) as the \
                         current configuration, so there is nothing to migrate; --to takes the \
                         configuration of the NEW provider",
                        path.display(),
                        main_provider(&target),
                        target.default_mek_id
                    ),
                ));
            }
            target.migration_source = Some(source);
            Ok(target)
        }
        (Some(source), Some(path)) => {
            let target = load_target(path)?;
            same_store(&current, &target, path)?;
            let agrees = same_target(&current, &target)
                && target
                    .migration_source
                    .as_ref()
                    .is_none_or(|s| same_source(s, &source));
            if !agrees {
                return Err(TdeError::config(
                    "migration_source",
                    format!(
                        "the configuration already describes a migration from MEK {} in {} to \
                         MEK {} in {}, but {} names MEK {} in {}; run without --to to go on \
                         with the configured migration, or roll it back (`heliosdb-cli \
                         security mek migrate --rollback`) before starting another",
                        source.default_mek_id,
                        source_provider(&source),
                        current.default_mek_id,
                        main_provider(&current),
                        path.display(),
                        target.default_mek_id,
                        main_provider(&target)
                    ),
                ));
            }
            Ok(current)
        }
    }
}

fn report<'a>(
    pb: &'a ProgressBar,
    msg: &'static str,
) -> impl Fn(&RotationProgress) + Send + Sync + 'a {
    crate::rotate::report_as(pb, msg, "moving (some failed)")
}

/// What the operator does next in phase `st.phase`.
pub(crate) fn next_step(st: &RotationState) -> String {
    match st.phase {
        RotationPhase::Preparing | RotationPhase::NewMekReady | RotationPhase::Rewrapping => {
            "run `heliosdb-cli security mek migrate` to go on moving the TEKs (or `--rollback` \
             to return to the source)"
                .into()
        }
        RotationPhase::DualActive => {
            "run `heliosdb-cli security mek migrate --verify` to check that every TEK unwraps \
             through the target"
                .into()
        }
        RotationPhase::Verified => match st.grace_until {
            Some(t) => format!(
                "after the grace period (until {t}) run `heliosdb-cli security mek migrate \
                 --finish`; until then `--rollback` returns to the source"
            ),
            None => "run `heliosdb-cli security mek migrate --finish`".into(),
        },
        RotationPhase::RollingBack => {
            "run `heliosdb-cli security mek migrate --rollback` again to finish the rollback".into()
        }
        RotationPhase::RolledBack => {
            "put the source configuration back (the configuration without migration_source) \
             and restart"
                .into()
        }
        RotationPhase::Migrated => {
            "remove migration_source from the configuration (keep the target's sections) and \
             restart"
                .into()
        }
        _ => "see `heliosdb-cli security mek migration-status`".into(),
    }
}

/// `security mek migrate ...` with the current configuration `current`.
pub(crate) async fn run(
    current: TdeConfig,
    args: MigrateArgs,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    let config = migration_config(current, args.to.as_deref())?;
    let continues = args.verify || args.finish || args.rollback;
    // Without a migration to continue, refuse before any start: a start with a migration
    // source would create the target's MEK. (A store the read-only open cannot read, after a
    // crash for example, is left to the writable start, which repairs it, and the check below.)
    let none_recorded = matches!(
        heliosdb_security::tde::recorded_migration(&config).await,
        Ok(None)
    );
    let tde = if continues && none_recorded {
        None
    } else {
        Some(TdeSubsystem::new(config.clone()).await?)
    };
    let in_progress = match &tde {
        Some(tde) => tde.key_manager().mek_migration_status().await?.is_some(),
        None => false,
    };
    let tde = match tde {
        Some(tde) if in_progress || !continues => tde,
        _ => {
            return Err(no_migration(&config, &args));
        }
    };
    if args.verify {
        verify(&tde, out).await
    } else if args.finish {
        finish(&tde, out).await
    } else if args.rollback {
        rollback(&tde, out).await
    } else {
        migrate(&tde, out).await
    }
}

/// The refusal of `--verify`, `--finish` or `--rollback` with no migration in progress.
fn no_migration(config: &TdeConfig, args: &MigrateArgs) -> TdeError {
    TdeError::RotationPhase {
        mek: format!("mek:{}", source_id(config)),
        phase: "none".into(),
        operation: if args.verify {
            "verify a provider migration".into()
        } else if args.finish {
            "finish a provider migration".into()
        } else {
            "roll back a provider migration".into()
        },
        hint: "no provider migration is in progress; start one with `heliosdb-cli \
                   security mek migrate --to TARGET.toml`"
            .into(),
    }
}

fn source_id(config: &TdeConfig) -> String {
    config
        .migration_source
        .as_ref()
        .map(|s| s.default_mek_id.clone())
        .unwrap_or_else(|| config.default_mek_id.clone())
}

async fn migrate(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let km = tde.key_manager();
    let pb = crate::rotate::bar(out);
    let cb = report(&pb, "moving");
    let r = km.migrate_mek(Some(&cb)).await;
    pb.finish_and_clear();
    let r = r?;
    let st = km.mek_migration_status().await?;
    let next = st.as_ref().map(next_step);
    if out.is_json() {
        out.json_value(serde_json::json!({
            "source": r.source.to_string(),
            "target": r.target.to_string(),
            "source_provider": r.source_provider,
            "target_provider": r.target_provider,
            "started": r.started,
            "keys_moved": r.keys_moved,
            "failed_keys": r.failed_keys,
            "failed_total": r.failed_total,
            "phase": r.phase.to_string(),
            "grace_until": r.grace_until.map(|t| t.to_string()),
            "next_step": next,
        }));
    } else {
        outln!(
            out,
            "MEK migration {}:",
            if r.failed_total > 0 {
                "pass finished with failures"
            } else {
                "pass complete"
            }
        );
        outln!(out, "  Source: {} ({})", r.source, r.source_provider);
        outln!(out, "  Target: {} ({})", r.target, r.target_provider);
        outln!(out, "  Keys moved: {}", r.keys_moved);
        outln!(out, "  Phase: {}", r.phase);
        if let Some(t) = r.grace_until {
            outln!(out, "  Grace period ends: {t}");
        }
        if !r.failed_keys.is_empty() {
            out.warn(format_args!(
                "WARNING: {} keys failed to move:",
                r.failed_total
            ));
            for (k, e) in &r.failed_keys {
                out.warn(format_args!("  - {k}: {e}"));
            }
            out.warn(format_args!(
                "Run `heliosdb-cli security mek migrate` again to retry them."
            ));
        } else if let Some(n) = &next {
            outln!(out, "Next: {n}");
        }
    }
    Ok(if r.failed_total > 0 {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

async fn verify(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let v = tde.key_manager().verify_mek_migration().await?;
    let next = if v.stranded == 0 {
        next_step(&v.state)
    } else {
        "run `heliosdb-cli security mek migrate` to move them, then verify again".into()
    };
    if out.is_json() {
        out.json_value(serde_json::json!({
            "stranded": v.stranded,
            "examples": v.examples.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "phase": v.state.phase.to_string(),
            "source": v.state.old.to_string(),
            "target": v.state.new.as_ref().map(|m| m.to_string()),
            "grace_until": v.state.grace_until.map(|t| t.to_string()),
            "next_step": next,
        }));
    } else if v.stranded == 0 {
        outln!(
            out,
            "verified: every TEK unwraps through the target {} and none depends on the source \
             {} alone (phase {})",
            v.state
                .new
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
            v.state.old,
            v.state.phase
        );
        outln!(out, "Next: {next}");
    } else {
        outln!(
            out,
            "{} TEK(s) are still wrapped under the source {} only:",
            v.stranded,
            v.state.old
        );
        for t in &v.examples {
            outln!(out, "  {t}");
        }
        outln!(out, "Next: {next}");
    }
    Ok(if v.stranded == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

async fn finish(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let st = tde.key_manager().finish_mek_migration().await?;
    let target = st.new.as_ref().map(|m| m.to_string()).unwrap_or_default();
    let next = format!(
        "remove migration_source from the configuration (keep the target's sections) and \
         restart; the source's MEK {} is left in the source provider, keep it as long as you \
         keep backups made before the migration",
        st.old
    );
    if out.is_json() {
        out.json_value(serde_json::json!({
            "source": st.old.to_string(),
            "target": target,
            "phase": st.phase.to_string(),
            "finished_at": st.finished_at.map(|t| t.to_string()),
            "next_step": next,
        }));
    } else {
        outln!(
            out,
            "migration finished: every TEK is wrapped under {target} only; the source wraps \
             under {} are dropped",
            st.old
        );
        outln!(out, "Next: {next}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rollback(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let pb = crate::rotate::bar(out);
    let cb = report(&pb, "restoring");
    let r = tde.key_manager().rollback_mek_migration(Some(&cb)).await;
    pb.finish_and_clear();
    let st = r?;
    let target = st.new.as_ref().map(|m| m.to_string()).unwrap_or_default();
    let next = format!(
        "put the source configuration back (the configuration without migration_source) and \
         restart; the target's MEK {target} is left in the target provider"
    );
    if out.is_json() {
        out.json_value(serde_json::json!({
            "source": st.old.to_string(),
            "target": target,
            "phase": st.phase.to_string(),
            "next_step": next,
        }));
    } else {
        outln!(
            out,
            "rolled back: every TEK is wrapped under the source {} again",
            st.old
        );
        outln!(out, "Next: {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `security mek migration-status`: the journal, read-only.
pub(crate) async fn status(
    current: TdeConfig,
    args: StatusArgs,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    let with_source = current.migration_source.is_some() || args.to.is_some();
    let (tde, st) = if with_source {
        let config = migration_config(current, args.to.as_deref())?;
        let tde = TdeSubsystem::open_read_only(config).await?;
        let st = tde.key_manager().mek_migration_status().await?;
        (tde, st)
    } else {
        // The current configuration alone: it is the source, whose MEK's journal is the
        // migration's.
        let tde = TdeSubsystem::open_read_only(current).await?;
        let id = tde.default_mek_id().clone();
        let st = tde
            .key_manager()
            .mek_rotation_status(&id)
            .await?
            .filter(RotationState::is_migration);
        (tde, st)
    };
    let Some(st) = st else {
        out.message(&format!(
            "no provider migration of {} is in progress",
            tde.key_manager()
                .migration_source()
                .cloned()
                .unwrap_or_else(|| tde.default_mek_id().clone())
        ));
        return Ok(ExitCode::SUCCESS);
    };
    let next = next_step(&st);
    if out.is_json() {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("next_step".into(), serde_json::Value::String(next));
        }
        out.json_value(v);
    } else {
        let info = st.migration.as_ref();
        outln!(
            out,
            "Provider migration of {}: phase {}",
            st.mek_id,
            st.phase
        );
        outln!(
            out,
            "  Source: {} ({})",
            st.old,
            info.map(|i| i.source_provider.as_str()).unwrap_or("?")
        );
        outln!(
            out,
            "  Target: {} ({})",
            st.new
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "(not yet)".into()),
            info.map(|i| i.target_provider.as_str()).unwrap_or("?")
        );
        crate::rotate::journal_details(out, &st, "Keys moved");
        outln!(out, "Next: {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One member of a migration for `security status`: its provider's health check.
async fn member(
    role: &'static str,
    provider: &Arc<dyn MekProvider>,
    mek: String,
) -> MigrationMember {
    let (healthy, detail) = match provider.health().await {
        Ok(h) => (h.healthy, h.detail),
        Err(e) => (false, e.to_string()),
    };
    MigrationMember {
        role,
        provider: provider.kind().name().to_string(),
        description: provider.description(),
        mek,
        healthy,
        detail,
    }
}

/// What `security status` shows about the provider migration, when the configuration has
/// `migration_source`; `keys` (the key store's availability report) gives the total.
pub(crate) async fn status_view(
    tde: &TdeSubsystem,
    keys: Option<&KeyAvailability>,
) -> Result<Option<MigrationView>, TdeError> {
    let km = tde.key_manager();
    let Some(source) = km.migration_source().cloned() else {
        return Ok(None);
    };
    let st = km.mek_migration_status().await?;
    let mut members = Vec::new();
    if let Some(set) = tde.migration_source() {
        let source_ref = st
            .as_ref()
            .map_or_else(|| source.to_string(), |s| s.old.to_string());
        let target_ref = st
            .as_ref()
            .and_then(|s| s.new.as_ref())
            .map_or_else(|| tde.default_mek_id().to_string(), |m| m.to_string());
        members.push(member("source", set.source(), source_ref).await);
        members.push(member("target", set.target(), target_ref).await);
    }
    let total = keys.map(|k| {
        k.meks
            .iter()
            .filter(|m| m.mek.id == source)
            .map(|m| m.teks)
            .sum()
    });
    Ok(Some(MigrationView {
        phase: st.as_ref().map(|s| s.phase.to_string()),
        moved: st.as_ref().map_or(0, |s| s.reencrypted),
        total,
        failed: st.as_ref().map_or(0, |s| s.failed_total),
        grace_until: st
            .as_ref()
            .and_then(|s| s.grace_until)
            .map(|t| t.to_string()),
        members,
        next_step: st.as_ref().map_or_else(
            || "run `heliosdb-cli security mek migrate` to start moving the TEKs".into(),
            next_step,
        ),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const FILE_SRC: &str = "key_storage_path = \"/k\"\ndefault_mek_id = \"old\"\n\
                            [secure_file_config]\nstorage_path = \"/mek-old\"\n";
    const FILE_DST: &str = "key_storage_path = \"/k\"\ndefault_mek_id = \"new\"\n\
                            [secure_file_config]\nstorage_path = \"/mek-new\"\n";

    fn target(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn reason(e: TdeError) -> String {
        e.to_string()
    }

    #[test]
    fn the_current_configuration_becomes_the_source_of_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let current = TdeConfig::from_toml_str(FILE_SRC).unwrap();
        let to = target(dir.path(), "t.toml", FILE_DST);
        let c = migration_config(current.clone(), Some(&to)).unwrap();
        assert_eq!(c.default_mek_id, "new");
        let s = c.migration_source.as_ref().unwrap();
        assert!(same_source(
            s,
            &MigrationSourceConfig::from_config(&current)
        ));
        // The migration's configuration itself: --to is optional, and must agree.
        assert_eq!(migration_config(c.clone(), None).unwrap(), c);
        assert_eq!(migration_config(c.clone(), Some(&to)).unwrap(), c);
        let other = target(
            dir.path(),
            "o.toml",
            &FILE_DST.replace("\"new\"", "\"newer\""),
        );
        let e = reason(migration_config(c, Some(&other)).unwrap_err());
        assert!(e.contains("already describes a migration"), "{e}");
        assert!(e.contains("newer") && e.contains("--rollback"), "{e}");
    }

    #[test]
    fn no_target_the_same_target_or_another_key_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let current = TdeConfig::from_toml_str(FILE_SRC).unwrap();
        let e = reason(migration_config(current.clone(), None).unwrap_err());
        assert!(e.contains("--to TARGET.toml"), "{e}");
        let same = target(dir.path(), "s.toml", FILE_SRC);
        let e = reason(migration_config(current.clone(), Some(&same)).unwrap_err());
        assert!(e.contains("nothing to migrate"), "{e}");
        let moved = target(dir.path(), "m.toml", &FILE_DST.replace("\"/k\"", "\"/k2\""));
        let e = reason(migration_config(current.clone(), Some(&moved)).unwrap_err());
        assert!(e.contains("key_storage_path") && e.contains("/k2"), "{e}");
        // A target file whose own migration_source names another source.
        let foreign = target(
            dir.path(),
            "f.toml",
            &format!(
                "{FILE_DST}[migration_source]\ndefault_mek_id = \"elsewhere\"\n\
                 [migration_source.secure_file_config]\nstorage_path = \"/mek-x\"\n"
            ),
        );
        let e = reason(migration_config(current.clone(), Some(&foreign)).unwrap_err());
        assert!(e.contains("elsewhere") && e.contains("old"), "{e}");
        // Its own migration_source naming the current configuration is accepted.
        let mine = target(
            dir.path(),
            "g.toml",
            &format!(
                "{FILE_DST}[migration_source]\ndefault_mek_id = \"old\"\n\
                 [migration_source.secure_file_config]\nstorage_path = \"/mek-old\"\n"
            ),
        );
        assert!(migration_config(current, Some(&mine)).is_ok());
    }

    #[test]
    fn a_missing_target_file_is_an_io_error_naming_it() {
        let current = TdeConfig::from_toml_str(FILE_SRC).unwrap();
        let e = migration_config(current, Some(Path::new("/nonexistent/t.toml"))).unwrap_err();
        assert_eq!(e.kind(), "io");
        assert!(e.to_string().contains("/nonexistent/t.toml"), "{e}");
    }
}
