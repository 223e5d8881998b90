//! The HTTPS Key Vault test server that `cargo xtask test` provisions
//! (`xtask/peers/azure_keyvault_server.py`), for the tests of the Azure Key Vault provider, the
//! facade, the CLI and the bench.
//!
//! [`azure`] reads the test environment (`HELIOSDB_TEST_AZURE_*`) under the service-or-skip
//! policy ([`crate::services`]). The server keeps a separate vault per host label:
//! `https://<label>.kv.localhost:<port>` is a standard vault, `https://<label>.hsm.localhost:<port>`
//! a Managed HSM, and `https://127.0.0.1:<port>` the shared vault `default` (whose challenge can
//! never pass `verify_challenge_resource`). Each test takes a [`fresh_label`], so it starts with
//! an empty vault and sees only its own injected faults and request log. `*.localhost` names do
//! not resolve on every machine: HTTP clients use [`loopback_resolver`].
//!
//! The control calls ([`AzureTestEnv::inject`], [`AzureTestEnv::requests`], ...) talk plain HTTP
//! to the control port with the standard library, so they need no async runtime. This module
//! needs no Azure SDK (the `azure` feature brings `reqwest` for the resolver and `serde_json`).

use crate::services;
use secrecy::SecretString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The variable holding the data-plane URL, `https://127.0.0.1:<port>`.
pub const URL_ENV: &str = "HELIOSDB_TEST_AZURE_URL";
/// The variable holding the path of the test CA (PEM).
pub const CA_ENV: &str = "HELIOSDB_TEST_AZURE_CA";
/// The variable holding the test tenant id.
pub const TENANT_ENV: &str = "HELIOSDB_TEST_AZURE_TENANT";
/// The variable holding the test client (application) id.
pub const CLIENT_ID_ENV: &str = "HELIOSDB_TEST_AZURE_CLIENT_ID";
/// The variable holding the test client secret.
pub const CLIENT_SECRET_ENV: &str = "HELIOSDB_TEST_AZURE_CLIENT_SECRET";
/// The variable holding the control URL, `http://127.0.0.1:<port>`.
pub const CONTROL_ENV: &str = "HELIOSDB_TEST_AZURE_CONTROL";

/// The control label of the Entra ID token endpoint: [`AzureTestEnv::requests`] of it lists the
/// token requests, and [`AzureTestEnv::inject`] with it and the op `token` fails them.
pub const ENTRA_LABEL: &str = "_entra";

/// The request log entry of one data-plane request: method, path (no query), status.
pub type Request = (String, String, u16);

/// The Key Vault test server and the test identity it accepts.
#[derive(Clone)]
pub struct AzureTestEnv {
    port: u16,
    control: SocketAddr,
    ca: PathBuf,
    tenant: String,
    client_id: String,
    client_secret: SecretString,
}

impl std::fmt::Debug for AzureTestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureTestEnv")
            .field("port", &self.port)
            .field("control", &self.control)
            .field("ca", &self.ca)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The Key Vault test server, or `None` after a loud skip (a panic when services are
/// required).
pub fn azure() -> Option<AzureTestEnv> {
    services::require("Key Vault test server (Azure)", probe())
}

fn probe() -> Result<AzureTestEnv, String> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{name} is not set (run `cargo xtask test`)"))
    };
    let url = var(URL_ENV)?;
    let port = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|_| url.starts_with("https://"))
        .ok_or_else(|| format!("{URL_ENV}={url} is not https://<host>:<port>"))?;
    let control = var(CONTROL_ENV)?;
    let control: SocketAddr = control
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{CONTROL_ENV}={control} is not http://<ip>:<port>: {e}"))?;
    let ca = PathBuf::from(var(CA_ENV)?);
    if !ca.is_file() {
        return Err(format!("{CA_ENV}={} is not a file", ca.display()));
    }
    Ok(AzureTestEnv {
        port,
        control,
        ca,
        tenant: var(TENANT_ENV)?,
        client_id: var(CLIENT_ID_ENV)?,
        client_secret: SecretString::from(var(CLIENT_SECRET_ENV)?),
    })
}

/// A vault label no other test (or earlier run against the same server) uses: lowercase
/// letters, digits and `-`, valid as a DNS label.
pub fn fresh_label() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!(
        "t{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A resolver for reqwest that sends `localhost` and every `*.localhost` name to 127.0.0.1
/// and refuses other names (the URL's port is kept).
pub fn loopback_resolver() -> Arc<dyn reqwest::dns::Resolve> {
    Arc::new(LoopbackResolver)
}

struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let ok = host == "localhost" || host.ends_with(".localhost");
        Box::pin(async move {
            if !ok {
                return Err(
                    format!("{host} is not a test host (only *.localhost resolves)").into(),
                );
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

impl AzureTestEnv {
    /// The same as [`azure`]: the server, or `None` after a loud skip (a panic when services
    /// are required).
    pub fn require() -> Option<Self> {
        azure()
    }

    /// The data-plane (TLS) port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The standard vault `label`: `https://<label>.kv.localhost:<port>` (challenge resource
    /// `https://kv.localhost`, so `verify_challenge_resource` passes).
    pub fn vault_url(&self, label: &str) -> String {
        format!("https://{label}.kv.localhost:{}", self.port)
    }

    /// The Managed HSM `label`: `https://<label>.hsm.localhost:<port>` (oct-HSM keys, challenge
    /// resource `https://hsm.localhost`).
    pub fn hsm_url(&self, label: &str) -> String {
        format!("https://{label}.hsm.localhost:{}", self.port)
    }

    /// The shared vault `default` by IP: `https://127.0.0.1:<port>` (needs no resolver;
    /// clients must turn `verify_challenge_resource` off). Its control label is `default`.
    pub fn ip_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The authority host for `ClientSecretCredential`: the token endpoint is
    /// `<authority>/<tenant>/oauth2/v2.0/token` on the data-plane port.
    pub fn authority_url(&self) -> String {
        self.ip_url()
    }

    /// The path of the test CA (PEM).
    pub fn ca_path(&self) -> &std::path::Path {
        &self.ca
    }

    /// The test CA (PEM bytes).
    ///
    /// # Panics
    ///
    /// When the file cannot be read.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", self.ca.display()))
    }

    /// The test tenant id.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The test client (application) id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The test client secret.
    pub fn client_secret(&self) -> SecretString {
        self.client_secret.clone()
    }

    /// A reqwest client for the data plane: the test CA added to the platform roots, the
    /// [`loopback_resolver`], no redirects, a generous timeout (a deadline, not a measurement).
    ///
    /// # Panics
    ///
    /// When the CA cannot be parsed or the client cannot be built.
    pub fn http_client(&self) -> reqwest::Client {
        let certs = reqwest::Certificate::from_pem_bundle(&self.ca_pem())
            .unwrap_or_else(|e| panic!("{}: not a PEM certificate: {e}", self.ca.display()));
        reqwest::Client::builder()
            .tls_certs_merge(certs)
            .dns_resolver(loopback_resolver())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap_or_else(|e| panic!("cannot build the test HTTP client: {e}"))
    }

    /// Queues `count` injected answers for the vault `label` and operation `op` (`create`,
    /// `import`, `get`, `update`, `list`, `versions`, `rotate`, `delete`, `wrapkey`,
    /// `unwrapkey`, `encrypt`, `decrypt`, or `*`), applied to authenticated data-plane
    /// requests only (the 401 challenge is never consumed): after `delay_ms`, the answer
    /// `status` with a Key Vault JSON error (429 `Throttled`, 500, 503, ...) and, when given,
    /// `Retry-After: <retry_after>`. `status` 0 only delays, then serves the request.
    pub fn inject(
        &self,
        label: &str,
        op: &str,
        count: u32,
        status: u16,
        retry_after: Option<u32>,
        delay_ms: u64,
    ) {
        self.control_json(
            "POST",
            "/_test/inject",
            &serde_json::json!({
                "vault": label, "op": op, "count": count, "status": status,
                "retry_after": retry_after, "delay_ms": delay_ms,
            }),
        );
    }

    /// Like [`inject`](Self::inject) with `body` as the answer's JSON body.
    pub fn inject_body(
        &self,
        label: &str,
        op: &str,
        count: u32,
        status: u16,
        body: serde_json::Value,
    ) {
        self.control_json(
            "POST",
            "/_test/inject",
            &serde_json::json!({
                "vault": label, "op": op, "count": count, "status": status, "body": body,
            }),
        );
    }

    /// Every data-plane request the vault `label` received, in order (the 401 challenges and
    /// injected answers included): `(method, path without query, status)`. The label
    /// [`ENTRA_LABEL`] holds the token endpoint's requests.
    pub fn requests(&self, label: &str) -> Vec<Request> {
        let v = self.control_json(
            "GET",
            &format!("/_test/requests?vault={label}"),
            &serde_json::Value::Null,
        );
        v["requests"]
            .as_array()
            .unwrap_or_else(|| panic!("/_test/requests answered {v}"))
            .iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or_default().to_string(),
                    r["path"].as_str().unwrap_or_default().to_string(),
                    u16::try_from(r["status"].as_u64().unwrap_or_default()).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Sets the vault `label`'s `recoveryLevel` (default `Recoverable+Purgeable`;
    /// `Recoverable` means purge protection on) and list page size (default 25), each when
    /// given.
    pub fn set_vault(&self, label: &str, recovery_level: Option<&str>, page_size: Option<u32>) {
        self.control_json(
            "POST",
            "/_test/vault",
            &serde_json::json!({
                "vault": label, "recovery_level": recovery_level, "page_size": page_size,
            }),
        );
    }

    /// A bearer token the data plane accepts for 1 hour: for every vault, or only for the
    /// vault `label` when given (another vault answers it with the 401 challenge). A test
    /// token: never print it (tests check that providers don't either).
    pub fn mint_token(&self, label: Option<&str>) -> String {
        let v = self.control_json(
            "POST",
            "/_test/token",
            &serde_json::json!({ "vault": label }),
        );
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("/_test/token answered no access_token"))
            .to_string()
    }

    /// Forgets the vault `label`: its keys, settings, queued injections and request log.
    pub fn reset(&self, label: &str) {
        self.control_json(
            "POST",
            "/_test/reset",
            &serde_json::json!({ "vault": label }),
        );
    }

    /// One control request (`Connection: close`); panics unless it answers 200 with JSON.
    fn control_json(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut s = TcpStream::connect_timeout(&self.control, Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach the Key Vault test server's control port {}: {e}",
                    self.control
                )
            });
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.control,
            body.len()
        );
        s.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("control {path}: {e}"));
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("control {path}: {e}"));
        let text = String::from_utf8_lossy(&raw);
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("control {path}: not an HTTP answer: {text}"));
        let status = head.split(' ').nth(1).unwrap_or_default();
        assert_eq!(
            status, "200",
            "control {method} {path} failed: {head}\n{payload}"
        );
        serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("control {path}: not JSON ({e}): {payload}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_labels_are_dns_labels_and_differ() {
        let a = fresh_label();
        let b = fresh_label();
        assert_ne!(a, b);
        for l in [&a, &b] {
            assert!(l.len() <= 63, "{l}");
            assert!(
                l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{l}"
            );
        }
    }

    #[test]
    fn the_debug_form_has_no_secret() {
        let env = AzureTestEnv {
            port: 1,
            control: SocketAddr::from(([127, 0, 0, 1], 2)),
            ca: PathBuf::from("/ca.pem"),
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: SecretString::from("very-secret-value".to_string()),
        };
        let dbg = format!("{env:?}");
        assert!(!dbg.contains("very-secret-value"), "{dbg}");
        assert_eq!(env.vault_url("ab"), "https://ab.kv.localhost:1");
        assert_eq!(env.hsm_url("ab"), "https://ab.hsm.localhost:1");
        assert_eq!(env.ip_url(), "https://127.0.0.1:1");
    }

    #[tokio::test]
    async fn the_resolver_maps_localhost_names_only() {
        use std::str::FromStr;
        let r = loopback_resolver();
        let name = |s: &str| reqwest::dns::Name::from_str(s).unwrap();
        let got: Vec<SocketAddr> = r.resolve(name("v1.kv.localhost")).await.unwrap().collect();
        assert_eq!(got, [SocketAddr::from(([127, 0, 0, 1], 0))]);
        assert!(r.resolve(name("localhost")).await.is_ok());
        assert!(r.resolve(name("example.com")).await.is_err());
    }
}
