//! The Key Vault test server as `cargo xtask test` provisions it, and the set-up every test
//! shares: a fresh vault namespace per test (`https://<label>.kv.localhost:<port>` or
//! `https://<label>.hsm.localhost:<port>`), an SDK `KeyClient` talking to it directly (the
//! operator's view), the server's control calls (request log, injected answers, vault
//! settings, minted tokens) and a parser of the provider's payload. Every test takes the server
//! through [`server`], so a missing server is a loud skip, or a failure under
//! `HELIOSDB_REQUIRE_SERVICES=1`.
#![allow(dead_code, unreachable_pub)]

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, JsonWebKey, Key, KeyOperation, KeyType, UpdateKeyPropertiesParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use heliosdb_tde_azure_kv::AzureKvMekProvider;
use heliosdb_tde_conformance::azure as shared;
use heliosdb_tde_conformance::provider::fresh_mek_id;
use heliosdb_tde_core::{
    AzureKeyVaultConfig, EncryptionAlgorithm, MekId, MekRef, MekVersion, Result, SecurityMode,
    TableKey, TekId, WrapContext,
};
use secrecy::ExposeSecret as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The test server's addresses and test credentials.
#[derive(Clone, Debug)]
pub struct Server {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The TLS port.
    pub port: u16,
    /// The CA that signed the server's certificate (PEM file).
    pub ca: PathBuf,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// `http://127.0.0.1:<control port>`.
    pub control: String,
    /// The shared settings (`heliosdb_tde_conformance::azure`).
    pub env: shared::AzureTestEnv,
}

/// The shared test server (read by `heliosdb_tde_conformance::azure`), or `None` after a loud
/// skip (a panic under `HELIOSDB_REQUIRE_SERVICES=1`).
pub fn server() -> Option<Server> {
    let env = shared::azure()?;
    let control = std::env::var(shared::CONTROL_ENV)
        .unwrap_or_else(|_| panic!("{} is not set", shared::CONTROL_ENV));
    Some(Server {
        url: env.authority_url(),
        port: env.port(),
        ca: env.ca_path().to_path_buf(),
        tenant: env.tenant().to_string(),
        client_id: env.client_id().to_string(),
        client_secret: env.client_secret().expose_secret().to_string(),
        control: control.trim_end_matches('/').to_string(),
        env,
    })
}

/// A random lowercase hex string of 12 characters.
pub fn random() -> String {
    fresh_mek_id("r")
        .as_str()
        .trim_start_matches("r_")
        .to_string()
}

/// The resolver as the provider's builder takes it.
pub fn resolver() -> Arc<dyn reqwest::dns::Resolve> {
    shared::loopback_resolver()
}

/// A fixed bearer token (minted by the server's control API), as an `Arc<dyn TokenCredential>`.
#[derive(Debug)]
pub struct StaticToken(pub Secret);

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// One request as the server logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

impl Server {
    /// A reqwest client trusting the server's CA, resolving `*.localhost` to loopback.
    pub fn http(&self) -> reqwest::Client {
        self.env.http_client()
    }

    /// A fresh standard vault (`<label>.kv.localhost`).
    pub fn vault(&self) -> Vault {
        self.vault_of(false)
    }

    /// A fresh Managed HSM (`<label>.hsm.localhost`).
    pub fn hsm(&self) -> Vault {
        self.vault_of(true)
    }

    fn vault_of(&self, hsm: bool) -> Vault {
        Vault {
            server: self.clone(),
            label: shared::fresh_label(),
            hsm,
        }
    }

    async fn control_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status();
        let v: serde_json::Value = r.json().await.expect("JSON answer");
        assert!(status.is_success(), "POST {path} {body}: {status} {v}");
        v
    }

    /// A bearer token the server accepts (for every vault when `vault` is `None`).
    pub async fn mint_token(&self, vault: Option<&str>) -> String {
        let body = match vault {
            Some(v) => serde_json::json!({ "vault": v }),
            None => serde_json::json!({}),
        };
        let v = self.control_post("/_test/token", body).await;
        v["access_token"].as_str().expect("a token").to_string()
    }

    /// Requests to the token endpoint, as the server logged them.
    pub async fn token_requests(&self) -> Vec<Logged> {
        self.requests_of("_entra").await
    }

    async fn requests_of(&self, label: &str) -> Vec<Logged> {
        let r = reqwest::Client::new()
            .get(format!("{}/_test/requests?vault={label}", self.control))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /_test/requests: {e}"));
        let v: serde_json::Value = r.json().await.expect("JSON answer");
        v["requests"]
            .as_array()
            .expect("a request list")
            .iter()
            .map(|r| Logged {
                method: r["method"].as_str().unwrap_or_default().to_string(),
                path: r["path"].as_str().unwrap_or_default().to_string(),
                query: r["query"].as_str().unwrap_or_default().to_string(),
                status: r["status"].as_u64().unwrap_or_default() as u16,
            })
            .collect()
    }
}

/// One vault namespace of the server, fresh per test.
#[derive(Clone, Debug)]
pub struct Vault {
    pub server: Server,
    pub label: String,
    pub hsm: bool,
}

impl Vault {
    /// `https://<label>.kv.localhost:<port>` (or `.hsm.localhost`).
    pub fn url(&self) -> String {
        self.url_at(self.server.port)
    }

    /// The vault's URL on another port (a fault proxy in front of the server).
    pub fn url_at(&self, port: u16) -> String {
        let zone = if self.hsm { "hsm" } else { "kv" };
        format!("https://{}.{zone}.localhost:{port}", self.label)
    }

    /// The server's TLS address (for a fault proxy in front of it).
    pub fn upstream(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server.port))
    }

    /// An SDK client for this vault with a bearer token minted for it, the server's CA, the
    /// loopback resolver, the challenge check on and no retries: the operator's view.
    pub async fn key_client(&self) -> KeyClient {
        let token = self.server.mint_token(Some(&self.label)).await;
        self.key_client_with(Arc::new(StaticToken(Secret::new(token))))
    }

    /// An SDK client for this vault with `credential`.
    pub fn key_client_with(&self, credential: Arc<dyn TokenCredential>) -> KeyClient {
        let options = KeyClientOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(self.server.http()))),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            verify_challenge_resource: Some(true),
            ..Default::default()
        };
        KeyClient::new(&self.url(), credential, Some(options)).expect("KeyClient")
    }

    /// Settings for `key_name` in this vault: development mode values the tests share
    /// (`client_secret` against the server's token endpoint, its CA, the challenge check on,
    /// short timeouts and few retries).
    pub fn config(&self, key_name: &str) -> AzureKeyVaultConfig {
        let mut c = AzureKeyVaultConfig::new(self.url(), key_name);
        c.credential = "client_secret".into();
        c.tenant_id = Some(self.server.tenant.clone());
        c.client_id = Some(self.server.client_id.clone());
        c.client_secret_env_var = shared::CLIENT_SECRET_ENV.into();
        c.authority_host = Some(self.server.url.clone());
        c.ca_cert = Some(self.server.ca.clone());
        c.verify_challenge_resource = true;
        c.timeout_secs = 10;
        c.max_retries = 2;
        c.max_retry_secs = 10;
        if self.hsm {
            c.wrap_algorithm = Some("A256GCM".into());
        } else {
            c.wrap_algorithm = Some("RSA-OAEP-256".into());
            c.key_size = 2048;
        }
        c
    }

    /// Requests to this vault, as the server logged them (challenges included).
    pub async fn requests(&self) -> Vec<Logged> {
        self.server.requests_of(&self.label).await
    }

    /// The logged requests that change state (create, import, update, rotate, delete).
    pub async fn writes(&self) -> Vec<Logged> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r.status != 401 && is_write(r))
            .collect()
    }

    /// Answers the next `count` authenticated requests of `op` (`wrapkey`, `unwrapkey`,
    /// `encrypt`, `decrypt`, `get`, `create`, `update`, `versions`, `*`) with `status`, and a
    /// `Retry-After` when given.
    pub async fn inject(&self, op: &str, count: u32, status: u16, retry_after: Option<u64>) {
        self.server
            .control_post(
                "/_test/inject",
                serde_json::json!({
                    "vault": self.label, "op": op, "count": count, "status": status,
                    "retry_after": retry_after,
                }),
            )
            .await;
    }

    /// Sets the vault's recovery level (purge protection) and list page size.
    pub async fn set(&self, recovery_level: Option<&str>, page_size: Option<u32>) {
        self.server
            .control_post(
                "/_test/vault",
                serde_json::json!({
                    "vault": self.label, "recovery_level": recovery_level, "page_size": page_size,
                }),
            )
            .await;
    }

    /// Makes the server close the connection after every answer to this vault (one TCP
    /// connection per request), so that a TCP fault proxy counts requests.
    pub async fn close_connections(&self) {
        self.server
            .control_post(
                "/_test/vault",
                serde_json::json!({ "vault": self.label, "close_connections": true }),
            )
            .await;
    }

    /// Creates `name` (or a new version of it) as an operator would.
    pub async fn create_key(&self, name: &str, params: CreateKeyParameters) -> Key {
        let kc = self.key_client().await;
        kc.create_key(name, content(params), None)
            .await
            .unwrap_or_else(|e| panic!("create_key({name}): {e:?}"))
            .into_model()
            .expect("a key")
    }

    /// An RSA key of `bits` with wrapKey and unwrapKey, as an operator would create it.
    pub async fn create_rsa(&self, name: &str, bits: i32) -> Key {
        self.create_key(
            name,
            CreateKeyParameters {
                kty: Some(KeyType::Rsa),
                key_size: Some(bits),
                key_ops: Some(vec![KeyOperation::WrapKey, KeyOperation::UnwrapKey]),
                ..Default::default()
            },
        )
        .await
    }

    /// An oct-HSM 256-bit key with `ops` (Managed HSM only).
    pub async fn create_oct(&self, name: &str, ops: Vec<KeyOperation>) -> Key {
        self.create_key(
            name,
            CreateKeyParameters {
                kty: Some(KeyType::OctHsm),
                key_size: Some(256),
                key_ops: Some(ops),
                ..Default::default()
            },
        )
        .await
    }

    /// Every version of `name`: (version id, enabled, key_ops, tags), oldest first.
    pub async fn versions(&self, name: &str) -> Vec<VersionView> {
        use futures_util::TryStreamExt as _;
        let kc = self.key_client().await;
        let mut pager = kc
            .list_key_properties_versions(name, None)
            .unwrap_or_else(|e| panic!("list versions({name}): {e:?}"));
        let mut out = Vec::new();
        while let Some(p) = pager
            .try_next()
            .await
            .unwrap_or_else(|e| panic!("list versions({name}): {e:?}"))
        {
            let kid = p.kid.clone().unwrap_or_default();
            let version = kid.rsplit('/').next().unwrap_or_default().to_string();
            let key = kc
                .get_key(
                    name,
                    Some(
                        azure_security_keyvault_keys::models::KeyClientGetKeyOptions {
                            key_version: Some(version.clone()),
                            ..Default::default()
                        },
                    ),
                )
                .await
                .ok()
                .and_then(|r| r.into_model().ok());
            out.push(VersionView {
                enabled: p
                    .attributes
                    .as_ref()
                    .and_then(|a| a.enabled)
                    .unwrap_or(true),
                ops: key
                    .and_then(|k| k.key.and_then(|j| j.key_ops))
                    .unwrap_or_default(),
                tags: p.tags.clone().unwrap_or_default(),
                version,
            });
        }
        out
    }

    /// Sets tags, operations and the enabled flag of one version, as an operator would.
    pub async fn update(&self, name: &str, version: &str, params: UpdateKeyPropertiesParameters) {
        let kc = self.key_client().await;
        kc.update_key_properties(
            name,
            content(params),
            Some(
                azure_security_keyvault_keys::models::KeyClientUpdateKeyPropertiesOptions {
                    key_version: Some(version.to_string()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("update_key_properties({name}/{version}): {e:?}"));
    }

    /// Imports `jwk` as `name` (a new version when the name exists).
    pub async fn import(&self, name: &str, jwk: JsonWebKey) -> Key {
        let kc = self.key_client().await;
        let params = azure_security_keyvault_keys::models::ImportKeyParameters {
            key: Some(jwk),
            hsm: Some(self.hsm),
            ..Default::default()
        };
        kc.import_key(name, content(params), None)
            .await
            .unwrap_or_else(|e| panic!("import_key({name}): {e:?}"))
            .into_model()
            .expect("a key")
    }
}

/// One key version as the operator sees it.
#[derive(Clone, Debug)]
pub struct VersionView {
    pub version: String,
    pub enabled: bool,
    /// Empty when the version cannot be read (a disabled version answers 403).
    pub ops: Vec<String>,
    pub tags: HashMap<String, String>,
}

/// Whether a logged request changes state.
pub fn is_write(r: &Logged) -> bool {
    match r.method.as_str() {
        "PUT" | "PATCH" | "DELETE" => true,
        "POST" => r.path.ends_with("/create") || r.path.ends_with("/rotate"),
        _ => false,
    }
}

/// Serializes an SDK parameter struct as a request body.
pub fn content<T>(params: T) -> RequestContent<T>
where
    T: TryInto<RequestContent<T>, Error = azure_core::Error>,
{
    params.try_into().expect("JSON body")
}

/// The version id (last path segment) of a key's `kid`.
pub fn version_of(key: &Key) -> String {
    key.key
        .as_ref()
        .and_then(|k| k.kid.as_deref())
        .and_then(|kid| kid.rsplit('/').next())
        .expect("a kid with a version")
        .to_string()
}

pub fn tek(id: &str) -> TableKey {
    TableKey::generate(id.parse::<TekId>().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap()
}

pub fn ctx(id: &str) -> WrapContext {
    WrapContext::table_key(&id.parse::<TekId>().unwrap())
}

pub fn fresh(prefix: &str) -> MekId {
    fresh_mek_id(prefix)
}

pub fn mek_ref(id: &MekId, version: u32) -> MekRef {
    MekRef::new(id.clone(), MekVersion::new(version).unwrap())
}

/// A fresh key name (letters, digits and `-`).
pub fn key_name(prefix: &str) -> String {
    format!("{prefix}-{}", random())
}

/// The three wrap algorithms and the vault kind each runs on.
pub const RSA: &str = "RSA-OAEP-256";
pub const KW: &str = "A256KW";
pub const GCM: &str = "A256GCM";

impl Server {
    /// A fresh vault of the kind `algorithm` needs (a standard vault for RSA, a Managed HSM
    /// otherwise) and a fixture for it: a fresh key name and default MEK id, settings for
    /// `algorithm`.
    pub fn fixture(&self, algorithm: &str) -> Fixture {
        let vault = if algorithm == RSA {
            self.vault()
        } else {
            self.hsm()
        };
        vault.fixture(algorithm)
    }
}

impl Vault {
    /// A fresh key name and default MEK id in this vault, with settings for `algorithm`.
    pub fn fixture(&self, algorithm: &str) -> Fixture {
        let key_name = key_name("dflt");
        let mut config = self.config(&key_name);
        config.wrap_algorithm = Some(algorithm.to_string());
        Fixture {
            vault: self.clone(),
            key_name,
            config,
            default_mek: fresh("dflt"),
        }
    }
}

/// A vault, a fresh default key name and MEK id, and the provider's settings for them.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub vault: Vault,
    pub key_name: String,
    pub config: AzureKeyVaultConfig,
    pub default_mek: MekId,
}

impl Fixture {
    /// The provider over these settings in development mode, with the loopback resolver.
    pub async fn open(&self) -> AzureKvMekProvider {
        self.try_open()
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"))
    }

    /// The provider over these settings, or its error.
    pub async fn try_open(&self) -> Result<AzureKvMekProvider> {
        self.try_open_with(&self.config, SecurityMode::Development)
            .await
    }

    /// The provider over `config` in `mode`, with this fixture's default MEK id.
    pub async fn try_open_with(
        &self,
        config: &AzureKeyVaultConfig,
        mode: SecurityMode,
    ) -> Result<AzureKvMekProvider> {
        AzureKvMekProvider::builder(config, &self.default_mek, mode)
            .dns_resolver(resolver())
            .open()
            .await
    }

    /// The provider over `config` (development mode), or a panic.
    pub async fn open_with(&self, config: &AzureKeyVaultConfig) -> AzureKvMekProvider {
        self.try_open_with(config, SecurityMode::Development)
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"))
    }

    /// The provider with its vault URL on `port` (a fault proxy in front of the server), short
    /// timeouts and one retry per call, so that a cut call returns in seconds.
    pub async fn open_at(&self, port: u16) -> AzureKvMekProvider {
        let mut c = self.config.clone();
        c.vault_url = self.vault.url_at(port);
        c.timeout_secs = 5;
        c.max_retries = 1;
        c.max_retry_secs = 5;
        self.open_with(&c).await
    }
}

/// The provider's payload, parsed as the crate lays it out (`docs/formats/wrapped-tek.md`): a
/// format byte, the algorithm byte (1 RSA-OAEP-256, 2 A256KW, 3 A256GCM), the Key Vault
/// version id (u8 length, ASCII), the ciphertext (u16 big-endian length) and, for A256GCM,
/// the iv (u8 length) and the tag (u8 length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub format: u8,
    pub algorithm: u8,
    pub version_id: String,
    pub ciphertext: Vec<u8>,
    pub iv: Option<Vec<u8>>,
    pub tag: Option<Vec<u8>>,
}

impl Payload {
    pub fn parse(bytes: &[u8]) -> Payload {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let out = bytes[at..at + n].to_vec();
            at += n;
            out
        };
        let format = take(1)[0];
        let algorithm = take(1)[0];
        let vlen = take(1)[0] as usize;
        let version_id = String::from_utf8(take(vlen)).unwrap();
        let clen = take(2);
        let clen = u16::from_be_bytes([clen[0], clen[1]]) as usize;
        let ciphertext = take(clen);
        let (iv, tag) = if algorithm == 3 {
            let n = take(1)[0] as usize;
            let iv = take(n);
            let n = take(1)[0] as usize;
            (Some(iv), Some(take(n)))
        } else {
            (None, None)
        };
        assert_eq!(at, bytes.len(), "trailing bytes after the payload");
        Payload {
            format,
            algorithm,
            version_id,
            ciphertext,
            iv,
            tag,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.format, self.algorithm, self.version_id.len() as u8];
        out.extend_from_slice(self.version_id.as_bytes());
        out.extend_from_slice(&(self.ciphertext.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        if let (Some(iv), Some(tag)) = (&self.iv, &self.tag) {
            out.push(iv.len() as u8);
            out.extend_from_slice(iv);
            out.push(tag.len() as u8);
            out.extend_from_slice(tag);
        }
        out
    }
}

impl Vault {
    /// RSA-OAEP-256 encryption of `plaintext` with the public key of `name`/`version` as
    /// `get_key` gives it (aws-lc-rs): what anyone with `keys/get` can do.
    pub async fn rsa_encrypt(&self, name: &str, version: &str, plaintext: &[u8]) -> Vec<u8> {
        use aws_lc_rs::rsa::{
            OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicKeyComponents,
        };
        let kc = self.key_client().await;
        let key = kc
            .get_key(
                name,
                Some(
                    azure_security_keyvault_keys::models::KeyClientGetKeyOptions {
                        key_version: Some(version.to_string()),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("get_key({name}/{version}): {e:?}"))
            .into_model()
            .unwrap();
        let jwk = key.key.expect("a JWK");
        let strip = |b: &[u8]| b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..].to_vec();
        let public = PublicKeyComponents {
            n: strip(&jwk.n.expect("n")),
            e: strip(&jwk.e.expect("e")),
        }
        .try_into()
        .expect("an RSA public key");
        let oaep = OaepPublicEncryptingKey::new(public).unwrap();
        let mut buf = vec![0u8; oaep.ciphertext_size()];
        oaep.encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut buf, None)
            .unwrap()
            .to_vec()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}
