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
    r.insert("store_open/ours_1m_teks".to_string(), 5e6);
    let md = render(&r, None);
    assert!(md.contains("| page seal, aws-lc, 8 KiB"), "{md}");
    let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(line("page seal, aws-lc, 8 KiB").ends_with("| met |"));
    assert!(line("page seal, ring, 8 KiB").contains("MISSED (+10.0%)"));
    assert!(line("cache hit, 1 thread").ends_with("| MISSED |"));
    assert!(line("1,000,000 TEKs").ends_with("| met |"));
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
