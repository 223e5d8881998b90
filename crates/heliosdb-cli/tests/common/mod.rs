//! Helpers for the tests that run the real binary against a configuration file.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

/// A passphrase long enough for production mode.
pub const PASS: &str = "a cli test passphrase, long enough for production";

/// The binary with `--config cfg` and `args`, run in `dir`, with none of the environment
/// variables that would override the configuration file.
pub fn command(dir: &Path, cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_CONFIG")
        .env_remove("HELIOSDB_MEK_PASSPHRASE");
    c
}

/// Runs [`command`] to the end.
pub fn cli(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    command(dir, cfg, args).output().unwrap()
}

/// Standard output followed by standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that the command succeeded; its [`text`].
pub fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "{t}");
    t
}

/// Asserts that the command failed; its [`text`].
pub fn fails(o: &Output) -> String {
    let t = text(o);
    assert!(!o.status.success(), "{t}");
    t
}

/// Writes `pass` and a newline to `file` (creating its directory), readable by the owner only.
pub fn passphrase_file(file: &Path, pass: &str) {
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, format!("{pass}\n")).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What [`snapshot`] does with a directory it cannot read.
#[derive(Clone, Copy)]
pub enum Unreadable {
    /// Leaves it out (a directory that may not exist).
    Skip,
    /// Fails the test.
    Fail,
}

/// Every file under `roots`, with its bytes.
pub fn snapshot(roots: &[PathBuf], unreadable: Unreadable) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = roots.to_vec();
    while let Some(d) = stack.pop() {
        let rd = match (std::fs::read_dir(&d), unreadable) {
            (Ok(rd), _) => rd,
            (Err(_), Unreadable::Skip) => continue,
            (Err(e), Unreadable::Fail) => panic!("{}: {e}", d.display()),
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}
