//! The concurrency checks of the store suite: read-modify-write operations and nonce-budget
//! reservations racing on one TEK.

use super::{TASKS, fresh_table, get, mek, record, tek_id, wrapped};
use heliosdb_tde_core::{KeyState, KeyStore, StoreBatch, StoreOp, TdeError};
use std::sync::Arc;

/// Concurrent read-modify-write operations on one TEK lose no update.
pub async fn read_modify_write(store: Arc<dyn KeyStore>) {
    let table = fresh_table("rmw");
    let id = tek_id(&table, 1);
    store
        .apply(StoreBatch::new().insert(record(&id)))
        .await
        .expect("insert");

    // Reservations from many tasks, a rewrap and a state change, all at once.
    let mut tasks = Vec::new();
    for i in 1..=TASKS {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut batch = StoreBatch::new().push(StoreOp::ReserveEncryptions {
                id: id.clone(),
                at_least: i * 100,
            });
            if i == TASKS / 2 {
                batch = batch.push(StoreOp::Rewrap {
                    id: id.clone(),
                    expect: mek(1),
                    wrapped: wrapped(&mek(2), 2),
                    keep_previous: true,
                });
            }
            if i == TASKS / 4 {
                batch = batch.push(StoreOp::SetState {
                    id,
                    state: KeyState::DecryptOnly,
                });
            }
            store.apply(batch).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("apply");
    }
    let r = get(store.as_ref(), &id).await;
    assert_eq!(
        r.metadata.usage.encryptions,
        TASKS * 100,
        "a reservation was lost"
    );
    assert_eq!(
        r.metadata.state,
        KeyState::DecryptOnly,
        "the state change was lost"
    );
    assert_eq!(r.wrapped, wrapped(&mek(2), 2), "the rewrap was lost");
    assert_eq!(r.metadata.wrapped_by, Some(mek(2)));
    assert_eq!(r.previous_wrap, Some(wrapped(&mek(1), 1)));

    // A rewrap expecting a version the TEK is no longer under is skipped, not an error, and a
    // reservation never lowers the count.
    store
        .apply(
            StoreBatch::new()
                .push(StoreOp::Rewrap {
                    id: id.clone(),
                    expect: mek(1),
                    wrapped: wrapped(&mek(3), 3),
                    keep_previous: false,
                })
                .push(StoreOp::ReserveEncryptions {
                    id: id.clone(),
                    at_least: 1,
                }),
        )
        .await
        .expect("stale rewrap");
    let after = get(store.as_ref(), &id).await;
    assert_eq!(after, r);

    // Many concurrent rewraps racing from version 2: exactly one wins, the others are skipped.
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let tag = u8::try_from(10 + i).expect("small");
            store
                .apply(StoreBatch::new().push(StoreOp::Rewrap {
                    id,
                    expect: mek(2),
                    wrapped: wrapped(&mek(3), tag),
                    keep_previous: true,
                }))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("apply");
    }
    let r = get(store.as_ref(), &id).await;
    assert_eq!(r.wrapped.mek, mek(3));
    assert_eq!(
        r.previous_wrap,
        Some(wrapped(&mek(2), 2)),
        "a second rewrap ran on top of the first"
    );

    // Clearing the kept wrap.
    store
        .apply(StoreBatch::new().push(StoreOp::ClearPreviousWrap { id: id.clone() }))
        .await
        .expect("clear");
    assert_eq!(get(store.as_ref(), &id).await.previous_wrap, None);

    // Operations on a missing TEK: rewrap and reservation are skipped, a state change fails.
    let missing = tek_id(&table, 99);
    store
        .apply(
            StoreBatch::new()
                .push(StoreOp::Rewrap {
                    id: missing.clone(),
                    expect: mek(1),
                    wrapped: wrapped(&mek(2), 2),
                    keep_previous: false,
                })
                .push(StoreOp::ReserveEncryptions {
                    id: missing.clone(),
                    at_least: 5,
                }),
        )
        .await
        .expect("skipped");
    assert!(store.get_tek(&missing).await.expect("get").is_none());
    let e = store
        .apply(StoreBatch::new().push(StoreOp::SetState {
            id: missing,
            state: KeyState::Deactivated,
        }))
        .await
        .expect_err("state of a missing TEK");
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");

    reserve_encryptions(store).await;
}

/// [`KeyStore::reserve_encryptions`] from many tasks: disjoint blocks, contiguous, up to the
/// limit, then empty.
pub async fn reserve_encryptions(store: Arc<dyn KeyStore>) {
    let table = fresh_table("reserve");
    let id = tek_id(&table, 1);
    store
        .apply(StoreBatch::new().insert(record(&id)))
        .await
        .expect("insert");
    const BLOCK: u64 = 10;
    let limit = TASKS * 3 * BLOCK - 5;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(
                    store
                        .reserve_encryptions(&id, BLOCK, limit)
                        .await
                        .expect("reserve"),
                );
            }
            got
        }));
    }
    let mut ranges = Vec::new();
    for t in tasks {
        ranges.extend(t.await.expect("task"));
    }
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut next = 0;
    for r in &ranges {
        assert_eq!(r.start, next, "blocks overlap or leave a gap: {ranges:?}");
        assert!(r.end - r.start <= BLOCK);
        next = r.end;
    }
    assert_eq!(next, limit, "the limit was not reached exactly");
    assert_eq!(
        get(store.as_ref(), &id).await.metadata.usage.encryptions,
        limit
    );
    assert!(
        store
            .reserve_encryptions(&id, BLOCK, limit)
            .await
            .expect("at the limit")
            .is_empty()
    );
}
