//! Issue 9, item 6, as an operator meets it: `heliosdb-cli security mek change-passphrase`
//! refuses to run while a server (here: this test process) has the secure file provider open
//! on the same MEK directory, names the server's process, and changes nothing; once the server
//! has stopped, the same command succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{TdeConfig, TdeSubsystem};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");
const PASS: &str = "lock test passphrase, long enough for production";

fn write_config(dir: &Path) -> std::path::PathBuf {
    let pass = dir.join("secrets/pass.txt");
    std::fs::create_dir_all(pass.parent().unwrap()).unwrap();
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{d}/keys\"\ndefault_mek_id = \"lock_mek\"\n\
             security_mode = \"production\"\n\n\
             [secure_file_config]\nstorage_path = \"{d}/mek\"\npassphrase_file = \"{p}\"\n",
            d = dir.display(),
            p = pass.display()
        ),
    )
    .unwrap();
    cfg
}

fn change_passphrase(dir: &Path, cfg: &Path) -> Output {
    Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "security",
            "mek",
            "change-passphrase",
        ])
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_CONFIG")
        .env_remove("HELIOSDB_MEK_PASSPHRASE")
        .env("HELIOSDB_MEK_PASSPHRASE_OLD", PASS)
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

/// The MEK files' names and bytes.
fn mek_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".mek"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn change_passphrase_refuses_while_a_server_holds_the_mek_directory() {
    assert!(
        std::env::var_os("HELIOSDB_SECURITY_MODE").is_none(),
        "unset HELIOSDB_SECURITY_MODE to run this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let server = TdeSubsystem::new(TdeConfig::from_toml_file(&cfg).unwrap())
        .await
        .unwrap();
    let mek_dir = dir.path().join("mek");
    let before = mek_files(&mek_dir);
    assert_eq!(before.len(), 1, "the server generated its MEK");

    // The new passphrase is in place; the server still runs.
    std::fs::write(
        dir.path().join("secrets/pass.txt"),
        "the replacement passphrase, also quite long\n",
    )
    .unwrap();
    let out = change_passphrase(dir.path(), &cfg);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("in use by another process")
            && t.contains(&format!("process {} holds its lock", std::process::id()))
            && t.contains(&mek_dir.display().to_string()),
        "{t}"
    );
    assert_eq!(
        mek_files(&mek_dir),
        before,
        "a refused change rewrote a file"
    );

    drop(server);
    let out = change_passphrase(dir.path(), &cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 files re-encrypted"),
        "{}",
        text(&out)
    );
    assert_ne!(mek_files(&mek_dir), before);
}
