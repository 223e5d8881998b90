//! A service's own rotation of key material under one MEK version (AWS KMS automatic key
//! rotation), as a note, a table cell and JSON.

use heliosdb_security::tde::{MekVersionInfo, ServiceRotation};
use serde_json::json;

/// What `security status` says about a service rotating key material under one version, e.g.
/// "KMS rotates the key material of `<arn>` every 365 days (last on 2026-01-01); no re-wrap is
/// needed for that"; `None` when the service does not rotate it.
pub(super) fn service_rotation_note(v: &MekVersionInfo) -> Option<String> {
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
pub(super) fn rotation_cell(r: Option<&ServiceRotation>) -> String {
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

/// A service rotation status as JSON (`null`: none).
pub(super) fn rotation_json(r: Option<&ServiceRotation>) -> serde_json::Value {
    r.map_or(serde_json::Value::Null, |r| {
        json!({
            "enabled": r.enabled,
            "period_days": r.period_days,
            "last_rotated": r.last_rotated.map(|t| t.to_string()),
        })
    })
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
