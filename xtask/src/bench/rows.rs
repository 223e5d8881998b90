//! The rows of `docs/benchmarks.md`: what each one measures, against which baseline, and its
//! target. The ids are criterion's `group/function[/parameter]`, or an id a `harness = false`
//! benchmark writes to `target/bench-extra/*.json` (see `read_extra` in bench.rs).

/// How a row's verdict is decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Target {
    /// Measured and shown, no target: "report".
    Report,
    /// "met" when ours is at most this many times the baseline of the same run.
    RatioAtMost(f64),
    /// "met" when ours is at most this many nanoseconds.
    AtMostNs(f64),
    /// A byte count, shown as such; no target ("report").
    Bytes,
}

/// One row of the report, before the results are filled in.
#[derive(Clone, Debug)]
pub(super) struct RowSpec {
    /// The row's label. The words before " (" are its key across reports (see
    /// `row_key` in bench.rs), so they must be unique.
    pub(super) label: String,
    /// The id of our measurement.
    pub(super) ours: String,
    /// The id of the baseline measured in the same run, if any.
    pub(super) base: Option<String>,
    /// What the baseline is.
    pub(super) base_name: String,
    /// How the verdict is decided.
    pub(super) target: Target,
    /// The target column's text.
    pub(super) target_text: String,
    /// Bytes processed per operation: the label then shows the throughput.
    pub(super) throughput: Option<u64>,
}

fn row(
    label: &str,
    ours: &str,
    base: &str,
    base_name: &str,
    target: Target,
    text: &str,
) -> RowSpec {
    RowSpec {
        label: label.into(),
        ours: ours.into(),
        base: (!base.is_empty()).then(|| base.to_string()),
        base_name: base_name.into(),
        target,
        target_text: text.into(),
        throughput: None,
    }
}

const BACKENDS: [&str; 3] = ["aws-lc", "ring", "rustcrypto"];
const SIZES: [u64; 4] = [4096, 8192, 16384, 1 << 20];

/// Page seal and open per backend and size, then the seal against an OS-random nonce.
fn page_rows(rows: &mut Vec<RowSpec>) {
    for op in ["seal", "open"] {
        for backend in BACKENDS {
            for size in SIZES {
                let gate = op == "seal" && size == 8192;
                let (target, text) = if gate {
                    (Target::RatioAtMost(1.05), "≤ 1.05× raw")
                } else {
                    (Target::Report, "report")
                };
                // The gated rows come from the interleaved harness (page_seal_8k.rs).
                let base_name = if gate {
                    format!(
                        "raw {backend} seal (fixed nonce), interleaved with ours in the same run"
                    )
                } else {
                    format!("raw {backend} {op}")
                };
                let mut r = row(
                    &format!("page {op}, {backend}, {} KiB", size / 1024),
                    &format!("page_{op}/{backend}/ours/{size}"),
                    &format!("page_{op}/{backend}/raw/{size}"),
                    &base_name,
                    target,
                    text,
                );
                r.throughput = Some(size);
                rows.push(r);
            }
        }
    }
    for backend in BACKENDS {
        for size in SIZES {
            rows.push(row(
                &format!(
                    "page seal vs OS-random nonce, {backend}, {} KiB",
                    size / 1024
                ),
                &format!("page_seal/{backend}/ours/{size}"),
                &format!("page_seal/{backend}/raw_os_nonce/{size}"),
                &format!("raw {backend} seal with a getrandom nonce per call"),
                Target::Report,
                "report",
            ));
        }
    }
}

/// Key lookup and the facade's per-page cost.
fn lookup_rows(rows: &mut Vec<RowSpec>) {
    for t in [1, 2, 4] {
        rows.push(row(
            &format!("get_table_key cache hit, {t} thread(s)"),
            &format!("get_table_key_hit/ours_{t}t"),
            &format!("get_table_key_hit/hashmap_{t}t"),
            "HashMap<TekId, Arc<TableKey>> lookup, interleaved with ours in the same run",
            Target::RatioAtMost(1.15),
            "≤ 1.15× HashMap",
        ));
    }
    let mut facade = row(
        "seal 8 KiB through the facade's sealer",
        "facade_seal/ours_8192",
        "facade_seal/raw_aws_lc_8192",
        "raw aws-lc seal (fixed nonce), interleaved with ours in the same run",
        Target::RatioAtMost(1.08),
        "≤ 1.08× raw",
    );
    facade.throughput = Some(8192);
    rows.push(facade);
    for p in ["memory", "file"] {
        rows.push(row(
            &format!("get_table_key miss, {p} provider"),
            &format!("get_table_key_miss/ours_{p}"),
            "get_table_key_miss/raw_aes_gcm_open_32",
            "raw AES-GCM open of 32 bytes",
            Target::AtMostNs(5e3),
            "≤ 5 µs",
        ));
    }
    for policy in ["batched", "always"] {
        rows.push(row(
            &format!("get_table_key miss, file provider, audit {policy}"),
            &format!("get_table_key_miss/ours_file_audit_{policy}"),
            "get_table_key_miss/ours_file",
            "get_table_key miss, file provider, no audit",
            Target::Report,
            "report",
        ));
    }
    rows.push(row(
        "audit record, batched",
        "audit_record/batched",
        "audit_record/always",
        "audit record, always (an fsync per record)",
        Target::Report,
        "report",
    ));
}

/// Where key bytes live: one `KeyBytes` in the locked key arena against a boxed array.
fn key_bytes_rows(rows: &mut Vec<RowSpec>) {
    rows.push(row(
        "KeyBytes allocate + free, locked arena",
        "key_bytes/ours_locked_arena_alloc_free",
        "key_bytes/baseline_box_alloc_free",
        "`Box<[u8; 32]>` allocate + free (the same 32 bytes copied in, zeroized before the free)",
        Target::Report,
        "report",
    ));
}

/// Wrap + unwrap per provider.
fn wrap_rows(rows: &mut Vec<RowSpec>) {
    for p in ["memory", "file"] {
        rows.push(row(
            &format!("wrap + unwrap, {p} provider"),
            &format!("wrap_unwrap/provider_{p}"),
            "wrap_unwrap/raw_local_wrap_unwrap",
            "raw local AES-GCM wrap + unwrap",
            Target::Report,
            "report",
        ));
    }
    rows.push(row(
        "wrap + unwrap, SoftHSM2 (PKCS#11)",
        "wrap_unwrap/provider_softhsm",
        "wrap_unwrap/raw_cryptoki_softhsm",
        "raw cryptoki CKM_AES_GCM encrypt + decrypt (session key)",
        Target::RatioAtMost(1.5),
        "≤ 1.5× raw",
    ));
    rows.push(row(
        "wrap + unwrap, SoftHSM2, like for like (token key, the provider's three GCM calls)",
        "wrap_unwrap/provider_softhsm",
        "wrap_unwrap/raw_cryptoki_token_key_3calls",
        "raw cryptoki encrypt + decrypt + decrypt on a token key made with the MEK template",
        Target::RatioAtMost(1.5),
        "≤ 1.5× raw",
    ));
    rows.push(row(
        "SoftHSM2 token-object floor: raw encrypt + decrypt on a token key (diagnostic)",
        "wrap_unwrap/raw_cryptoki_token_key_2calls",
        "wrap_unwrap/raw_cryptoki_softhsm",
        "the same two raw calls on a session key",
        Target::Report,
        "report",
    ));
    rows.push(row(
        "SoftHSM2 hop: provider health check (diagnostic)",
        "wrap_unwrap/provider_health",
        "wrap_unwrap/raw_session_info",
        "raw C_GetSessionInfo on one session",
        Target::Report,
        "report",
    ));
    for (label, p, base, base_name) in [
        (
            "wrap + unwrap, OpenBao (Vault Transit)",
            "openbao",
            "raw_vaultrs_openbao",
            "raw vaultrs Transit encrypt + decrypt (same key, same context)",
        ),
        (
            "wrap + unwrap, moto (AWS KMS)",
            "moto",
            "raw_sdk_moto",
            "raw aws-sdk-kms Encrypt + Decrypt (same key, same encryption context)",
        ),
        (
            "wrap + unwrap, Key Vault test server (Azure SDK)",
            "azure_test_server",
            "raw_sdk_azure_test_server",
            "raw KeyClient wrap_key + unwrap_key, RSA-OAEP-256 (same key and version)",
        ),
    ] {
        rows.push(row(
            label,
            &format!("wrap_unwrap/provider_{p}"),
            &format!("wrap_unwrap/{base}"),
            base_name,
            Target::RatioAtMost(1.10),
            "≤ 1.10× raw (report)",
        ));
    }
}

/// MEK rotation, its memory, the cold start and the store open.
fn rotation_rows(rows: &mut Vec<RowSpec>) {
    rows.push(row(
        "MEK rotation of 10,000 TEKs, OpenBao, server-side rewrap",
        "mek_rotation_openbao_10k/ours_openbao_server_side_rewrap",
        "mek_rotation_openbao_10k/raw_vaultrs_rewrap",
        "10,000 raw vaultrs Transit rewrap calls at the same concurrency",
        Target::RatioAtMost(1.20),
        "≤ 1.20× raw",
    ));
    rows.push(row(
        "MEK rotation of 1,000 TEKs, moto, ReEncrypt",
        "mek_rotation_moto_1k/ours_moto_reencrypt",
        "mek_rotation_moto_1k/raw_sdk_reencrypt",
        "1,000 raw aws-sdk-kms ReEncrypt calls at the same concurrency",
        Target::RatioAtMost(1.20),
        "≤ 1.20× raw",
    ));
    rows.push(row(
        "MEK rotation of 100,000 TEKs, file provider, durable",
        "mek_rotation_100k/ours_file_provider_durable",
        "mek_rotation_100k/baseline_unwrap_wrap_in_memory",
        "unwrap + wrap of 100,000 keys in memory",
        Target::AtMostNs(3e9),
        "≤ 3 s",
    ));
    rows.push(row(
        "Provider migration of 100,000 TEKs, secure file to secure file (another directory), durable",
        "mek_rotation_100k/ours_provider_migration_file_to_file_durable",
        "mek_rotation_100k/ours_file_provider_durable",
        "MEK rotation of the same 100,000 TEKs, file provider, durable (the row above)",
        Target::RatioAtMost(1.20),
        "≤ 1.20× the rotation",
    ));
    rows.push(row(
        "Provider migration of 10,000 TEKs, secure file to SoftHSM2 (PKCS#11)",
        "mek_migration_softhsm_10k/ours_file_to_softhsm",
        "mek_migration_softhsm_10k/raw_cryptoki_encrypt_10k",
        "10,000 raw cryptoki CKM_AES_GCM encrypts of 32-byte keys on a token key",
        Target::Report,
        "report",
    ));
    rows.push(row(
        "wrap self-check: unwrap + wrap + check of 100,000 keys in memory",
        "mek_rotation_100k/wrap_self_check_unwrap_wrap_check_in_memory",
        "mek_rotation_100k/baseline_unwrap_wrap_in_memory",
        "unwrap + wrap of 100,000 keys in memory",
        Target::Report,
        "report",
    ));
    rows.push(row(
        "MEK rotation of 1,000,000 TEKs, file provider, durable (one pass)",
        "mek_rotation_1m/ours_file_provider_durable",
        "mek_rotation_1m/baseline_unwrap_wrap_in_memory",
        "unwrap + wrap of 1,000,000 keys in memory, in chunks of 10,000",
        Target::Report,
        "report",
    ));
    rows.push(row(
        "peak memory of the 1,000,000-TEK rotation (VmHWM of the benchmark process)",
        "mek_rotation_1m/peak_rss",
        "mek_rotation_1m/rss_before",
        "resident memory just before the rotation (store built, manager open)",
        Target::Bytes,
        "report",
    ));
    for (p, name) in [("file", "file provider"), ("softhsm", "SoftHSM2")] {
        let raw = if p == "file" {
            "10,000 raw local unwraps under an equal master key"
        } else {
            "10,000 raw cryptoki C_Decrypt calls on a token key"
        };
        rows.push(row(
            &format!("cold start, {name}: open + 10,000 TEK unwraps"),
            &format!("cold_start/ours_{p}_10k"),
            &format!("cold_start/raw_{p}_10k"),
            raw,
            Target::Report,
            "report",
        ));
    }
    rows.push(row(
        "cold start, file provider: the provider open alone (Argon2id)",
        "cold_start/file_provider_open",
        "cold_start/ours_file_10k",
        "the whole file-provider cold start (row above): the ratio is the Argon2id share",
        Target::Report,
        "report",
    ));
    rows.push(row(
        "key store open with 1,000,000 TEKs (no eager unwrap)",
        "store_open/ours_1m_teks",
        "store_open/baseline_empty",
        "empty store open",
        Target::AtMostNs(1e8),
        "≤ 100 ms",
    ));
}

/// Key backup and its check with the provider.
fn backup_rows(rows: &mut Vec<RowSpec>) {
    rows.push(row(
        "backup of 100,000 TEKs (secure file)",
        "backup_100k/ours_backup_secure_file",
        "backup_100k/baseline_store_export_count",
        "key store export alone (the same store's export_blocking, a visitor that only counts)",
        Target::AtMostNs(5e9),
        "≤ 5 s",
    ));
    rows.push(row(
        "backup verify --with-provider, 100,000 TEKs, file provider",
        "backup_verify_100k/ours_verify_with_provider_file",
        "backup_verify_100k/baseline_unwraps_in_memory",
        "100,000 unwraps in memory (unwrap_tek on the already-open secure-file provider)",
        Target::Report,
        "report",
    ));
}

/// Every row, in report order.
pub(super) fn specs() -> Vec<RowSpec> {
    let mut rows = Vec::new();
    page_rows(&mut rows);
    lookup_rows(&mut rows);
    key_bytes_rows(&mut rows);
    wrap_rows(&mut rows);
    rotation_rows(&mut rows);
    backup_rows(&mut rows);
    rows
}
