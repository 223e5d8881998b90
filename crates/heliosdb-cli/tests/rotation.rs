//! MEK rotation from the command line, and the CLI killed with SIGKILL at random moments while
//! it rotates 10,000 TEKs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Rng, kill_after_store_changes};
use heliosdb_security::tde::{RotationPhase, TdeConfig, TdeSubsystem};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");
const PASS: &str = "rotation test passphrase, long enough";

fn setup(dir: &Path, grace_days: u64) -> PathBuf {
    let pass = dir.join("secrets/pass.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, PASS).unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\nsecurity_mode = \"production\"\n\
             rotation_grace_days = {grace_days}\naudit_log_path = \"{d}/audit.log\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            p = pass.display()
        ),
    )
    .unwrap();
    cfg
}

fn cli(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn subsystem(cfg: &Path) -> TdeSubsystem {
    let mut c = TdeConfig::from_toml_file(cfg).unwrap();
    c.apply_env_with(|_| None).unwrap();
    TdeSubsystem::new(c).await.unwrap()
}

async fn create_tables(cfg: &Path, n: usize) -> Vec<String> {
    let tde = subsystem(cfg).await;
    let tables: Vec<String> = (0..n).map(|i| format!("t{i:05}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    for chunk in refs.chunks(2000) {
        tde.key_manager().create_table_keys(chunk).await.unwrap();
    }
    tables
}

/// Every TEK unwraps (through a fresh process-local subsystem with a cold cache).
async fn all_unwrap(cfg: &Path, tables: &[String]) -> heliosdb_security::tde::TdeSubsystem {
    let tde = subsystem(cfg).await;
    for t in tables {
        tde.key_manager()
            .get_table_key(t, None)
            .await
            .unwrap_or_else(|e| panic!("{t} does not unwrap: {e}"));
    }
    tde
}

#[tokio::test]
async fn rotate_status_deactivate_and_rollback_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 30);
    let tables = create_tables(&cfg, 50).await;

    let out = cli(&cfg, &["security", "mek", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("Old MEK: master_key_001@v1") && t.contains("New MEK: master_key_001@v2"),
        "{t}"
    );
    // 50 table keys and the audit log's key.
    assert!(t.contains("Keys re-encrypted: 51"), "{t}");

    let out = cli(
        &cfg,
        &["--format", "json", "security", "mek", "rotation-status"],
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["phase"], "dual_active");
    assert_eq!(st["reencrypted"], 51, "50 table keys and the audit key");

    let out = cli(&cfg, &["security", "mek", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no TEK depends on master_key_001@v1 alone"),
        "{}",
        text(&out)
    );

    let out = cli(&cfg, &["security", "mek", "deactivate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("grace period"), "{}", text(&out));

    let out = cli(&cfg, &["security", "mek", "rollback"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("master_key_001@v1 is active again"),
        "{}",
        text(&out)
    );
    let tde = all_unwrap(&cfg, &tables).await;
    assert_eq!(
        tde.key_manager()
            .mek_info()
            .await
            .unwrap()
            .active_version()
            .unwrap()
            .get(),
        1
    );
}

#[tokio::test]
async fn deactivation_after_the_grace_period_and_emergency_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 0);
    let tables = create_tables(&cfg, 20).await;
    assert!(cli(&cfg, &["security", "mek", "rotate"]).status.success());
    let out = cli(&cfg, &["security", "mek", "deactivate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("master_key_001@v1 is deactivated"),
        "{}",
        text(&out)
    );
    all_unwrap(&cfg, &tables).await;

    let out = cli(&cfg, &["security", "mek", "rotate", "--emergency"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("EMERGENCY") && t.contains("20 table(s) got a new TEK version"),
        "{t}"
    );
    assert!(t.contains("t00019"), "{t}");
    // The audit key is renewed but is no table to re-encrypt.
    assert!(
        t.contains("audit log's key got a new version (_heliosdb.audit@v2)"),
        "{t}"
    );
    assert!(!t.contains("    _heliosdb.audit"), "{t}");
    let tde = all_unwrap(&cfg, &tables).await;
    let info = tde.key_manager().mek_info().await.unwrap();
    assert_eq!(info.versions[1].state.to_string(), "compromised");
    // The full check reads the key store, which a running subsystem holds.
    drop(tde);
    let out = cli(&cfg, &["security", "audit-verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn sigkill_during_a_rotation_of_10000_teks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 30);
    let tables = create_tables(&cfg, 10_000).await;
    let store = dir.path().join("keys/tek-store.redb");
    let mut rng = Rng::seeded("rotation of 10000 TEKs");
    // Kills at random moments: after a random number (from the seeded generator) of writes of
    // the key store by the running command. The pass commits each page of re-wrapped TEKs
    // (with the journal's cursor) in one write, after a few writes of the journal and the new
    // MEK version. The number is drawn from a window that moves later while kills find no
    // page committed yet and a little sooner when one lands between pages, so that kills land
    // inside the re-wrap pass whatever the machine's speed (and however long the start-up,
    // which grows with the MEK versions each round leaves). Only kills between committed
    // pages count as landing mid-rotation: they are the ones a resumed pass must continue
    // from its cursor. A pass that ends before its kill is rolled back, and the next round
    // rotates anew.
    let mut lo = 1;
    let mut before_first_page = 0;
    let mut between_pages: Vec<u64> = Vec::new();
    // Keys re-wrapped by the rotation in progress: a resumed pass keeps the work done.
    let mut kept = 0;
    let mut rounds = 0;
    while between_pages.len() < 6 && rounds < 40 {
        rounds += 1;
        let k = rng.between(lo, lo + 2);
        let mut rotate = Command::new(BIN);
        rotate
            .arg("--config")
            .arg(&cfg)
            .args(["security", "mek", "rotate"])
            .env_remove("HELIOSDB_SECURITY_MODE");
        let killed = kill_after_store_changes(rotate, &store, k);
        // After each kill: 100% of TEKs unwrap.
        let tde = all_unwrap(&cfg, &tables).await;
        let km = tde.key_manager();
        let st = km.mek_rotation_status("master_key_001").await.unwrap();
        let seen = st.as_ref().map(|s| (s.phase, s.reencrypted));
        eprintln!("round {rounds}: killed after {k} store writes: {killed}, journal {seen:?}");
        match seen {
            Some((RotationPhase::DualActive, _)) => {
                // The pass ended before the kill: roll it back so the next round rotates
                // anew, and kill sooner from now on.
                km.rollback_mek_rotation("master_key_001", None)
                    .await
                    .unwrap();
                kept = 0;
                lo = lo.saturating_sub(2).max(1);
            }
            Some((_, done)) => {
                assert!(killed, "the command ended without finishing: {seen:?}");
                assert!(
                    done >= kept,
                    "re-wrapped keys were lost: {kept} before, {done} now"
                );
                kept = done;
                if done > 0 {
                    assert!(done < 10_001, "a pass cut short re-wrapped every key");
                    between_pages.push(done);
                    lo = lo.saturating_sub(1).max(1);
                } else {
                    before_first_page += 1;
                    lo += 1;
                }
            }
            None => {
                assert!(killed, "the command ended without starting a rotation");
                lo += 1;
            }
        }
    }
    // The rotation finishes when run to completion.
    let out = cli(&cfg, &["security", "mek", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    let tde = all_unwrap(&cfg, &tables).await;
    let km = tde.key_manager();
    let st = km
        .mek_rotation_status("master_key_001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.phase, RotationPhase::DualActive);
    let info = km.mek_info().await.unwrap();
    assert_eq!(Some(st.new.unwrap().version), info.active_version());
    assert_eq!(
        st.reencrypted, 10_001,
        "the counts add up across the resumed passes (10,000 table keys and the audit key)"
    );
    assert_eq!(
        km.verify_mek_rotation("master_key_001")
            .await
            .unwrap()
            .stranded,
        0
    );
    assert!(
        between_pages.len() >= 3,
        "only {} kills in {rounds} rounds landed between two committed pages ({before_first_page} \
         before the first page): {between_pages:?}",
        between_pages.len()
    );
}
