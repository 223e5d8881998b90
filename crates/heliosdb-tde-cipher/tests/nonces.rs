//! Deterministic page nonces (`S || N`, NIST SP 800-38D 8.2.1): the invocation number `N` of a
//! cipher made with `with_reservation` is absolute, so ciphers over disjoint reserved blocks
//! never share a nonce even with a constant salt; the salt separates what the blocks cannot
//! (a restored store); unreserved ciphers stay apart through random salts and bases.
//!
//! The salt is forced with `testing::force_salt`, which is thread-local: every seal here runs
//! on the test's own thread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_cipher::{
    Backend, CipherError, HARD_LIMIT, PageHeader, TableCipher, UsageLimits, testing,
};
use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const SALT: u64 = 0x5eed_5a17_0000_0001;

fn tek(no: u32) -> TableKey {
    let mut bytes = [0x42u8; 32];
    bytes[..4].copy_from_slice(&no.to_be_bytes());
    TableKey::new(
        format!("t@v{}", no + 1).parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&bytes).unwrap(),
    )
}

fn reserved(key: &TableKey, block: std::ops::Range<u64>) -> TableCipher {
    TableCipher::with_reservation(key, Backend::default(), UsageLimits::default(), block).unwrap()
}

fn nonce_of(parts: &heliosdb_tde_cipher::SealedParts) -> [u8; 12] {
    PageHeader::parse(&parts.header).unwrap().nonce
}

fn number(nonce: &[u8; 12]) -> u64 {
    u64::from(u32::from_be_bytes(nonce[8..].try_into().unwrap()))
}

fn salt(nonce: &[u8; 12]) -> u64 {
    u64::from_be_bytes(nonce[..8].try_into().unwrap())
}

/// One step of a key manager's life over one table, as the counter model sees it.
#[derive(Clone, Debug)]
enum Op {
    /// Seal this many pages.
    Seal(u8),
    /// The process restarts: the current block's unused numbers are lost.
    Restart,
    /// A backup of the key store is taken.
    Backup,
    /// The key store is restored from the last backup (and the process restarts).
    Restore,
    /// The table key is rotated: a new key with its own count.
    Rotate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..12).prop_map(Op::Seal),
        1 => Just(Op::Restart),
        1 => Just(Op::Backup),
        1 => Just(Op::Restore),
        1 => Just(Op::Rotate),
    ]
}

/// The durable part: which key is current and the count `reserve_encryptions` raised per key.
#[derive(Clone, Debug, Default)]
struct Store {
    current: u32,
    counts: HashMap<u32, u64>,
}

/// Values per key (the key's number).
type PerKey<T> = HashMap<u32, Vec<T>>;

/// Runs `ops` with real ciphers over reserved blocks of `block` numbers, a "store" that
/// reserves by raising a count, and returns every nonce sealed per key. Alongside, a counter
/// model predicts each seal's invocation number; every seal is checked against it.
fn run(ops: &[Op], block: u64) -> (PerKey<[u8; 12]>, PerKey<u64>) {
    let mut store = Store::default();
    let mut backup = store.clone();
    let mut next_key = 1u32;
    let mut cipher: Option<(u32, TableCipher)> = None;
    // The model: the next number and the end of the block it expects the cipher to use.
    let mut model: Option<(u64, u64)> = None;
    let mut nonces: HashMap<u32, Vec<[u8; 12]>> = HashMap::new();
    let mut predicted: HashMap<u32, Vec<u64>> = HashMap::new();
    for op in ops {
        match op {
            Op::Seal(pages) => {
                for _ in 0..*pages {
                    let key = store.current;
                    // Model: take the next number, reserving a new block when none is left.
                    let (n, end) = match model {
                        Some((n, end)) if n < end => (n, end),
                        _ => {
                            let start = store.counts.get(&key).copied().unwrap_or(0);
                            (start, start + block)
                        }
                    };
                    model = Some((n + 1, end));
                    predicted.entry(key).or_default().push(n);
                    // System: seal; reserve a block when there is no cipher or it refuses.
                    let mut page = [n as u8; 64];
                    let (parts, count) = loop {
                        if let Some((_, c)) = &cipher {
                            match c.seal_in_place_counted(b"t/page", &mut page) {
                                Ok(done) => break done,
                                Err(CipherError::NonceBudgetExhausted { invocations }) => {
                                    assert_eq!(
                                        Some(invocations),
                                        store.counts.get(&key).copied(),
                                        "a cipher stops exactly at the end of its block"
                                    );
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        let count = store.counts.entry(key).or_insert(0);
                        let start = *count;
                        *count += block;
                        cipher = Some((key, reserved(&tek(key), start..start + block)));
                    };
                    let nonce = nonce_of(&parts);
                    assert_eq!(number(&nonce), n, "N is the absolute invocation number");
                    assert_eq!(
                        count,
                        n + 1,
                        "seal_in_place_counted gives the count after it"
                    );
                    nonces.entry(key).or_default().push(nonce);
                }
            }
            Op::Restart => {
                cipher = None;
                model = None;
            }
            Op::Backup => backup = store.clone(),
            Op::Restore => {
                store = backup.clone();
                cipher = None;
                model = None;
            }
            Op::Rotate => {
                // A new key: random bytes in reality, never equal to an earlier one.
                store.current = next_key;
                next_key += 1;
                cipher = None;
                model = None;
            }
        }
    }
    (nonces, predicted)
}

fn has_duplicates<T: std::hash::Hash + Eq>(v: &[T]) -> bool {
    v.iter().collect::<HashSet<_>>().len() != v.len()
}

/// Whether a restore made the current key's count go back and pages were then sealed under it
/// before a rotation: the only way the model lets a number repeat.
fn restore_then_seal_without_rotation(ops: &[Op]) -> bool {
    let mut restored = false;
    ops.iter().any(|op| match op {
        Op::Restore => {
            restored = true;
            false
        }
        Op::Rotate => {
            restored = false;
            false
        }
        Op::Seal(_) => restored,
        _ => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// With one constant salt, nonces are unique exactly when the model's invocation numbers
    /// are, and the model repeats a number only after a restore (with pages sealed before the
    /// next rotation). Restarts, block ends and rotations never repeat a nonce.
    #[test]
    fn with_a_constant_salt_uniqueness_comes_from_the_reserved_numbers(
        ops in prop::collection::vec(op(), 1..40),
        block in 1u64..6,
    ) {
        testing::force_salt(Some(SALT));
        let (nonces, predicted) = run(&ops, block);
        testing::force_salt(None);
        for (key, list) in &nonces {
            prop_assert!(list.iter().all(|n| salt(n) == SALT));
            let model = &predicted[key];
            prop_assert_eq!(has_duplicates(list), has_duplicates(model), "key {}", key);
        }
        if !restore_then_seal_without_rotation(&ops) {
            for list in nonces.values() {
                prop_assert!(!has_duplicates(list), "a nonce repeated without a restore");
            }
        }
    }

    /// With real salts, one per reserved block, no nonce ever repeats, restores included.
    #[test]
    fn with_real_salts_no_nonce_repeats(
        ops in prop::collection::vec(op(), 1..40),
        block in 1u64..6,
    ) {
        testing::force_salt(None);
        let (nonces, _) = run(&ops, block);
        for list in nonces.values() {
            prop_assert!(!has_duplicates(list));
        }
    }
}

/// The case the proptest reaches only by chance, spelled out: a restore repeats numbers; with a
/// constant salt that repeats nonces, with real salts it does not, and a rotation ends it.
#[test]
fn a_restore_repeats_numbers_and_only_the_salt_separates_them() {
    let ops = [
        Op::Seal(3),
        Op::Backup,
        Op::Seal(4),
        Op::Restore,
        Op::Seal(4),
    ];
    testing::force_salt(Some(SALT));
    let (constant, predicted) = run(&ops, 2);
    testing::force_salt(None);
    assert_eq!(predicted[&0], vec![0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7]);
    assert!(
        has_duplicates(&constant[&0]),
        "numbers 4..7 were used twice"
    );
    let (random, _) = run(&ops, 2);
    assert!(
        !has_duplicates(&random[&0]),
        "fresh salts separate the blocks"
    );

    let rotated = [
        Op::Seal(3),
        Op::Backup,
        Op::Seal(4),
        Op::Restore,
        Op::Rotate,
        Op::Seal(4),
    ];
    testing::force_salt(Some(SALT));
    let (constant, _) = run(&rotated, 2);
    testing::force_salt(None);
    assert!(
        constant.values().all(|l| !has_duplicates(l)),
        "a rotation starts a new key"
    );
}

/// `new` ciphers on one key, as two processes without a key manager would make: random salts
/// and random bases keep 100,000 seals each apart.
#[test]
fn two_unreserved_ciphers_on_one_key_are_disjoint() {
    testing::force_salt(None);
    let key = tek(7);
    let seal_all = |c: &TableCipher| {
        let mut page = [0u8; 16];
        (0..100_000)
            .map(|_| nonce_of(&c.seal_in_place(b"", &mut page).unwrap()))
            .collect::<HashSet<_>>()
    };
    let a = TableCipher::new(&key, Backend::default(), UsageLimits::default()).unwrap();
    let b = TableCipher::new(&key, Backend::default(), UsageLimits::default()).unwrap();
    let (na, nb) = (seal_all(&a), seal_all(&b));
    assert_eq!(
        (na.len(), nb.len()),
        (100_000, 100_000),
        "no repeat within a cipher"
    );
    assert!(na.is_disjoint(&nb));
    assert_ne!(a.nonce_salt(), b.nonce_salt());
    assert_eq!(a.usage().invocations, 100_000);
}

/// Unreserved ciphers number from a random base, so two of them with one (forced) salt still
/// start apart, and each one's numbers are consecutive modulo 2^32.
#[test]
fn unreserved_ciphers_count_from_a_random_base() {
    testing::force_salt(Some(SALT));
    let key = tek(8);
    let c =
        TableCipher::with_invocations(&key, Backend::default(), UsageLimits::default(), 5).unwrap();
    let mut page = [0u8; 16];
    let first = number(&nonce_of(&c.seal_in_place(b"", &mut page).unwrap()));
    let second = number(&nonce_of(&c.seal_in_place(b"", &mut page).unwrap()));
    testing::force_salt(None);
    assert_eq!(second, (first + 1) % (1 << 32));
    assert_eq!(
        c.usage().invocations,
        7,
        "the count resumes from the persisted one"
    );
}

#[test]
fn a_reservation_must_lie_within_the_32_bit_invocation_field() {
    let key = tek(9);
    let make = |block| {
        TableCipher::with_reservation(&key, Backend::default(), UsageLimits::default(), block)
    };
    let reversed = std::ops::Range { start: 5, end: 4 };
    for bad in [reversed, 0..HARD_LIMIT + 1, HARD_LIMIT..HARD_LIMIT + 1] {
        let err = make(bad.clone()).unwrap_err();
        assert!(
            matches!(err, CipherError::InvalidArgument(_)),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains("2^32"), "{err}");
    }
    assert!(
        UsageLimits::new(1, HARD_LIMIT + 1).is_err(),
        "no limit beyond 2^32"
    );

    // The last two numbers of the field, then refusal; an empty block refuses at once.
    let top = make(HARD_LIMIT - 2..HARD_LIMIT).unwrap();
    let mut page = [1u8; 32];
    let a = top.seal_in_place_counted(b"", &mut page).unwrap();
    let b = top.seal_in_place_counted(b"", &mut page).unwrap();
    assert_eq!(number(&nonce_of(&a.0)), u64::from(u32::MAX - 1));
    assert_eq!(number(&nonce_of(&b.0)), u64::from(u32::MAX));
    assert_eq!(b.1, HARD_LIMIT);
    assert_eq!(
        top.seal_in_place(b"", &mut page),
        Err(CipherError::NonceBudgetExhausted {
            invocations: HARD_LIMIT
        })
    );
    let empty = make(10..10).unwrap();
    assert_eq!(
        empty.seal_in_place(b"", &mut page),
        Err(CipherError::NonceBudgetExhausted { invocations: 10 })
    );
}

/// Usage counts from the block's start (the key's total), the soft limit applies to it, and
/// the hard limit stops a block that reaches past it.
#[test]
fn a_reserved_cipher_reports_the_keys_total_usage() {
    let key = tek(10);
    let limits = UsageLimits::new(102, 104).unwrap();
    let c = TableCipher::with_reservation(&key, Backend::default(), limits, 100..200).unwrap();
    assert_eq!(c.usage().invocations, 100);
    assert!(!c.rotation_due());
    let mut page = [0u8; 8];
    assert_eq!(c.seal_in_place_counted(b"", &mut page).unwrap().1, 101);
    assert_eq!(c.seal_in_place_counted(b"", &mut page).unwrap().1, 102);
    assert!(c.rotation_due());
    c.seal_in_place(b"", &mut page).unwrap();
    c.seal_in_place(b"", &mut page).unwrap();
    assert_eq!(
        c.seal_in_place(b"", &mut page),
        Err(CipherError::NonceBudgetExhausted { invocations: 104 })
    );
    assert_eq!(c.usage().remaining(), 0);
}

/// Threads sharing one reserved cipher (as the key manager's sealer does) each get their own
/// numbers: with a constant salt, every nonce is distinct and the counts returned are exactly
/// block.start + 1 ..= block.end.
#[test]
fn concurrent_seals_on_one_reserved_cipher_take_distinct_numbers() {
    let key = tek(11);
    // The salt is drawn by the first seal, here on the test thread, before the threads start.
    testing::force_salt(Some(SALT));
    let c = reserved(&key, 1_000..21_000);
    let mut page = [0u8; 8];
    let (first, count) = c.seal_in_place_counted(b"", &mut page).unwrap();
    testing::force_salt(None);
    assert_eq!((number(&nonce_of(&first)), count), (1_000, 1_001));
    let results: Vec<Vec<([u8; 12], u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut page = [0u8; 8];
                    (0..5_000)
                        .filter_map(|_| c.seal_in_place_counted(b"", &mut page).ok())
                        .map(|(p, n)| (nonce_of(&p), n))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(
        all.len(),
        19_999,
        "exactly the rest of the block is granted"
    );
    assert!(all.iter().all(|(n, _)| salt(n) == SALT));
    let nonces: HashSet<_> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(nonces.len(), all.len(), "every nonce is distinct");
    let mut counts: Vec<u64> = all.iter().map(|(_, c)| *c).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1_002..=21_000).collect::<Vec<_>>());
    assert!(
        all.iter().all(|(n, c)| number(n) + 1 == *c),
        "count = N + 1"
    );
}

/// The cipher stays shareable across threads with its nonce state inside.
#[test]
fn table_cipher_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<TableCipher>();
    let c = reserved(&tek(12), 0..10);
    assert_eq!(
        c.nonce_salt(),
        None,
        "no salt before the first seal: opening never draws one"
    );
    let sealed = c.seal(b"a", b"page").unwrap();
    assert_eq!(
        Some(salt(&PageHeader::parse(&sealed).unwrap().nonce)),
        c.nonce_salt()
    );
    assert_eq!(c.open(b"a", &sealed).unwrap(), b"page");
}
