//! `heliosdb-cli quickstart`: a real key hierarchy on disk, with no external server.

use crate::output::Out;
use heliosdb_security::tde::{
    self, CheckStatus, KeyState, KeyType, SecureFileConfig, TdeConfig, TdeError, TdeSubsystem,
    sealed_tek_version,
};
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

    println!("== HeliosDB TDE quickstart in {}", dir.display());
    let tde = TdeSubsystem::new(config).await?;
    let km = tde.key_manager();
    println!(
        "security mode: {} (from {}){}",
        tde.security_mode(),
        tde.mode_source(),
        if tde.security_mode().is_production() {
            ""
        } else {
            " - development mode: insecure settings are warnings, not errors"
        }
    );
    for w in tde.warnings() {
        println!("warning: {w}");
    }

    // 1-2. Provider and MEK (TdeSubsystem::new generated it on the first run).
    let info = km.mek_info().await?;
    let active = info
        .active_version()
        .map(|v| v.to_string())
        .unwrap_or_default();
    println!(
        "MEK {} ({active} active, {} version(s)) in {}",
        info.id,
        info.versions.len(),
        km.mek_provider.description()
    );

    // 3. TEKs for a few tables.
    let existing: Vec<String> = km
        .list_keys(Some(KeyType::Table))
        .await?
        .into_iter()
        .map(|m| m.key_id.to_string())
        .collect();
    for table in TABLES {
        if existing
            .iter()
            .any(|k| k.starts_with(&format!("tek:{table}@")))
        {
            let key = km.get_table_key(table, None).await?;
            println!("TEK {} exists: reopened and unwrapped", key.id());
        } else {
            let meta = km.create_table_key(table).await?;
            println!(
                "TEK {} created, wrapped under {}",
                meta.key_id,
                meta.wrapped_by.map(|m| m.to_string()).unwrap_or_default()
            );
        }
    }

    // 4. Encrypt and decrypt sample pages through the cipher engine.
    let mut sealed_orders = None;
    for table in TABLES {
        let cipher = tde.table_cipher(table).await?;
        for page_no in 0..4u32 {
            let original = sample_page(table, page_no);
            let mut page = original.clone();
            let aad = format!("{table}/page/{page_no}");
            let parts = cipher.seal_in_place(aad.as_bytes(), &mut page)?;
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
        let moved = cipher.seal(b"page/1", b"row")?;
        if cipher.open(b"page/2", &moved).is_ok() {
            return Err(TdeError::corrupt("page", table, "a moved page opened"));
        }
        if table == "public.orders" {
            sealed_orders = Some(cipher.seal(b"public.orders/page/9", &sample_page(table, 9))?);
        }
        println!(
            "{table}: sealed and opened 4 pages of {PAGE_SIZE} bytes with TEK {} (AES-256-GCM); a \
             moved page was refused",
            cipher.tek()
        );
    }

    // 5. Rotate one table key; pages sealed before stay readable with the old version.
    let rotated = km.rotate_table(&"public.orders".parse()?).await?;
    let sealed = sealed_orders.unwrap_or_default();
    let old_version = sealed_tek_version(&sealed)?;
    let old = tde
        .table_cipher_version("public.orders", old_version)
        .await?;
    old.open(b"public.orders/page/9", &sealed)?;
    let versions: Vec<String> = km
        .list_keys(Some(KeyType::Table))
        .await?
        .into_iter()
        .filter(|m| m.key_id.to_string().starts_with("tek:public.orders@"))
        .map(|m| {
            format!(
                "{} {}",
                m.key_id,
                if m.state == KeyState::Active {
                    "active"
                } else {
                    "decrypt-only"
                }
            )
        })
        .collect();
    println!(
        "rotated public.orders: {} now encrypts; a page sealed under {old_version} still opens ({})",
        rotated.key_id,
        versions.join(", ")
    );

    // 6. Status and statistics.
    println!();
    let checklist = tde::security_checklist(&tde).await;
    out.status(&tde, &checklist);
    println!();
    out.key_stats(&km.key_stats().await?);
    let fails = checklist
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    println!(
        "\nDone. Run it again to reopen the same keys. {} checklist item(s) need attention \
         before production.",
        fails
    );
    Ok(ExitCode::SUCCESS)
}
