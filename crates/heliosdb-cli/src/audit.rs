//! `security audit verify` and `security audit tail`.

use crate::output::{Out, outln};
use heliosdb_security::tde::{self, AuditFilter, AuditRecord, TdeConfig, TdeError, TdeSubsystem};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The audit log's commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check every file of the audit log: the hash chain, the MAC of every record under the
    /// audit key (opens the configured provider and key store read-only) and the key store's
    /// checkpoint. Prints the records, files, last hash and MAC, or the first problem with its
    /// file and line; exits 1 on any problem.
    Verify {
        /// The log file; defaults to the configured audit_log_path.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Check the hash chain and the file set only, without the provider or the key store
        /// (it cannot tell a whole file rewritten with a recomputed chain).
        #[arg(long)]
        structure_only: bool,
    },
    /// Show the newest records (oldest first).
    Tail {
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: usize,
        /// Only records of this action, for example tek.unwrapped.
        #[arg(long)]
        action: Option<String>,
        /// Only records of this key, for example tek:public.users@v1.
        #[arg(long)]
        key: Option<String>,
        /// The log file; defaults to the configured audit_log_path.
        #[arg(long)]
        path: Option<PathBuf>,
    },
}

fn configured<'a>(path: Option<&'a PathBuf>, config: &'a TdeConfig) -> Result<&'a Path, TdeError> {
    path.or(config.audit_log_path.as_ref())
        .map(PathBuf::as_path)
        .ok_or_else(|| {
            TdeError::config(
                "audit_log_path",
                "no audit log is configured; set audit_log_path or pass --path FILE",
            )
        })
}

/// Runs an audit command.
pub(crate) async fn run(
    config: TdeConfig,
    cmd: AuditCommand,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    match cmd {
        AuditCommand::Verify {
            path,
            structure_only,
        } => verify(config, path, structure_only, out).await,
        AuditCommand::Tail {
            n,
            action,
            key,
            path,
        } => {
            let path = configured(path.as_ref(), &config)?;
            if let Some(a) = &action
                && tde::AuditAction::from_name(a).is_none()
            {
                return Err(TdeError::InvalidArgument(format!(
                    "--action {a:?} is not an audit action; use one of {}",
                    tde::AuditAction::ALL.map(|a| a.name()).join(", ")
                )));
            }
            let mut filter = AuditFilter::new();
            if let Some(a) = action {
                filter = filter.with_action(a);
            }
            if let Some(k) = key {
                filter = filter.with_key(k);
            }
            let records = tde::audit_tail(path, n, &filter)?;
            tail_output(&records, out);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `security audit verify` (and its alias `security audit-verify`).
pub(crate) async fn verify(
    config: TdeConfig,
    path: Option<PathBuf>,
    structure_only: bool,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    let path = configured(path.as_ref(), &config)?.to_path_buf();
    let v = if structure_only {
        tde::verify_audit_structure(&path)?
    } else {
        let tde = TdeSubsystem::open_read_only(config).await?;
        tde::verify_audit(&tde, Some(&path), false).await?
    };
    if out.is_json() {
        out.json_value(json!({
            "path": path,
            "verified": true,
            "structure_only": structure_only,
            "records": v.lines,
            "files": v.files,
            "last_seq": v.last_seq,
            "last_hash": v.last_hash,
            "last_mac": v.last_mac,
            "macs_checked": v.macs_checked,
            "unauthenticated_tail": v.unauthenticated_tail,
            "checkpoint": v.checkpoint,
            "format1_records": v.format1_lines,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        out,
        "audit log {} verified: {} records in {} files, hash chain intact, last hash {}",
        path.display(),
        v.lines,
        v.files.len(),
        v.last_hash
    );
    if structure_only {
        outln!(
            out,
            "structure only: MACs and the checkpoint were not checked (run without \
             --structure-only, with the database stopped, to check them)"
        );
    } else {
        outln!(
            out,
            "{} MACs checked, last MAC {}; checkpoint {}",
            v.macs_checked,
            v.last_mac.as_deref().unwrap_or("-"),
            v.checkpoint.map_or_else(
                || "none yet".to_string(),
                |c| format!("at record {c}, reached")
            )
        );
    }
    if v.unauthenticated_tail > 0 {
        outln!(
            out,
            "note: the last {} records carry no MAC (written by a command run without the \
             database); the next authenticated record covers them",
            v.unauthenticated_tail
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn tail_output(records: &[AuditRecord], out: &Out) {
    if out.is_json() {
        out.json_value(serde_json::to_value(records).unwrap_or_default());
        return;
    }
    for r in records {
        let mut line = format!(
            "{:>6} {} {:<19} {:<28} {}",
            r.seq,
            r.at,
            r.action,
            r.key.as_deref().unwrap_or("-"),
            r.outcome
        );
        if let Some(kind) = &r.error_kind {
            line.push_str(&format!(" ({kind})"));
        }
        if !r.detail.is_empty() {
            line.push_str(&format!(" {}", r.detail));
        }
        if let Some(e) = &r.error {
            line.push_str(&format!(": {e}"));
        }
        outln!(out, "{line}");
    }
}
