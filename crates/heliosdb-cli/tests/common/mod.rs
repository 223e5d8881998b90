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

/// A small seeded generator (SplitMix64): the kill moments are random but replayable with
/// `HELIOSDB_TEST_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(test: &str) -> Self {
        let seed = std::env::var("HELIOSDB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).unwrap();
                u64::from_le_bytes(b)
            });
        eprintln!("{test}: HELIOSDB_TEST_SEED={seed}");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Runs `cmd` (its output discarded) and SIGKILLs it once it has changed the key store file
/// `store` `k` times (its length or modification time: each committed transaction writes
/// it), or lets it end if it ends first. Returns whether it was killed.
///
/// Counting the command's own writes makes the kill moments independent of the machine's
/// speed: the k-th write is the k-th write however long the work before it took. The kill
/// lands within a polling interval after that write, while the command works on the next
/// transaction.
pub fn kill_after_store_changes(mut cmd: Command, store: &Path, k: u64) -> bool {
    let stamp = || {
        std::fs::metadata(store)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last = stamp();
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut changes = 0;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = stamp();
        if now != last {
            changes += 1;
            last = now;
            if changes >= k {
                break;
            }
        }
        // The polling interval only; nothing waits for a timer to win.
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    true
}
