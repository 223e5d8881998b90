//! Tests of the benchmark report.
use super::*;

#[test]
fn verdicts_follow_the_targets() {
    let mut r = BTreeMap::new();
    r.insert("page_seal/aws-lc/raw/8192".to_string(), 500.0);
    r.insert("page_seal/aws-lc/ours/8192".to_string(), 520.0);
    r.insert("page_seal/ring/raw/8192".to_string(), 1000.0);
    r.insert("page_seal/ring/ours/8192".to_string(), 1100.0);
    r.insert("get_table_key_hit/ours_1t".to_string(), 150.0);
    r.insert("get_table_key_hit/hashmap_1t".to_string(), 100.0);
    r.insert("get_table_key_hit/ours_2t".to_string(), 60.0);
    r.insert("get_table_key_hit/hashmap_2t".to_string(), 55.0);
    r.insert("store_open/ours_1m_teks".to_string(), 5e6);
    let md = render(&r, None);
    assert!(md.contains("| page seal, aws-lc, 8 KiB"), "{md}");
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(line("page seal, aws-lc, 8 KiB").ends_with("| met |"));
    assert!(line("page seal, ring, 8 KiB").contains("MISSED (+10.0%)"));
    // The cache hit is measured against the same-run HashMap, not against a fixed time.
    assert!(
        line("cache hit, 1 thread").ends_with("| 1.50× | ≤ 1.15× HashMap | MISSED (+50.0%) |"),
        "{md}"
    );
    assert!(line("cache hit, 2 thread").ends_with("| 1.09× | ≤ 1.15× HashMap | met |"));
    assert!(line("cache hit, 4 thread").ends_with("| not run |"));
    assert!(!md.contains("100 ns"), "{md}");
    assert!(line("key store open with 1,000,000 TEKs").ends_with("| met |"));
    assert!(line("MEK rotation of 100,000").ends_with("| not run |"));
    assert!(line("wrap + unwrap, OpenBao").ends_with("| not run |"));
    r.insert("wrap_unwrap/provider_openbao".to_string(), 1.05e6);
    r.insert("wrap_unwrap/raw_vaultrs_openbao".to_string(), 1e6);
    r.insert(
        "mek_rotation_openbao_10k/ours_openbao_server_side_rewrap".to_string(),
        1.5e9,
    );
    r.insert(
        "mek_rotation_openbao_10k/raw_vaultrs_rewrap".to_string(),
        1e9,
    );
    let md = render(&r, None);
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(line("wrap + unwrap, OpenBao").ends_with("| 1.05× | ≤ 1.10× raw (report) | met |"));
    assert!(line("10,000 TEKs, OpenBao").ends_with("| MISSED (+50.0%) |"));
    assert!(!md.contains("OpenBao (Vault Transit) | - | - | the provider's raw SDK call"));
    assert!(line("wrap + unwrap, moto (AWS KMS)").ends_with("| not run |"));
    assert!(!md.contains("not measured"));
    r.insert("wrap_unwrap/provider_moto".to_string(), 6.2e6);
    r.insert("wrap_unwrap/raw_sdk_moto".to_string(), 6e6);
    r.insert(
        "mek_rotation_moto_1k/ours_moto_reencrypt".to_string(),
        3.5e9,
    );
    r.insert("mek_rotation_moto_1k/raw_sdk_reencrypt".to_string(), 3e9);
    let md = render(&r, None);
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(
        line("wrap + unwrap, moto (AWS KMS)").ends_with("| 1.03× | ≤ 1.10× raw (report) | met |"),
        "{md}"
    );
    assert!(
        line("MEK rotation of 1,000 TEKs, moto, ReEncrypt")
            .ends_with("| 1.17× | ≤ 1.20× raw | met |"),
        "{md}"
    );
    assert!(md.contains("moto itself takes about 3 ms per call"));
    assert!(line("Key Vault test server (Azure SDK)").ends_with("| not run |"));
    r.insert("wrap_unwrap/provider_azure_test_server".to_string(), 2.1e6);
    r.insert("wrap_unwrap/raw_sdk_azure_test_server".to_string(), 2e6);
    let md = render(&r, None);
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(
        line("wrap + unwrap, Key Vault test server (Azure SDK)")
            .ends_with("| 1.05× | ≤ 1.10× raw (report) | met |"),
        "{md}"
    );
    assert!(md.contains("RSA private-key operation"));
}

#[test]
fn only_results_of_this_run_count() {
    let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    let new = dir.join("wrap_unwrap").join("provider_memory").join("new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(
        new.join("benchmark.json"),
        r#"{"full_id":"wrap_unwrap/provider_memory"}"#,
    )
    .unwrap();
    std::fs::write(
        new.join("estimates.json"),
        r#"{"median":{"point_estimate":900.0}}"#,
    )
    .unwrap();
    let all = read_results(&dir, None).unwrap();
    assert_eq!(all.get("wrap_unwrap/provider_memory"), Some(&900.0));
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    assert!(read_results(&dir, Some(later)).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_partial_run_keeps_the_other_measured_rows() {
    let mut full = BTreeMap::new();
    full.insert("page_seal/ring/raw/8192".to_string(), 1000.0);
    full.insert("page_seal/ring/ours/8192".to_string(), 1100.0);
    full.insert("wrap_unwrap/provider_memory".to_string(), 900.0);
    let first = render(&full, None);
    let mut partial = BTreeMap::new();
    partial.insert("wrap_unwrap/provider_memory".to_string(), 800.0);
    partial.insert("wrap_unwrap/provider_openbao".to_string(), 1.1e6);
    partial.insert("wrap_unwrap/raw_vaultrs_openbao".to_string(), 1e6);
    let second = render(&partial, Some(&first));
    let line =
        |md: &str, needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    // Kept, marked, with its old numbers.
    assert!(
        line(&second, "page seal, ring, 8 KiB")
            .starts_with("| page seal, ring, 8 KiB (7.4 GB/s) † |"),
        "{second}"
    );
    assert!(line(&second, "page seal, ring, 8 KiB").contains("MISSED (+10.0%)"));
    // Measured now: the new numbers.
    assert!(line(&second, "wrap + unwrap, memory").contains("800.0 ns"));
    assert!(line(&second, "wrap + unwrap, OpenBao").contains("1.10×"));
    // Never measured: still "not run", not kept.
    assert!(line(&second, "page seal, aws-lc, 8 KiB").ends_with("| not run |"));
    assert!(second.contains("Rows marked † were not measured by this run"));
    // Kept twice: marked once.
    let third = render(&partial, Some(&second));
    assert!(line(&third, "page seal, ring, 8 KiB").contains("8 KiB (7.4 GB/s) † |"));
    // The oldest run stays named across partial runs.
    let first_run = line(&first, "* Run: ").replace("* Run: ", "");
    assert!(line(&second, "Rows marked †").ends_with(&format!("back to {first_run}.")));
    let renamed = second.replace(&first_run, "1999-01-01 00:00 UTC");
    let third = render(&partial, Some(&renamed));
    assert!(line(&third, "Rows marked †").ends_with("back to 1999-01-01 00:00 UTC."));
    assert!(!render(&full, Some(&first)).contains('†'));
}

#[test]
fn a_partial_run_drops_older_texts_of_current_notes() {
    let mut full = BTreeMap::new();
    full.insert("page_seal/ring/raw/8192".to_string(), 1000.0);
    full.insert("page_seal/ring/ours/8192".to_string(), 1100.0);
    let title = note_title(notes::NOTES[0]).unwrap();
    let first = render(&full, None).replace(
        "## Notes on the misses\n",
        &format!(
            "## Notes on the misses\n\n* **{title}** an older text of this note.\n\
             * **A note no current note replaces.** Written by hand.\n"
        ),
    );
    let mut partial = BTreeMap::new();
    partial.insert("wrap_unwrap/provider_memory".to_string(), 800.0);
    let second = render(&partial, Some(&first));
    assert!(second.contains('†'), "{second}");
    assert!(!second.contains("an older text of this note"), "{second}");
    assert_eq!(
        second.matches(&format!("* **{title}**")).count(),
        1,
        "{second}"
    );
    assert!(
        second.contains("* **A note no current note replaces.** Written by hand."),
        "{second}"
    );
    assert_eq!(note_title("no title"), None);
}

#[test]
fn the_issue_14_rows_have_their_targets() {
    let mut r = BTreeMap::new();
    for (id, v) in [
        ("page_seal/aws-lc/ours/8192", 600.0),
        ("page_seal/aws-lc/raw/8192", 590.0),
        ("page_seal/aws-lc/raw_os_nonce/8192", 880.0),
        ("facade_seal/ours_8192", 650.0),
        ("facade_seal/raw_aws_lc_8192", 590.0),
        ("wrap_unwrap/provider_softhsm", 60e3),
        ("wrap_unwrap/raw_cryptoki_softhsm", 15e3),
        ("wrap_unwrap/raw_cryptoki_token_key_3calls", 45e3),
        ("wrap_unwrap/provider_health", 12e3),
        ("wrap_unwrap/raw_session_info", 1e3),
        ("cold_start/ours_file_10k", 1.2e9),
        ("cold_start/raw_file_10k", 10e6),
        ("cold_start/file_provider_open", 1e9),
    ] {
        r.insert(id.to_string(), v);
    }
    let md = render(&r, None);
    let line = |needle: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {needle}")))
            .unwrap_or_else(|| panic!("no row {needle}: {md}"))
            .to_string()
    };
    assert!(line("page seal, aws-lc, 8 KiB").ends_with("| ≤ 1.05× raw | met |"));
    assert!(
        line("page seal vs OS-random nonce, aws-lc, 8 KiB").ends_with(
            "| raw aws-lc seal with a getrandom nonce per call | 0.68× | report | report |"
        ),
        "{md}"
    );
    assert!(line("page seal vs OS-random nonce, ring, 8 KiB").ends_with("| not run |"));
    // The 8 KiB target rows and the facade row name their interleaved baselines.
    assert!(
        line("page seal, aws-lc, 8 KiB")
            .contains("| raw aws-lc seal (fixed nonce), interleaved with ours in the same run |"),
        "{md}"
    );
    assert!(
        line("seal 8 KiB through the facade's sealer")
            .contains("| raw aws-lc seal (fixed nonce), interleaved with ours in the same run |"),
        "{md}"
    );
    assert!(
        line("seal 8 KiB through the facade's sealer (12.6 GB/s)")
            .ends_with("| 1.10× | ≤ 1.08× raw | MISSED (+10.2%) |"),
        "{md}"
    );
    assert!(
        line("wrap + unwrap, SoftHSM2 (PKCS#11)")
            .ends_with("| 4.00× | ≤ 1.5× raw | MISSED (+300.0%) |")
    );
    assert!(
        line("wrap + unwrap, SoftHSM2, like for like").ends_with("| 1.33× | ≤ 1.5× raw | met |"),
        "{md}"
    );
    assert!(line("SoftHSM2 hop").ends_with("| 12.00× | report | report |"));
    assert!(line("cold start, file provider: open").ends_with("| 120.00× | report | report |"));
    assert!(line("cold start, file provider: the provider open alone").contains("| 0.83× |"));
    assert!(line("cold start, SoftHSM2").ends_with("| not run |"));
    assert!(line("MEK rotation of 1,000,000 TEKs").ends_with("| not run |"));
    assert!(line("MEK rotation of 100,000 TEKs").ends_with("| ≤ 3 s | not run |"));
    // Every row key is unique, or a partial run would keep the wrong line.
    let keys: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| what") && !l.starts_with("| ---"))
        .map(|l| row_key(l.split('|').nth(1).unwrap()))
        .collect();
    let unique: std::collections::BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    // The notes describe the new design.
    for needle in [
        "SP 800-38D section 8.2.1",
        "per-thread front cache",
        "`state_refresh` (default 10 s",
        "a third GCM call",
        "Argon2id",
        "about 20 minutes",
        "`benches/benches/page_seal_8k.rs`",
        "Ours and the raw aws-lc seal run interleaved",
    ] {
        assert!(md.contains(needle), "no {needle:?} in the notes: {md}");
    }
    assert!(!md.contains("about 15 minutes"));
}

#[test]
fn extra_results_are_read_with_their_units() {
    let dir = std::env::temp_dir().join(format!("xtask-bench-extra-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rotation_1m.json"),
        r#"{"results":[
            {"id":"mek_rotation_1m/ours_file_provider_durable","value":12.5e9,"unit":"ns"},
            {"id":"mek_rotation_1m/baseline_unwrap_wrap_in_memory","value":1.0e9,"unit":"ns"},
            {"id":"mek_rotation_1m/peak_rss","value":314572800,"unit":"bytes"},
            {"id":"mek_rotation_1m/rss_before","value":209715200,"unit":"bytes"}
        ]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a result").unwrap();
    // An extra result replaces a criterion result of the same id.
    let mut r = BTreeMap::new();
    r.insert(
        "mek_rotation_1m/ours_file_provider_durable".to_string(),
        1.0,
    );
    read_extra(&dir, None, &mut r).unwrap();
    assert_eq!(r["mek_rotation_1m/ours_file_provider_durable"], 12.5e9);
    let md = render(&r, None);
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(
        line("MEK rotation of 1,000,000 TEKs")
            .contains("| 12.50 s | 1.00 s | unwrap + wrap of 1,000,000 keys in memory"),
        "{md}"
    );
    assert!(
        line("peak memory of the 1,000,000-TEK rotation").contains("| 300.0 MiB | 200.0 MiB |"),
        "{md}"
    );
    assert!(
        line("peak memory of the 1,000,000-TEK rotation").ends_with("| 1.50× | report | report |")
    );
    // Older than the run: not counted.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let mut fresh = BTreeMap::new();
    read_extra(&dir, Some(later), &mut fresh).unwrap();
    assert!(fresh.is_empty());
    // A malformed file is an error naming it, never silently skipped.
    std::fs::write(
        dir.join("bad.json"),
        r#"{"results":[{"id":"x","value":"1"}]}"#,
    )
    .unwrap();
    let e = read_extra(&dir, None, &mut BTreeMap::new()).unwrap_err();
    assert!(e.contains("bad.json") && e.contains("rerun"), "{e}");
    // No directory: nothing, no error.
    read_extra(&dir.join("missing"), None, &mut fresh).unwrap();
    assert!(fresh.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interleaved_page_seal_results_replace_criterions() {
    let dir = std::env::temp_dir().join(format!("xtask-bench-seal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("page_seal_8k.json"),
        r#"{"results":[
            {"id":"page_seal/aws-lc/raw/8192","value":570.0,"unit":"ns"},
            {"id":"page_seal/aws-lc/ours/8192","value":588.0,"unit":"ns"}
        ]}"#,
    )
    .unwrap();
    // A criterion run of the same ids (a fast baseline run, then ours) reads as a miss.
    let mut r = BTreeMap::new();
    r.insert("page_seal/aws-lc/raw/8192".to_string(), 558.0);
    r.insert("page_seal/aws-lc/ours/8192".to_string(), 600.0);
    r.insert("page_seal/aws-lc/raw_os_nonce/8192".to_string(), 900.0);
    read_extra(&dir, None, &mut r).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r["page_seal/aws-lc/raw/8192"], 570.0);
    assert_eq!(r["page_seal/aws-lc/ours/8192"], 588.0);
    let md = render(&r, None);
    let line = |needle: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {needle}")))
            .unwrap_or_else(|| panic!("no row {needle}: {md}"))
            .to_string()
    };
    assert!(
        line("page seal, aws-lc, 8 KiB").ends_with("| 1.03× | ≤ 1.05× raw | met |"),
        "{md}"
    );
    // The 4 KiB row stays criterion's, against the plain raw seal.
    assert!(
        !line("page seal, aws-lc, 4 KiB").contains("interleaved"),
        "{md}"
    );
    // The OS-random-nonce row keeps criterion's baseline against the interleaved ours.
    assert!(
        line("page seal vs OS-random nonce, aws-lc, 8 KiB").contains("| 0.65× |"),
        "{md}"
    );
}

#[test]
fn backup_rows_read_their_extra_results() {
    let dir = std::env::temp_dir().join(format!("xtask-bench-backup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("backup.json"),
        r#"{"results":[
            {"id":"backup_100k/ours_backup_secure_file","value":2.5e9,"unit":"ns"},
            {"id":"backup_100k/baseline_store_export_count","value":5.0e8,"unit":"ns"},
            {"id":"backup_verify_100k/ours_verify_with_provider_file","value":3.0e9,"unit":"ns"},
            {"id":"backup_verify_100k/baseline_unwraps_in_memory","value":2.0e8,"unit":"ns"}
        ]}"#,
    )
    .unwrap();
    let mut r = BTreeMap::new();
    read_extra(&dir, None, &mut r).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let md = render(&r, None);
    let line = |md: &str, needle: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {needle}")))
            .unwrap_or_else(|| panic!("no row {needle}: {md}"))
            .to_string()
    };
    assert!(
        line(&md, "backup of 100,000 TEKs (secure file)").ends_with(
            "| 2.50 s | 500.00 ms | key store export alone (the same store's export_blocking, \
             a visitor that only counts) | 5.00× | ≤ 5 s | met |"
        ),
        "{md}"
    );
    assert!(
        line(
            &md,
            "backup verify --with-provider, 100,000 TEKs, file provider"
        )
        .ends_with(
            "| 3.00 s | 200.00 ms | 100,000 unwraps in memory (unwrap_tek on the \
                        already-open secure-file provider) | 15.00× | report | report |"
        ),
        "{md}"
    );
    assert!(md.contains("`benches/benches/backup.rs`"), "{md}");
    assert!(md.contains("the backup rows) come from"), "{md}");
    // The target is absolute: a slow backup misses it whatever the export took.
    r.insert("backup_100k/ours_backup_secure_file".to_string(), 5.5e9);
    r.insert("backup_100k/baseline_store_export_count".to_string(), 5e9);
    let md2 = render(&r, None);
    assert!(
        line(&md2, "backup of 100,000 TEKs").ends_with("| 1.10× | ≤ 5 s | MISSED |"),
        "{md2}"
    );
    // A partial run of other rows keeps both backup rows, marked.
    let mut other = BTreeMap::new();
    other.insert("wrap_unwrap/provider_memory".to_string(), 800.0);
    let kept = render(&other, Some(&md));
    assert!(line(&kept, "backup of 100,000 TEKs (secure file) †").contains("| met |"));
    assert!(
        line(
            &kept,
            "backup verify --with-provider, 100,000 TEKs, file provider †"
        )
        .contains("| 15.00× |")
    );
}

#[test]
fn the_key_bytes_row_is_a_report_against_the_boxed_array() {
    let mut r = BTreeMap::new();
    r.insert("key_bytes/ours_locked_arena_alloc_free".to_string(), 30.0);
    r.insert("key_bytes/baseline_box_alloc_free".to_string(), 20.0);
    let md = render(&r, None);
    let line = md
        .lines()
        .find(|l| l.starts_with("| KeyBytes allocate + free, locked arena |"))
        .unwrap_or_else(|| panic!("no key_bytes row: {md}"));
    assert!(line.contains("| `Box<[u8; 32]>` allocate + free"), "{line}");
    assert!(line.ends_with("| 1.50× | report | report |"), "{line}");
    assert!(md.contains("`benches/benches/key_bytes.rs`"), "{md}");
    // Not measured: "not run", never a verdict.
    let md = render(&BTreeMap::new(), None);
    assert!(
        md.lines().any(
            |l| l.starts_with("| KeyBytes allocate + free, locked arena |")
                && l.ends_with("| not run |")
        ),
        "{md}"
    );
}
