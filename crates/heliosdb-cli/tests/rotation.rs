//! MEK rotation from the command line, and the CLI killed with SIGKILL at random moments while
//! it rotates 10,000 TEKs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{RotationPhase, TdeConfig, TdeSubsystem};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

fn random_ms(lo: u64, hi: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    lo + u64::from_le_bytes(b) % (hi - lo)
}

#[tokio::test]
async fn sigkill_during_a_rotation_of_10000_teks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 30);
    let tables = create_tables(&cfg, 10_000).await;
    // How long one whole rotation takes on this machine, so that kills land inside it.
    let start = std::time::Instant::now();
    let out = cli(&cfg, &["security", "mek", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    let full = start.elapsed().as_millis() as u64;
    subsystem(&cfg)
        .await
        .key_manager()
        .rollback_mek_rotation("master_key_001", None)
        .await
        .unwrap();
    // Kill moments are drawn from a window that adapts to what each kill found: a kill that
    // came before the rotation started raises its lower end, one that came after it finished
    // lowers its upper end. The window so closes in on the rotation whatever the machine's
    // speed, instead of relying on one measurement of it.
    let (mut lo, mut hi) = (full / 10, full.max(20));
    let mut mid_rotation = 0;
    let mut rounds = 0;
    while mid_rotation < 6 && rounds < 40 {
        rounds += 1;
        let round = rounds;
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["security", "mek", "rotate"])
            .env_remove("HELIOSDB_SECURITY_MODE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = random_ms(lo, hi.max(lo + 2));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // After each kill: 100% of TEKs unwrap.
        let tde = all_unwrap(&cfg, &tables).await;
        let km = tde.key_manager();
        let st = km.mek_rotation_status("master_key_001").await.unwrap();
        eprintln!(
            "round {round}: {:?}",
            st.as_ref().map(|s| (s.phase, s.reencrypted))
        );
        match st.map(|s| s.phase) {
            Some(RotationPhase::DualActive) => {
                // It finished before the kill: roll it back so the next round rotates anew,
                // and kill earlier from now on.
                km.rollback_mek_rotation("master_key_001", None)
                    .await
                    .unwrap();
                hi = delay.max(lo + 2);
            }
            Some(_) => mid_rotation += 1,
            // Killed before the rotation began: kill later from now on.
            None => lo = delay.min(hi.saturating_sub(2)),
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
        mid_rotation >= 3,
        "only {mid_rotation} kills landed mid-rotation"
    );
}
