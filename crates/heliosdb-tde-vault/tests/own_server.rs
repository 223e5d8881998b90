//! Tests with their own OpenBao server (file storage, TLS from a test CA made with `openssl`):
//! TLS and `ca_cert`, production-mode rules, a sealed server, and a `kill -9` and restart.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekProvider, SecurityMode, TdeError, VaultTransitConfig,
};
use heliosdb_tde_vault::VaultMekProvider;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An OpenBao server of this test, killed (by its PID) when dropped.
struct OwnServer {
    bao: String,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    unseal_key: String,
    root: String,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

impl OwnServer {
    fn addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cli(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bao)
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_CACERT", self.ca())
            .env("BAO_TOKEN", token)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn start(bao: &str) -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A test CA (EC P-256) and a server certificate for 127.0.0.1 signed by it.
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ca.key",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "2",
                "-subj",
                "/CN=heliosdb test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
                "-out",
                "ca.pem",
            ],
        );
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "server.key",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-subj",
                "/CN=127.0.0.1",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        );
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, cluster_port) = (free_port(), free_port());
        std::fs::create_dir(d.join("data")).unwrap();
        // OpenBao 2.x has no "file" storage backend: integrated storage (raft) on disk.
        std::fs::write(
            d.join("config.hcl"),
            format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_cert_file = \"{cert}\"\n  tls_key_file = \"{key}\"\n}}\napi_addr = \"https://127.0.0.1:{port}\"\ncluster_addr = \"https://127.0.0.1:{cluster_port}\"\n",
                data = d.join("data").display(),
                cert = d.join("server.pem").display(),
                key = d.join("server.key").display(),
            ),
        )
        .unwrap();
        let mut s = OwnServer {
            bao: bao.to_string(),
            dir,
            port,
            child: None,
            unseal_key: String::new(),
            root: String::new(),
        };
        s.spawn();
        let init = s
            .cli(
                "",
                &[
                    "operator",
                    "init",
                    "-key-shares=1",
                    "-key-threshold=1",
                    "-format=json",
                ],
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&init).unwrap();
        s.unseal_key = v["unseal_keys_b64"][0].as_str().unwrap().to_string();
        s.root = v["root_token"].as_str().unwrap().to_string();
        s.unseal();
        s.cli(&s.root, &["secrets", "enable", "transit"]).unwrap();
        s.cli(
            &s.root,
            &["secrets", "enable", "-path=secret", "-version=2", "kv"],
        )
        .unwrap();
        s
    }

    /// Starts the server process and waits (deadline 60 s) until it accepts connections.
    fn spawn(&mut self) {
        let child = Command::new(&self.bao)
            .args([
                "server",
                &format!("-config={}", self.dir.path().join("config.hcl").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the OpenBao server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Unseals and waits (deadline 60 s) until the server says it is unsealed and KV answers.
    fn unseal(&self) {
        self.cli("", &["operator", "unseal", &self.unseal_key])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.cli(&self.root, &["secrets", "list"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "the OpenBao server did not unseal"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn config(&self, token_dir: &Path) -> VaultTransitConfig {
        let path = token_dir.join("token");
        std::fs::write(&path, &self.root).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = VaultTransitConfig::new(self.addr());
        c.token_file = Some(path.to_string_lossy().into_owned());
        c.ca_cert = Some(self.ca().to_string_lossy().into_owned());
        c.timeout_secs = 5;
        c.max_retries = 1;
        c
    }
}

fn bao_bin() -> Option<String> {
    common::server().map(|s| s.bao)
}

#[tokio::test]
async fn tls_with_ca_cert_and_production_rules() {
    let Some(bao) = bao_bin() else { return };
    let srv = OwnServer::start(&bao);
    let tokens = tempfile::tempdir().unwrap();
    let c = srv.config(tokens.path());
    let p = VaultMekProvider::open(&c, SecurityMode::Production)
        .await
        .unwrap();
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    assert!(p.health().await.unwrap().healthy);
    let mek = p
        .generate_mek(&fresh("tls"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let w = p.wrap_tek(&mek, &tek("t@v1"), &ctx("t@v1")).await.unwrap();
    assert!(p.unwrap_tek(&w, &ctx("t@v1")).await.is_ok());
    // Without ca_cert the certificate is not trusted; the error says which field fixes it.
    let mut no_ca = c.clone();
    no_ca.ca_cert = None;
    let err = VaultMekProvider::open(&no_ca, SecurityMode::Production)
        .await
        .unwrap_err();
    let e = err.to_string();
    assert!(
        e.contains("certificate") && e.contains("kms_config.ca_cert"),
        "{e}"
    );
    // Recognised by type: not an outage that waiting (or exit code 5) would suggest.
    assert!(
        matches!(
            err,
            TdeError::ProviderUnavailable {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    // Production refuses an exportable key.
    let exp = fresh("exportable");
    srv.cli(
        &srv.root,
        &[
            "write",
            "-f",
            &format!("transit/keys/{exp}"),
            "type=aes256-gcm96",
            "derived=true",
            "exportable=true",
        ],
    )
    .unwrap();
    let e = p.mek_info(&exp).await.unwrap_err();
    assert!(matches!(e, TdeError::SecurityPolicy(_)), "{e}");
    // Production refuses a token file others can read.
    let path = tokens.path().join("token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = VaultMekProvider::open(&c, SecurityMode::Production)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::InsecurePermissions { .. }), "{e}");
}

#[tokio::test]
async fn sealed_then_killed_and_restarted() {
    let Some(bao) = bao_bin() else { return };
    let mut srv = OwnServer::start(&bao);
    let tokens = tempfile::tempdir().unwrap();
    let c = srv.config(tokens.path());
    let p = VaultMekProvider::open(&c, SecurityMode::Production)
        .await
        .unwrap();
    let id = fresh("sealed");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let mut wraps = Vec::new();
    for i in 0..10 {
        let name = format!("s{i}@v1");
        let key = tek(&name);
        wraps.push((
            name.clone(),
            key.bytes().expose_secret().to_vec(),
            p.wrap_tek(&v1, &key, &ctx(&name)).await.unwrap(),
        ));
    }
    let v2 = p.rotate_mek(&id).await.unwrap().mek;

    srv.cli(&srv.root, &["operator", "seal"]).unwrap();
    let h = p.health().await.unwrap();
    assert!(!h.healthy && h.detail.contains("sealed"), "{h:?}");
    let (name, _, w) = &wraps[0];
    let e = p.unwrap_tek(w, &ctx(name)).await.unwrap_err();
    match &e {
        TdeError::ProviderUnavailable { retryable, .. } => assert!(retryable, "{e}"),
        other => panic!("{other}"),
    }
    assert!(
        e.to_string().contains("sealed") && e.to_string().contains("bao operator unseal"),
        "{e}"
    );
    srv.unseal();
    assert!(p.unwrap_tek(w, &ctx(name)).await.is_ok());

    srv.kill_9();
    let e = p.unwrap_tek(w, &ctx(name)).await.unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "{e}"
    );
    srv.spawn();
    srv.unseal();
    for (name, bytes, w) in &wraps {
        let back = p.unwrap_tek(w, &ctx(name)).await.unwrap();
        assert_eq!(back.bytes().expose_secret().as_slice(), bytes.as_slice());
    }
    // The lifecycle records are intact (read by a fresh provider, no cache).
    let fresh_view = VaultMekProvider::open(&c, SecurityMode::Production)
        .await
        .unwrap();
    let info = fresh_view.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
    assert_eq!(info.versions[1].mek, v2);
    assert_eq!(info.versions[1].state, KeyState::Active);
}
