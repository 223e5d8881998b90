//! Tests of the configuration types.
use super::*;

#[test]
fn vault_config_defaults_and_unknown_fields() {
    let c: VaultTransitConfig = serde_json::from_str(r#"{"address": "https://v:8200"}"#).unwrap();
    assert_eq!(c, VaultTransitConfig::new("https://v:8200"));
    assert_eq!(c.mount_path(), "transit");
    assert_eq!(c.token_var(), "VAULT_TOKEN");
    assert_eq!(
        (c.state_mount.as_str(), c.state_path.as_str()),
        ("secret", "heliosdb/meks")
    );
    assert_eq!((c.timeout_secs, c.max_retries), (10, 3));
    let c: VaultTransitConfig = serde_json::from_str(
        r#"{"address": "https://v", "mount": "t", "token_file": "/run/t",
            "namespace": "ns", "ca_cert": "/ca.pem", "key_prefix": "heliosdb-",
            "state_mount": "kv", "state_path": "p", "timeout_secs": 3, "max_retries": 1}"#,
    )
    .unwrap();
    assert_eq!(c.key_prefix.as_deref(), Some("heliosdb-"));
    assert_eq!((c.timeout_secs, c.max_retries), (3, 1));
    assert!(
        serde_json::from_str::<VaultTransitConfig>(r#"{"address": "x", "token": "s"}"#).is_err()
    );
}

#[test]
fn owasp_floor() {
    assert!(KdfParams::default().meets_owasp_minimum());
    assert!(
        !KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 2,
            p_cost: 1
        }
        .meets_owasp_minimum()
    );
    assert!(
        KdfParams {
            m_cost_kib: 46 * 1024,
            t_cost: 1,
            p_cost: 1
        }
        .meets_owasp_minimum()
    );
    assert!(
        !KdfParams {
            m_cost_kib: 19 * 1024,
            t_cost: 1,
            p_cost: 1
        }
        .meets_owasp_minimum()
    );
}

#[test]
fn config_secrets_are_redacted() {
    let s = ConfigSecret::new("654321");
    assert_eq!(format!("{s:?}"), "ConfigSecret([REDACTED])");
    let h: HsmConfig =
        serde_json::from_str(r#"{"pkcs11_library_path":"/x.so","pin":"654321"}"#).unwrap();
    assert_eq!(h.pin, "654321");
    let text = format!("{h:?} {}", serde_json::to_string(&h).unwrap());
    assert!(!text.contains("654321"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    let none = HsmConfig::default();
    let text = format!("{none:?} {}", serde_json::to_string(&none).unwrap());
    assert!(
        text.contains("<none>") && !text.contains("\"pin\""),
        "{text}"
    );
    assert_eq!(h.timeout_secs, 30);
    assert_eq!(
        h.state_refresh_secs, 10,
        "absent from the file: the default"
    );
    let h: HsmConfig =
        serde_json::from_str(r#"{"pkcs11_library_path":"/x.so","state_refresh_secs":0}"#).unwrap();
    assert_eq!(h.state_refresh_secs, 0);
}

#[test]
fn default_variable() {
    let c = SecureFileConfig::new("/x");
    assert_eq!(c.passphrase_var(), "HELIOSDB_MEK_PASSPHRASE");
}

#[test]
fn azure_config_defaults_every_field_and_unknown_fields() {
    let c: AzureKeyVaultConfig =
        serde_json::from_str(r#"{"vault_url": "https://v.vault.azure.net", "key_name": "k"}"#)
            .unwrap();
    assert_eq!(
        c,
        AzureKeyVaultConfig::new("https://v.vault.azure.net", "k")
    );
    assert_eq!((c.key_size, c.hsm_protected), (3072, false));
    assert_eq!(c.credential, "managed_identity");
    assert_eq!(c.client_secret_env_var, "AZURE_CLIENT_SECRET");
    assert!(c.verify_challenge_resource);
    assert_eq!(
        (c.timeout_secs, c.max_retries, c.max_retry_secs),
        (10, 3, 30)
    );
    assert_eq!(c.effective_wrap_algorithm(), "RSA-OAEP-256");
    assert!(!c.is_managed_hsm());

    let c: AzureKeyVaultConfig = serde_json::from_str(
        r#"{"vault_url": "https://h.managedhsm.azure.net/", "key_name": "k",
            "wrap_algorithm": "A256KW", "key_size": 4096, "hsm_protected": true,
            "credential": "client_secret", "tenant_id": "t", "client_id": "c",
            "client_secret_env_var": "S", "client_secret_file": "/run/s",
            "authority_host": "https://login.example", "ca_cert": "/ca.pem",
            "verify_challenge_resource": false, "timeout_secs": 3, "max_retries": 1,
            "max_retry_secs": 5}"#,
    )
    .unwrap();
    assert!(c.is_managed_hsm());
    assert_eq!(c.effective_wrap_algorithm(), "A256KW");
    assert_eq!((c.key_size, c.hsm_protected), (4096, true));
    assert_eq!(
        c.client_secret_file.as_deref(),
        Some(std::path::Path::new("/run/s"))
    );
    assert_eq!((c.timeout_secs, c.max_retries, c.max_retry_secs), (3, 1, 5));
    assert!(!c.verify_challenge_resource);
    assert_eq!(
        AzureKeyVaultConfig::new("https://x.managedhsm.azure.net:443", "k")
            .effective_wrap_algorithm(),
        "A256GCM"
    );
    // A secret never goes into the configuration.
    assert!(
        serde_json::from_str::<AzureKeyVaultConfig>(
            r#"{"vault_url": "x", "key_name": "k", "client_secret": "s"}"#
        )
        .is_err()
    );
}
