//! `heliosdb-cli security mek rotate | rotation-status | rollback | deactivate`.

use crate::output::{Out, outln};
use heliosdb_security::tde::{RotationProgress, TdeError, TdeSubsystem};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;

/// Exit code when a rotation finished but some keys failed (run it again to retry them).
const EXIT_PARTIAL: u8 = 4;

/// The progress bar of a pass over every TEK (rotation, migration); hidden with JSON output.
pub(crate) fn bar(out: &Out) -> ProgressBar {
    if out.is_json() {
        return ProgressBar::hidden();
    }
    // indicatif draws on stderr and stays silent when it is not a terminal.
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} TEKs ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

fn report<'a>(
    pb: &'a ProgressBar,
    msg: &'static str,
) -> impl Fn(&RotationProgress) + Send + Sync + 'a {
    report_as(pb, msg, "re-wrapping (some failed)")
}

/// Moves `pb` with a pass's progress: `msg`, or `failing` once a key failed.
pub(crate) fn report_as<'a>(
    pb: &'a ProgressBar,
    msg: &'static str,
    failing: &'static str,
) -> impl Fn(&RotationProgress) + Send + Sync + 'a {
    move |p: &RotationProgress| {
        pb.set_message(if p.failed > 0 { failing } else { msg });
        pb.set_length(p.total);
        pb.set_position(p.done);
    }
}

pub(crate) async fn rotate(
    tde: &TdeSubsystem,
    emergency: bool,
    out: &Out,
) -> Result<ExitCode, TdeError> {
    let km = tde.key_manager();
    let id = tde.default_mek_id();
    let pb = bar(out);
    let cb = report(&pb, "re-wrapping");
    let (result, tables, audit_key) = if emergency {
        let e = km.emergency_rotate_mek(&id, Some(&cb)).await?;
        (e.rotation, Some(e.tables_needing_reencryption), e.audit_key)
    } else {
        (
            km.rotate_mek_with_progress(&id, Some(&cb)).await?,
            None,
            None,
        )
    };
    pb.finish_and_clear();
    if out.is_json() {
        out.json_value(serde_json::json!({
            "old_mek_id": result.old_mek_id.to_string(),
            "new_mek_id": result.new_mek_id.to_string(),
            "keys_reencrypted": result.keys_reencrypted,
            "failed_keys": result.failed_keys,
            "failed_total": result.failed_total,
            "phase": result.phase.to_string(),
            "grace_until": result.grace_until.map(|t| t.to_string()),
            "tables_needing_reencryption": tables.as_ref().map(|t| t.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
            "audit_key_renewed": audit_key.as_ref().map(|k| k.to_string()),
        }));
    } else {
        outln!(
            out,
            "MEK Rotation {}:",
            if emergency {
                "(EMERGENCY) complete"
            } else {
                "Complete"
            }
        );
        outln!(out, "  Old MEK: {}", result.old_mek_id);
        outln!(out, "  New MEK: {}", result.new_mek_id);
        outln!(out, "  Keys re-encrypted: {}", result.keys_reencrypted);
        outln!(out, "  Phase: {}", result.phase);
        if let Some(t) = result.grace_until {
            outln!(
                out,
                "  Both versions stay valid until {t}; then run `heliosdb-cli security mek \
                 deactivate`"
            );
        }
        if !result.failed_keys.is_empty() {
            out.warn(format_args!(
                "WARNING: {} keys failed to re-encrypt:",
                result.failed_total
            ));
            for (k, e) in &result.failed_keys {
                out.warn(format_args!("  - {k}: {e}"));
            }
            out.warn(format_args!(
                "Run `heliosdb-cli security mek rotate` again to retry them."
            ));
        }
        if let Some(tables) = &tables {
            outln!(
                out,
                "  {} table(s) got a new TEK version; their data is still encrypted under TEK \
                 versions the compromised MEK wrapped. Re-encrypt these tables:",
                tables.len()
            );
            for t in tables {
                outln!(out, "    {t}");
            }
        }
        if let Some(k) = &audit_key {
            outln!(
                out,
                "  The audit log's key got a new version ({k}): new records are authenticated \
                 under it; earlier ones still verify with the older versions"
            );
        }
    }
    Ok(if result.failed_total > 0 {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn status(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let id = tde.default_mek_id();
    match tde.key_manager().mek_rotation_status(&id).await? {
        None => out.message(&format!("no rotation of {id} is in progress")),
        Some(st) => {
            if out.is_json() {
                out.json_value(serde_json::to_value(&st).unwrap_or_default());
            } else {
                outln!(out, "Rotation of {}: phase {}", st.mek_id, st.phase);
                outln!(out, "  Old MEK: {}", st.old);
                outln!(
                    out,
                    "  New MEK: {}",
                    st.new
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "(not yet)".into())
                );
                outln!(out, "  Emergency: {}", st.emergency);
                journal_details(out, &st, "Keys re-encrypted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollback(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let id = tde.default_mek_id();
    let pb = bar(out);
    let cb = report(&pb, "restoring");
    let st = tde
        .key_manager()
        .rollback_mek_rotation(&id, Some(&cb))
        .await?;
    pb.finish_and_clear();
    out.message(&format!(
        "rolled back: {} is active again; {} is deactivated",
        st.old,
        st.new.map(|m| m.to_string()).unwrap_or_default()
    ));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn deactivate(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let id = tde.default_mek_id();
    let st = tde.key_manager().deactivate_old_mek(&id).await?;
    out.message(&format!(
        "{} is deactivated; every TEK is wrapped under {}",
        st.old,
        st.new.map(|m| m.to_string()).unwrap_or_default()
    ));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn verify(tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let id = tde.default_mek_id();
    let v = tde.key_manager().verify_mek_rotation(&id).await?;
    if out.is_json() {
        out.json_value(serde_json::json!({
            "stranded": v.stranded,
            "examples": v.examples.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "phase": v.state.phase.to_string(),
        }));
    } else if v.stranded == 0 {
        outln!(
            out,
            "verified: no TEK depends on {} alone (phase {})",
            v.state.old,
            v.state.phase
        );
    } else {
        outln!(
            out,
            "{} TEK(s) can only be unwrapped by {}; run `heliosdb-cli security mek rotate` to \
             re-wrap them:",
            v.stranded,
            v.state.old
        );
        for t in &v.examples {
            outln!(out, "  {t}");
        }
    }
    Ok(if v.stranded == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

/// The lines a rotation's or a provider migration's status shares: when it started, the keys
/// handled (`handled` names them), the failures, the resume point, the grace period and the
/// verification.
pub(crate) fn journal_details(
    out: &Out,
    st: &heliosdb_security::tde::RotationState,
    handled: &str,
) {
    outln!(out, "  Started: {}", st.started_at);
    outln!(out, "  {handled}: {}", st.reencrypted);
    outln!(out, "  Keys failed in the last pass: {}", st.failed_total);
    if let Some(c) = &st.cursor {
        outln!(out, "  Resume point: after {c}");
    }
    if let Some(t) = st.grace_until {
        outln!(out, "  Grace period ends: {t}");
    }
    if let Some(t) = st.verified_at {
        outln!(out, "  Verified: {t}");
    }
}
