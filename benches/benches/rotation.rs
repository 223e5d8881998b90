//! MEK rotation of 100,000 TEKs with the file provider and the durable redb store, against
//! unwrap + wrap of 100,000 keys in memory; and MEK rotation of 10,000 TEKs with the Vault
//! Transit provider on OpenBao (server-side rewrap), against 10,000 raw vaultrs rewrap calls at
//! the same concurrency; and MEK rotation of 1,000 TEKs with the AWS KMS provider on moto
//! (`ReEncrypt`), against 1,000 raw aws-sdk-kms `ReEncrypt` calls at the same concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use heliosdb_benches::{file_provider, manager};
use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, MasterKey, ProviderKind, TableKey, TekId, WrapContext,
};
use std::time::{Duration, Instant};

const N: usize = 100_000;

fn rotation(c: &mut Criterion) {
    let mut g = c.benchmark_group("mek_rotation_100k");
    // Flat sampling: ten samples of one pass each (a pass takes seconds, and the untimed
    // deactivation or rollback between passes about as long).
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_millis(1));

    // Baseline: unwrap + wrap of 100,000 keys under two in-memory master keys.
    let old = MasterKey::new(
        "b@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    );
    let new = MasterKey::new(
        "b@v2".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate().unwrap(),
    );
    let wrapped: Vec<_> = (0..N)
        .map(|i| {
            let id: TekId = format!("t{i:07}@v1").parse().unwrap();
            let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
            let ctx = WrapContext::table_key(&id);
            (
                ctx.clone(),
                wrap::wrap_tek(Backend::default(), &old, ProviderKind::InMemory, &tek, &ctx)
                    .unwrap(),
            )
        })
        .collect();
    g.bench_function("baseline_unwrap_wrap_in_memory", |b| {
        b.iter(|| {
            for (ctx, w) in &wrapped {
                let k = wrap::unwrap_tek(Backend::default(), &old, w, ctx).unwrap();
                std::hint::black_box(
                    wrap::wrap_tek(Backend::default(), &new, ProviderKind::InMemory, &k, ctx)
                        .unwrap(),
                );
            }
        })
    });

    // The same with the self-check every local provider now runs on a new wrap (one more
    // unwrap and a compare): its cost, against the baseline above in the same run.
    g.bench_function("wrap_self_check_unwrap_wrap_check_in_memory", |b| {
        b.iter(|| {
            for (ctx, w) in &wrapped {
                let k = wrap::unwrap_tek(Backend::default(), &old, w, ctx).unwrap();
                let n = wrap::wrap_tek(Backend::default(), &new, ProviderKind::InMemory, &k, ctx)
                    .unwrap();
                assert!(wrap::wrap_gives_back(Backend::default(), &new, &n, &k, ctx));
                std::hint::black_box(n);
            }
        })
    });

    // Ours: a full rotation pass (prepare + re-wrap, durable commits). Between samples the old
    // version is deactivated (grace period zero), which is not timed.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let km = manager(&rt, dir.path(), file_provider(dir.path()), 1000, N, true);
    g.bench_function("ours_file_provider_durable", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = rt
                    .block_on(km.rotate_mek_with_dual_encryption("bench_mek"))
                    .unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_reencrypted as usize, N);
                rt.block_on(km.deactivate_old_mek("bench_mek")).unwrap();
            }
            total
        })
    });
    drop(km);

    // Ours: a provider migration pass of the same 100,000 TEKs, secure file to secure file in
    // another directory (unwrap through the source, wrap through the target, durable commits,
    // the source wrap kept). Between samples the migration is rolled back, which is not timed.
    let src_dir = tempfile::tempdir().unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    drop(manager(
        &rt,
        src_dir.path(),
        file_provider(src_dir.path()),
        1000,
        N,
        true,
    ));
    let km = migration_manager(
        &rt,
        src_dir.path(),
        file_provider(dst_dir.path()),
        "bench_target",
    );
    g.bench_function("ours_provider_migration_file_to_file_durable", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = rt.block_on(km.migrate_mek(None)).unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_moved as usize, N);
                rt.block_on(km.rollback_mek_migration(None)).unwrap();
            }
            total
        })
    });
    g.finish();
}

/// A key manager over the store in `src/keys` (whose TEKs are under the secure file provider
/// in `src`, MEK `bench_mek`) migrating to `target` (MEK `target_mek`): its provider is the set
/// of the two, its grace period zero.
fn migration_manager(
    rt: &tokio::runtime::Runtime,
    src: &std::path::Path,
    target: std::sync::Arc<dyn heliosdb_tde_core::MekProvider>,
    target_mek: &str,
) -> heliosdb_tde_manager::KeyManager {
    use heliosdb_tde_core::{KeyStore, MekId, ProviderSet, SecurityMode};
    use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig};
    use std::sync::Arc;
    let target_mek = MekId::new(target_mek).unwrap();
    let source = MekId::new("bench_mek").unwrap();
    let set = ProviderSet::new(
        target,
        target_mek.clone(),
        file_provider(src),
        source.clone(),
    )
    .unwrap();
    let store: Arc<dyn KeyStore> =
        Arc::new(heliosdb_tde_keystore::RedbKeyStore::open_dir(&src.join("keys")).unwrap());
    let config = KeyManagerConfig::new(target_mek, SecurityMode::Development)
        .with_cache_limit(1000)
        .with_migration_source(source)
        .with_rotation(RotationConfig::default().with_grace_period(Duration::ZERO));
    let km = KeyManager::new(Arc::new(set), store, config).unwrap();
    rt.block_on(km.ensure_default_mek()).unwrap();
    km
}

const N_OPENBAO: usize = 10_000;

fn openbao_rotation(c: &mut Criterion) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use futures_util::StreamExt as _;
    use vaultrs::api::transit::requests::{EncryptDataRequest, RewrapDataRequest};
    let Some((addr, token)) = heliosdb_benches::openbao() else {
        eprintln!(
            "OpenBao not provisioned: skipping the Vault rotation row (run `cargo xtask bench`)"
        );
        return;
    };
    let mut g = c.benchmark_group("mek_rotation_openbao_10k");
    // Flat sampling: ten samples of one pass each (a pass takes seconds).
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_millis(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The rotation's re-wraps in flight at once; the baseline uses the same.
    let concurrency = heliosdb_tde_manager::RotationConfig::default().concurrency;

    // Baseline: 10,000 Transit rewrap calls (v1 -> v2) of TEK-sized ciphertexts, each with its
    // own derivation context, `concurrency` in flight.
    let client = rt.block_on(async { heliosdb_benches::raw_vault_client(&addr, &token) });
    let key = format!("bench-raw-{}", std::process::id());
    let (cts, contexts) = rt.block_on(async {
        vaultrs::transit::key::create(
            &client,
            "transit",
            &key,
            Some(
                vaultrs::api::transit::requests::CreateKeyRequest::builder()
                    .key_type(vaultrs::api::transit::KeyType::Aes256Gcm96)
                    .derived(true),
            ),
        )
        .await
        .unwrap();
        let plaintext = STANDARD.encode([7u8; 32]);
        let contexts: Vec<String> = (0..N_OPENBAO)
            .map(|i| STANDARD.encode(format!("t{i:07}")))
            .collect();
        let cts: Vec<String> = futures_util::stream::iter(contexts.iter())
            .map(|context| {
                let (client, key, plaintext) = (&client, &key, &plaintext);
                async move {
                    vaultrs::transit::data::encrypt(
                        client,
                        "transit",
                        key,
                        plaintext,
                        Some(EncryptDataRequest::builder().context(context)),
                    )
                    .await
                    .unwrap()
                    .ciphertext
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        vaultrs::transit::key::rotate(&client, "transit", &key)
            .await
            .unwrap();
        (cts, contexts)
    });
    g.bench_function("raw_vaultrs_rewrap", |b| {
        b.iter(|| {
            rt.block_on(async {
                let done = futures_util::stream::iter(cts.iter().zip(&contexts))
                    .map(|(ct, context)| {
                        let (client, key) = (&client, &key);
                        async move {
                            vaultrs::transit::data::rewrap(
                                client,
                                "transit",
                                key,
                                ct,
                                Some(
                                    RewrapDataRequest::builder()
                                        .context(context)
                                        .key_version(2u64),
                                ),
                            )
                            .await
                            .unwrap()
                            .ciphertext
                        }
                    })
                    .buffer_unordered(concurrency)
                    .count()
                    .await;
                assert_eq!(done, N_OPENBAO);
            })
        })
    });

    // Ours: a full rotation pass through the key manager (prepare, server-side re-wrap of every
    // TEK, durable commits of the redb store). Between samples the old version is deactivated
    // (grace period zero), which is not timed.
    let (p, _) = heliosdb_benches::openbao_provider(&rt, &addr, "rot");
    let dir = tempfile::tempdir().unwrap();
    let km = manager(&rt, dir.path(), p, 1000, N_OPENBAO, true);
    g.bench_function("ours_openbao_server_side_rewrap", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = rt
                    .block_on(km.rotate_mek_with_dual_encryption("bench_mek"))
                    .unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_reencrypted as usize, N_OPENBAO);
                rt.block_on(km.deactivate_old_mek("bench_mek")).unwrap();
            }
            total
        })
    });
    g.finish();
}

const N_MOTO: usize = 1_000;

fn moto_rotation(c: &mut Criterion) {
    use futures_util::StreamExt as _;
    use heliosdb_tde_core::{MekId, MekRef, MekVersion};
    use std::collections::HashMap;
    let Some(endpoint) = heliosdb_benches::moto() else {
        eprintln!(
            "moto not provisioned: skipping the AWS KMS rotation row (run `cargo xtask bench`)"
        );
        return;
    };
    let mut g = c.benchmark_group("mek_rotation_moto_1k");
    // Flat sampling: ten samples of one pass each (a pass takes seconds).
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_millis(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The rotation's re-wraps in flight at once; the baseline uses the same.
    let concurrency = heliosdb_tde_manager::RotationConfig::default().concurrency;
    let client = rt.block_on(heliosdb_benches::raw_kms_client(&endpoint));

    // Baseline: 1,000 ReEncrypt calls of TEK-sized ciphertexts from one key to another, each
    // with the encryption context the provider uses (its own table, MEK version 1 -> 2),
    // `concurrency` in flight.
    let mek_id = MekId::new("bench_raw").unwrap();
    let v1 = MekRef::new(mek_id.clone(), MekVersion::FIRST);
    let v2 = MekRef::new(mek_id, MekVersion::new(2).unwrap());
    let (from, to, items) = rt.block_on(async {
        let from = heliosdb_benches::create_kms_key(&client, "heliosdb benchmark raw v1").await;
        let to = heliosdb_benches::create_kms_key(&client, "heliosdb benchmark raw v2").await;
        let contexts: Vec<(HashMap<String, String>, HashMap<String, String>)> = (0..N_MOTO)
            .map(|i| {
                let ctx = WrapContext::table_key(&format!("t{i:07}@v1").parse().unwrap());
                (
                    ctx.context_map(&v1).into_iter().collect(),
                    ctx.context_map(&v2).into_iter().collect(),
                )
            })
            .collect();
        let items: Vec<_> = futures_util::stream::iter(contexts)
            .map(|(src, dst)| {
                let (client, from) = (&client, &from);
                async move {
                    let ct = client
                        .encrypt()
                        .key_id(from)
                        .plaintext(aws_sdk_kms::primitives::Blob::new([7u8; 32].to_vec()))
                        .set_encryption_context(Some(src.clone()))
                        .send()
                        .await
                        .unwrap()
                        .ciphertext_blob
                        .unwrap();
                    (ct, src, dst)
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        (from, to, items)
    });
    g.bench_function("raw_sdk_reencrypt", |b| {
        b.iter(|| {
            rt.block_on(async {
                let done = futures_util::stream::iter(items.iter())
                    .map(|(ct, src, dst)| {
                        let (client, from, to) = (&client, &from, &to);
                        async move {
                            client
                                .re_encrypt()
                                .ciphertext_blob(ct.clone())
                                .source_key_id(from)
                                .set_source_encryption_context(Some(src.clone()))
                                .destination_key_id(to)
                                .set_destination_encryption_context(Some(dst.clone()))
                                .send()
                                .await
                                .unwrap()
                                .ciphertext_blob
                                .unwrap()
                        }
                    })
                    .buffer_unordered(concurrency)
                    .count()
                    .await;
                assert_eq!(done, N_MOTO);
            })
        })
    });

    // Ours: a full rotation pass through the key manager (prepare: CreateKey, CreateAlias and
    // tags for the new version; a ReEncrypt of every TEK; durable commits of the redb store),
    // v1 -> v2 as in the baseline. Each sample rotates a fresh MEK (a new v1 key, a new store
    // with 1,000 TEKs, aliases under a new prefix), set up untimed: no sample depends on the
    // previous one's deactivation.
    let mut fresh = 0u32;
    g.bench_function("ours_moto_reencrypt", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fresh += 1;
                let key = rt.block_on(heliosdb_benches::create_kms_key(
                    &client,
                    "heliosdb benchmark rotation v1",
                ));
                let p = heliosdb_benches::moto_provider(
                    &rt,
                    &endpoint,
                    &format!("rot{fresh}"),
                    "bench_mek",
                    &key,
                );
                let dir = tempfile::tempdir().unwrap();
                let km = manager(&rt, dir.path(), p, 1000, N_MOTO, false);
                let start = Instant::now();
                let r = rt
                    .block_on(km.rotate_mek_with_dual_encryption("bench_mek"))
                    .unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_reencrypted as usize, N_MOTO);
            }
            total
        })
    });
    g.finish();
}

const N_SOFTHSM: usize = 10_000;

/// Provider migration of 10,000 TEKs from the secure file provider to the PKCS#11 provider on
/// SoftHSM2, against 10,000 raw `C_Encrypt` calls of 32-byte keys on a token key made with the
/// MEK template (the wraps the target must make in any case).
fn softhsm_migration(c: &mut Criterion) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::aead::GcmParams;
    use heliosdb_tde_conformance::softhsm;
    use heliosdb_tde_core::MekProvider;
    use std::sync::Arc;
    if std::env::var_os(softhsm::CONF_ENV).is_none() {
        eprintln!(
            "SoftHSM2 not provisioned: skipping the PKCS#11 migration row (run `cargo xtask bench`)"
        );
        return;
    }
    let mut g = c.benchmark_group("mek_migration_softhsm_10k");
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_millis(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pin = softhsm::pin();
    let settings = heliosdb_benches::softhsm_settings(
        softhsm::module_path(),
        softhsm::token_label(),
        &pin,
        Duration::from_secs(softhsm::TIMEOUT_SECS),
    );
    // The provider initialises the module for the process; the raw session shares it.
    let hsm: Arc<dyn MekProvider> = Arc::new(
        rt.block_on(heliosdb_tde_pkcs11::Pkcs11MekProvider::open(
            settings.clone(),
        ))
        .unwrap(),
    );

    let (_module, session) = heliosdb_benches::raw_softhsm_session(&settings, &pin);
    let label = format!("bench_mig_raw_{}", std::process::id());
    let key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &heliosdb_tde_pkcs11::mek_template(label.as_bytes()),
        )
        .unwrap();
    let aad = [9u8; 64];
    g.bench_function("raw_cryptoki_encrypt_10k", |b| {
        b.iter(|| {
            for i in 0..N_SOFTHSM {
                let mut iv = [0u8; 12];
                iv[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let m = Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap());
                std::hint::black_box(session.encrypt(&m, key, &[7u8; 32]).unwrap());
            }
        })
    });
    if let Err(e) = session.destroy_object(key) {
        eprintln!("could not destroy the benchmark's token key {label}: {e}");
    }

    let src = tempfile::tempdir().unwrap();
    drop(manager(
        &rt,
        src.path(),
        file_provider(src.path()),
        1000,
        N_SOFTHSM,
        true,
    ));
    let km = migration_manager(
        &rt,
        src.path(),
        hsm,
        &format!("bench_mig_{}", std::process::id()),
    );
    g.bench_function("ours_file_to_softhsm", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = rt.block_on(km.migrate_mek(None)).unwrap();
                total += start.elapsed();
                assert_eq!(r.keys_moved as usize, N_SOFTHSM);
                rt.block_on(km.rollback_mek_migration(None)).unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    rotation,
    softhsm_migration,
    openbao_rotation,
    moto_rotation
);
criterion_main!(benches);
