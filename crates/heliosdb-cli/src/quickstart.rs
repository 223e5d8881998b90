//! `heliosdb-cli quickstart`: a real key hierarchy on disk, with no external server.

use crate::output::Out;
use heliosdb_security::tde::{
    self, CheckStatus, KeyState, KeyType, SecureFileConfig, TdeConfig, TdeError, TdeSubsystem,
    sealed_tek_version,
};
use serde_json::json;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `quickstart`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Where to keep the MEK files, the key store and (in development mode) the passphrase file.
    #[arg(long, default_value = "heliosdb-quickstart")]
    dir: PathBuf,
    /// Apply every production rule: the passphrase must come from HELIOSDB_MEK_PASSPHRASE (25+
    /// characters) and file permissions are enforced.
    #[arg(long)]
    production: bool,
}

const TABLES: [&str; 3] = ["public.customers", "public.orders", "public.payments"];
const PAGE_SIZE: usize = 8192;

/// In development mode without HELIOSDB_MEK_PASSPHRASE, a random passphrase is kept in
/// `<dir>/secrets/mek-passphrase.txt` (0600), like `openssl rand -base64 32 > file; chmod 600`.
fn dev_passphrase_file(dir: &Path) -> Result<PathBuf, TdeError> {
    let secrets = dir.join("secrets");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&secrets)
        .map_err(|e| TdeError::io(&secrets, e))?;
    let path = secrets.join("mek-passphrase.txt");
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TdeError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| TdeError::io(&path, e))?;
        writeln!(f, "{hex}").map_err(|e| TdeError::io(&path, e))?;
        f.sync_all().map_err(|e| TdeError::io(&path, e))?;
    }
    let mode = std::fs::metadata(&path)
        .map_err(|e| TdeError::io(&path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| TdeError::io(&path, e))?;
    }
    Ok(path)
}

fn sample_page(table: &str, page_no: u32) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    let row = format!("{table} page {page_no}: id=42 name=Ada Lovelace card=4111-1111-1111-1111; ");
    for (i, b) in page.iter_mut().enumerate() {
        *b = row.as_bytes()[i % row.len()];
    }
    page
}

pub(crate) async fn run(args: Args, out: &Out) -> Result<ExitCode, TdeError> {
    let dir = &args.dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TdeError::io(dir, e))?;
    let mut file = SecureFileConfig::new(dir.join("mek"));
    let env_pass = std::env::var_os(file.passphrase_var()).is_some();
    if !args.production && !env_pass {
        file.passphrase_file = Some(dev_passphrase_file(dir)?);
    }
    let config = TdeConfig {
        key_storage_path: dir.join("keys"),
        default_mek_id: "master_key_001".into(),
        cache_limit: 1000,
        secure_file_config: Some(file),
        security_mode: Some(
            if args.production {
                "production"
            } else {
                "development"
            }
            .into(),
        ),
        audit_log_path: Some(dir.join("audit.log")),
        ..Default::default()
    };

    // Text mode narrates each step; JSON mode prints one document at the end.
    let mut report = serde_json::Map::new();
    report.insert("dir".into(), json!(dir.display().to_string()));
    out.say(format_args!(
        "== HeliosDB TDE quickstart in {}",
        dir.display()
    ));
    let tde = TdeSubsystem::new(config).await?;
    let km = tde.key_manager();
    report.insert(
        "security_mode".into(),
        json!(tde.security_mode().to_string()),
    );
    report.insert("mode_source".into(), json!(tde.mode_source().to_string()));
    report.insert("warnings".into(), json!(tde.warnings()));
    out.say(format_args!(
        "security mode: {} (from {}){}",
        tde.security_mode(),
        tde.mode_source(),
        if tde.security_mode().is_production() {
            ""
        } else {
            " - development mode: insecure settings are warnings, not errors"
        }
    ));
    for w in tde.warnings() {
        out.say(format_args!("warning: {w}"));
    }

    // 1-2. Provider and MEK (TdeSubsystem::new generated it on the first run).
    let info = km.mek_info().await?;
    let active = info
        .active_version()
        .map(|v| v.to_string())
        .unwrap_or_default();
    out.say(format_args!(
        "MEK {} ({active} active, {} version(s)) in {}",
        info.id,
        info.versions.len(),
        km.mek_provider.description()
    ));
    report.insert(
        "mek".into(),
        json!({
            "id": info.id.to_string(),
            "active_version": info.active_version().map(|v| v.get()),
            "versions": info.versions.len(),
            "provider": km.mek_provider.description(),
        }),
    );

    // 3. TEKs for a few tables.
    let existing: Vec<String> = km
        .list_keys(Some(KeyType::Table))
        .await?
        .into_iter()
        .map(|m| m.key_id.to_string())
        .collect();
    let mut teks = Vec::new();
    for table in TABLES {
        if existing
            .iter()
            .any(|k| k.starts_with(&format!("tek:{table}@")))
        {
            let key = km.get_table_key(table, None).await?;
            out.say(format_args!(
                "TEK {} exists: reopened and unwrapped",
                key.id()
            ));
            teks.push(json!({ "table": table, "key": key.id().to_string(), "action": "reopened" }));
        } else {
            let meta = km.create_table_key(table).await?;
            let wrapped_by = meta.wrapped_by.map(|m| m.to_string()).unwrap_or_default();
            out.say(format_args!(
                "TEK {} created, wrapped under {wrapped_by}",
                meta.key_id
            ));
            teks.push(json!({
                "table": table,
                "key": meta.key_id.to_string(),
                "action": "created",
                "wrapped_by": wrapped_by,
            }));
        }
    }
    report.insert("teks".into(), json!(teks));

    // 4. Encrypt and decrypt sample pages through the cipher engine.
    let mut sealed_orders = None;
    let mut pages = Vec::new();
    for table in TABLES {
        // The facade's sealer is metered: every seal counts against the TEK's nonce budget,
        // which is reserved in the key store before use.
        let sealer = tde.page_sealer(table).await?;
        let version = km.get_table_key(table, None).await?.id().version;
        let cipher = tde.page_opener(table, version).await?;
        for page_no in 0..4u32 {
            let original = sample_page(table, page_no);
            let mut page = original.clone();
            let aad = format!("{table}/page/{page_no}");
            let parts = sealer.seal_in_place(aad.as_bytes(), &mut page).await?;
            if page == original {
                return Err(TdeError::corrupt(
                    "page",
                    &aad,
                    "sealing left the page in the clear",
                ));
            }
            cipher.open_in_place(&parts, aad.as_bytes(), &mut page)?;
            if page != original {
                return Err(TdeError::corrupt(
                    "page",
                    &aad,
                    "the page did not round-trip",
                ));
            }
        }
        // A page moved to another page number must not open.
        let moved = sealer.seal(b"page/1", b"row").await?;
        if cipher.open(b"page/2", &moved).is_ok() {
            return Err(TdeError::corrupt("page", table, "a moved page opened"));
        }
        if table == "public.orders" {
            sealed_orders = Some(
                sealer
                    .seal(b"public.orders/page/9", &sample_page(table, 9))
                    .await?,
            );
        }
        out.say(format_args!(
            "{table}: sealed and opened 4 pages of {PAGE_SIZE} bytes with TEK {} (AES-256-GCM); a \
             moved page was refused",
            cipher.tek()
        ));
        pages.push(json!({
            "table": table,
            "tek": cipher.tek().to_string(),
            "pages_sealed_and_opened": 4,
            "page_size": PAGE_SIZE,
            "moved_page_refused": true,
        }));
    }
    report.insert("pages".into(), json!(pages));

    // 5. Rotate one table key; pages sealed before stay readable with the old version.
    let rotated = km.rotate_table(&"public.orders".parse()?).await?;
    let sealed = sealed_orders.unwrap_or_default();
    let old_version = sealed_tek_version(&sealed)?;
    let old = tde.page_opener("public.orders", old_version).await?;
    old.open(b"public.orders/page/9", &sealed)?;
    let versions: Vec<(String, &str)> = km
        .list_keys(Some(KeyType::Table))
        .await?
        .into_iter()
        .filter(|m| m.key_id.to_string().starts_with("tek:public.orders@"))
        .map(|m| {
            (
                m.key_id.to_string(),
                if m.state == KeyState::Active {
                    "active"
                } else {
                    "decrypt-only"
                },
            )
        })
        .collect();
    out.say(format_args!(
        "rotated public.orders: {} now encrypts; a page sealed under {old_version} still opens ({})",
        rotated.key_id,
        versions
            .iter()
            .map(|(k, s)| format!("{k} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.insert(
        "rotation".into(),
        json!({
            "table": "public.orders",
            "active": rotated.key_id.to_string(),
            "old_version_still_opens": old_version.to_string(),
            "versions": versions
                .iter()
                .map(|(k, s)| json!({ "key": k, "state": s }))
                .collect::<Vec<_>>(),
        }),
    );

    // 6. Status and statistics.
    let checklist = tde::security_checklist(&tde).await;
    let stats = km.key_stats().await?;
    let memory = tde.memory_protection();
    let parts = crate::output::StatusParts {
        memory: Some(&memory),
        ..Default::default()
    };
    let fails = checklist
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    if out.is_json() {
        report.insert("status".into(), Out::status_value(&tde, &checklist, &parts));
        report.insert(
            "key_stats".into(),
            serde_json::to_value(&stats).unwrap_or_default(),
        );
        report.insert("checklist_items_needing_attention".into(), json!(fails));
        out.json_value(serde_json::Value::Object(report));
    } else {
        out.say(format_args!(""));
        out.status(&tde, &checklist, &parts);
        out.say(format_args!(""));
        out.key_stats(&stats, &tde::audit_status(&tde).await?, Some(&memory.arena));
        out.say(format_args!(
            "\nDone. Run it again to reopen the same keys. {fails} checklist item(s) need \
             attention before production."
        ));
    }
    Ok(ExitCode::SUCCESS)
}
