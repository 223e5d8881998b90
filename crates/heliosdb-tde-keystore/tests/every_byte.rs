//! Issue 9 item 16: one flipped byte anywhere in a small store never makes a read loop, panic,
//! or return damaged data without an error. Every byte of the file is flipped in turn.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{KeyStore, StoreBatch, TekRecord};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Everything the read commands read: every record, the count, a journal entry.
type Everything = (Vec<TekRecord>, u64, Option<Vec<u8>>);

/// Reads every record by scan and by key, the count and a journal entry. `Err` if any of it
/// failed.
fn read_everything(path: &Path) -> Result<Everything, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = RedbKeyStore::open_read_only(path).map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        s.tek_pages(None, 2)
            .for_each(|page| {
                all.extend(page);
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        for r in &all {
            let again = s.get_tek(&r.id).await.map_err(|e| e.to_string())?;
            if again.as_ref() != Some(r) {
                return Err(format!("get_tek({}) disagrees with the scan", r.id));
            }
            s.table_teks(&r.id.table).await.map_err(|e| e.to_string())?;
            s.latest_tek(&r.id.table).await.map_err(|e| e.to_string())?;
        }
        let count = s.count_teks().await.map_err(|e| e.to_string())?;
        let journal = s.get_journal("j").await.map_err(|e| e.to_string())?;
        Ok((all, count, journal))
    })
}

#[test]
fn every_flipped_byte_is_an_error_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE_NAME);
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = RedbKeyStore::open(&path).unwrap();
            let mut batch = StoreBatch::new().put_journal("j", b"journal".to_vec());
            for id in ["a@v1", "a@v2", "b@v1", "c.d@v1", "e@v1"] {
                batch = batch.insert(common::record(id).1);
            }
            store.apply(batch).await.unwrap();
        });
    }
    let original = std::fs::read(&path).unwrap();
    let expected = read_everything(&path).unwrap();
    assert_eq!(expected.0.len(), 5);

    // The trials run on a worker thread; this thread only watches that each one ends. The
    // limit is generous: a trial normally takes a few milliseconds, and one that runs for a
    // minute is a loop.
    let (tx, rx) = mpsc::channel::<(usize, Result<bool, String>)>();
    let trial = dir.path().join("trial.redb");
    let worker = std::thread::spawn(move || {
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0xFF;
            std::fs::write(&trial, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| read_everything(&trial));
            let verdict = match outcome {
                Err(_) => Err(format!("a read panicked with byte {i} flipped")),
                Ok(Err(text)) => {
                    Ok(text.contains(&trial.display().to_string()) || text.contains("trial.redb"))
                }
                Ok(Ok(got)) if got == expected => Ok(true),
                Ok(Ok(got)) => Err(format!(
                    "byte {i} flipped: the read succeeded with other data ({} records, count {})",
                    got.0.len(),
                    got.1
                )),
            };
            if tx.send((i, verdict)).is_err() {
                return;
            }
        }
    });
    let mut done = 0usize;
    let mut unnamed = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((i, Ok(named))) => {
                if !named {
                    unnamed.push(i);
                }
                done += 1;
            }
            Ok((_, Err(problem))) => panic!("{problem}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("a read with byte {done} flipped did not finish: it loops or hangs")
            }
        }
    }
    worker.join().unwrap();
    assert!(done > 4096, "only {done} trials ran");
    assert!(
        unnamed.is_empty(),
        "errors that do not name the file, with bytes {unnamed:?} flipped"
    );
}
