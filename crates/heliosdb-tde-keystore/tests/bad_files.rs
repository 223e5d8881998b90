//! A corrupt, truncated or foreign store file gives a clear error naming the file, never a
//! panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_core::{KeyStore, StoreBatch, TdeError};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};

async fn populated(dir: &std::path::Path) -> std::path::PathBuf {
    let store = RedbKeyStore::open_dir(dir).unwrap();
    let mut batch = StoreBatch::new();
    for i in 0..50 {
        batch = batch.insert(common::record(&format!("t{i}@v1")).1);
    }
    store.apply(batch).await.unwrap();
    dir.join(STORE_FILE_NAME)
}

/// Opens `path` and reads every record, on its own thread: `None` if that panicked, else the
/// number of records or the error text.
async fn open_and_scan(path: &std::path::Path) -> Option<Result<usize, String>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            match RedbKeyStore::open(&path) {
                Err(e) => Err(e.to_string()),
                Ok(s) => match s.scan_teks(None, usize::MAX).await {
                    Ok(v) => Ok(v.len()),
                    Err(e) => Err(e.to_string()),
                },
            }
        })
    })
    .await
    .ok()
}

#[tokio::test]
async fn garbage_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE_NAME);
    std::fs::write(
        &path,
        b"this is not a key store, just some text\n".repeat(100),
    )
    .unwrap();
    let e = RedbKeyStore::open(&path).unwrap_err();
    assert!(matches!(e, TdeError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(e.to_string().contains("backup"), "{e}");
}

#[tokio::test]
async fn truncated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let full = std::fs::read(&path).unwrap();
    let mut outcomes = Vec::new();
    for cut in [0usize, 1, 7, 64, 511, 4096, full.len() / 2, full.len() - 1] {
        if cut >= full.len() {
            continue;
        }
        let trial = dir.path().join(format!("cut-{cut}.redb"));
        std::fs::write(&trial, &full[..cut]).unwrap();
        let r = open_and_scan(&trial)
            .await
            .unwrap_or_else(|| panic!("the store panicked on a file truncated to {cut} bytes"));
        if let Err(text) = &r {
            assert!(text.contains(&trial.display().to_string()), "{text}");
        }
        outcomes.push((cut, r));
    }
    // A truncated store must never read back as a smaller, silently incomplete set of keys
    // without an error... unless it is empty (0 bytes is a fresh store).
    for (cut, r) in &outcomes {
        if let Ok(n) = r {
            assert!(
                *cut == 0 && *n == 0,
                "truncation to {cut} bytes read {n} keys silently"
            );
        }
    }
}

#[tokio::test]
async fn flipped_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let full = std::fs::read(&path).unwrap();
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut x = u64::from_le_bytes(seed) | 1;
    for round in 0..40 {
        let mut bytes = full.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % bytes.len();
            bytes[i] ^= 0xFF;
        }
        let trial = dir.path().join(format!("flip-{round}.redb"));
        std::fs::write(&trial, &bytes).unwrap();
        let r = open_and_scan(&trial)
            .await
            .unwrap_or_else(|| panic!("the store panicked on damaged file {}", trial.display()));
        if let Err(text) = r {
            assert!(text.contains(&trial.display().to_string()), "{text}");
        }
    }
}
