//! Where the PIN comes from (environment, file, configuration), and what `enable_logging`
//! writes, checked by opening the real SoftHSM2 token with each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_conformance::softhsm::hsm_config;
use heliosdb_tde_core::{SecurityMode, TdeError};
use heliosdb_tde_pkcs11::{PinSource, Pkcs11MekProvider, Pkcs11Settings, resolve_pin};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn pin_from_a_file_or_the_configuration() {
    let _serial = common::serial().await;
    if common::token_present().is_none() {
        return;
    }
    assert!(
        std::env::var_os("HELIOSDB_HSM_PIN").is_none(),
        "unset HELIOSDB_HSM_PIN to run this test: it takes precedence over the file"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hsm-pin");
    std::fs::write(&file, format!("{}\n", common::pin())).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = hsm_config();
    c.pin_file = Some(file.clone());
    let (pin, source) = resolve_pin(&c, SecurityMode::Production).unwrap();
    assert_eq!(source, PinSource::File);
    Pkcs11MekProvider::open(Pkcs11Settings::from_config(&c, pin))
        .await
        .unwrap();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = resolve_pin(&c, SecurityMode::Production).unwrap_err();
    assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(
        resolve_pin(&c, SecurityMode::Development).is_ok(),
        "development mode allows it"
    );

    let mut c = hsm_config();
    c.pin = common::pin();
    let (pin, source) = resolve_pin(&c, SecurityMode::Development).unwrap();
    assert_eq!(source, PinSource::ConfigFile, "accepted in development");
    Pkcs11MekProvider::open(Pkcs11Settings::from_config(&c, pin))
        .await
        .unwrap();

    let e = resolve_pin(&hsm_config(), SecurityMode::Production).unwrap_err();
    assert!(e.to_string().contains("HELIOSDB_HSM_PIN"), "{e}");
}

#[test]
fn production_refuses_a_pin_in_the_configuration_file() {
    let mut c = hsm_config();
    c.pin = common::pin();
    let e = resolve_pin(&c, SecurityMode::Production).unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    let text = e.to_string();
    for name in ["hsm_config.pin", "HELIOSDB_HSM_PIN", "hsm_config.pin_file"] {
        assert!(text.contains(name), "{name} not named: {text}");
    }
    assert!(!text.contains(&common::pin()), "the PIN leaked: {text}");
    // Refused even when another source is configured: the PIN sits in the file all the same.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hsm-pin");
    std::fs::write(&file, "1234\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.pin_file = Some(file);
    assert!(resolve_pin(&c, SecurityMode::Production).is_err());
}

#[test]
fn the_pin_file_is_checked_on_the_opened_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hsm-pin");
    std::fs::write(&file, "1234\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with = |path: &std::path::Path| {
        let mut c = hsm_config();
        c.pin_file = Some(path.to_path_buf());
        c
    };

    // A symbolic link, even to a good file, is not followed.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for mode in [SecurityMode::Production, SecurityMode::Development] {
        let e = resolve_pin(&with(&link), mode).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    // A directory or a FIFO is not a regular file (and opening the FIFO does not block).
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for path in [dir.path().to_path_buf(), fifo] {
        let e = resolve_pin(&with(&path), SecurityMode::Development).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    // A file owned by another user.
    let foreign = if rustix::process::geteuid().is_root() {
        let f = dir.path().join("foreign");
        std::fs::write(&f, "1234\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        f
    } else {
        // Not root: a file root owns.
        std::path::PathBuf::from("/etc/passwd")
    };
    for mode in [SecurityMode::Production, SecurityMode::Development] {
        let e = resolve_pin(&with(&foreign), mode).unwrap_err();
        assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
        assert!(
            e.to_string().contains("not by the user running HeliosDB"),
            "{e}"
        );
    }

    // Group or other bits: refused in production.
    for bits in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(bits)).unwrap();
        let e = resolve_pin(&with(&file), SecurityMode::Production).unwrap_err();
        assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, source) = resolve_pin(&with(&file), SecurityMode::Production).unwrap();
    assert_eq!(source, PinSource::File);
}

const CHILD: &str = "HELIOSDB_PKCS11_ENV_CHILD";

/// The other process of `the_pin_variable_is_removed_from_the_environment_once_read`.
#[test]
fn child_reads_the_pin_from_the_environment() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert!(std::env::var_os("HELIOSDB_HSM_PIN").is_some());
    let (_, source) = resolve_pin(&hsm_config(), SecurityMode::Production).unwrap();
    assert_eq!(source, PinSource::Environment);
    assert!(
        std::env::var_os("HELIOSDB_HSM_PIN").is_none(),
        "HELIOSDB_HSM_PIN is still in the environment"
    );
    // A child of this process does not inherit it.
    let out = std::process::Command::new("env").output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("HELIOSDB_HSM_PIN"));
    println!("CHILD-OK");
}

#[test]
fn the_pin_variable_is_removed_from_the_environment_once_read() {
    // In a child process, so that this process's environment is left alone.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reads_the_pin_from_the_environment",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("HELIOSDB_HSM_PIN", "246810")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn enable_logging_logs_each_operation_without_secrets() {
    let _serial = common::serial().await;
    if common::token_present().is_none() {
        return;
    }
    use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, TableKey, WrapContext};
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let p = Pkcs11MekProvider::open(common::settings(&common::pin()))
        .await
        .unwrap();
    let id = heliosdb_tde_conformance::provider::fresh_mek_id("hsm_log");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek =
        TableKey::generate("logged@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let ctx = WrapContext::table_key(tek.id());
    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
    p.unwrap_tek(&w, &ctx).await.unwrap();

    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    for op in ["generating an MEK", "wrapping a TEK", "unwrapping a TEK"] {
        assert!(text.contains(op), "no log line for {op}: {text}");
    }
    assert!(!text.contains(&common::pin()), "the PIN was logged");
    let key_hex: String = tek.bytes().expose_secret()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !text.to_lowercase().contains(&key_hex),
        "key bytes were logged"
    );
}
