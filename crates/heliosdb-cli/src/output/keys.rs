//! `security mek info`, `security keys stats` and the key list: MEK versions, TEK cache,
//! provider and key memory statistics, table keys.

use super::rotation::{rotation_cell, rotation_json, service_rotation_note};
use super::status::{bytes_text, protection_json};
use super::{Out, outln, table};
use heliosdb_security::tde::{self, ArenaStats, KeyMetadata, KeyStats, MekInfo};
use serde_json::json;

impl Out {
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
                        "service_detail": v.service_detail,
                    })
                })
                .collect();
            self.json(json!({
                "id": info.id.to_string(),
                "provider": info.provider.name(),
                "location": info.location,
                "active_version": info.active_version().map(|v| v.get()),
                "versions": versions,
                "deletion_protection": info.deletion_protection.as_ref().map(|p| json!({
                    "protected": p.protected,
                    "detail": p.detail,
                })),
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
        for v in &info.versions {
            if let Some(detail) = &v.service_detail {
                outln!(self, "Version {}: {detail}", v.mek.version.get());
            }
        }
        if let Some(p) = &info.deletion_protection {
            outln!(
                self,
                "Deletion protection: {}: {}",
                if p.protected { "on" } else { "OFF" },
                p.detail
            );
        }
    }

    /// `security key-stats`: the cache, provider, key and usage statistics, the audit log and,
    /// when given, the key arena of this process (bytes locked, slots, pages).
    pub(crate) fn key_stats(
        &self,
        s: &KeyStats,
        audit: &tde::AuditStatus,
        memory: Option<&ArenaStats>,
    ) {
        let audit_json = serde_json::json!({
            "path": audit.path,
            "attached": audit.attached,
            "written_since_start": audit.written,
            "write_failures": audit.write_failures,
            "last_seq": audit.last_seq,
            "checkpoint": audit.checkpoint,
            "lost_pending": audit.lost_pending,
        });
        if self.is_json() {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("audit".into(), audit_json);
                if let Some(m) = memory {
                    o.insert(
                        "key_memory".into(),
                        json!({
                            "bytes_locked": m.bytes_locked,
                            "bytes_mapped": m.bytes_mapped,
                            "slots_in_use": m.slots_in_use,
                            "slots_free": m.slots_free,
                            "pages": m.pages,
                            "page_size": m.page_size,
                            "locking": protection_json(&m.locking),
                        }),
                    );
                }
            }
            self.json(v);
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
        if let Some(m) = memory {
            outln!(
                self,
                "Key memory:    {} locked of {} mapped, locking {}; {} slots in use, {} free; \
                 {} page(s) of {} bytes",
                bytes_text(m.bytes_locked as u64),
                bytes_text(m.bytes_mapped as u64),
                m.locking.describe(),
                m.slots_in_use,
                m.slots_free,
                m.pages,
                m.page_size
            );
        }
        match &audit.path {
            None => outln!(self, "Audit log:     none (set audit_log_path)"),
            Some(path) => outln!(
                self,
                "Audit log:     {}: {} records written since start, {} write failures, last \
                 seq {}, checkpoint {}{}",
                path.display(),
                audit.written,
                audit.write_failures,
                audit
                    .last_seq
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                audit
                    .checkpoint
                    .map_or_else(|| "none".to_string(), |n| n.to_string()),
                if audit.lost_pending > 0 {
                    format!(
                        ", {} lost records not yet recorded as a gap",
                        audit.lost_pending
                    )
                } else {
                    String::new()
                }
            ),
        }
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
