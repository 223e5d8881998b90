use super::*;

fn cfg() -> AzureKeyVaultConfig {
    AzureKeyVaultConfig::new("https://my-vault.vault.azure.net", "heliosdb-mek")
}

fn field(e: TdeError) -> String {
    match e {
        TdeError::InvalidConfig { field, .. } => field,
        other => panic!("not InvalidConfig: {other}"),
    }
}

#[test]
fn the_defaults_pass_and_pick_the_algorithm_by_vault_kind() {
    let s = Settings::from_config(&cfg(), SecurityMode::Production).unwrap();
    assert_eq!(s.algorithm, WrapAlgorithm::RsaOaep256);
    assert_eq!(s.vault_url, "https://my-vault.vault.azure.net");
    assert!(s.warnings.is_empty());
    let h = AzureKeyVaultConfig::new("https://my-hsm.managedhsm.azure.net/", "k");
    let s = Settings::from_config(&h, SecurityMode::Production).unwrap();
    assert_eq!(s.algorithm, WrapAlgorithm::A256Gcm);
    assert_eq!(s.vault_url, "https://my-hsm.managedhsm.azure.net");
}

#[test]
fn wrap_algorithms_parse_and_print() {
    for a in WrapAlgorithm::ALL {
        assert_eq!(WrapAlgorithm::parse(a.name()).unwrap(), a);
        assert_eq!(a.to_string(), a.name());
        assert_eq!(WrapAlgorithm::from_code(a.code()), Some(a));
    }
    assert_eq!(
        WrapAlgorithm::parse("a256kw").unwrap(),
        WrapAlgorithm::A256Kw
    );
    for bad in ["RSA1_5", "RSA-OAEP", "CKM_AES_KEY_WRAP_PAD", ""] {
        let e = WrapAlgorithm::parse(bad).unwrap_err().to_string();
        assert!(e.contains("kms_config.wrap_algorithm"), "{e}");
        assert!(
            e.contains("RSA-OAEP-256") && e.contains("A256KW") && e.contains("A256GCM"),
            "{e}"
        );
    }
    let mut c = cfg();
    c.wrap_algorithm = Some("RSA1_5".into());
    assert_eq!(
        field(check_config(&c, SecurityMode::Development).unwrap_err()),
        "kms_config.wrap_algorithm"
    );
}

#[test]
fn vault_urls_are_checked() {
    let mut c = cfg();
    c.vault_url = "http://127.0.0.1:8200".into();
    let e = check_config(&c, SecurityMode::Production).unwrap_err();
    assert_eq!(field(e), "kms_config.vault_url");
    let s = Settings::from_config(&c, SecurityMode::Development).unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains("plain HTTP")),
        "{:?}",
        s.warnings
    );
    for bad in [
        "not a url",
        "ftp://v.vault.azure.net",
        "https://v.vault.azure.net?x=1",
        "https://user@v.vault.azure.net",
    ] {
        c.vault_url = bad.into();
        let e = check_config(&c, SecurityMode::Development).unwrap_err();
        assert_eq!(field(e), "kms_config.vault_url", "{bad}");
    }
}

#[test]
fn key_names_and_sizes_are_checked() {
    let mut c = cfg();
    c.key_name = "bad_name".into();
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.key_name"
    );
    c.key_name = String::new();
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.key_name"
    );
    let mut c = cfg();
    c.key_size = 1024;
    let e = check_config(&c, SecurityMode::Production)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kms_config.key_size") && e.contains("1024"),
        "{e}"
    );
    c.key_size = 4096;
    check_config(&c, SecurityMode::Production).unwrap();
    // The size does not matter for oct-HSM keys.
    c.key_size = 1;
    c.wrap_algorithm = Some("A256GCM".into());
    check_config(&c, SecurityMode::Production).unwrap();
}

#[test]
fn the_challenge_check_is_off_only_in_development() {
    let mut c = cfg();
    c.verify_challenge_resource = false;
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.verify_challenge_resource"
    );
    let s = Settings::from_config(&c, SecurityMode::Development).unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("verify_challenge_resource"))
    );
}

#[test]
fn credentials_and_their_ids_are_checked() {
    // These tests rely on AZURE_TENANT_ID / AZURE_CLIENT_ID being unset (xtask clears them).
    let env_set = std::env::var_os("AZURE_TENANT_ID").is_some()
        || std::env::var_os("AZURE_CLIENT_ID").is_some();
    let mut c = cfg();
    c.credential = "certificate".into();
    let e = check_config(&c, SecurityMode::Production)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kms_config.credential") && e.contains("client_secret"),
        "{e}"
    );
    c.credential = "client_secret".into();
    if !env_set {
        let e = check_config(&c, SecurityMode::Production)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kms_config.tenant_id") && e.contains("kms_config.client_id"),
            "{e}"
        );
        c.tenant_id = Some("contoso".into());
        let e = check_config(&c, SecurityMode::Production)
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("kms_config.tenant_id") && e.contains("kms_config.client_id"),
            "{e}"
        );
    }
    c.tenant_id = Some("contoso".into());
    c.client_id = Some("00000000-0000-0000-0000-000000000001".into());
    check_config(&c, SecurityMode::Production).unwrap();
    c.tenant_id = Some("bad tenant/..".into());
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.tenant_id"
    );
    for ok in ["managed_identity", "azure_cli", "developer_tools"] {
        let mut c = cfg();
        c.credential = ok.into();
        check_config(&c, SecurityMode::Production).unwrap();
    }
}

#[test]
fn authority_hosts_limits_and_deadlines() {
    let mut c = cfg();
    c.authority_host = Some("http://login.example".into());
    assert_eq!(
        field(check_config(&c, SecurityMode::Development).unwrap_err()),
        "kms_config.authority_host"
    );
    c.authority_host = Some("https://login.microsoftonline.us".into());
    check_config(&c, SecurityMode::Production).unwrap();
    let mut c = cfg();
    c.timeout_secs = 0;
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.timeout_secs"
    );
    let mut c = cfg();
    c.max_retries = 99;
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.max_retries"
    );
    let mut c = cfg();
    c.max_retry_secs = 0;
    assert_eq!(
        field(check_config(&c, SecurityMode::Production).unwrap_err()),
        "kms_config.max_retry_secs"
    );
    let s = Settings::from_config(&cfg(), SecurityMode::Production).unwrap();
    assert_eq!(s.call_deadline(), Duration::from_secs(30 + 2 * 10));
}
