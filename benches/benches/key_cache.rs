//! `get_table_key` miss (store read + provider unwrap + cache insert) against one raw AES-GCM
//! open of 32 bytes, and with an audit log (each fsync policy) against none; one audit record
//! under each fsync policy; and wrap + unwrap per provider against the raw calls it makes. The cache
//! hit has its own harness, `key_cache_hit.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use heliosdb_benches::{file_provider, manager};
use heliosdb_tde_cipher::{AeadKey, Backend};
use heliosdb_tde_core::{AuditAction, AuditEvent, AuditSink, TekId};
use heliosdb_tde_manager::audit::{AuditFsync, AuditLogOptions, FileAuditSink};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 1000;

fn misses(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("get_table_key_miss");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let raw = AeadKey::new(Backend::default(), &[9u8; 32]).unwrap();
    let nonce = [1u8; 12];
    let mut ct = [0u8; 32];
    let tag = raw.seal_detached(&nonce, b"aad", &mut ct).unwrap();
    g.bench_function("raw_aes_gcm_open_32", |b| {
        b.iter(|| {
            let mut buf = ct;
            raw.open_detached(&nonce, black_box(b"aad"), &mut buf, &tag)
                .unwrap();
            black_box(buf)
        })
    });
    // The file provider without an audit log, then with one under each fsync policy: every
    // miss records a `tek.unwrapped` line.
    for name in ["memory", "file", "file_audit_batched", "file_audit_always"] {
        let dir = tempfile::tempdir().unwrap();
        let provider: Arc<dyn heliosdb_tde_core::MekProvider> = if name == "memory" {
            Arc::new(InMemoryMekProvider::new())
        } else {
            file_provider(dir.path())
        };
        // A cache of one entry over many keys: practically every lookup misses.
        let mut km = manager(&rt, dir.path(), provider, 1, KEYS, false);
        if let Some(fsync) = name.strip_prefix("file_audit_") {
            km = km.with_audit(audit_sink(&dir.path().join("audit.log"), fsync));
            // As a started subsystem does: every line carries its MAC under the audit key.
            rt.block_on(km.attach_audit_key()).unwrap();
        }
        let ids: Vec<TekId> = (0..KEYS)
            .map(|i| format!("t{i:07}@v1").parse().unwrap())
            .collect();
        let mut i = 0usize;
        g.bench_function(format!("ours_{name}"), |b| {
            b.iter(|| {
                i = (i + 7919) % KEYS;
                rt.block_on(km.get_tek(&ids[i])).unwrap()
            })
        });
    }
    g.finish();
}

/// A file audit sink at `log` with the fsync policy `fsync` (`batched` or `always`).
fn audit_sink(log: &std::path::Path, fsync: &str) -> Arc<FileAuditSink> {
    Arc::new(
        FileAuditSink::open_with(
            log,
            AuditLogOptions::new().with_fsync(fsync.parse::<AuditFsync>().unwrap()),
        )
        .unwrap(),
    )
}

/// One `tek.unwrapped` record (the record of a cache miss) under each fsync policy.
fn audit_records(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit_record");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let key: heliosdb_tde_core::KeyId = "tek:public.users@v1".parse().unwrap();
    for fsync in ["batched", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let sink = audit_sink(&dir.path().join("audit.log"), fsync);
        // Keyed, with a real key store for the checkpoint, as in a started subsystem.
        let store: Arc<dyn heliosdb_tde_core::KeyStore> = Arc::new(
            heliosdb_tde_keystore::RedbKeyStore::open_dir(&dir.path().join("keys")).unwrap(),
        );
        let audit_key = heliosdb_tde_core::TableKey::generate(
            heliosdb_tde_core::TekId::new(
                heliosdb_tde_core::TableId::audit(),
                heliosdb_tde_core::TekVersion::FIRST,
            ),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        )
        .unwrap();
        rt.block_on(sink.attach_key(Arc::new(audit_key), store))
            .unwrap();
        g.bench_function(fsync, |b| {
            b.iter(|| {
                let event = AuditEvent::success(AuditAction::TekUnwrapped, Some(key.clone()), "")
                    .with_provider(heliosdb_tde_core::ProviderKind::SecureFile);
                rt.block_on(sink.record(event)).unwrap()
            })
        });
        rt.block_on(async { sink.flush() }).unwrap();
    }
    g.finish();
}

fn wrap_unwrap(c: &mut Criterion) {
    // Per provider, against the raw calls it makes. The moto (AWS KMS) backend is not part of
    // this release; its row says so in docs/benchmarks.md.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("wrap_unwrap");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let tek = heliosdb_benches::bench_tek();
    let ctx = heliosdb_tde_core::WrapContext::table_key(tek.id());
    let master = heliosdb_tde_core::MasterKey::new(
        "raw@v1".parse().unwrap(),
        heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        heliosdb_tde_core::KeyBytes::from_slice(&[3; 32]).unwrap(),
    );
    g.bench_function("raw_local_wrap_unwrap", |b| {
        b.iter(|| {
            let w = heliosdb_tde_cipher::wrap::wrap_tek(
                Backend::default(),
                &master,
                heliosdb_tde_core::ProviderKind::InMemory,
                &tek,
                &ctx,
            )
            .unwrap();
            heliosdb_tde_cipher::wrap::unwrap_tek(Backend::default(), &master, &w, &ctx).unwrap()
        })
    });
    for name in ["memory", "file"] {
        let dir = tempfile::tempdir().unwrap();
        let p: Arc<dyn heliosdb_tde_core::MekProvider> = if name == "memory" {
            Arc::new(InMemoryMekProvider::new())
        } else {
            file_provider(dir.path())
        };
        let mek = rt
            .block_on(p.generate_mek(
                &"w".parse().unwrap(),
                heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
            ))
            .unwrap()
            .mek;
        g.bench_function(format!("provider_{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let w = p.wrap_tek(&mek, &tek, &ctx).await.unwrap();
                    p.unwrap_tek(&w, &ctx).await.unwrap()
                })
            })
        });
    }
    softhsm(&rt, &mut g, &tek, &ctx);
    openbao(&rt, &mut g, &tek, &ctx);
    moto(&rt, &mut g, &tek, &ctx);
    azure(&rt, &mut g, &tek, &ctx);
    g.finish();
}

/// The Azure Key Vault provider (RSA-OAEP-256, 3072-bit key) on the Key Vault test server
/// (when `cargo xtask bench` provisioned it), against the raw SDK calls it makes: one
/// `wrap_key` of 64 bytes (the TEK and its binding hash) and one `unwrap_key`, with the same
/// `KeyClient` settings, key and key version.
fn azure(
    rt: &tokio::runtime::Runtime,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tek: &heliosdb_tde_core::TableKey,
    ctx: &heliosdb_tde_core::WrapContext,
) {
    use azure_security_keyvault_keys::models::{
        EncryptionAlgorithm, KeyClientWrapKeyOptions, KeyOperationParameters,
    };
    use heliosdb_tde_core::MekProvider;
    let Some(server) = heliosdb_benches::azure() else {
        eprintln!(
            "Key Vault test server not provisioned: skipping the Azure rows (run `cargo xtask bench`)"
        );
        return;
    };
    let url = server.vault_url("wrap");
    let config = server.config(&url, "bench-wrap");
    let p = server.provider(rt, &config, "w");
    let mek = rt
        .block_on(p.generate_mek(
            &"w".parse().unwrap(),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        ))
        .unwrap()
        .mek;
    g.bench_function("provider_azure_test_server", |b| {
        b.iter(|| {
            rt.block_on(async {
                let w = p.wrap_tek(&mek, tek, ctx).await.unwrap();
                p.unwrap_tek(&w, ctx).await.unwrap()
            })
        })
    });
    // The same two calls, made directly: same key, same version (the one the provider wraps
    // under), same 64-byte value size.
    let info = rt.block_on(p.mek_info(&mek.id)).unwrap();
    let kid = info.versions[0].key_location.clone().unwrap();
    let version = kid.rsplit('/').next().unwrap().to_string();
    let name = p.key_name_for(&mek.id);
    let client = rt.block_on(async { server.raw_key_client(&config) });
    let params = || KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(vec![7u8; 64]),
        ..Default::default()
    };
    g.bench_function("raw_sdk_azure_test_server", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ct = client
                    .wrap_key(
                        &name,
                        params().try_into().unwrap(),
                        Some(KeyClientWrapKeyOptions {
                            key_version: Some(version.clone()),
                            ..Default::default()
                        }),
                    )
                    .await
                    .unwrap()
                    .into_model()
                    .unwrap()
                    .result
                    .unwrap();
                let unwrap = KeyOperationParameters {
                    algorithm: Some(EncryptionAlgorithm::RsaOaep256),
                    value: Some(ct),
                    ..Default::default()
                };
                client
                    .unwrap_key(&name, &version, unwrap.try_into().unwrap(), None)
                    .await
                    .unwrap()
                    .into_model()
                    .unwrap()
                    .result
                    .unwrap()
            })
        })
    });
}

/// The AWS KMS provider on the moto server (when `cargo xtask bench` provisioned one), against
/// the raw aws-sdk-kms calls it makes: one `Encrypt` of 32 bytes and one `Decrypt`, with the
/// same key (pinned by ARN) and the same encryption context.
fn moto(
    rt: &tokio::runtime::Runtime,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tek: &heliosdb_tde_core::TableKey,
    ctx: &heliosdb_tde_core::WrapContext,
) {
    use heliosdb_tde_core::MekProvider;
    let Some(endpoint) = heliosdb_benches::moto() else {
        eprintln!("moto not provisioned: skipping the AWS KMS rows (run `cargo xtask bench`)");
        return;
    };
    let client = rt.block_on(heliosdb_benches::raw_kms_client(&endpoint));
    let key = rt.block_on(heliosdb_benches::create_kms_key(
        &client,
        "heliosdb benchmark wrap_unwrap",
    ));
    let p = heliosdb_benches::moto_provider(rt, &endpoint, "wrap", "w", &key);
    let mek = rt
        .block_on(p.generate_mek(
            &"w".parse().unwrap(),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        ))
        .unwrap()
        .mek;
    g.bench_function("provider_moto", |b| {
        b.iter(|| {
            rt.block_on(async {
                let w = p.wrap_tek(&mek, tek, ctx).await.unwrap();
                p.unwrap_tek(&w, ctx).await.unwrap()
            })
        })
    });
    // The same two KMS calls, made directly: same key, same encryption context.
    let context: std::collections::HashMap<String, String> =
        ctx.context_map(&mek).into_iter().collect();
    g.bench_function("raw_sdk_moto", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ct = client
                    .encrypt()
                    .key_id(&key)
                    .plaintext(aws_sdk_kms::primitives::Blob::new([7u8; 32].to_vec()))
                    .set_encryption_context(Some(context.clone()))
                    .send()
                    .await
                    .unwrap()
                    .ciphertext_blob
                    .unwrap();
                client
                    .decrypt()
                    .key_id(&key)
                    .ciphertext_blob(ct)
                    .set_encryption_context(Some(context.clone()))
                    .send()
                    .await
                    .unwrap()
                    .plaintext
                    .unwrap()
            })
        })
    });
}

/// The Vault Transit provider on the OpenBao dev server (when `cargo xtask bench` provisioned
/// one), against the raw vaultrs calls it makes: one Transit encrypt and one decrypt of 32
/// bytes with the same key, key version and derivation context.
fn openbao(
    rt: &tokio::runtime::Runtime,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tek: &heliosdb_tde_core::TableKey,
    ctx: &heliosdb_tde_core::WrapContext,
) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use heliosdb_tde_core::MekProvider;
    use vaultrs::api::transit::requests::{DecryptDataRequest, EncryptDataRequest};
    let Some((addr, token)) = heliosdb_benches::openbao() else {
        eprintln!("OpenBao not provisioned: skipping the Vault rows (run `cargo xtask bench`)");
        return;
    };
    let (p, prefix) = heliosdb_benches::openbao_provider(rt, &addr, "wrap");
    let mek_id: heliosdb_tde_core::MekId = "w".parse().unwrap();
    let mek = rt
        .block_on(p.generate_mek(&mek_id, heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm))
        .unwrap()
        .mek;
    g.bench_function("provider_openbao", |b| {
        b.iter(|| {
            rt.block_on(async {
                let w = p.wrap_tek(&mek, tek, ctx).await.unwrap();
                p.unwrap_tek(&w, ctx).await.unwrap()
            })
        })
    });
    // The same two Transit calls, made directly: same key, same version, same context.
    let client = rt.block_on(async { heliosdb_benches::raw_vault_client(&addr, &token) });
    let key = format!("{prefix}{mek_id}");
    let context = STANDARD.encode(ctx.derivation_context(&mek_id));
    let plaintext = STANDARD.encode([7u8; 32]);
    g.bench_function("raw_vaultrs_openbao", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ct = vaultrs::transit::data::encrypt(
                    &client,
                    "transit",
                    &key,
                    &plaintext,
                    Some(
                        EncryptDataRequest::builder()
                            .context(&context)
                            .key_version(1u64),
                    ),
                )
                .await
                .unwrap()
                .ciphertext;
                vaultrs::transit::data::decrypt(
                    &client,
                    "transit",
                    &key,
                    &ct,
                    Some(DecryptDataRequest::builder().context(&context)),
                )
                .await
                .unwrap()
                .plaintext
            })
        })
    });
}

/// The PKCS#11 provider on SoftHSM2 (when `cargo xtask bench` provisioned a token), against
/// the raw cryptoki calls it makes: one CKM_AES_GCM encrypt and one decrypt of 32 bytes.
fn softhsm(
    rt: &tokio::runtime::Runtime,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tek: &heliosdb_tde_core::TableKey,
    ctx: &heliosdb_tde_core::WrapContext,
) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use heliosdb_tde_conformance::softhsm;
    if std::env::var_os(softhsm::CONF_ENV).is_none() {
        eprintln!("SoftHSM2 not provisioned: skipping the PKCS#11 rows (run `cargo xtask bench`)");
        return;
    }
    let pin = softhsm::pin();
    let settings = heliosdb_benches::softhsm_settings(
        softhsm::module_path(),
        softhsm::token_label(),
        &pin,
        Duration::from_secs(softhsm::TIMEOUT_SECS),
    );
    let p = rt
        .block_on(heliosdb_tde_pkcs11::Pkcs11MekProvider::open(
            settings.clone(),
        ))
        .unwrap();
    let mek = rt
        .block_on(p.generate_mek(
            &format!("bench_{}", std::process::id()).parse().unwrap(),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        ))
        .unwrap()
        .mek;
    use heliosdb_tde_core::MekProvider;
    g.bench_function("provider_softhsm", |b| {
        b.iter(|| {
            rt.block_on(async {
                let w = p.wrap_tek(&mek, tek, ctx).await.unwrap();
                p.unwrap_tek(&w, ctx).await.unwrap()
            })
        })
    });
    // The raw SDK calls on one session, with a session key of the same kind.
    let (_module, session) = heliosdb_benches::raw_softhsm_session(&settings, &pin);
    let key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let aad = ctx.aad_for(&heliosdb_tde_core::WrappedTek::new(
        heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        heliosdb_tde_core::ProviderKind::Pkcs11,
        mek.clone(),
        Vec::new(),
    ));
    g.bench_function("raw_cryptoki_softhsm", |b| {
        b.iter(|| {
            let mut iv = [5u8; 12];
            let ct = session
                .encrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap()),
                    key,
                    &[7u8; 32],
                )
                .unwrap();
            let mut iv = [5u8; 12];
            session
                .decrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap()),
                    key,
                    &ct,
                )
                .unwrap()
        })
    });
    // Like for like: the provider's three GCM calls (the wrap's encrypt, its self-check
    // decrypt, the unwrap's decrypt) on a token key made with the MEK template (a token
    // object, sensitive, not extractable, not copyable), as the MEK is.
    let label = format!("bench_raw_{}", std::process::id());
    let token_key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &heliosdb_tde_pkcs11::mek_template(label.as_bytes()),
        )
        .unwrap();
    fn gcm<'a>(iv: &'a mut [u8; 12], aad: &'a [u8]) -> Mechanism<'a> {
        Mechanism::AesGcm(GcmParams::new(iv, aad, 128.into()).unwrap())
    }
    g.bench_function("raw_cryptoki_token_key_3calls", |b| {
        b.iter(|| {
            let ct = session
                .encrypt(&gcm(&mut [5u8; 12], &aad), token_key, &[7u8; 32])
                .unwrap();
            let check = session
                .decrypt(&gcm(&mut [5u8; 12], &aad), token_key, &ct)
                .unwrap();
            assert_eq!(check, [7u8; 32]);
            session
                .decrypt(&gcm(&mut [5u8; 12], &aad), token_key, &ct)
                .unwrap()
        })
    });
    // The floor a token-object MEK sets: the wrap's encrypt and the unwrap's decrypt alone
    // (no self-check, no hop) on the token key, against the session-key baseline above.
    g.bench_function("raw_cryptoki_token_key_2calls", |b| {
        b.iter(|| {
            let ct = session
                .encrypt(&gcm(&mut [5u8; 12], &aad), token_key, &[7u8; 32])
                .unwrap();
            session
                .decrypt(&gcm(&mut [5u8; 12], &aad), token_key, &ct)
                .unwrap()
        })
    });
    if let Err(e) = session.destroy_object(token_key) {
        eprintln!("could not destroy the benchmark's token key {label}: {e}");
    }
    // Diagnostic: one hop to a pooled session (the provider's health check: one
    // C_GetSessionInfo through spawn_blocking and the timeout) against the raw call.
    g.bench_function("provider_health", |b| {
        b.iter(|| {
            let h = rt.block_on(p.health()).unwrap();
            assert!(h.healthy, "{}", h.detail);
        })
    });
    g.bench_function("raw_session_info", |b| {
        b.iter(|| session.get_session_info().unwrap())
    });
}

criterion_group!(benches, misses, audit_records, wrap_unwrap);
criterion_main!(benches);
