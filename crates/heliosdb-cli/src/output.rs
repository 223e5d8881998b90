//! Table and JSON rendering of command results.

use clap::ValueEnum;
use heliosdb_security::tde::{
    CheckItem, KeyAvailability, KeyMetadata, KeyStats, KmsConfig, MekInfo, MekVersionInfo,
    ProviderHealth, ProviderKind, ServiceRotation, TdeSubsystem,
};
use serde_json::json;
use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes one line of command output through [`Out::line`], like `println!`.
macro_rules! outln {
    ($out:expr) => {
        $out.line(format_args!(""))
    };
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Where command output goes: stdout, in the chosen format.
///
/// Output never panics. When stdout is closed (`heliosdb-cli security status | true`: the
/// reader has gone, `EPIPE`), the rest of the output is dropped silently and the command runs
/// to its end and exits with its own code, as if the reader had read everything. Any other
/// write error is kept and reported once the command has finished ([`Out::take_write_error`]).
pub(crate) struct Out {
    format: Format,
    /// Set once stdout is gone; later output is dropped.
    closed: AtomicBool,
    /// The first write error other than a closed pipe.
    write_error: Mutex<Option<io::Error>>,
}

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

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What `security status` says about a service rotating key material under one version, e.g.
/// "KMS rotates the key material of `<arn>` every 365 days (last on 2026-01-01); no re-wrap is
/// needed for that"; `None` when the service does not rotate it.
fn service_rotation_note(v: &MekVersionInfo) -> Option<String> {
    let r = v.service_rotation.as_ref().filter(|r| r.enabled)?;
    let key = v.key_location.clone().unwrap_or_else(|| v.mek.to_string());
    let every = r
        .period_days
        .map(|d| format!("every {d} days"))
        .unwrap_or_else(|| "on its schedule".into());
    let last = r
        .last_rotated
        .map(|t| format!("last on {}", day(t)))
        .unwrap_or_else(|| "not rotated yet".into());
    Some(format!(
        "KMS rotates the key material of {key} {every} ({last}); no re-wrap is needed for that"
    ))
}

/// The date part (`YYYY-MM-DD`) of a timestamp.
fn day(t: heliosdb_security::tde::Timestamp) -> String {
    let mut s = t.to_string();
    s.truncate(10);
    s
}

/// A service rotation status in a table cell: `-` (none), `off`, `every 365 d, last
/// 2026-01-01`, `on, not rotated yet` (the period unknown).
fn rotation_cell(r: Option<&ServiceRotation>) -> String {
    match r {
        None => "-".into(),
        Some(r) if !r.enabled => match r.last_rotated {
            Some(t) => format!("off (last {})", day(t)),
            None => "off".into(),
        },
        Some(r) => format!(
            "{}, {}",
            r.period_days
                .map_or_else(|| "on".to_string(), |d| format!("every {d} d")),
            r.last_rotated
                .map(|t| format!("last {}", day(t)))
                .unwrap_or_else(|| "not rotated yet".into())
        ),
    }
}

fn rotation_json(r: Option<&ServiceRotation>) -> serde_json::Value {
    r.map_or(serde_json::Value::Null, |r| {
        json!({
            "enabled": r.enabled,
            "period_days": r.period_days,
            "last_rotated": r.last_rotated.map(|t| t.to_string()),
        })
    })
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

impl Out {
    pub(crate) fn new(format: Format) -> Self {
        Self {
            format,
            closed: AtomicBool::new(false),
            write_error: Mutex::new(None),
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes `text` to stdout and flushes it; see [`Out`] for what happens on errors.
    pub(crate) fn write_stdout(&self, text: &str) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut stdout = io::stdout().lock();
        let result = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        if let Err(e) = result {
            self.closed.store(true, Ordering::Relaxed);
            if e.kind() != io::ErrorKind::BrokenPipe
                && let Ok(mut slot) = self.write_error.lock()
            {
                slot.get_or_insert(e);
            }
        }
    }

    /// The first error writing stdout other than a closed pipe, if any.
    pub(crate) fn take_write_error(&self) -> Option<io::Error> {
        self.write_error.lock().ok().and_then(|mut e| e.take())
    }

    /// One line of output (use [`outln!`]).
    pub(crate) fn line(&self, args: fmt::Arguments<'_>) {
        let mut text = args.to_string();
        text.push('\n');
        self.write_stdout(&text);
    }

    /// A line of narration for people: printed in table format, left out in JSON (where the
    /// command prints one document instead).
    pub(crate) fn say(&self, args: fmt::Arguments<'_>) {
        if !self.is_json() {
            self.line(args);
        }
    }

    /// A line on stderr (warnings); errors writing it are ignored.
    pub(crate) fn warn(&self, args: fmt::Arguments<'_>) {
        let _ = writeln!(io::stderr().lock(), "{args}");
    }

    pub(crate) fn json_value(&self, v: serde_json::Value) {
        self.json(v);
    }

    fn json(&self, v: serde_json::Value) {
        let text = serde_json::to_string_pretty(&v).unwrap_or_else(|e| e.to_string());
        outln!(self, "{text}");
    }

    pub(crate) fn message(&self, text: &str) {
        if self.is_json() {
            self.json(json!({ "message": text }));
        } else {
            outln!(self, "{text}");
        }
    }

    /// The JSON form of `security status`.
    pub(crate) fn status_value(
        tde: &TdeSubsystem,
        checklist: &[CheckItem],
        keys: Option<&KeyAvailability>,
        health: Option<&ProviderHealth>,
        kms: Option<&KmsView>,
    ) -> serde_json::Value {
        let p = &tde.key_manager().mek_provider;
        json!({
            "aws_kms": kms.map(KmsView::json),
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
        })
    }

    pub(crate) fn status(
        &self,
        tde: &TdeSubsystem,
        checklist: &[CheckItem],
        keys: Option<&KeyAvailability>,
        health: Option<&ProviderHealth>,
        kms: Option<&KmsView>,
    ) {
        if self.is_json() {
            self.json(Self::status_value(tde, checklist, keys, health, kms));
            return;
        }
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

    pub(crate) fn mek_info(&self, info: &MekInfo) {
        if self.is_json() {
            let versions: Vec<_> = info
                .versions
                .iter()
                .map(|v| {
                    json!({
                        "mek": v.mek.to_string(),
                        "version": v.mek.version.get(),
                        "state": v.state.to_string(),
                        "algorithm": v.algorithm.name(),
                        "created_at": v.created_at.to_string(),
                        "key_location": v.key_location,
                        "service_rotation": rotation_json(v.service_rotation.as_ref()),
                    })
                })
                .collect();
            self.json(json!({
                "id": info.id.to_string(),
                "provider": info.provider.name(),
                "location": info.location,
                "active_version": info.active_version().map(|v| v.get()),
                "versions": versions,
            }));
            return;
        }
        outln!(self, "MEK:       {}", info.id);
        outln!(self, "Provider:  {}", info.provider);
        outln!(self, "Location:  {}", info.location);
        // Key and service-rotation columns only for providers that keep one service key per
        // version (AWS KMS).
        let per_key = info.versions.iter().any(|v| v.key_location.is_some());
        let rotates = info.versions.iter().any(|v| v.service_rotation.is_some());
        let mut head: Vec<String> = vec![
            "VERSION".into(),
            "STATE".into(),
            "ALGORITHM".into(),
            "CREATED".into(),
        ];
        if rotates {
            head.push("KMS ROTATION".into());
        }
        if per_key {
            head.push("KEY".into());
        }
        let mut rows = vec![head];
        for v in &info.versions {
            let mut row = vec![
                v.mek.version.to_string(),
                v.state.to_string(),
                v.algorithm.to_string(),
                v.created_at.to_string(),
            ];
            if rotates {
                row.push(rotation_cell(v.service_rotation.as_ref()));
            }
            if per_key {
                row.push(v.key_location.clone().unwrap_or_else(|| "-".into()));
            }
            rows.push(row);
        }
        self.write_stdout(&table(&rows));
        for note in info.versions.iter().filter_map(service_rotation_note) {
            outln!(self, "{note}");
        }
    }

    pub(crate) fn key_stats(&self, s: &KeyStats) {
        if self.is_json() {
            self.json(serde_json::to_value(s).unwrap_or_default());
            return;
        }
        let c = &s.cache;
        outln!(
            self,
            "TEK cache:     {} / {} entries, {} hits, {} misses, {} evictions",
            c.entries,
            c.limit,
            c.hits,
            c.misses,
            c.evictions
        );
        let p = &s.provider;
        outln!(
            self,
            "MEK provider:  {} calls ({} failed), mean {} us, max {} us - {}",
            p.calls,
            p.errors,
            p.mean_latency_us,
            p.max_latency_us,
            p.provider
        );
        let states: Vec<String> = s
            .teks_by_state
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        outln!(
            self,
            "Table keys:    {} tables; {}",
            s.tables,
            if states.is_empty() {
                "none".into()
            } else {
                states.join(", ")
            }
        );
        outln!(
            self,
            "Usage:         {} encryptions, {} decryptions recorded{}",
            s.usage.encryptions,
            s.usage.decryptions,
            s.usage
                .last_used
                .map(|t| format!(", last {t}"))
                .unwrap_or_default()
        );
    }

    pub(crate) fn keys(&self, keys: &[KeyMetadata]) {
        if self.is_json() {
            self.json(serde_json::to_value(keys).unwrap_or_default());
            return;
        }
        let mut rows = vec![vec![
            "KEY".into(),
            "STATE".into(),
            "WRAPPED BY".into(),
            "CREATED".into(),
        ]];
        for k in keys {
            rows.push(vec![
                k.key_id.to_string(),
                k.state.to_string(),
                k.wrapped_by
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                k.created_at.to_string(),
            ]);
        }
        self.write_stdout(&table(&rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliosdb_security::tde::{EncryptionAlgorithm, KeyState, MekRef, Timestamp};

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn version(rotation: Option<ServiceRotation>) -> MekVersionInfo {
        let mut v = MekVersionInfo::new(
            "prod_mek@v2".parse::<MekRef>().unwrap(),
            KeyState::Active,
            EncryptionAlgorithm::Aes256Gcm,
            Timestamp(0),
        );
        v.key_location = Some(ARN.into());
        v.service_rotation = rotation;
        v
    }

    #[test]
    fn the_service_rotation_note_names_the_key_period_and_date() {
        // 2024-10-25T12:34:56Z
        let last = Some(Timestamp(1_729_859_696_000));
        let on = version(Some(ServiceRotation::new(true, Some(365), last)));
        assert_eq!(
            service_rotation_note(&on).unwrap(),
            format!(
                "KMS rotates the key material of {ARN} every 365 days (last on 2024-10-25); no \
                 re-wrap is needed for that"
            )
        );
        let never = version(Some(ServiceRotation::new(true, None, None)));
        assert_eq!(
            service_rotation_note(&never).unwrap(),
            format!(
                "KMS rotates the key material of {ARN} on its schedule (not rotated yet); no \
                 re-wrap is needed for that"
            )
        );
        // Off, or a provider without service rotation: nothing to say.
        assert_eq!(
            service_rotation_note(&version(Some(ServiceRotation::new(false, None, last)))),
            None
        );
        assert_eq!(service_rotation_note(&version(None)), None);
    }

    #[test]
    fn rotation_cells_and_json() {
        let last = Some(Timestamp(1_729_859_696_000));
        assert_eq!(rotation_cell(None), "-");
        assert_eq!(
            rotation_cell(Some(&ServiceRotation::new(false, None, None))),
            "off"
        );
        assert_eq!(
            rotation_cell(Some(&ServiceRotation::new(false, None, last))),
            "off (last 2024-10-25)"
        );
        assert_eq!(
            rotation_cell(Some(&ServiceRotation::new(true, Some(90), last))),
            "every 90 d, last 2024-10-25"
        );
        assert_eq!(
            rotation_cell(Some(&ServiceRotation::new(true, None, None))),
            "on, not rotated yet"
        );
        let j = rotation_json(Some(&ServiceRotation::new(true, Some(90), last)));
        assert_eq!(j["enabled"], true);
        assert_eq!(j["period_days"], 90);
        assert_eq!(j["last_rotated"], "2024-10-25T12:34:56Z");
        assert!(rotation_json(None).is_null());
    }
}
