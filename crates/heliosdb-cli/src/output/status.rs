//! `security status`: the provider, its health and security level, the AWS KMS view, key
//! availability and the Security Checklist, as a table or one JSON document.

use super::rotation::{rotation_json, service_rotation_note};
use super::{Out, outln, table};
use heliosdb_security::tde::{
    CheckItem, KeyAvailability, KmsConfig, MekInfo, ProviderHealth, ProviderKind, ServiceRotation,
    TdeSubsystem,
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

impl Out {
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
}
