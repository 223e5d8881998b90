//! Where the PIN comes from (environment, file, configuration), and what `enable_logging`
//! writes, checked by opening the real SoftHSM2 token with each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{ConfigSecret, HsmConfig, SecurityMode, TdeError};
use heliosdb_tde_pkcs11::{PinSource, Pkcs11MekProvider, Pkcs11Settings, resolve_pin};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

fn hsm_config() -> HsmConfig {
    HsmConfig {
        pkcs11_library_path: common::env(
            "HELIOSDB_TEST_PKCS11_MODULE",
            "/usr/lib/softhsm/libsofthsm2.so",
        ),
        slot_id: 0,
        token_label: Some(common::env("HELIOSDB_TEST_PKCS11_TOKEN", "heliosdb-test")),
        timeout_secs: 30,
        enable_logging: true,
        pin: None,
        pin_file: None,
        session_pool_size: None,
    }
}

#[tokio::test]
async fn pin_from_a_file_or_the_configuration() {
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
    c.pin = Some(ConfigSecret::new(common::pin()));
    let (pin, source) = resolve_pin(&c, SecurityMode::Production).unwrap();
    assert_eq!(
        source,
        PinSource::ConfigFile,
        "accepted; the checklist flags it"
    );
    Pkcs11MekProvider::open(Pkcs11Settings::from_config(&c, pin))
        .await
        .unwrap();

    let e = resolve_pin(&hsm_config(), SecurityMode::Production).unwrap_err();
    assert!(e.to_string().contains("HELIOSDB_HSM_PIN"), "{e}");
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
