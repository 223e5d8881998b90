//! Provisioning for `cargo xtask test`: system packages and servers on loopback.
//!
//! Each real service a test suite needs (an HSM token, a Vault-API server, a KMS endpoint) is
//! described by a [`Service`]: which crates need it and how to bring it up. `provision` starts
//! the services the selected crates need and returns an [`Environment`] whose variables tell
//! the tests where to find them; dropping it stops every process it started.
//!
//! Registered today, one module each: a SoftHSM2 token for the PKCS#11 provider (`softhsm`),
//! an OpenBao dev server for the Vault Transit provider (`openbao`), a moto server for the AWS
//! KMS provider (`moto`) and the HTTPS Key Vault test server for the Azure Key Vault provider
//! (`azure`); the last three are Python-packaged peers, see [`crate::peers`]. The memory tests'
//! tools (`gcore` from gdb, `prlimit`) are installed the same way. Provider crates
//! register their services here as they arrive.

mod azure;
mod moto;
mod openbao;
mod softhsm;

pub use azure::*;
pub use moto::*;
pub use openbao::*;
pub use softhsm::*;

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
        start: softhsm::start_softhsm,
    },
    Service {
        name: "OpenBao dev server",
        crates: &["heliosdb-tde-vault", "heliosdb-security", "heliosdb-cli"],
        start: openbao::start_openbao,
    },
    Service {
        name: "moto server (AWS KMS)",
        crates: &["heliosdb-tde-aws-kms", "heliosdb-security", "heliosdb-cli"],
        start: moto::start_moto,
    },
    Service {
        name: "Key Vault test server (Azure)",
        crates: &["heliosdb-tde-azure-kv", "heliosdb-security", "heliosdb-cli"],
        start: azure::start_azure_kv,
    },
    Service {
        name: "gdb and util-linux (core dump and lock limit tests)",
        crates: &["heliosdb-security", "heliosdb-cli"],
        start: debug_tools,
    },
];

/// `gcore` (package gdb) and `prlimit` (util-linux) for the memory tests, which take real core
/// dumps of a running process and start one under a small `RLIMIT_MEMLOCK`.
fn debug_tools(_state_dir: &Path, _env: &mut Environment) -> Result {
    apt_install_if_missing(&["gdb", "util-linux"])
}

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

/// Provisions the services `cargo xtask test -p <package>` would, for a test of that
/// provisioning: `None` after a loud skip when it cannot be done and services are not required
/// (`HELIOSDB_REQUIRE_SERVICES` unset), a panic when they are.
#[cfg(test)]
pub(crate) fn provision_for_test(what: &str, package: &str) -> Option<Environment> {
    let args = ["-p".to_string(), package.to_string()];
    match provision(&crate::workspace_root(), &args) {
        Ok(env) => Some(env),
        Err(e) if std::env::var("HELIOSDB_REQUIRE_SERVICES").as_deref() != Ok("1") => {
            eprintln!("\n!!!!!!!! SKIPPED: {what} could not be provisioned: {e}\n");
            None
        }
        Err(e) => panic!("{what} could not be provisioned: {e}"),
    }
}

#[cfg(test)]
impl Environment {
    /// The exported value of `name`; panics when it is not exported.
    pub(crate) fn var(&self, name: &str) -> String {
        self.vars()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("{name} not exported"))
    }
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
            "Key Vault test server (Azure)",
            "gdb and util-linux (core dump and lock limit tests)",
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
            names(Some(&s(&["heliosdb-tde-azure-kv"]))),
            ["Key Vault test server (Azure)"]
        );
        assert_eq!(
            names(Some(&s(&["heliosdb-tde-pkcs11"]))),
            ["SoftHSM2 token"]
        );
        assert!(names(Some(&s(&["heliosdb-tde-core"]))).is_empty());
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
