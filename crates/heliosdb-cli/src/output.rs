//! Table and JSON rendering of command results.

use clap::ValueEnum;
use heliosdb_security::tde::{
    CheckItem, KeyMetadata, KeyStats, MekInfo, ProviderKind, TdeSubsystem,
};
use serde_json::json;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

pub(crate) struct Out {
    format: Format,
}

/// The guide's security levels.
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

impl Out {
    pub(crate) fn new(format: Format) -> Self {
        Self { format }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    pub(crate) fn json_value(&self, v: serde_json::Value) {
        self.json(v);
    }

    fn json(&self, v: serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|e| e.to_string())
        );
    }

    pub(crate) fn message(&self, text: &str) {
        if self.is_json() {
            self.json(json!({ "message": text }));
        } else {
            println!("{text}");
        }
    }

    pub(crate) fn status(&self, tde: &TdeSubsystem, checklist: &[CheckItem]) {
        let p = &tde.key_manager().mek_provider;
        let mode = tde.security_mode().to_string();
        let source = tde.mode_source().to_string();
        if self.is_json() {
            self.json(json!({
                "security_mode": mode,
                "mode_source": source,
                "provider": p.description(),
                "provider_kind": p.kind().name(),
                "provider_secure": p.is_secure(),
                "security_level": level(p.kind(), p.is_secure()),
                "warnings": tde.warnings(),
                "checklist": checklist,
            }));
            return;
        }
        println!("Security mode:   {mode} (from {source})");
        println!("MEK provider:    {}", p.description());
        println!(
            "Security level:  {}{}",
            level(p.kind(), p.is_secure()),
            if p.is_secure() {
                ""
            } else {
                " - NOT for production"
            }
        );
        for w in tde.warnings() {
            println!("Warning:         {w}");
        }
        println!("\nSecurity checklist:");
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
        print!("{}", table(&rows));
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
        println!("MEK:       {}", info.id);
        println!("Provider:  {}", info.provider);
        println!("Location:  {}", info.location);
        let mut rows = vec![vec![
            "VERSION".into(),
            "STATE".into(),
            "ALGORITHM".into(),
            "CREATED".into(),
        ]];
        for v in &info.versions {
            rows.push(vec![
                v.mek.version.to_string(),
                v.state.to_string(),
                v.algorithm.to_string(),
                v.created_at.to_string(),
            ]);
        }
        print!("{}", table(&rows));
    }

    pub(crate) fn key_stats(&self, s: &KeyStats) {
        if self.is_json() {
            self.json(serde_json::to_value(s).unwrap_or_default());
            return;
        }
        let c = &s.cache;
        println!(
            "TEK cache:     {} / {} entries, {} hits, {} misses, {} evictions",
            c.entries, c.limit, c.hits, c.misses, c.evictions
        );
        let p = &s.provider;
        println!(
            "MEK provider:  {} calls ({} failed), mean {} us, max {} us - {}",
            p.calls, p.errors, p.mean_latency_us, p.max_latency_us, p.provider
        );
        let states: Vec<String> = s
            .teks_by_state
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        println!(
            "Table keys:    {} tables; {}",
            s.tables,
            if states.is_empty() {
                "none".into()
            } else {
                states.join(", ")
            }
        );
        println!(
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
        print!("{}", table(&rows));
    }
}
