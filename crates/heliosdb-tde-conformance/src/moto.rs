//! The moto server (a local AWS KMS endpoint) that `cargo xtask test` provisions, for the tests
//! of the AWS KMS provider, the facade and the CLI.
//!
//! [`moto`] reads the test environment under the service-or-skip policy ([`crate::services`]).
//! Keys are made with boto3 from the test peers' Python (`HELIOSDB_TEST_PEERS_PYTHON`), an
//! independent client, so this crate needs no AWS SDK. moto keeps all its state in memory and
//! is shared by every test: tests never reset it, and isolate themselves with fresh MEK ids and
//! alias prefixes ([`unique`]).

use crate::services;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

/// The variable holding the moto server's URL, `http://127.0.0.1:<port>`.
pub const ENDPOINT_ENV: &str = "HELIOSDB_TEST_AWS_ENDPOINT";
/// The variable holding the test peers' Python interpreter (it has boto3).
pub const PYTHON_ENV: &str = "HELIOSDB_TEST_PEERS_PYTHON";

/// The shared moto server and the client settings of the test environment.
#[derive(Clone, Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The region the tests use (`AWS_REGION`).
    pub region: String,
    python: PathBuf,
}

/// The moto server, or `None` after a loud skip (a panic when services are required).
pub fn moto() -> Option<Moto> {
    services::require("moto server (AWS KMS)", probe())
}

fn probe() -> Result<Moto, String> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{name} is not set (run `cargo xtask test`)"))
    };
    let endpoint = var(ENDPOINT_ENV)?;
    let region = var("AWS_REGION")?;
    var("AWS_ACCESS_KEY_ID")?;
    var("AWS_SECRET_ACCESS_KEY")?;
    let python = PathBuf::from(var(PYTHON_ENV)?);
    Ok(Moto {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        region,
        python,
    })
}

/// A name no other test (or earlier run against the same server) uses: letters, digits and
/// `_`, valid in MEK ids and KMS alias names.
pub fn unique(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{tag}_{}_{n:x}", std::process::id())
}

/// The boto3 snippet behind [`Moto::boto3`]: `argv[1]` endpoint, `argv[2]` region, then the
/// command's own arguments; prints one result line.
const BOTO3: &str = r#"
import sys, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name=sys.argv[2])
cmd, args = sys.argv[3], sys.argv[4:]
if cmd == "create-key":
    print(kms.create_key(Description=args[0], KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"])
elif cmd == "key-state":
    print(kms.describe_key(KeyId=args[0])["KeyMetadata"]["KeyState"])
elif cmd == "alias-target":
    target = [a.get("TargetKeyId", "") for a in kms.get_paginator("list_aliases").paginate().build_full_result()["Aliases"] if a["AliasName"] == args[0]]
    print(target[0] if target else "")
elif cmd == "enable-key-rotation":
    kms.enable_key_rotation(KeyId=args[0], RotationPeriodInDays=int(args[1]))
    print("ok")
elif cmd == "rotate-key-on-demand":
    kms.rotate_key_on_demand(KeyId=args[0])
    print("ok")
else:
    raise SystemExit("unknown command " + cmd)
"#;

impl Moto {
    /// The server's socket address (to put a [`crate::fault::FaultProxy`] in front of it).
    ///
    /// # Panics
    ///
    /// When the endpoint is not `http://<ip>:<port>`.
    pub fn upstream(&self) -> SocketAddr {
        self.endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| {
                panic!(
                    "{ENDPOINT_ENV}={} is not http://ip:port: {e}",
                    self.endpoint
                )
            })
    }

    /// Runs one boto3 command against the server (`create-key DESCRIPTION`, `key-state KEY`,
    /// `alias-target ALIAS`, `enable-key-rotation KEY DAYS`, `rotate-key-on-demand KEY`) and
    /// returns its output line.
    ///
    /// # Panics
    ///
    /// When Python cannot run or the command fails: that is a test failure.
    pub fn boto3(&self, command: &str, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(BOTO3)
            .arg(&self.endpoint)
            .arg(&self.region)
            .arg(command)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        assert!(
            out.status.success(),
            "boto3 {command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a symmetric encryption key (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`) and returns
    /// its ARN.
    pub fn create_key(&self, description: &str) -> String {
        let arn = self.boto3("create-key", &[description]);
        assert!(arn.starts_with("arn:"), "create-key returned {arn:?}");
        arn
    }

    /// The state KMS reports for a key (`Enabled`, `Disabled`, `PendingDeletion`, ...).
    pub fn key_state(&self, key: &str) -> String {
        self.boto3("key-state", &[key])
    }

    /// The key id an alias points at, or an empty string when there is no such alias.
    pub fn alias_target(&self, alias: &str) -> String {
        self.boto3("alias-target", &[alias])
    }
}
