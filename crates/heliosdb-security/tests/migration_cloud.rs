//! Provider migration between the secure file provider and each cloud provider, against the real
//! test servers `cargo xtask test` provisions (OpenBao for the Vault Transit API, moto for AWS
//! KMS, the Key Vault test server for Azure): from the secure file to the cloud provider and
//! back, each time to the end (verified, finished), with pages sealed before the first
//! migration opening after each one under the target's configuration alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_security::tde::{
    MigrationSourceConfig, TdeConfig, TdeSubsystem, TekVersion, Timestamp,
};
use std::path::Path;
use std::time::Duration;

const TABLES: usize = 12;

/// Sealed pages: (table, TEK version, page id, sealed bytes, plaintext).
type Pages = Vec<(String, TekVersion, Vec<u8>, Vec<u8>, Vec<u8>)>;

async fn seal_pages(tde: &TdeSubsystem, tag: &str) -> Pages {
    let mut out = Vec::new();
    for i in 0..TABLES {
        let table = format!("{tag}.t{i:02}");
        tde.key_manager().create_table_key(&table).await.unwrap();
        let sealer = tde.page_sealer(&table).await.unwrap();
        let page = format!("page of {table}").into_bytes();
        let data = format!("rows of {table}").into_bytes();
        let sealed = sealer.seal(&page, &data).await.unwrap();
        let v = heliosdb_security::tde::sealed_tek_version(&sealed).unwrap();
        out.push((table, v, page, sealed, data));
    }
    out
}

async fn open_all(tde: &TdeSubsystem, pages: &Pages, what: &str) {
    for (table, v, page, sealed, data) in pages {
        let opener = tde
            .page_opener(table, *v)
            .await
            .unwrap_or_else(|e| panic!("{what}: {table}: {e}"));
        assert_eq!(&opener.open(page, sealed).unwrap(), data, "{what}: {table}");
    }
}

fn later() -> Timestamp {
    Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400))
}

/// Migrates from `source` to `target` (both over the same key store) to the end, while `pages`
/// keep opening, and checks the counts.
async fn migrate(source: &TdeConfig, target: &TdeConfig, pages: &Pages, what: &str) {
    let mut config = target.clone();
    config.migration_source = Some(MigrationSourceConfig::from_config(source));
    let tde = TdeSubsystem::new(config)
        .await
        .unwrap_or_else(|e| panic!("{what}: start with both providers: {e}"));
    let km = tde.key_manager();
    let health = km.mek_provider.health().await.unwrap();
    assert!(health.healthy, "{what}: {}", health.detail);
    open_all(&tde, pages, &format!("{what}, before the pass")).await;
    let r = km
        .migrate_mek(None)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.failed_total, 0, "{what}: {:?}", r.failed_keys);
    assert!(
        r.keys_moved as usize >= pages.len(),
        "{what}: moved {}",
        r.keys_moved
    );
    let v = km.verify_mek_migration().await.unwrap();
    assert_eq!(v.stranded, 0, "{what}");
    open_all(&tde, pages, &format!("{what}, after the pass")).await;
    let st = km.finish_mek_migration_at(later()).await.unwrap();
    assert_eq!(st.phase.to_string(), "migrated", "{what}");
    drop(tde);
    // The target's configuration alone now reads every page.
    let tde = TdeSubsystem::new(target.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: start with the target alone: {e}"));
    open_all(&tde, pages, &format!("{what}, target alone")).await;
}

/// The secure file to `cloud` and back to the secure file (another MEK of the same provider).
async fn there_and_back(dir: &Path, cloud: TdeConfig, what: &str) {
    let mut file = common::file_config(dir, "development");
    file.default_mek_id = "file_mek_a".into();
    let pages = {
        let tde = TdeSubsystem::new(file.clone()).await.unwrap();
        seal_pages(&tde, "app").await
    };
    migrate(&file, &cloud, &pages, &format!("secure file to {what}")).await;
    let mut back = file.clone();
    back.default_mek_id = "file_mek_b".into();
    migrate(&cloud, &back, &pages, &format!("{what} to the secure file")).await;
}

/// A development Vault configuration for the server at `addr` (the server, or a proxy in front
/// of it) with the token in a 0600 file under `dir`; `extra` lines go into `[kms_config]`.
#[cfg(feature = "vault")]
fn vault_config(dir: &Path, addr: &str, token: &str, mek: &str, extra: &str) -> TdeConfig {
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.join("vault-token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "{mek}"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "vault"
            address = "{addr}"
            token_file = "{token}"
            state_path = "heliosdb/{mek}/meks"
            {extra}
        "#,
        keys = dir.join("keys").display(),
        token = token_file.display(),
    );
    TdeConfig::from_toml_str(&text).unwrap()
}

#[cfg(feature = "vault")]
#[tokio::test]
async fn secure_file_to_vault_and_back() {
    use heliosdb_tde_conformance::openbao::bao;
    let Some(bao) = bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = heliosdb_tde_conformance::moto::unique("mig_vault");
    let cloud = vault_config(dir.path(), &bao.addr, &bao.token, &mek, "");
    there_and_back(dir.path(), cloud, "Vault (OpenBao)").await;
}

#[cfg(feature = "aws-kms")]
#[tokio::test]
async fn secure_file_to_aws_kms_and_back() {
    use heliosdb_tde_conformance::moto::{self, unique};
    let Some(moto) = moto::moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("mig_aws");
    let arn = moto.create_key("heliosdb migration test");
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "{mek}"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "aws"
            region = "{region}"
            key_id = "{arn}"
            endpoint = "{endpoint}"
            alias_prefix = "alias/{mek}"
        "#,
        keys = dir.path().join("keys").display(),
        region = moto.region,
        endpoint = moto.endpoint,
    );
    let cloud = TdeConfig::from_toml_str(&text).unwrap();
    there_and_back(dir.path(), cloud, "AWS KMS (moto)").await;
}

#[cfg(feature = "azure-kv")]
#[tokio::test]
async fn secure_file_to_azure_key_vault_and_back() {
    use heliosdb_tde_conformance::azure::{self, fresh_label};
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = azure::azure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = format!("mig-{}", fresh_label());
    let secret = dir.path().join("azure-secret");
    std::fs::write(&secret, env.client_secret().expose_secret()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"
            key_storage_path = "{keys}"
            default_mek_id = "mig_azure"
            security_mode = "development"
            provider_startup_wait_secs = 0

            [kms_config]
            provider = "azure"
            vault_url = "{vault_url}"
            key_name = "{key}"
            key_size = 2048
            credential = "client_secret"
            tenant_id = "{tenant}"
            client_id = "{client}"
            client_secret_file = "{secret}"
            authority_host = "{authority}"
            ca_cert = "{ca}"
            verify_challenge_resource = false
        "#,
        keys = dir.path().join("keys").display(),
        vault_url = env.ip_url(),
        tenant = env.tenant(),
        client = env.client_id(),
        secret = secret.display(),
        authority = env.authority_url(),
        ca = env.ca_path().display(),
    );
    let cloud = TdeConfig::from_toml_str(&text).unwrap();
    there_and_back(dir.path(), cloud, "Azure Key Vault (test server)").await;
}

/// A source that goes away mid-migration: Vault (OpenBao) behind the fault proxy, cut after
/// part of the pass. The pass pauses with a retryable error (the circuit breaker), the TEKs
/// moved so far stay moved, and the same call resumes and completes once the server is back.
#[cfg(feature = "vault")]
#[tokio::test]
async fn a_vault_source_cut_mid_pass_pauses_the_migration_and_it_resumes() {
    use heliosdb_tde_conformance::fault::FaultProxy;
    use heliosdb_tde_conformance::openbao::bao;
    let Some(bao) = bao() else { return };
    let upstream: std::net::SocketAddr = bao
        .addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = FaultProxy::start_http(upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mek = heliosdb_tde_conformance::moto::unique("mig_cut");
    let vault = vault_config(
        dir.path(),
        &proxy.url(),
        &bao.token,
        &mek,
        "max_retries = 0",
    );
    const N: usize = 300;
    {
        let tde = TdeSubsystem::new(vault.clone()).await.unwrap();
        let names: Vec<String> = (0..N).map(|i| format!("app.t{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        tde.key_manager().create_table_keys(&refs).await.unwrap();
    }
    let mut file = common::file_config(dir.path(), "development");
    file.default_mek_id = "file_mek".into();
    let mut config = file.clone();
    config.migration_source = Some(MigrationSourceConfig::from_config(&vault));
    let tde = TdeSubsystem::new(config).await.unwrap();
    let km = tde.key_manager();
    // About a third of the pass gets through, then the source's server is gone.
    proxy.cut_after_requests(100);
    let e = km.migrate_mek(None).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("paused"), "{e}");
    let st = km.mek_migration_status().await.unwrap().unwrap();
    assert_eq!(st.phase.to_string(), "rewrapping");
    assert!(
        st.reencrypted > 0 && st.reencrypted < N as u64,
        "{} moved before the cut",
        st.reencrypted
    );
    assert_eq!(st.failed_total, 0, "a pause records no failed key");
    let health = km.mek_provider.health().await.unwrap();
    assert!(!health.healthy, "{}", health.detail);
    assert!(
        health.detail.contains("source vault (UNHEALTHY)"),
        "{}",
        health.detail
    );

    proxy.restore();
    let r = km.migrate_mek(None).await.unwrap();
    assert_eq!(r.failed_total, 0, "{:?}", r.failed_keys);
    assert!(r.keys_moved >= N as u64, "{r:?}");
    assert_eq!(km.verify_mek_migration().await.unwrap().stranded, 0);
    km.finish_mek_migration_at(later()).await.unwrap();
    drop(tde);
    let tde = TdeSubsystem::new(file).await.unwrap();
    for i in 0..N {
        tde.key_manager()
            .get_table_key(format!("app.t{i:04}").as_str(), None)
            .await
            .unwrap();
    }
}
