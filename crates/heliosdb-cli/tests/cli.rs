//! The heliosdb-cli binary, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");
const PASS: &str = "cli test passphrase, long enough for production";

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_CONFIG")
        .env_remove("HELIOSDB_MEK_PASSPHRASE")
        .env_remove("HELIOSDB_MEK_PASSPHRASE_OLD")
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

fn write_config(dir: &Path) -> std::path::PathBuf {
    let pass = dir.join("secrets/pass.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\ndefault_mek_id = \"cli_mek\"\ncache_limit = 50\n\
             security_mode = \"production\"\naudit_log_path = \"{d}/audit.log\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            p = pass.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn quickstart_works_twice_and_says_development() {
    let dir = tempfile::tempdir().unwrap();
    let first = cli(dir.path(), &["quickstart", "--dir", "qs"]);
    assert!(first.status.success(), "{}", text(&first));
    let t = text(&first);
    assert!(t.contains("security mode: development"), "{t}");
    assert!(t.contains("TEK tek:public.orders@v1 created"), "{t}");
    assert!(t.contains("public.orders@v2 now encrypts"), "{t}");
    assert!(t.contains("Security checklist"), "{t}");
    let second = cli(dir.path(), &["quickstart", "--dir", "qs"]);
    assert!(second.status.success(), "{}", text(&second));
    let t = text(&second);
    assert!(t.contains("exists: reopened and unwrapped"), "{t}");
    assert!(t.contains("public.orders@v3 now encrypts"), "{t}");
    // The quickstart writes no configuration file, so only the structure can be checked from
    // outside (the MACs need its key store).
    let audit = cli(
        dir.path(),
        &[
            "security",
            "audit-verify",
            "--structure-only",
            "--path",
            "qs/audit.log",
        ],
    );
    assert!(text(&audit).contains("chain intact"), "{}", text(&audit));
}

#[test]
fn quickstart_in_production_applies_the_production_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["quickstart", "--production"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(
            "MEK provider error: Passphrase environment variable HELIOSDB_MEK_PASSPHRASE not found"
        ),
        "{}",
        text(&out)
    );
    let out = Command::new(BIN)
        .args(["quickstart", "--production"])
        .current_dir(dir.path())
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env("HELIOSDB_MEK_PASSPHRASE", PASS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("security mode: production"),
        "{}",
        text(&out)
    );
}

#[test]
fn security_commands_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["--config", cfg];
        a.extend_from_slice(args);
        cli(dir.path(), &a)
    };
    let out = run(&["security", "tek", "create", "public.users"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("tek:public.users@v1"), "{}", text(&out));
    let out = run(&["security", "tek", "create", "public.users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert!(
        run(&["security", "tek", "rotate", "public.users"])
            .status
            .success()
    );

    let out = run(&["--format", "json", "security", "tek", "list"]);
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["decrypt_only", "active"]);

    let out = run(&["--format", "json", "security", "mek-info"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["id"], "cli_mek");
    assert_eq!(info["active_version"], 1);

    let out = run(&["--format", "json", "security", "key-stats"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["tables"], 1);
    assert_eq!(stats["teks_by_state"]["active"], 1);

    let out = run(&["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["security_mode"], "production");
    assert_eq!(status["provider_secure"], true);
    assert_eq!(status["provider_health"]["healthy"], true, "{status:#}");
    let checklist = status["checklist"].as_array().unwrap();
    assert_eq!(checklist.len(), 10);
    // Every item passes but the backup one: no backup_dir is configured, so status exits 3.
    for c in checklist {
        let backup = c["item"].as_str().unwrap().contains("backup");
        assert_eq!(c["status"] == "fail", backup, "{c:#}");
    }
    assert_eq!(out.status.code(), Some(3));

    let out = run(&["security", "mek", "generate", "--id", "second_mek"]);
    assert!(
        text(&out).contains("generated second_mek@v1"),
        "{}",
        text(&out)
    );
    let out = run(&["security", "tek", "list", "--type", "master"]);
    assert!(text(&out).contains("mek:second_mek@v1"), "{}", text(&out));
    assert!(run(&["security", "audit-verify"]).status.success());
}

#[test]
fn status_exits_3_when_a_checklist_item_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{}/keys\"\nsecurity_mode = \"development\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = cli(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "security", "status"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("[FAIL]") && t.contains("In-Memory (INSECURE - testing only)"),
        "{t}"
    );
    assert!(t.contains("Provider health: healthy"), "{t}");
}

#[test]
fn change_passphrase_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    // The first command that writes creates the MEK (a read-only one never does).
    assert!(
        cli(
            dir.path(),
            &[
                "--config",
                cfg.to_str().unwrap(),
                "security",
                "tek",
                "create",
                "public.t"
            ]
        )
        .status
        .success()
    );
    let new_pass = "the replacement passphrase, also quite long";
    std::fs::write(dir.path().join("secrets/pass.txt"), new_pass).unwrap();
    let out = Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "security",
            "mek",
            "change-passphrase",
        ])
        .current_dir(dir.path())
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env("HELIOSDB_MEK_PASSPHRASE_OLD", PASS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 files re-encrypted"),
        "{}",
        text(&out)
    );
    let out = cli(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "security", "mek-info"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn bad_input_gives_readable_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "cache_limit = 0\nkey_storage_path = \"/tmp/x\"\n").unwrap();
    let out = cli(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "security", "status"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cache_limit"), "{}", text(&out));
    assert!(
        !text(&out).contains("InvalidConfig {"),
        "a debug dump: {}",
        text(&out)
    );

    std::fs::write(&cfg, "cache_limt = 10\n").unwrap();
    let out = cli(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "security", "status"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cache_limt"), "{}", text(&out));

    let out = cli(
        dir.path(),
        &["--config", "/nonexistent/tde.toml", "security", "status"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("/nonexistent/tde.toml"),
        "{}",
        text(&out)
    );

    let out = cli(dir.path(), &["security", "no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}
