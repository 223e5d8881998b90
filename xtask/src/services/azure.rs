//! The HTTPS Key Vault test server (`xtask/peers/azure_keyvault_server.py`) for the Azure Key
//! Vault provider's tests, the facade's and the CLI's.
//!
//! The server is a Python standard-library program with the pinned `cryptography` package from
//! the peers' venv. It listens with TLS on one free loopback port (the Key Vault data plane and
//! the Entra ID token endpoint) and with plain HTTP on another (`/healthz` and the `/_test/*`
//! controls), and writes its throwaway CA to `<state>/ca.pem`. xtask generates the test tenant,
//! client id and client secret (the secret goes to the server in a 0600 file, never on a command
//! line), waits for the control `/healthz`, removes the machine's Azure variables and exports
//! where everything is ([`azure_env`]).

use super::Environment;
use crate::Result;
use std::path::Path;
use std::process::Command;

/// The pinned package the test server needs (already a dependency of moto; pinned here so the
/// server does not depend on moto being provisioned first).
pub const AZURE_PEER_PACKAGE: (&str, &str) = ("cryptography", "50.0.2");

/// The server script, relative to the workspace root.
pub const AZURE_SERVER_SCRIPT: &str = "xtask/peers/azure_keyvault_server.py";

/// Variables of the machine's own Azure setup that would change what the SDK (or the facade)
/// does in the tests: the authority host, identities for workload, client-secret and
/// certificate credentials, managed-identity endpoints (App Service, IMDS, Cloud Shell), and
/// the vault URL override. They are removed from the test environment.
pub const AZURE_VARS_REMOVED: &[&str] = &[
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_KEYVAULT_URL",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
];

/// The test identity the server accepts and the tests use.
pub struct AzureIdentity {
    /// The tenant (32 hex digits).
    pub tenant: String,
    /// The application (client) id (32 hex digits).
    pub client_id: String,
    /// The client secret (32 hex digits, test-only).
    pub client_secret: String,
}

/// What the tests are told about the server: the data-plane URL on `port` (tests derive
/// `https://<label>.kv.localhost:<port>` from its port), the CA file, the test identity and
/// the control URL on `control_port`.
pub fn azure_env(
    port: u16,
    control_port: u16,
    ca: &Path,
    id: &AzureIdentity,
) -> Vec<(String, String)> {
    [
        (
            "HELIOSDB_TEST_AZURE_URL",
            format!("https://127.0.0.1:{port}"),
        ),
        ("HELIOSDB_TEST_AZURE_CA", ca.display().to_string()),
        ("HELIOSDB_TEST_AZURE_TENANT", id.tenant.clone()),
        ("HELIOSDB_TEST_AZURE_CLIENT_ID", id.client_id.clone()),
        (
            "HELIOSDB_TEST_AZURE_CLIENT_SECRET",
            id.client_secret.clone(),
        ),
        (
            "HELIOSDB_TEST_AZURE_CONTROL",
            format!("http://127.0.0.1:{control_port}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Writes `secret` to a new file at `path` readable by its owner only.
fn write_private(path: &Path, secret: &str) -> Result {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(secret.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Starts the Key Vault test server on two free loopback ports, waits for its control
/// `/healthz`, and points the tests at it (see [`azure_env`]) with the machine's Azure
/// variables removed ([`AZURE_VARS_REMOVED`]).
pub(super) fn start_azure_kv(state_dir: &Path, env: &mut Environment) -> Result {
    let root = crate::workspace_root();
    let venv = crate::peers::ensure_packages(&root, &[AZURE_PEER_PACKAGE])?;
    let python = crate::peers::venv_python(&venv);
    let script = root.join(AZURE_SERVER_SCRIPT);
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    // One directory per xtask process: several may run at once in the same tree.
    let dir = state_dir.join(format!("azure-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let id = AzureIdentity {
        tenant: crate::peers::random_hex(16)?,
        client_id: crate::peers::random_hex(16)?,
        client_secret: crate::peers::random_hex(16)?,
    };
    let secret_file = dir.join("client-secret");
    write_private(&secret_file, &id.client_secret)?;
    let ca = dir.join("ca.pem");
    let _ = std::fs::remove_file(&ca);
    let port = crate::peers::free_port()?;
    let control_port = crate::peers::free_port()?;
    let control = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, control_port));
    let log_path = state_dir.join(format!("azure-kv-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--state-dir")
        .arg(&dir)
        .args(["--port", &port.to_string()])
        .args(["--control-port", &control_port.to_string()])
        .args(["--tenant", &id.tenant])
        .args(["--client-id", &id.client_id])
        .arg("--client-secret-file")
        .arg(&secret_file)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    eprintln!(
        "xtask: $ {} {} --state-dir {} --port {port} --control-port {control_port} ... (log: {})",
        python.display(),
        script.display(),
        dir.display(),
        log_path.display()
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", python.display()))?;
    let ready = crate::peers::wait_until(
        "Key Vault test server",
        &mut child,
        &log_path,
        crate::peers::READY_DEADLINE,
        || crate::peers::http_get_status(control, "/healthz") == Some(200) && ca.is_file(),
    );
    // From here on the server is stopped with the environment, even if a step fails.
    env.adopt(
        format!(
            "Key Vault test server at https://127.0.0.1:{port} (pid {})",
            child.id()
        ),
        child,
    );
    ready?;
    for name in AZURE_VARS_REMOVED {
        env.unset(*name);
    }
    for (k, v) in azure_env(port, control_port, &ca, &id) {
        env.set(k, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_environment_is_exactly_the_promised_variables() {
        let id = AzureIdentity {
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
        };
        let env = azure_env(5443, 5444, Path::new("/w/.services/azure-kv-1/ca.pem"), &id);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("HELIOSDB_TEST_AZURE_URL", "https://127.0.0.1:5443"),
                ("HELIOSDB_TEST_AZURE_CA", "/w/.services/azure-kv-1/ca.pem"),
                ("HELIOSDB_TEST_AZURE_TENANT", "t"),
                ("HELIOSDB_TEST_AZURE_CLIENT_ID", "c"),
                ("HELIOSDB_TEST_AZURE_CLIENT_SECRET", "s"),
                ("HELIOSDB_TEST_AZURE_CONTROL", "http://127.0.0.1:5444"),
            ]
        );
    }

    #[test]
    fn the_machines_azure_setup_is_removed() {
        for v in [
            "AZURE_AUTHORITY_HOST",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_KEYVAULT_URL",
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "MSI_ENDPOINT",
        ] {
            assert_eq!(
                AZURE_VARS_REMOVED.iter().filter(|r| **r == v).count(),
                1,
                "{v}"
            );
        }
        let id = AzureIdentity {
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
        };
        for (k, _) in azure_env(1, 2, Path::new("/a"), &id) {
            assert!(
                !AZURE_VARS_REMOVED.contains(&k.as_str()),
                "{k} both set and removed"
            );
        }
    }

    /// Provisions the Key Vault test server as `cargo xtask test -p heliosdb-tde-azure-kv`
    /// does and checks what the tests are promised: a control `/healthz`, a CA file, a data
    /// port that accepts connections, the machine's Azure variables removed; and that dropping
    /// the environment stops the server.
    #[test]
    fn azure_kv_is_provisioned_and_stopped() {
        let Some(env) = crate::services::provision_for_test(
            "the Key Vault test server",
            "heliosdb-tde-azure-kv",
        ) else {
            return;
        };
        let var = |k: &str| env.var(k);
        let control: std::net::SocketAddr = var("HELIOSDB_TEST_AZURE_CONTROL")
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let data: std::net::SocketAddr = var("HELIOSDB_TEST_AZURE_URL")
            .trim_start_matches("https://")
            .parse()
            .unwrap();
        assert_eq!(
            crate::peers::http_get_status(control, "/healthz"),
            Some(200)
        );
        let ca = std::fs::read_to_string(var("HELIOSDB_TEST_AZURE_CA")).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert_eq!(var("HELIOSDB_TEST_AZURE_CLIENT_SECRET").len(), 32);
        assert_ne!(
            var("HELIOSDB_TEST_AZURE_TENANT"),
            var("HELIOSDB_TEST_AZURE_CLIENT_ID")
        );
        // The data plane speaks TLS: a plain-HTTP request gets no HTTP answer.
        assert!(std::net::TcpStream::connect(data).is_ok());
        assert_eq!(crate::peers::http_get_status(data, "/healthz"), None);
        for v in AZURE_VARS_REMOVED {
            assert!(env.removed().any(|r| r == *v), "{v} not removed");
        }
        drop(env);
        assert_eq!(
            crate::peers::http_get_status(control, "/healthz"),
            None,
            "the server still answers after the environment was dropped"
        );
    }
}
