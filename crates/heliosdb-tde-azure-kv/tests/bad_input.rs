//! The bad-input table: each input gives a clear typed error that names the setting or
//! the keys involved, and changes nothing (the server's request log shows no create, import or
//! update by the provider, or the key's versions are unchanged).

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use azure_security_keyvault_keys::models::{
    CreateKeyParameters, JsonWebKey, KeyOperation, KeyType,
};
use base64::Engine as _;
use common::{Payload, ctx, tek};
use heliosdb_tde_azure_kv::{AzureKvMekProvider, check_config};
use heliosdb_tde_core::{
    AzureKeyVaultConfig, EncryptionAlgorithm, MekProvider, SecurityMode, TdeError,
};
use std::collections::HashMap;

/// A 1024-bit RSA test key (made for this test with Python `cryptography`; public knowledge).
const RSA1024_N: &str = "wtEsC69QNew4PD_vxtCHgUGu_X1pxtI-QikXSBL_qJdarXxrBwF4ytc65RgT-9MyItJUq3UEDoSfx6JFd3rgTHol_h3sk9uFc38AcC3n3AcYxENMGG_diEDQySe60-6011L5kE-ZA1PQkMjz4-HJ9qlvQR_hAFUuj43hekg21uE";
const RSA1024_E: &str = "AQAB";
const RSA1024_D: &str = "v_jm8ky7Oaegcp5-ZOev34seKOSgiy858nATZQ5zp2oeDL6BqNGmehtFCeOELa6bxPyGOr6AVN4TpOEemvIWewz1CiStQ9ceoiYXr3i8Fy6aW0nL6Ge8z_9T8RcQSWcgmwn7b5CIip5v_okJvUN_-ZwXQDAsUDyRO6B4aCvZfRE";
const RSA1024_P: &str =
    "7sbdrCCh_GDC7gCQqy38jgelqMZrcs4WhPEK48Omn9PoQW6ch9ZJ_KDGsMA9YdAnBYjHaGUZpuo4veCNcBU5xw";
const RSA1024_Q: &str =
    "0N6RQVul_2q84kWKG2BdTEA4m3oLWcyMLn_bxyvFPtsXFF8KP7KBoCWjNfaD5YPBq6qd5zGQrDMmbZ14zowqFw";
const RSA1024_DP: &str =
    "mNF-HiPkiHoFR_3kmSodcWlDhPk424k6sGr05UDa63_cLcR1OhrTz3O2tnjS0D9AOjKILTBHcqSFHEETRKDREQ";
const RSA1024_DQ: &str =
    "V9t3ACX74j9Uql0T5cYYGI3fAc9JXQGEab7QhKvtsS3ZPHFpzzdX_TQ3veguvOk6GuqOtwQLVdPCM1OM0Fz3Cw";
const RSA1024_QI: &str =
    "Dpidn2-YzKdXVx3JoJLc0GSzKX7M9kk7QCFSJPIl_5mNy0CqMV000GFT2_kvJuWhaY8rSfE7zwk1BCzfXIDlPA";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn invalid_config(e: &TdeError, field: &str) -> String {
    let text = e.to_string();
    assert!(
        matches!(e, TdeError::InvalidConfig { .. }),
        "expected InvalidConfig, got {e:?}"
    );
    assert!(text.contains(field), "names {field}: {text}");
    text
}

/// Opens `f` with `config`, expecting a refusal, and checks the provider changed nothing: no
/// write since `writes_before` (the operator's own writes).
async fn refused(
    f: &common::Fixture,
    config: &AzureKeyVaultConfig,
    mode: SecurityMode,
) -> TdeError {
    let before = f.vault.writes().await;
    let e = f
        .try_open_with(config, mode)
        .await
        .expect_err("the bad input was accepted at open");
    assert_eq!(
        f.vault.writes().await,
        before,
        "the provider changed the vault"
    );
    e
}

/// Either `open` refuses, or generating the default MEK does; nothing written either way.
async fn refused_at_open_or_generate(f: &common::Fixture) -> TdeError {
    let before = f.vault.writes().await;
    let e = match f.try_open().await {
        Err(e) => e,
        Ok(p) => p
            .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
            .await
            .expect_err("the bad key was adopted"),
    };
    assert_eq!(
        f.vault.writes().await,
        before,
        "the provider changed the vault"
    );
    e
}

#[tokio::test]
async fn an_ec_key_is_refused_naming_its_type_and_the_algorithm() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    f.vault
        .create_key(
            &f.key_name,
            CreateKeyParameters {
                kty: Some(KeyType::Ec),
                ..Default::default()
            },
        )
        .await;
    let e = refused(&f, &f.config, SecurityMode::Development).await;
    let text = invalid_config(&e, "kms_config.wrap_algorithm");
    assert!(text.contains("EC"), "{text}");
}

#[tokio::test]
async fn an_rsa_key_for_a256gcm_is_refused() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::GCM);
    f.vault.create_rsa(&f.key_name, 2048).await;
    let e = refused(&f, &f.config, SecurityMode::Development).await;
    let text = invalid_config(&e, "kms_config.wrap_algorithm");
    assert!(text.contains("RSA"), "{text}");
    assert!(text.contains("A256GCM"), "{text}");
}

#[tokio::test]
async fn a_1024_bit_rsa_key_is_refused_with_its_size() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    f.vault
        .import(
            &f.key_name,
            JsonWebKey {
                kty: Some(KeyType::Rsa),
                n: Some(b64(RSA1024_N)),
                e: Some(b64(RSA1024_E)),
                d: Some(b64(RSA1024_D)),
                p: Some(b64(RSA1024_P)),
                q: Some(b64(RSA1024_Q)),
                dp: Some(b64(RSA1024_DP)),
                dq: Some(b64(RSA1024_DQ)),
                qi: Some(b64(RSA1024_QI)),
                key_ops: Some(vec!["wrapKey".into(), "unwrapKey".into()]),
                ..Default::default()
            },
        )
        .await;
    let e = refused(&f, &f.config, SecurityMode::Development).await;
    let text = e.to_string();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    assert!(text.contains("1024"), "names the size: {text}");
    assert!(text.contains("2048"), "names the minimum: {text}");
}

#[tokio::test]
async fn a_key_without_wrap_operations_is_refused_naming_them() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    f.vault
        .create_key(
            &f.key_name,
            CreateKeyParameters {
                kty: Some(KeyType::Rsa),
                key_size: Some(2048),
                key_ops: Some(vec![KeyOperation::Sign, KeyOperation::Verify]),
                ..Default::default()
            },
        )
        .await;
    let e = refused(&f, &f.config, SecurityMode::Development).await;
    let text = e.to_string();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e:?}");
    assert!(
        text.contains("wrapKey") && text.contains("unwrapKey"),
        "names the missing operations: {text}"
    );
}

#[tokio::test]
async fn refused_wrap_algorithms_list_the_accepted_values() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    for alg in ["RSA1_5", "RSA-OAEP", "A128GCM", "rot13"] {
        let mut c = f.config.clone();
        c.wrap_algorithm = Some(alg.into());
        let e = check_config(&c, SecurityMode::Development).unwrap_err();
        let text = invalid_config(&e, "kms_config.wrap_algorithm");
        for accepted in ["RSA-OAEP-256", "A256KW", "A256GCM"] {
            assert!(text.contains(accepted), "{alg}: lists {accepted}: {text}");
        }
        let e = refused(&f, &c, SecurityMode::Development).await;
        invalid_config(&e, "kms_config.wrap_algorithm");
    }
    assert!(f.vault.requests().await.is_empty(), "the vault was called");
}

#[tokio::test]
async fn bad_vault_urls_are_refused_naming_the_field() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    // http:// in production.
    let mut c = f.config.clone();
    c.vault_url = c.vault_url.replacen("https://", "http://", 1);
    let e = refused(&f, &c, SecurityMode::Production).await;
    invalid_config(&e, "kms_config.vault_url");
    // Not a URL at all, in either mode.
    for bad in [
        "not a url",
        "vault.azure.net",
        "ftp://x.vault.azure.net",
        "",
    ] {
        let mut c = f.config.clone();
        c.vault_url = bad.into();
        for mode in [SecurityMode::Development, SecurityMode::Production] {
            let e = check_config(&c, mode).unwrap_err();
            invalid_config(&e, "kms_config.vault_url");
            let e = refused(&f, &c, mode).await;
            invalid_config(&e, "kms_config.vault_url");
        }
    }
    assert!(f.vault.requests().await.is_empty(), "the vault was called");
}

#[tokio::test]
async fn a_missing_key_is_key_not_found_and_nothing_is_created() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let e = p.mek_info(&f.default_mek).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&f.key_name), "names the key: {text}");
    assert!(
        text.contains(&f.vault.url()) || text.contains(&f.vault.label),
        "names the vault: {text}"
    );
    let e = p
        .wrap_tek(
            &common::mek_ref(&f.default_mek, 1),
            &tek("x@v1"),
            &ctx("x@v1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    assert!(f.vault.writes().await.is_empty(), "something was created");
}

#[tokio::test]
async fn a_missing_vault_host_is_a_retryable_outage() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    // The loopback resolver knows only *.localhost: this host does not resolve.
    f.config.vault_url = format!("https://no-such-vault.vault.invalid:{}", s.port);
    f.config.max_retries = 1;
    let r = match f.try_open().await {
        Err(e) => Err(e),
        Ok(p) => p.mek_info(&f.default_mek).await.map(|_| ()),
    };
    match r {
        Err(TdeError::ProviderUnavailable {
            retryable: true,
            ref reason,
            ..
        }) => assert!(reason.contains("no-such-vault.vault.invalid"), "{reason}"),
        other => panic!("expected ProviderUnavailable {{ retryable: true }}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_key_tagged_for_another_mek_id_is_refused_naming_both() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let other = common::fresh("other");
    f.vault
        .create_key(
            &f.key_name,
            CreateKeyParameters {
                kty: Some(KeyType::Rsa),
                key_size: Some(2048),
                key_ops: Some(vec![KeyOperation::WrapKey, KeyOperation::UnwrapKey]),
                tags: Some(HashMap::from([(
                    "heliosdb-mek-id".to_string(),
                    other.to_string(),
                )])),
                ..Default::default()
            },
        )
        .await;
    let versions = f.vault.versions(&f.key_name).await;
    let e = refused_at_open_or_generate(&f).await;
    let text = e.to_string();
    assert!(
        text.contains(other.as_str()) && text.contains(f.default_mek.as_str()),
        "names both ids: {text}"
    );
    let after = f.vault.versions(&f.key_name).await;
    assert_eq!(after.len(), versions.len());
    assert_eq!(after[0].tags, versions[0].tags, "the tags changed");
}

/// A payload cut short, with an unknown format byte, naming another MEK version's Key Vault
/// version, or unwrapping to a value that is not 64 bytes: `Corrupt` or `AuthenticationFailed`,
/// and a payload naming the wrong version never reaches the vault.
#[tokio::test]
async fn bad_payloads_are_corrupt_or_unauthenticated() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let p = f.open().await;
    let id = common::fresh("payload");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let c = ctx("b@v1");
    let w = p.wrap_tek(&v1, &tek("b@v1"), &c).await.unwrap();
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let w2 = p.wrap_tek(&v2, &tek("b@v1"), &c).await.unwrap();
    let bad = |r: Result<heliosdb_tde_core::TableKey, TdeError>, what: &str| match r {
        Err(TdeError::Corrupt { .. } | TdeError::AuthenticationFailed { .. }) => {}
        other => panic!("{what}: expected Corrupt or AuthenticationFailed, got {other:?}"),
    };
    let unwraps = || async {
        f.vault
            .requests()
            .await
            .iter()
            .filter(|r| r.path.ends_with("/unwrapkey"))
            .count()
    };
    let before = unwraps().await;

    for cut in [0, 1, 2, 5, w.payload.len() / 2, w.payload.len() - 1] {
        let mut t = w.clone();
        t.payload.truncate(cut);
        bad(
            p.unwrap_tek(&t, &c).await,
            &format!("payload cut to {cut} bytes"),
        );
    }
    let mut t = w.clone();
    t.payload.push(0);
    bad(p.unwrap_tek(&t, &c).await, "a trailing byte");
    for format in [0u8, 0x7f, 0xff] {
        let mut t = w.clone();
        t.payload[0] = format;
        bad(p.unwrap_tek(&t, &c).await, &format!("format byte {format}"));
    }
    let mut t = w.clone();
    t.payload[1] = 9;
    bad(p.unwrap_tek(&t, &c).await, "an unknown algorithm byte");
    // v1's envelope naming v2's Key Vault version.
    let mut other = Payload::parse(&w.payload);
    other.version_id = Payload::parse(&w2.payload).version_id;
    let mut t = w.clone();
    t.payload = other.encode();
    match p.unwrap_tek(&t, &c).await {
        Err(TdeError::AuthenticationFailed { .. }) => {}
        r => panic!("another version's id: expected AuthenticationFailed, got {r:?}"),
    }
    assert_eq!(unwraps().await, before, "a bad payload reached the vault");

    // A well-formed wrap of 32 bytes (not TEK || hash), made with the public key.
    let parsed = Payload::parse(&w.payload);
    let mut short = parsed.clone();
    short.ciphertext = f
        .vault
        .rsa_encrypt(&p.key_name_for(&id), &parsed.version_id, &[9u8; 32])
        .await;
    let mut t = w.clone();
    t.payload = short.encode();
    bad(p.unwrap_tek(&t, &c).await, "an unwrapped value of 32 bytes");
    let mut long = parsed.clone();
    long.ciphertext = f
        .vault
        .rsa_encrypt(&p.key_name_for(&id), &parsed.version_id, &[9u8; 65])
        .await;
    t.payload = long.encode();
    bad(p.unwrap_tek(&t, &c).await, "an unwrapped value of 65 bytes");
    // The genuine envelopes still unwrap.
    p.unwrap_tek(&w, &c).await.unwrap();
    p.unwrap_tek(&w2, &c).await.unwrap();
}

#[tokio::test]
async fn the_challenge_check_off_is_refused_in_production() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let mut c = f.config.clone();
    c.verify_challenge_resource = false;
    let e = check_config(&c, SecurityMode::Production).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("verify_challenge_resource"), "{text}");
    let e = refused(&f, &c, SecurityMode::Production).await;
    assert!(e.to_string().contains("verify_challenge_resource"), "{e}");
    assert!(f.vault.requests().await.is_empty(), "the vault was called");
    // Development mode accepts it, with a warning.
    let p = f.open_with(&c).await;
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("verify_challenge_resource")),
        "{:?}",
        p.warnings()
    );
}

/// The challenge check on, against a host that does not belong to the challenge's resource
/// (the shared vault at 127.0.0.1 answers for `https://localhost`): refused, nothing sent with
/// a token.
#[tokio::test]
async fn a_challenge_for_another_resource_is_refused() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let mut c = f.config.clone();
    c.vault_url = s.url.clone();
    c.verify_challenge_resource = true;
    let r = match f.try_open_with(&c, SecurityMode::Development).await {
        Err(e) => Err(e),
        Ok(p) => p.mek_info(&f.default_mek).await.map(|_| ()),
    };
    let e = r.expect_err("a challenge for another resource was accepted");
    assert!(
        !matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "not an outage: {e:?}"
    );
    assert!(
        e.to_string().contains("verify_challenge_resource") || e.to_string().contains("challenge"),
        "{e}"
    );
}

#[tokio::test]
async fn client_secret_without_tenant_or_client_id_is_refused_naming_them() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    for (tenant, client, field) in [
        (None, Some("c".to_string()), "kms_config.tenant_id"),
        (Some("t".to_string()), None, "kms_config.client_id"),
    ] {
        let mut c = f.config.clone();
        c.tenant_id = tenant;
        c.client_id = client;
        let e = refused(&f, &c, SecurityMode::Development).await;
        invalid_config(&e, field);
    }
    assert!(f.vault.requests().await.is_empty(), "the vault was called");
}

#[tokio::test]
async fn an_untrusted_certificate_names_ca_cert() {
    let Some(s) = common::server() else { return };
    let mut f = s.fixture(common::RSA);
    f.config.ca_cert = None;
    f.config.max_retries = 0;
    let r = match f.try_open().await {
        Err(e) => Err(e),
        Ok(p) => p.mek_info(&f.default_mek).await.map(|_| ()),
    };
    let e = r.expect_err("an untrusted certificate was accepted");
    let text = e.to_string();
    assert!(text.contains("kms_config.ca_cert"), "{text}");
    assert!(
        text.contains(&f.vault.url()) || text.contains(&f.vault.label),
        "{text}"
    );
}

#[tokio::test]
async fn opening_without_the_default_key_creates_nothing_until_generate() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::KW);
    let p: AzureKvMekProvider = f.open().await;
    assert!(
        f.vault.writes().await.is_empty(),
        "open() wrote to the vault"
    );
    p.generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let versions = f.vault.versions(&f.key_name).await;
    assert_eq!(versions.len(), 1);
    // Generating it again is AlreadyExists and writes nothing more.
    let writes = f.vault.writes().await;
    let e = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e:?}");
    assert_eq!(f.vault.writes().await, writes);
}
