//! kill -9 at random moments while the provider rotates MEKs and changes passphrases: every
//! file on disk is always whole and readable with the old or the new passphrase, and the next
//! run converges.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PASS_A, PASS_B, config, secret};
use heliosdb_tde_core::{EncryptionAlgorithm, MekId, MekProvider, SecurityMode};
use heliosdb_tde_file::SecureFileMekProvider;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "HELIOSDB_FILE_SIGKILL_CHILD";
const DEV: SecurityMode = SecurityMode::Development;

fn other(p: &str) -> &'static str {
    if p == PASS_A { PASS_B } else { PASS_A }
}

#[test]
fn churn_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, pass) = spec.split_once('|').unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = config(std::path::Path::new(dir));
        let p =
            SecureFileMekProvider::open_with_passphrase(&cfg, DEV, secret(pass), vec![]).unwrap();
        let ids: Vec<MekId> = ["alpha", "beta", "gamma"]
            .iter()
            .map(|s| MekId::new(*s).unwrap())
            .collect();
        for id in &ids {
            if p.mek_info(id).await.is_err() {
                p.generate_mek(id, EncryptionAlgorithm::Aes256Gcm)
                    .await
                    .unwrap();
            }
        }
        println!("READY");
        let mut current = pass.to_string();
        for i in 0u64.. {
            let id = &ids[(i % 3) as usize];
            if p.mek_info(id).await.unwrap().versions.len() < 4 {
                p.rotate_mek(id).await.unwrap();
            }
            let next = other(&current);
            p.change_passphrase(secret(next)).unwrap();
            current = next.to_string();
            println!("PASS {current}");
        }
    });
}

/// Brings the directory to one passphrase, whichever direction the interrupted change had.
fn converge(dir: &std::path::Path) -> &'static str {
    let cfg = config(dir);
    for (old, new) in [(PASS_A, PASS_B), (PASS_B, PASS_A)] {
        // Opening with one passphrase works only if every file is whole and uses it.
        if SecureFileMekProvider::open_with_passphrase(&cfg, DEV, secret(old), vec![]).is_ok() {
            return old;
        }
        if SecureFileMekProvider::change_passphrase_in(&cfg, DEV, &secret(old), &secret(new))
            .is_ok()
        {
            return new;
        }
    }
    panic!("the directory is readable with neither passphrase: a file was torn or lost");
}

#[tokio::test]
async fn kill_9_never_leaves_a_torn_or_unreadable_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mek");
    let mut pass: &str = PASS_A;
    let mut changes = 0;
    // At least 6 rounds, and until a passphrase change has completed at least once (a loaded
    // machine may need more rounds for that).
    let mut round = 0;
    while round < 6 || (changes == 0 && round < 20) {
        round += 1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "churn_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{pass}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut n = 0usize;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints "test churn_child ... " without a newline before the child's
                // first line, so match on the end of the line.
                if line.starts_with("PASS ") || line.ends_with("READY") {
                    n += 1;
                    let _ = tx.send(if line.ends_with("READY") {
                        "READY".into()
                    } else {
                        line
                    });
                }
            }
            n
        });
        // Wait until the child has opened the provider (however slow the machine: the wait
        // ends with the child's READY line, or when its output closes), then kill it at a
        // random moment of its rotate / change-passphrase loop.
        let ready = rx.recv();
        assert_eq!(
            ready.as_deref(),
            Ok("READY"),
            "round {round}: the child never started"
        );
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).unwrap();
        std::thread::sleep(Duration::from_millis(
            50 + u64::from(u16::from_le_bytes(r)) % 1200,
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        assert!(
            lines > 0,
            "round {round}: the child did nothing before the kill"
        );
        changes += lines - 1;
        pass = converge(&dir);
        let p =
            SecureFileMekProvider::open_with_passphrase(&config(&dir), DEV, secret(pass), vec![])
                .unwrap();
        for id in p.list_meks().await.unwrap() {
            let info = p.mek_info(&id).await.unwrap();
            assert_eq!(
                info.versions
                    .iter()
                    .filter(|v| v.state.can_encrypt())
                    .count(),
                1,
                "round {round}: {id} must have exactly one active version"
            );
        }
    }
    assert!(changes > 0, "no passphrase change completed in any round");
}
