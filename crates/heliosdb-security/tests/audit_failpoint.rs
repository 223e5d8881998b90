//! The Security Checklist's audit item under failed audit writes (the fail point `audit::write`
//! is process-wide, so this test has its binary to itself) and for a damaged log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_security::tde::{self, CheckStatus, TdeConfig, TdeSubsystem, security_checklist};

#[tokio::test]
async fn the_checklist_item_fails_after_a_failed_write_and_for_a_damaged_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = TdeConfig {
        backup_dir: Some(dir.path().join("backups")),
        ..common::audited_config(dir.path())
    };
    let audit_item = |c: &[tde::CheckItem]| {
        c.iter()
            .find(|i| i.item == "Audit logging enabled")
            .cloned()
            .unwrap()
    };
    {
        let tde = TdeSubsystem::new(config.clone()).await.unwrap();
        let item = audit_item(&security_checklist(&tde).await);
        assert_eq!(item.status, CheckStatus::Pass, "{item:?}");
        let scenario = fail::FailScenario::setup();
        fail::cfg("audit::write", "1*return->off").unwrap();
        // The key operation succeeds although its record could not be written.
        tde.key_manager().create_table_key("t1").await.unwrap();
        drop(scenario);
        let item = audit_item(&security_checklist(&tde).await);
        assert_eq!(item.status, CheckStatus::Fail, "{item:?}");
        assert!(item.reason.contains("could not be written"), "{item:?}");
        let status = tde::audit_status(&tde).await.unwrap();
        assert_eq!(status.write_failures, 1);
        // The next record is preceded by the gap.
        tde.key_manager().create_table_key("t2").await.unwrap();
    }
    let log = config.audit_log_path.clone().unwrap();
    let recs = common::audit_records(&log);
    let gap = recs
        .iter()
        .position(|r| r["action"] == "audit.gap")
        .expect("a gap record");
    assert!(
        recs[gap]["detail"]
            .as_str()
            .unwrap()
            .contains("tek.created"),
        "{:#?}",
        recs[gap]
    );
    assert_eq!(recs[gap + 1]["key"], "tek:t2@v1");
    // A restart passes again...
    let tde = TdeSubsystem::open_read_only(config.clone()).await.unwrap();
    assert_eq!(
        audit_item(&security_checklist(&tde).await).status,
        CheckStatus::Pass
    );
    // ...until the current file is damaged.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("tek:t2@v1", "tek:t3@v1", 1)).unwrap();
    let item = audit_item(&security_checklist(&tde).await);
    assert_eq!(item.status, CheckStatus::Fail, "{item:?}");
    assert!(item.reason.contains("line"), "{item:?}");
}
