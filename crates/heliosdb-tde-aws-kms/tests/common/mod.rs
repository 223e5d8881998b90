//! The moto server as `cargo xtask test` provisions it, and the set-up every test shares: an
//! `aws-sdk-kms` client talking to moto directly (the operator's view), a fresh KMS key for
//! `key_id`, a fresh alias prefix and a fresh default MEK id per test, and a parser of the
//! provider's payload. Every test takes the server through [`moto`], so a missing server is a
//! loud skip, or a failure under `HELIOSDB_REQUIRE_SERVICES=1`.
#![allow(dead_code, unreachable_pub)]

use aws_sdk_kms::Client;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, Tag};
use heliosdb_tde_aws_kms::AwsKmsMekProvider;
use heliosdb_tde_conformance::provider::fresh_mek_id;
use heliosdb_tde_conformance::services;
use heliosdb_tde_core::{
    AwsKmsConfig, EncryptionAlgorithm, MekId, MekRef, SecurityMode, TableKey, TekId, WrapContext,
};
use std::collections::{BTreeMap, BTreeSet};

pub const ENDPOINT_ENV: &str = "HELIOSDB_TEST_AWS_ENDPOINT";
pub const PYTHON_ENV: &str = "HELIOSDB_TEST_PEERS_PYTHON";
pub const SERVICE: &str = "moto server (AWS KMS)";

/// The shared moto server, or `None` after a loud skip (a panic under
/// `HELIOSDB_REQUIRE_SERVICES=1`).
pub fn moto() -> Option<Moto> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let probe = (|| {
        Ok::<_, String>(Moto {
            endpoint: var(ENDPOINT_ENV)?,
            region: var("AWS_REGION")?,
            access_key: var("AWS_ACCESS_KEY_ID")?,
            secret_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    })();
    services::require(SERVICE, probe)
}

/// The peers venv's python (it has boto3), or `None` after a loud skip.
pub fn python() -> Option<String> {
    services::require(
        "the test peers' python (boto3)",
        std::env::var(PYTHON_ENV).map_err(|_| format!("{PYTHON_ENV} is not set")),
    )
}

/// A random lowercase hex string of 12 characters.
pub fn random() -> String {
    let id = fresh_mek_id("r");
    id.as_str().trim_start_matches("r_").to_string()
}

/// The moto server's address and the test credentials.
#[derive(Clone, Debug)]
pub struct Moto {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

/// One KMS key as the operator created it.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub arn: String,
}

impl Moto {
    /// The loopback address of the server (for a fault proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| {
                panic!(
                    "{ENDPOINT_ENV}={} is not http://ip:port: {e}",
                    self.endpoint
                )
            })
    }

    /// An SDK client talking to moto directly, as an operator would, in the test's region.
    pub fn client(&self) -> Client {
        self.client_in(&self.region)
    }

    /// An SDK client for another region of the same server.
    pub fn client_in(&self, region: &str) -> Client {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "heliosdb-tests",
            ))
            .build();
        Client::from_conf(conf)
    }

    /// A fresh `SYMMETRIC_DEFAULT` / `ENCRYPT_DECRYPT` key.
    pub async fn create_key(&self) -> Key {
        self.create_key_with(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
            .await
    }

    /// A fresh key of `spec` and `usage` in the test's region.
    pub async fn create_key_with(&self, spec: KeySpec, usage: KeyUsageType) -> Key {
        create_key(&self.client(), spec, usage).await
    }

    /// Settings for `key_id` on this server with a fresh alias prefix
    /// (`alias/heliosdb-test-<random>`), so tests never see each other's aliases.
    pub fn config(&self, key_id: &str) -> AwsKmsConfig {
        let mut c = AwsKmsConfig::new(self.region.clone(), key_id);
        c.endpoint = Some(self.endpoint.clone());
        c.alias_prefix = format!("alias/heliosdb-test-{}", random());
        c
    }

    /// A fresh key, settings for it and a fresh default MEK id.
    pub async fn fixture(&self) -> Fixture {
        let key = self.create_key().await;
        Fixture {
            moto: self.clone(),
            config: self.config(&key.arn),
            key,
            default_mek: fresh_mek_id("dflt"),
        }
    }

    /// The aliases whose name starts with `prefix`, with the key id each points at.
    pub async fn aliases(&self, prefix: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut marker = None;
        loop {
            let page = self
                .client()
                .list_aliases()
                .set_marker(marker)
                .limit(100)
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListAliases: {e:?}"));
            for a in page.aliases() {
                let name = a.alias_name().unwrap_or_default();
                if name.starts_with(prefix) {
                    out.insert(
                        name.to_string(),
                        a.target_key_id().unwrap_or_default().to_string(),
                    );
                }
            }
            if page.truncated() {
                marker = page.next_marker().map(str::to_string);
            } else {
                return out;
            }
        }
    }

    /// Every key id on the server (in the test's region).
    pub async fn key_ids(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut marker = None;
        loop {
            let page = self
                .client()
                .list_keys()
                .set_marker(marker)
                .limit(1000)
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListKeys: {e:?}"));
            for k in page.keys() {
                if let Some(id) = k.key_id() {
                    out.insert(id.to_string());
                }
            }
            if page.truncated() {
                marker = page.next_marker().map(str::to_string);
            } else {
                return out;
            }
        }
    }

    /// The tags of a key, as a map.
    pub async fn tags(&self, key_id: &str) -> BTreeMap<String, String> {
        let out = self
            .client()
            .list_resource_tags()
            .key_id(key_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListResourceTags({key_id}): {e:?}"));
        out.tags()
            .iter()
            .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
            .collect()
    }

    /// Of the keys in `after` and not in `before`, those tagged `heliosdb:mek_id = mek`.
    pub async fn new_keys_of(
        &self,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
        mek: &MekId,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for id in after.difference(before) {
            if self
                .tags(id)
                .await
                .get("heliosdb:mek_id")
                .map(String::as_str)
                == Some(mek.as_str())
            {
                out.push(id.clone());
            }
        }
        out
    }

    /// The `KeyState` moto records for a key (`Enabled`, `Disabled`, `PendingDeletion`...).
    pub async fn key_state(&self, key_id: &str) -> String {
        let out = self
            .client()
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeKey({key_id}): {e:?}"));
        out.key_metadata()
            .and_then(|m| m.key_state())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default()
    }

    /// Creates `alias` pointing at `key_id`, as an operator would.
    pub async fn create_alias(&self, alias: &str, key_id: &str) {
        self.client()
            .create_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateAlias({alias} -> {key_id}): {e:?}"));
    }

    /// Decrypts `blob` directly with the SDK (the operator's view), pinning `key_id` and the
    /// encryption context; the plaintext or the error's code.
    pub async fn decrypt(
        &self,
        blob: &[u8],
        key_id: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        let mut req = self
            .client()
            .decrypt()
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .key_id(key_id);
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        match req.send().await {
            Ok(out) => Ok(out
                .plaintext()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default()),
            Err(e) => Err(e
                .as_service_error()
                .and_then(|s| s.meta().code())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{e:?}"))),
        }
    }
}

/// A key made with a bare `aws kms create-key` (no key spec, no usage: KMS's defaults).
pub async fn create_bare_key(client: &Client) -> Key {
    let out = client
        .create_key()
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateKey: {e:?}"));
    let m = out.key_metadata().expect("CreateKey returns metadata");
    Key {
        id: m.key_id().to_string(),
        arn: m.arn().expect("a key ARN").to_string(),
    }
}

/// Creates a key of `spec` and `usage` through `client`.
pub async fn create_key(client: &Client, spec: KeySpec, usage: KeyUsageType) -> Key {
    let out = client
        .create_key()
        .key_spec(spec.clone())
        .key_usage(usage.clone())
        .description("heliosdb test key (made by the operator)")
        .tags(
            Tag::builder()
                .tag_key("heliosdb-test")
                .tag_value("operator")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateKey({spec:?}, {usage:?}): {e:?}"));
    let m = out.key_metadata().expect("CreateKey returns metadata");
    Key {
        id: m.key_id().to_string(),
        arn: m.arn().expect("a key ARN").to_string(),
    }
}

/// A fresh key (`key_id` = its ARN), a fresh alias prefix and a fresh default MEK id.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub moto: Moto,
    pub key: Key,
    pub config: AwsKmsConfig,
    pub default_mek: MekId,
}

impl Fixture {
    /// The provider over these settings, in development mode (moto speaks http://).
    pub async fn open(&self) -> AwsKmsMekProvider {
        self.open_with(&self.config).await
    }

    /// The provider over `config`, with this fixture's default MEK id.
    pub async fn open_with(&self, config: &AwsKmsConfig) -> AwsKmsMekProvider {
        AwsKmsMekProvider::open(config, &self.default_mek, SecurityMode::Development)
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"))
    }

    /// The provider with its endpoint at `url` (a fault proxy), short timeouts and
    /// `max_attempts` SDK attempts per call.
    pub async fn open_at(&self, url: &str, max_attempts: u32) -> AwsKmsMekProvider {
        let mut c = self.config.clone();
        c.endpoint = Some(url.to_string());
        c.timeout_secs = 5;
        c.connect_timeout_ms = 1000;
        c.max_attempts = Some(max_attempts);
        self.open_with(&c).await
    }

    /// The aliases under this fixture's prefix.
    pub async fn aliases(&self) -> BTreeMap<String, String> {
        self.moto.aliases(&self.config.alias_prefix).await
    }
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
    MekRef::new(
        id.clone(),
        heliosdb_tde_core::MekVersion::new(version).unwrap(),
    )
}

/// The provider's payload, parsed as the crate's `payload.rs` lays it out: a format byte, the
/// key ARN (u16 big-endian length, UTF-8), the `CiphertextBlob` (u32 big-endian length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub format: u8,
    pub arn: String,
    pub blob: Vec<u8>,
}

impl Payload {
    pub fn parse(bytes: &[u8]) -> Payload {
        let format = bytes[0];
        let arn_len = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
        let arn = String::from_utf8(bytes[3..3 + arn_len].to_vec()).unwrap();
        let rest = &bytes[3 + arn_len..];
        let blob_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert_eq!(rest.len(), 4 + blob_len, "trailing bytes after the blob");
        Payload {
            format,
            arn,
            blob: rest[4..].to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.format];
        out.extend_from_slice(&(self.arn.len() as u16).to_be_bytes());
        out.extend_from_slice(self.arn.as_bytes());
        out.extend_from_slice(&(self.blob.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.blob);
        out
    }
}
