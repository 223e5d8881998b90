//! The store side of backups: identity and key generation, the consistent export, and the
//! import into an empty store.

use super::{fresh_table, record};
use heliosdb_tde_core::{ExportItem, ImportItem, KeyStore, StoreBatch, TdeError, TekId, TekRecord};
use std::sync::Arc;

/// Everything `store` exports, owned, with the summary.
async fn export_all(
    store: Arc<dyn KeyStore>,
) -> (
    Vec<ImportItem>,
    Vec<TekRecord>,
    heliosdb_tde_core::ExportSummary,
) {
    tokio::task::spawn_blocking(move || {
        let mut items = Vec::new();
        let mut records = Vec::new();
        let summary = store
            .export_blocking(&mut |item| {
                match item {
                    ExportItem::Tek { key, value, record } => {
                        records.push(record.clone());
                        items.push(ImportItem::Tek {
                            key: key.to_vec(),
                            value: value.to_vec(),
                        });
                    }
                    ExportItem::Journal { name, value } => items.push(ImportItem::Journal {
                        name: name.to_string(),
                        value: value.to_vec(),
                    }),
                    other => panic!("an export item this suite does not know: {other:?}"),
                }
                Ok(())
            })
            .expect("export");
        (items, records, summary)
    })
    .await
    .expect("export task")
}

/// Identity, export and import:
/// * the store id is stable, and the key generation rises by one per `apply` and not at all
///   for a nonce reservation;
/// * an export yields every TEK in id order (each as `scan_teks` returns it) and the journal
///   entries, with the identity and counts of the same transaction;
/// * an import into `empty` reproduces the records, the journal and the identity; a second
///   import into the now populated store is refused and changes nothing.
///
/// `source` may hold other tests' keys; `empty` must be a store nothing else writes to.
pub async fn export_import(source: Arc<dyn KeyStore>, empty: Arc<dyn KeyStore>) {
    let table = fresh_table("backup");
    let ids: Vec<TekId> = (1..=5u32)
        .map(|v| format!("{table}@v{v}").parse().expect("id"))
        .collect();
    let mut batch = StoreBatch::new();
    for id in &ids {
        batch = batch.insert(record(id));
    }
    let journal_name = format!("conformance/{table}");
    source
        .apply(batch.put_journal(journal_name.clone(), b"value".to_vec()))
        .await
        .expect("apply");
    let a = source.identity().await.expect("identity");
    source
        .reserve_encryptions(&ids[0], 10, 1_000)
        .await
        .expect("reserve");
    assert_eq!(
        source.identity().await.expect("identity"),
        a,
        "a nonce reservation changed the key generation"
    );
    source
        .apply(StoreBatch::new().delete_journal(format!("{journal_name}/absent")))
        .await
        .expect("apply");
    let b = source.identity().await.expect("identity");
    assert_eq!(b.id, a.id, "the store id changed");
    assert_eq!(b.generation, a.generation + 1, "one apply, one generation");

    let (items, records, summary) = export_all(source.clone()).await;
    assert_eq!(summary.identity, b);
    assert_eq!(summary.teks, records.len() as u64);
    let scanned = source.scan_teks(None, usize::MAX).await.expect("scan");
    assert_eq!(
        records, scanned,
        "the export is the store's records in id order"
    );
    for id in &ids {
        assert!(records.iter().any(|r| r.id == *id), "{id} not exported");
    }
    let journal: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            ImportItem::Journal { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(journal.len() as u64, summary.journal);
    assert!(journal.contains(&journal_name.as_str()));

    let again: Vec<ImportItem> = items
        .iter()
        .map(|i| match i {
            ImportItem::Tek { key, value } => ImportItem::Tek {
                key: key.clone(),
                value: value.clone(),
            },
            ImportItem::Journal { name, value } => ImportItem::Journal {
                name: name.clone(),
                value: value.clone(),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    let target = empty.clone();
    let identity = summary.identity;
    let imported = tokio::task::spawn_blocking(move || {
        let mut it = items.into_iter();
        target.import_blocking(identity, &mut || Ok(it.next()))
    })
    .await
    .expect("import task")
    .expect("import");
    assert_eq!(imported, summary.teks);
    assert_eq!(empty.identity().await.expect("identity"), summary.identity);
    assert_eq!(
        empty.scan_teks(None, usize::MAX).await.expect("scan"),
        scanned
    );
    assert_eq!(
        empty.get_journal(&journal_name).await.expect("journal"),
        Some(b"value".to_vec())
    );

    let target = empty.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let mut it = again.into_iter();
        target.import_blocking(identity, &mut || Ok(it.next()))
    })
    .await
    .expect("import task");
    assert!(
        matches!(refused, Err(TdeError::AlreadyExists { .. })),
        "a second import: {refused:?}"
    );
    assert_eq!(
        empty.scan_teks(None, usize::MAX).await.expect("scan"),
        scanned
    );
}
