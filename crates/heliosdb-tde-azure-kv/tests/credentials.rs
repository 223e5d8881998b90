//! Credentials, run for real: `client_secret` through `kms_config` against the test server's
//! Entra ID token endpoint (the secret from a variable and from a file), a wrong secret, a
//! client secret file others can read (refused in production, a warning in development), and
//! bearer tokens the vault refuses (401 after the SDK's one re-authentication).

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use azure_core::credentials::Secret;
use common::{StaticToken, ctx, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider, SecurityMode, TdeError};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

/// A variable no test environment sets.
const UNSET_VAR: &str = "HELIOSDB_TEST_AZURE_NO_SUCH_SECRET";

/// Writes `secret` to a new file with `mode`.
fn secret_file(dir: &tempfile::TempDir, secret: &str, mode: u32) -> PathBuf {
    let path = dir.path().join("client-secret");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{secret}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// One wrap and unwrap through `p`.
async fn works(p: &dyn MekProvider) {
    let mek = p
        .generate_mek(&common::fresh("cred"), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_or_else(|e| panic!("generate_mek: {e}"))
        .mek;
    let w = p.wrap_tek(&mek, &tek("c@v1"), &ctx("c@v1")).await.unwrap();
    p.unwrap_tek(&w, &ctx("c@v1")).await.unwrap();
}

/// A refused credential: a typed, non-retryable error naming the credential type, never the
/// secret.
fn assert_credential_refused(e: &TdeError, kind: &str, secret: Option<&str>) {
    let text = e.to_string();
    assert!(
        !matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "a refused credential is not an outage: {e:?}"
    );
    assert!(matches!(e, TdeError::Provider { .. }), "{e:?}");
    assert!(
        text.contains("refused"),
        "says the credential was refused: {text}"
    );
    assert!(text.contains(kind), "names the credential type: {text}");
    if let Some(s) = secret {
        assert!(!text.contains(s), "the secret leaked: {text}");
        assert!(!format!("{e:?}").contains(s), "the secret leaked: {e:?}");
    }
}

#[tokio::test]
async fn client_secret_from_the_variable() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let tokens_before = s.token_requests().await.len();
    let p = f.open().await;
    assert_eq!(p.credential_kind(), "client_secret");
    works(&p).await;
    let tokens = s.token_requests().await;
    assert!(
        tokens[tokens_before..].iter().any(|r| r.status == 200),
        "no token was issued by the token endpoint: {tokens:?}"
    );
    let debug = format!("{p:?}");
    assert!(!debug.contains(&s.client_secret), "{debug}");
}

#[tokio::test]
async fn client_secret_from_a_file_in_production() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let dir = tempfile::tempdir().unwrap();
    let mut c = f.config.clone();
    c.client_secret_env_var = UNSET_VAR.into();
    c.client_secret_file = Some(secret_file(&dir, &s.client_secret, 0o600));
    // Production mode: https, the challenge check on, a 0600 file: all accepted.
    let p = f
        .try_open_with(&c, SecurityMode::Production)
        .await
        .unwrap_or_else(|e| panic!("open in production: {e}"));
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    works(&p).await;
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_credential_error() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "definitely-not-the-secret-0123456789";
    let mut c = f.config.clone();
    c.client_secret_env_var = UNSET_VAR.into();
    c.client_secret_file = Some(secret_file(&dir, wrong, 0o600));
    let tokens_before = s.token_requests().await.len();
    let e = match f.try_open_with(&c, SecurityMode::Development).await {
        Err(e) => e,
        Ok(p) => p
            .generate_mek(&common::fresh("wrong"), EncryptionAlgorithm::Aes256Gcm)
            .await
            .expect_err("a wrong client secret was accepted"),
    };
    assert_credential_refused(&e, "client_secret", Some(wrong));
    assert!(e.to_string().contains(&s.tenant), "names the tenant: {e}");
    // The token endpoint refused it (401 invalid_client); nothing reached the vault's keys.
    let tokens = s.token_requests().await;
    assert!(
        tokens[tokens_before..].iter().any(|r| r.status == 401),
        "the token endpoint did not refuse a secret: {tokens:?}"
    );
    assert!(f.vault.writes().await.is_empty());
}

#[tokio::test]
async fn a_secret_file_others_can_read_is_refused_in_production() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let dir = tempfile::tempdir().unwrap();
    let mut c = f.config.clone();
    c.client_secret_env_var = UNSET_VAR.into();
    let path = secret_file(&dir, &s.client_secret, 0o644);
    c.client_secret_file = Some(path.clone());
    let e = f
        .try_open_with(&c, SecurityMode::Production)
        .await
        .expect_err("a 0644 secret file was accepted in production");
    let text = e.to_string();
    assert!(
        matches!(
            e,
            TdeError::InvalidConfig { .. }
                | TdeError::InsecurePermissions { .. }
                | TdeError::SecurityPolicy(_)
        ),
        "{e:?}"
    );
    assert!(
        text.contains("client_secret_file") || text.contains(&path.display().to_string()),
        "{text}"
    );
    assert!(!text.contains(&s.client_secret), "{text}");
    assert!(f.vault.requests().await.is_empty(), "the vault was called");

    // Development mode accepts it, with a warning.
    let p = f
        .try_open_with(&c, SecurityMode::Development)
        .await
        .unwrap();
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("client_secret_file") || w.contains(&path.display().to_string())),
        "{:?}",
        p.warnings()
    );
    works(&p).await;
}

/// A bearer token the vault does not know: the SDK re-authenticates once, gets 401 again, and
/// the provider reports the refused credential (custom, as given to the builder).
#[tokio::test]
async fn a_wrong_bearer_token_is_a_credential_error() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let token = "0000000000000000000000000000000000000000000000000000000000000000";
    let opened = heliosdb_tde_azure_kv::AzureKvMekProvider::builder(
        &f.config,
        &f.default_mek,
        SecurityMode::Development,
    )
    .credential(Arc::new(StaticToken(Secret::new(token))))
    .dns_resolver(common::resolver())
    .open()
    .await;
    let e = match opened {
        Err(e) => e,
        Ok(p) => {
            assert_eq!(p.credential_kind(), "custom");
            p.generate_mek(&common::fresh("tok"), EncryptionAlgorithm::Aes256Gcm)
                .await
                .expect_err("a wrong bearer token was accepted")
        }
    };
    assert_credential_refused(&e, "custom", Some(token));
    assert!(e.to_string().contains("401"), "{e}");
    assert!(e.to_string().contains(&s.tenant), "names the tenant: {e}");
    let requests = f.vault.requests().await;
    assert!(requests.iter().all(|r| r.status == 401), "{requests:?}");
    assert!(f.vault.writes().await.is_empty());
}

/// A token valid for another vault only is refused by this one, the same way.
#[tokio::test]
async fn a_token_for_another_vault_is_refused() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let other = s.vault();
    let token = s.mint_token(Some(&other.label)).await;
    let opened = heliosdb_tde_azure_kv::AzureKvMekProvider::builder(
        &f.config,
        &f.default_mek,
        SecurityMode::Development,
    )
    .credential(Arc::new(StaticToken(Secret::new(token.clone()))))
    .dns_resolver(common::resolver())
    .open()
    .await;
    let e = match opened {
        Err(e) => e,
        Ok(p) => p
            .generate_mek(&common::fresh("tok"), EncryptionAlgorithm::Aes256Gcm)
            .await
            .expect_err("another vault's token was accepted"),
    };
    assert_credential_refused(&e, "custom", Some(&token));

    // The same builder with a token for this vault works.
    let good = s.mint_token(Some(&f.vault.label)).await;
    let p = heliosdb_tde_azure_kv::AzureKvMekProvider::builder(
        &f.config,
        &f.default_mek,
        SecurityMode::Development,
    )
    .credential(Arc::new(StaticToken(Secret::new(good))))
    .dns_resolver(common::resolver())
    .open()
    .await
    .unwrap();
    works(&p).await;
}

/// A token the vault accepts never shows in the provider's `Debug`, description, warnings or
/// errors, while it is in use.
#[tokio::test]
async fn a_working_token_never_shows() {
    let Some(s) = common::server() else { return };
    let f = s.fixture(common::RSA);
    let token = s.mint_token(Some(&f.vault.label)).await;
    let p = heliosdb_tde_azure_kv::AzureKvMekProvider::builder(
        &f.config,
        &f.default_mek,
        SecurityMode::Development,
    )
    .credential(Arc::new(StaticToken(Secret::new(token.clone()))))
    .dns_resolver(common::resolver())
    .open()
    .await
    .unwrap();
    p.generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let mut seen = vec![format!("{p:?}"), p.description(), p.warnings().join("\n")];
    // Errors made while the token works: a missing MEK, and an MEK generated twice.
    let missing = common::fresh("absent");
    let e = p.mek_info(&missing).await.unwrap_err();
    seen.push(format!("{e} {e:?}"));
    let e = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap_err();
    seen.push(format!("{e} {e:?}"));
    for text in seen {
        assert!(!text.contains(&token), "the token leaked: {text}");
    }
}
