//! Provisioning for `cargo xtask test`: system packages and servers on loopback.
//!
//! Each real service a test suite needs (an HSM token, a Vault-API server, a KMS endpoint) is
//! described by a [`Service`]: which crates need it and how to bring it up. `provision` starts
//! the services the selected crates need and returns an [`Environment`] whose variables tell
//! the tests where to find them; dropping it stops every process it started.
//!
//! Registered today: a SoftHSM2 token for the PKCS#11 provider. Provider crates register their
//! services here as they arrive.

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
pub const SERVICES: &[Service] = &[Service {
    name: "SoftHSM2 token",
    crates: &["heliosdb-tde-pkcs11", "heliosdb-security", "heliosdb-cli"],
    start: start_softhsm,
}];

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

/// Variables for the test process, and the servers to stop afterwards.
#[derive(Default)]
pub struct Environment {
    vars: Vec<(String, String)>,
    children: Vec<(String, Child)>,
}

impl Environment {
    /// Sets a variable for the test process.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.push((key.into(), value.into()));
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
    for s in SERVICES {
        let needed = match &selected {
            None => true,
            Some(sel) => s.crates.iter().any(|c| sel.iter().any(|x| x == c)),
        };
        if needed {
            eprintln!("xtask: starting {}", s.name);
            std::fs::create_dir_all(&state_dir)
                .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
            (s.start)(&state_dir, &mut env)?;
        }
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
