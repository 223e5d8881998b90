//! The moto server (a local AWS KMS endpoint) for the AWS KMS provider's tests.

use super::Environment;
use crate::Result;
use std::path::Path;
use std::process::Command;

/// The pinned package that ships the moto server (its `server` extra brings Flask and the
/// other server dependencies; moto depends on boto3, which the tests use as an independent
/// client).
pub const MOTO_PACKAGE: (&str, &str) = ("moto[server]", "5.2.5");

/// How long moto may take to answer after it was started: generous, because it imports every
/// AWS service model at start-up and a loaded 2-core machine is slow; polled, so a fast start
/// is not slowed down by it.
pub const MOTO_READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// The test credentials given to the tests (moto checks no signature; any value works).
pub const AWS_TEST_KEY_ID: &str = "testing";
/// See [`AWS_TEST_KEY_ID`].
pub const AWS_TEST_SECRET: &str = "testing";
/// The region the tests use.
pub const AWS_TEST_REGION: &str = "us-east-1";

/// Variables of the machine's own AWS setup that would change what the SDK (or the facade)
/// does in the tests: profiles, session tokens, web identity and container credentials,
/// retry settings, endpoint overrides, and HeliosDB's own key-id override. They are removed
/// from the test environment; so is every `AWS_ENDPOINT_URL_<SERVICE>` (see
/// [`aws_vars_to_remove`]).
pub const AWS_VARS_REMOVED: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_SDK_UA_APP_ID",
    "HELIOSDB_KMS_KEY_ID",
];

/// The variables to remove from the test environment, given the names set in this process's
/// environment: [`AWS_VARS_REMOVED`] and every `AWS_ENDPOINT_URL*` found.
pub fn aws_vars_to_remove(present: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = AWS_VARS_REMOVED.iter().map(|v| v.to_string()).collect();
    for name in present {
        if name.starts_with("AWS_ENDPOINT_URL") && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// What the tests are told about the moto server on `port`: the endpoint, region (for the SDK
/// and for boto3) and test credentials, no instance metadata, the (empty) config and credentials files under
/// `aws_dir`, and the peers' Python (which has boto3).
pub fn moto_env(port: u16, aws_dir: &Path, python: &Path) -> Vec<(String, String)> {
    [
        (
            "HELIOSDB_TEST_AWS_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("AWS_REGION", AWS_TEST_REGION.to_string()),
        // boto3 reads the region from this one only.
        ("AWS_DEFAULT_REGION", AWS_TEST_REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", AWS_TEST_KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY", AWS_TEST_SECRET.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        (
            "AWS_CONFIG_FILE",
            aws_dir.join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            aws_dir.join("credentials").display().to_string(),
        ),
        ("HELIOSDB_TEST_PEERS_PYTHON", python.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts a moto server (`moto_server -H 127.0.0.1 -p <free port>`) from the peers' venv,
/// waits for `GET /moto-api/` to answer, and points the tests at it with an AWS environment of
/// their own (see [`moto_env`] and [`aws_vars_to_remove`]), so the machine's AWS configuration
/// never leaks in. moto keeps everything in memory; nothing is created before the tests run.
pub(super) fn start_moto(state_dir: &Path, env: &mut Environment) -> Result {
    let root = crate::workspace_root();
    let venv = crate::peers::ensure_packages(&root, &[MOTO_PACKAGE])?;
    let server = venv.join("bin").join("moto_server");
    if !server.is_file() {
        return Err(format!(
            "{} is missing: the {} package no longer installs it",
            server.display(),
            MOTO_PACKAGE.0
        ));
    }
    // Empty AWS config and credentials files: the SDK reads these instead of ~/.aws.
    let aws_dir = state_dir.join("aws");
    std::fs::create_dir_all(&aws_dir)
        .map_err(|e| format!("cannot create {}: {e}", aws_dir.display()))?;
    for f in ["config", "credentials"] {
        let p = aws_dir.join(f);
        std::fs::write(&p, b"").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let port = crate::peers::free_port()?;
    let listen = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    // One log per xtask process: several may run at once in the same tree.
    let log_path = state_dir.join(format!("moto-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let port_arg = port.to_string();
    let mut cmd = Command::new(&server);
    cmd.args(["-H", "127.0.0.1", "-p", &port_arg])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    eprintln!(
        "xtask: $ {} -H 127.0.0.1 -p {port} (log: {})",
        server.display(),
        log_path.display()
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", server.display()))?;
    let ready =
        crate::peers::wait_until("moto", &mut child, &log_path, MOTO_READY_DEADLINE, || {
            crate::peers::http_get_status(listen, "/moto-api/") == Some(200)
        });
    // From here on the server is stopped with the environment, even if a step fails.
    env.adopt(
        format!("moto at http://{listen} (pid {})", child.id()),
        child,
    );
    ready?;
    for name in aws_vars_to_remove(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
        env.unset(name);
    }
    for (k, v) in moto_env(port, &aws_dir, &crate::peers::venv_python(&venv)) {
        env.set(k, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn moto_environment_is_exactly_the_promised_variables() {
        let env = moto_env(
            5077,
            Path::new("/w/.services/aws"),
            Path::new("/w/target/peers/venv/bin/python"),
        );
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("HELIOSDB_TEST_AWS_ENDPOINT", "http://127.0.0.1:5077"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/w/.services/aws/config"),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "/w/.services/aws/credentials"
                ),
                (
                    "HELIOSDB_TEST_PEERS_PYTHON",
                    "/w/target/peers/venv/bin/python"
                ),
            ]
        );
    }

    #[test]
    fn the_machines_aws_setup_is_removed() {
        let removed = aws_vars_to_remove(s(&[
            "PATH",
            "AWS_ENDPOINT_URL_KMS",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_PROFILE",
        ]));
        for v in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_KMS",
            "HELIOSDB_KMS_KEY_ID",
        ] {
            assert_eq!(
                removed.iter().filter(|r| *r == v).count(),
                1,
                "{v} in {removed:?}"
            );
        }
        // What the moto service sets itself is replaced, not removed.
        for v in ["PATH", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE"] {
            assert!(!removed.iter().any(|r| r == v), "{v} removed");
        }
        for (k, _) in moto_env(1, Path::new("/a"), Path::new("/p")) {
            assert!(!removed.contains(&k), "{k} both set and removed");
        }
    }

    /// Provisions moto as `cargo xtask test -p heliosdb-tde-aws-kms` does and checks what the
    /// tests are promised: a KMS endpoint that creates a key and encrypts with an encryption
    /// context through boto3 from the exported Python and environment alone, the AWS
    /// variables, the empty config files; and that dropping the environment stops the server.
    #[test]
    fn moto_is_provisioned_and_stopped() {
        let Some(env) = crate::services::provision_for_test("moto", "heliosdb-tde-aws-kms") else {
            return;
        };
        let var = |k: &str| env.var(k);
        let endpoint = var("HELIOSDB_TEST_AWS_ENDPOINT");
        let listen: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
        assert_eq!(
            crate::peers::http_get_status(listen, "/moto-api/"),
            Some(200)
        );
        for f in ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"] {
            assert_eq!(std::fs::read(var(f)).unwrap(), b"", "{f} is not empty");
        }
        assert!(env.removed().any(|r| r == "AWS_PROFILE"));
        // boto3 from the exported Python, configured by the exported variables only.
        let script = "import os, boto3\n\
                      kms = boto3.client('kms', endpoint_url=os.environ['HELIOSDB_TEST_AWS_ENDPOINT'])\n\
                      k = kms.create_key(Description='xtask check')['KeyMetadata']['KeyId']\n\
                      ctx = {'heliosdb:table': 'xtask'}\n\
                      ct = kms.encrypt(KeyId=k, Plaintext=b'x' * 32, EncryptionContext=ctx)['CiphertextBlob']\n\
                      pt = kms.decrypt(KeyId=k, CiphertextBlob=ct, EncryptionContext=ctx)['Plaintext']\n\
                      print('ok' if pt == b'x' * 32 else 'mismatch')\n";
        let mut cmd = Command::new(var("HELIOSDB_TEST_PEERS_PYTHON"));
        cmd.arg("-c")
            .arg(script)
            .env("AWS_PROFILE", "leaked-from-the-machine");
        env.apply(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        drop(env);
        assert_eq!(
            crate::peers::http_get_status(listen, "/moto-api/"),
            None,
            "moto still answers after the environment was dropped"
        );
    }
}
