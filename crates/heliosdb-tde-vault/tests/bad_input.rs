//! Bad input: each gives a clear typed error and changes nothing.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekProvider, MekRef, MekVersion, SecurityMode, TdeError,
    VaultTransitConfig,
};
use heliosdb_tde_vault::VaultMekProvider;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("token");
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

async fn open_err(c: &VaultTransitConfig, mode: SecurityMode) -> TdeError {
    match VaultMekProvider::open(c, mode).await {
        Ok(p) => panic!("open succeeded: {p:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn token_variable_unset() {
    let Some(s) = common::server() else { return };
    let mut c = s.config();
    c.token_env_var = Some("HELIOSDB_TEST_VAULT_NO_SUCH_VARIABLE".into());
    let e = open_err(&c, SecurityMode::Development).await;
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e}");
    let t = e.to_string();
    assert!(
        t.contains("HELIOSDB_TEST_VAULT_NO_SUCH_VARIABLE") && t.contains("kms_config.token_file"),
        "{t}"
    );
}

#[tokio::test]
async fn wrong_token() {
    let Some(s) = common::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = s.config();
    c.token_file = Some(token_file(&dir, "s.this-token-does-not-exist"));
    let e = open_err(&c, SecurityMode::Development).await;
    assert!(matches!(e, TdeError::Provider { .. }), "{e}");
    assert!(e.to_string().contains("token is invalid or expired"), "{e}");
}

#[tokio::test]
async fn transit_and_kv_mounts_missing() {
    let Some(s) = common::server() else { return };
    // The root token has every capability, so the mount check is what fails.
    let dir = tempfile::tempdir().unwrap();
    let mut c = s.config();
    c.token_file = Some(token_file(&dir, &s.root));
    c.mount = Some("no_transit_here".into());
    let e = open_err(&c, SecurityMode::Development).await.to_string();
    assert!(
        e.contains("kms_config.mount")
            && e.contains("bao secrets enable -path=no_transit_here transit"),
        "{e}"
    );
    let mut c = s.config();
    c.token_file = Some(token_file(&dir, &s.root));
    c.state_mount = "no_kv_here".into();
    let e = open_err(&c, SecurityMode::Development).await.to_string();
    assert!(
        e.contains("kms_config.state_mount") && e.contains("-version=2 kv"),
        "{e}"
    );
}

#[tokio::test]
async fn refused_port_is_retryable() {
    let Some(_s) = common::server() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = VaultTransitConfig::new(format!("http://127.0.0.1:{port}"));
    c.token_env_var = Some(common::TOKEN_ENV.into());
    c.timeout_secs = 1;
    c.max_retries = 2;
    let e = open_err(&c, SecurityMode::Development).await;
    match &e {
        TdeError::ProviderUnavailable { retryable, .. } => assert!(retryable),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test]
async fn a_server_that_drops_every_connection_gets_bounded_attempts() {
    let Some(_s) = common::server() else { return };
    // Accepts each connection and closes it at once: every attempt fails the same way, and
    // the listener counts them (a count, not a clock, proves the retries are bounded).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut c = VaultTransitConfig::new(format!("http://127.0.0.1:{port}"));
    c.token_env_var = Some(common::TOKEN_ENV.into());
    c.timeout_secs = 5;
    c.max_retries = 2;
    let e = open_err(&c, SecurityMode::Development).await;
    match &e {
        TdeError::ProviderUnavailable { retryable, .. } => assert!(retryable, "{e}"),
        other => panic!("{other}"),
    }
    let n = accepted.load(Ordering::SeqCst);
    // One request, retried max_retries times: three connections.
    assert_eq!(n, 3, "connections made: {n}");
}

#[tokio::test]
async fn a_server_that_is_not_vault() {
    let Some(_s) = common::server() else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world")
                    .await;
            });
        }
    });
    let mut c = VaultTransitConfig::new(format!("http://{addr}"));
    c.token_env_var = Some(common::TOKEN_ENV.into());
    let e = open_err(&c, SecurityMode::Development).await;
    assert!(e.to_string().contains("Vault server"), "{e}");
}

#[tokio::test]
async fn bad_payloads_and_unknown_meks() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let unknown = MekRef::new(fresh("unknown"), MekVersion::FIRST);
    let e = p.mek_info(&unknown.id).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    let e = p
        .wrap_tek(&unknown, &tek("u@v1"), &ctx("u@v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    let mek = p
        .generate_mek(&fresh("payload"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek("u@v1"), &ctx("u@v1")).await.unwrap();
    let text = String::from_utf8(w.payload.clone()).unwrap();
    for bad in [
        b"not a vault ciphertext".to_vec(),
        text.as_bytes()[..text.len() - 4].to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"vault:v1:".to_vec(),
    ] {
        let mut x = w.clone();
        x.payload = bad;
        let e = p.unwrap_tek(&x, &ctx("u@v1")).await.unwrap_err();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
    }
    let mut x = w.clone();
    x.payload = text.replacen("vault:v1:", "vault:v7:", 1).into_bytes();
    let e = p.unwrap_tek(&x, &ctx("u@v1")).await.unwrap_err();
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    // Nothing changed.
    let info = p.mek_info(&mek.id).await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].state, KeyState::Active);
    assert!(p.unwrap_tek(&w, &ctx("u@v1")).await.is_ok());
}

#[tokio::test]
async fn min_decryption_version_raised_by_an_operator() {
    let Some(s) = common::server() else { return };
    let p = s.provider().await;
    let id = fresh("opmin");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&v1, &tek("m@v1"), &ctx("m@v1")).await.unwrap();
    p.rotate_mek(&id).await.unwrap();
    s.bao(&[
        "write",
        &format!("transit/keys/{id}/config"),
        "min_decryption_version=2",
    ])
    .unwrap();
    let e = p.unwrap_tek(&w, &ctx("m@v1")).await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    assert!(e.to_string().contains("min_decryption_version"), "{e}");
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let Some(s) = common::server() else { return };
    type Change = Box<dyn Fn(&mut VaultTransitConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.timeout_secs = 0), "kms_config.timeout_secs"),
        (
            Box::new(|c| c.address = String::new()),
            "kms_config.address",
        ),
        (
            Box::new(|c| c.address = "not a url".into()),
            "kms_config.address",
        ),
        (
            Box::new(|c| c.address = "ftp://vault:8200".into()),
            "kms_config.address",
        ),
        (
            Box::new(|c| c.mount = Some("../x".into())),
            "kms_config.mount",
        ),
        (
            Box::new(|c| c.key_prefix = Some("a/b".into())),
            "kms_config.key_prefix",
        ),
    ];
    for (change, field) in cases {
        let mut c = s.config();
        change(&mut c);
        let e = open_err(&c, SecurityMode::Development).await;
        assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // Production mode refuses plain http://.
    let e = open_err(&s.config(), SecurityMode::Production).await;
    assert!(
        e.to_string().contains("kms_config.address") && e.to_string().contains("http://"),
        "{e}"
    );
}
