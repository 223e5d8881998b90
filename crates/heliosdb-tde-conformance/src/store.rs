//! The key store conformance suite.
//!
//! Every [`KeyStore`] implementation's tests call [`run_all`] (or the individual checks) with a
//! way to open the store under test. The checks use fresh, randomly named tables, so they can
//! share one store; they never look at TEKs they did not write.
//!
//! What is checked:
//! * atomic batches: a batch that fails (an insert of an existing TEK, a refused lifecycle
//!   transition, a failed journal compare-and-set) writes none of its operations;
//! * read-modify-write: many tasks applying [`StoreOp::Rewrap`], [`StoreOp::SetState`] and
//!   [`StoreOp::ReserveEncryptions`] to the same TEK at once lose no update, a rewrap is
//!   skipped once the TEK is no longer under the expected MEK version, and
//!   [`KeyStore::reserve_encryptions`] hands out disjoint blocks up to the limit;
//! * cursor paging: a walk in pages ([`KeyStoreExt::tek_pages`]) visits every TEK once, in
//!   strictly increasing id order, while other TEKs are inserted between pages;
//! * journal entries: put, get, delete, and [`StoreOp::CheckJournal`] as a compare-and-set that
//!   many tasks race on without a lost update;
//! * durability: everything committed is there after the store is dropped and reopened;
//! * backups ([`export_import`], with a second, empty store): the store id, the key generation,
//!   the consistent export and the import into an empty store.

mod backup;
mod concurrency;

pub use backup::export_import;
pub use concurrency::{read_modify_write, reserve_encryptions};

use crate::provider::fresh_mek_id;
use heliosdb_tde_core::store::{JOURNAL_CHANGED, KeyStoreExt};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyId, KeyMetadata, KeyState, KeyStore, MekRef, MekVersion, ProviderKind,
    StoreBatch, StoreOp, TableId, TdeError, TekId, TekRecord, WrappedTek,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// How many tasks race in the concurrency checks.
const TASKS: u64 = 16;

/// A fresh table name with a random suffix, so checks never collide on a shared store.
fn fresh_table(prefix: &str) -> TableId {
    fresh_mek_id(prefix).as_str().parse().expect("table id")
}

fn tek_id(table: &TableId, version: u32) -> TekId {
    format!("{table}@v{version}").parse().expect("tek id")
}

fn mek(version: u32) -> MekRef {
    MekRef::new(
        "store_conformance_mek".parse().expect("mek id"),
        MekVersion::new(version).expect("mek version"),
    )
}

/// A wrapped form under `mek` with a recognisable payload (the store never unwraps it).
fn wrapped(mek: &MekRef, tag: u8) -> WrappedTek {
    WrappedTek::new(
        EncryptionAlgorithm::Aes256Gcm,
        ProviderKind::InMemory,
        mek.clone(),
        vec![tag; 60],
    )
}

/// An active TEK record wrapped under MEK version 1.
pub fn record(id: &TekId) -> TekRecord {
    let m = mek(1);
    let meta = KeyMetadata::new_active(
        KeyId::Table(id.clone()),
        EncryptionAlgorithm::Aes256Gcm,
        Some(m.clone()),
    );
    TekRecord::new(id.clone(), meta, wrapped(&m, 1)).expect("record")
}

async fn get(store: &dyn KeyStore, id: &TekId) -> TekRecord {
    store
        .get_tek(id)
        .await
        .expect("get_tek")
        .unwrap_or_else(|| panic!("{id} is missing"))
}

/// A batch that fails writes nothing of itself.
pub async fn atomic_batches(store: &dyn KeyStore) {
    let table = fresh_table("atomic");
    let (a, b) = (tek_id(&table, 1), tek_id(&table, 2));
    let journal = format!("conformance/{table}");
    store
        .apply(StoreBatch::new().insert(record(&a)))
        .await
        .expect("first insert");

    // An insert of an existing TEK fails the batch: neither b nor the journal entry land.
    let e = store
        .apply(
            StoreBatch::new()
                .insert(record(&b))
                .put_journal(journal.clone(), b"state".to_vec())
                .insert(record(&a)),
        )
        .await
        .expect_err("insert of an existing TEK");
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
    assert!(store.get_tek(&b).await.expect("get").is_none());
    assert!(
        store
            .get_journal(&journal)
            .await
            .expect("journal")
            .is_none()
    );

    // A refused lifecycle transition fails the batch after an earlier change in it.
    store
        .apply(StoreBatch::new().push(StoreOp::SetState {
            id: a.clone(),
            state: KeyState::Compromised,
        }))
        .await
        .expect("compromise");
    let e = store
        .apply(
            StoreBatch::new()
                .insert(record(&b))
                .push(StoreOp::ReserveEncryptions {
                    id: a.clone(),
                    at_least: 77,
                })
                .push(StoreOp::SetState {
                    id: a.clone(),
                    state: KeyState::Active,
                }),
        )
        .await
        .expect_err("a compromised TEK is never reactivated");
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    let now = get(store, &a).await;
    assert_eq!(now.metadata.state, KeyState::Compromised);
    assert_eq!(now.metadata.usage.encryptions, 0);
    assert!(store.get_tek(&b).await.expect("get").is_none());

    // Upsert replaces; a successful batch lands whole.
    let mut replaced = record(&a);
    replaced.metadata.usage.encryptions = 5;
    let rb = record(&b);
    store
        .apply(
            StoreBatch::new()
                .upsert(replaced.clone())
                .insert(rb.clone())
                .put_journal(journal.clone(), b"x".to_vec()),
        )
        .await
        .expect("a good batch");
    assert_eq!(get(store, &a).await, replaced);
    assert_eq!(get(store, &b).await, rb);
    assert_eq!(
        store.get_journal(&journal).await.expect("journal"),
        Some(b"x".to_vec())
    );
    assert_eq!(
        store
            .latest_tek(&table)
            .await
            .expect("latest")
            .map(|r| r.id),
        Some(b.clone())
    );
    let versions: Vec<TekId> = store
        .table_teks(&table)
        .await
        .expect("table_teks")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(versions, [a, b]);
}

/// A walk in pages visits every TEK once, in order, while TEKs are inserted between pages.
pub async fn paging(store: &dyn KeyStore) {
    let table = fresh_table("paging");
    let mine = |id: &TekId| id.table == table;
    let mut batch = StoreBatch::new();
    let mut expected = BTreeSet::new();
    for v in (2..=60).step_by(2) {
        let id = tek_id(&table, v);
        batch = batch.insert(record(&id));
        expected.insert(id);
    }
    store.apply(batch).await.expect("insert");
    let before = store.count_teks().await.expect("count");

    let mut pages = store.tek_pages(None, 7);
    let mut seen: Vec<TekId> = Vec::new();
    let mut inserted = 0u32;
    let mut last: Option<TekId> = None;
    while let Some(page) = pages.next_page().await.expect("page") {
        assert!(
            !page.is_empty() && page.len() <= 7,
            "{} records",
            page.len()
        );
        for r in &page {
            assert!(
                last.as_ref().is_none_or(|l| r.id > *l),
                "{} after {last:?}",
                r.id
            );
            last = Some(r.id.clone());
        }
        assert_eq!(pages.cursor(), last.as_ref());
        seen.extend(page.into_iter().map(|r| r.id).filter(mine));
        // Insert an odd version somewhere in the table while the walk runs.
        if inserted < 10 {
            inserted += 1;
            let id = tek_id(&table, 2 * inserted + 41);
            store
                .apply(StoreBatch::new().insert(record(&id)))
                .await
                .expect("insert during the walk");
        }
    }
    let visited: BTreeSet<TekId> = seen.iter().cloned().collect();
    assert_eq!(visited.len(), seen.len(), "a TEK was visited twice");
    let missing: Vec<&TekId> = expected.difference(&visited).collect();
    assert!(missing.is_empty(), "never visited: {missing:?}");
    assert_eq!(
        store.count_teks().await.expect("count"),
        before + u64::from(inserted)
    );

    // A walk resumed from a cursor continues after it; scan_teks after an id that is not
    // stored starts at the next one.
    let first: Vec<TekId> = store
        .scan_teks(None, usize::MAX)
        .await
        .expect("scan")
        .into_iter()
        .map(|r| r.id)
        .filter(mine)
        .collect();
    let from = &first[3];
    let mut resumed = Vec::new();
    store
        .tek_pages(Some(from.clone()), 5)
        .for_each(|page| {
            resumed.extend(page.into_iter().map(|r| r.id).filter(mine));
            Ok(())
        })
        .await
        .expect("resumed walk");
    assert_eq!(resumed, first[4..]);
    let gap = tek_id(&table, 1000);
    let after_gap = store.scan_teks(Some(&gap), 1).await.expect("scan");
    assert!(after_gap.iter().all(|r| r.id > gap));
    assert!(store.scan_teks(None, 0).await.expect("scan").is_empty());
}

/// Journal entries: put, get, delete, and compare-and-set under concurrency.
pub async fn journal(store: Arc<dyn KeyStore>) {
    let table = fresh_table("journal");
    let name = format!("conformance/{table}");
    assert!(store.get_journal(&name).await.expect("get").is_none());
    // Deleting an absent entry is not an error; CheckJournal(None) passes on an absent entry.
    store
        .apply(
            StoreBatch::new()
                .delete_journal(name.clone())
                .check_journal(name.clone(), None)
                .put_journal(name.clone(), b"0".to_vec()),
        )
        .await
        .expect("create");
    assert_eq!(
        store.get_journal(&name).await.expect("get"),
        Some(b"0".to_vec())
    );

    // A failed compare-and-set writes nothing of its batch, TEKs included.
    let id = tek_id(&table, 1);
    let e = store
        .apply(
            StoreBatch::new()
                .insert(record(&id))
                .check_journal(name.clone(), Some(b"stale".to_vec()))
                .put_journal(name.clone(), b"lost".to_vec()),
        )
        .await
        .expect_err("stale compare-and-set");
    assert!(
        matches!(&e, TdeError::RotationPhase { phase, .. } if phase == JOURNAL_CHANGED),
        "{e:?}"
    );
    assert!(store.get_tek(&id).await.expect("get").is_none());
    let e = store
        .apply(StoreBatch::new().check_journal(name.clone(), None))
        .await
        .expect_err("the entry exists");
    assert!(matches!(e, TdeError::RotationPhase { .. }), "{e}");

    // Counters incremented by compare-and-set from many tasks: no increment is lost.
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, name) = (store.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seen = store.get_journal(&name).await.expect("get");
                let n: u64 = std::str::from_utf8(seen.as_deref().expect("present"))
                    .expect("utf-8")
                    .parse()
                    .expect("number");
                let r = store
                    .apply(
                        StoreBatch::new()
                            .check_journal(name.clone(), seen)
                            .put_journal(name.clone(), (n + 1).to_string().into_bytes()),
                    )
                    .await;
                match r {
                    Ok(()) => return,
                    Err(TdeError::RotationPhase { phase, .. }) if phase == JOURNAL_CHANGED => {
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("compare-and-set: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        store.get_journal(&name).await.expect("get"),
        Some(TASKS.to_string().into_bytes())
    );
    store
        .apply(
            StoreBatch::new()
                .check_journal(name.clone(), Some(TASKS.to_string().into_bytes()))
                .delete_journal(name.clone()),
        )
        .await
        .expect("delete");
    assert!(store.get_journal(&name).await.expect("get").is_none());
}

/// What [`durability`] wrote, to check after the reopen.
struct Written {
    records: Vec<TekRecord>,
    journal: (String, Vec<u8>),
}

async fn write_for_durability(store: &dyn KeyStore) -> Written {
    let table = fresh_table("durable");
    let mut records = Vec::new();
    let mut batch = StoreBatch::new();
    for v in 1..=20 {
        let r = record(&tek_id(&table, v));
        batch = batch.insert(r.clone());
        records.push(r);
    }
    let journal = (format!("conformance/{table}"), b"kept".to_vec());
    batch = batch.put_journal(journal.0.clone(), journal.1.clone());
    store.apply(batch).await.expect("write");
    store
        .apply(StoreBatch::new().push(StoreOp::Rewrap {
            id: records[0].id.clone(),
            expect: mek(1),
            wrapped: wrapped(&mek(2), 2),
            keep_previous: true,
        }))
        .await
        .expect("rewrap");
    records[0] = get(store, &records[0].id).await;
    let range = store
        .reserve_encryptions(&records[1].id, 100, 1000)
        .await
        .expect("reserve");
    assert_eq!(range, 0..100);
    records[1] = get(store, &records[1].id).await;
    Written { records, journal }
}

/// Everything committed survives dropping the store and opening it again. `open` opens the
/// same store each time it is called; the previous handle is dropped first.
pub async fn durability<F>(open: &F)
where
    F: Fn() -> Arc<dyn KeyStore>,
{
    let store = open();
    let written = write_for_durability(store.as_ref()).await;
    drop(store);
    let store = open();
    for r in &written.records {
        assert_eq!(&get(store.as_ref(), &r.id).await, r, "after reopening");
    }
    assert_eq!(
        store
            .get_journal(&written.journal.0)
            .await
            .expect("journal"),
        Some(written.journal.1.clone())
    );
    assert_eq!(
        store
            .reserve_encryptions(&written.records[1].id, 100, 1000)
            .await
            .expect("reserve after reopening"),
        100..200,
        "a reservation was handed out twice across a restart"
    );
}

/// Every check, in order. `open` opens the store under test (the same one on every call; a
/// store that cannot be open twice at once is dropped before the next call).
pub async fn run_all<F>(open: F)
where
    F: Fn() -> Arc<dyn KeyStore>,
{
    {
        let store = open();
        atomic_batches(store.as_ref()).await;
        read_modify_write(store.clone()).await;
        paging(store.as_ref()).await;
        journal(store).await;
    }
    durability(&open).await;
}
