//! A writer process is killed with SIGKILL at random moments; after each kill the store
//! reopens and every key whose write had been acknowledged is there and unwraps.
//!
//! The writer is this test binary re-run as a child (`writer_child`), writing batches of keys in
//! a loop and printing `ACK <id>` after each `apply` returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{KeyStore, StoreBatch};
use heliosdb_tde_keystore::RedbKeyStore;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHILD_ENV: &str = "HELIOSDB_KEYSTORE_SIGKILL_CHILD";

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // only meaningful as the child of the test below
    };
    let (dir, prefix) = spec.split_once('|').unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbKeyStore::open_dir(std::path::Path::new(dir)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            // Batches of 1 to 8 keys: a batch is acknowledged only as a whole.
            let n = 1 + (i % 8);
            let ids: Vec<String> = (0..n).map(|j| format!("{prefix}_t{i}_{j}@v1")).collect();
            let mut batch = StoreBatch::new();
            for id in &ids {
                batch = batch.insert(common::record(id).1);
            }
            store.apply(batch).await.unwrap();
            for id in &ids {
                writeln!(out, "ACK {id}").unwrap();
            }
            out.flush().unwrap();
        }
    });
}

#[tokio::test]
async fn sigkill_never_loses_an_acknowledged_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0usize;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|r{round}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let (first_ack, got_first_ack) = std::sync::mpsc::channel::<()>();
        let reader = {
            let acked = acked.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // The first line may follow libtest's "test writer_child ... " prefix.
                    if let Some(id) = line.find("ACK ").map(|i| &line[i + 4..]) {
                        acked.lock().unwrap().push(id.to_string());
                        let _ = first_ack.send(());
                    }
                }
            })
        };
        // Wait for the writer's first acknowledged write, however slow the machine (the wait
        // also ends if the writer exits), then kill it at a random moment.
        let _ = got_first_ack.recv();
        std::thread::sleep(Duration::from_millis(20 + random_u64() % 300));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();

        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: the writer acknowledged nothing"
        );
        let store = RedbKeyStore::open_dir(dir.path()).unwrap();
        for id in &acked {
            let rec = store
                .get_tek(&id.parse().unwrap())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged key {id} was lost"));
            common::unwrap(&rec);
        }
        // Nothing torn either: every stored key decodes and unwraps.
        let all = store.scan_teks(None, usize::MAX).await.unwrap();
        for rec in &all {
            common::unwrap(rec);
        }
        assert!(all.len() >= total_acked + acked.len());
        total_acked += acked.len();
        drop(store);
    }
    assert!(
        total_acked > 8,
        "too few writes to mean anything: {total_acked}"
    );
}
