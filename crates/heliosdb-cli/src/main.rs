//! `heliosdb-cli`: manage HeliosDB TDE keys from the command line.
//!
//! Output goes through [`output::Out`] and failures through [`failure::Failure`]: nothing in
//! this program prints with `println!`, which panics when stdout is closed.

#![deny(clippy::print_stdout, clippy::print_stderr)]

mod audit;
mod backup;
mod failure;
mod migrate;
mod output;
mod quickstart;
mod rotate;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use failure::Failure;
use heliosdb_security::tde::{
    self, CheckStatus, KeyType, SecureFileMekProvider, TdeConfig, TdeError, TdeSubsystem,
};
use output::{Format, Out};
use std::ffi::OsString;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage HeliosDB transparent data encryption keys.
#[derive(Parser, Debug)]
#[command(name = "heliosdb-cli", version, about)]
struct Cli {
    /// TOML configuration file (TdeConfig); environment overrides apply on top. Defaults to
    /// $HELIOSDB_CONFIG, then to built-in defaults.
    #[arg(long, global = true, env = "HELIOSDB_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Key management for transparent data encryption.
    #[command(subcommand)]
    Security(Security),
    /// Protect sample tables with a real key hierarchy in a local directory (no server needed).
    Quickstart(quickstart::Args),
}

#[derive(Subcommand, Debug)]
enum Security {
    /// Security mode, MEK provider, and the Security Checklist.
    Status,
    /// The default MEK and its versions.
    MekInfo,
    /// Cache, provider, state and usage statistics.
    KeyStats,
    /// MEK operations.
    #[command(subcommand)]
    Mek(Mek),
    /// Table encryption key operations.
    #[command(subcommand)]
    Tek(Tek),
    /// Write a backup bundle of every table key and what the MEK provider needs to find its
    /// MEKs again (HeliosDB stopped; a running database takes it through its own API). With
    /// `verify`, check a bundle.
    Backup(BackupArgs),
    /// Restore a backup bundle (HeliosDB stopped), then rotate every table's active TEK.
    Restore {
        /// The bundle file.
        file: PathBuf,
        /// Restore over a key store that holds keys or belongs to another store, and over MEK
        /// files that differ: the existing directories are moved aside to
        /// `<dir>.pre-restore-<time>`, never deleted.
        #[arg(long)]
        force: bool,
        /// Do not rotate the table keys after the restore (not recommended).
        #[arg(long)]
        no_rotate: bool,
    },
    /// The audit log: verify its chains and checkpoint, show its newest records.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The same as `security audit verify`.
    AuditVerify {
        /// The log file; defaults to the configured audit_log_path.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Check the hash chain and the file set only, without the provider or the key store.
        #[arg(long)]
        structure_only: bool,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// The bundle file to write.
    #[arg(long, conflicts_with = "out_dir", required_unless_present = "out_dir")]
    out: Option<PathBuf>,
    /// A directory to write `heliosdb-keys-<store id>-<UTC time>.hbk` into (for cron jobs and
    /// timers).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Check a bundle: structure, checksums, and that the manifest matches the records; with
    /// --with-provider also unwrap every table key in it through the configured provider
    /// (without touching the running key store). Exits 1 on any problem.
    Verify {
        /// The bundle file.
        file: PathBuf,
        /// Also check every MEK version and unwrap every table key with the provider.
        #[arg(long)]
        with_provider: bool,
    },
}

/// Parses `--id` where it is given, so that everything below works on a validated id.
fn parse_mek_id(text: &str) -> Result<tde::MekId, String> {
    tde::MekId::new(text).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
enum Mek {
    /// Generate an MEK (version 1) in the provider.
    Generate {
        /// The MEK id (letters, digits and _ - .); defaults to the configured default_mek_id.
        #[arg(long, value_parser = parse_mek_id)]
        id: Option<tde::MekId>,
    },
    /// Rotate the MEK with a dual-encryption period (resumes an interrupted rotation, and
    /// retries keys that failed).
    Rotate {
        /// Suspected compromise: also mark the old version compromised and give every table a
        /// new TEK version; lists the tables whose data must be re-encrypted.
        #[arg(long)]
        emergency: bool,
    },
    /// Show the rotation in progress.
    RotationStatus,
    /// Count the TEKs that only the old MEK version can unwrap.
    Verify,
    /// Roll the rotation back: the old MEK version becomes active again.
    Rollback,
    /// Deactivate the old MEK version of a verified rotation after its grace period.
    Deactivate,
    /// Migrate the MEK to another provider, online: every TEK's wrap moves from the current
    /// configuration's provider (the source) to the one `--to` describes (the target). Starts
    /// or resumes the migration; `--verify`, `--finish` and `--rollback` take it further.
    Migrate(migrate::MigrateArgs),
    /// Show the provider migration in progress.
    MigrationStatus(migrate::StatusArgs),
    /// Re-encrypt every MEK file under a new passphrase (secure file provider). The old
    /// passphrase is read from HELIOSDB_MEK_PASSPHRASE_OLD, the new one from the configured
    /// variable or passphrase file. Also finishes an interrupted change.
    ChangePassphrase,
}

#[derive(Subcommand, Debug)]
enum Tek {
    /// Create the first TEK of a table.
    Create {
        /// The table, for example public.users.
        table: String,
    },
    /// List keys.
    List {
        /// Which keys.
        #[arg(long = "type", value_enum, default_value_t = KeyKind::Table)]
        kind: KeyKind,
    },
    /// Rotate a table's TEK: a new version encrypts, older versions only decrypt.
    Rotate {
        /// The table.
        table: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyKind {
    All,
    Master,
    Table,
}

/// Exit code for a status report with failing checklist items.
const EXIT_CHECKLIST_FAILED: u8 = 3;

fn load_config(path: Option<&PathBuf>) -> Result<TdeConfig, TdeError> {
    let mut config = match path {
        Some(p) => TdeConfig::from_toml_file(p)?,
        None => TdeConfig::default(),
    };
    config.apply_env()?;
    Ok(config)
}

/// A debug-build hook for the tests of the panic path: `HELIOSDB_CLI_TEST_PANIC=caught` panics
/// inside `catch_unwind` (as the storage engine does on damaged data) and carries on; any other
/// value panics with that value as the message. Not compiled into release builds.
#[cfg(debug_assertions)]
fn test_panic_hook() {
    #![allow(clippy::panic)]
    match std::env::var("HELIOSDB_CLI_TEST_PANIC").as_deref() {
        Err(_) => {}
        Ok("caught") => {
            let _ = std::panic::catch_unwind(|| panic!("a panic that a library catches"));
        }
        Ok(message) => panic!("{message}"),
    }
}

async fn run(cli: Cli, out: &Out) -> Result<ExitCode, TdeError> {
    #[cfg(debug_assertions)]
    test_panic_hook();
    match cli.command {
        Command::Quickstart(args) => quickstart::run(args, out).await,
        Command::Security(cmd) => {
            let config = load_config(cli.config.as_ref())?;
            // Runs without starting the subsystem: the provider cannot open while files are
            // split between two passphrases, which is exactly what this command repairs.
            if let Security::Mek(Mek::ChangePassphrase) = cmd {
                return change_passphrase(&config, out).await;
            }
            // The audit commands open what they need themselves (`--structure-only` and
            // `tail` read the log alone).
            if let Security::AuditVerify {
                path,
                structure_only,
            } = cmd
            {
                return audit::verify(config, path, structure_only, out).await;
            }
            if let Security::Audit(cmd) = cmd {
                return audit::run(config, cmd, out).await;
            }
            // A migration builds its configuration from the current one and `--to`.
            if let Security::Mek(Mek::Migrate(args)) = cmd {
                return migrate::run(config, args, out).await;
            }
            if let Security::Mek(Mek::MigrationStatus(args)) = cmd {
                return migrate::status(config, args, out).await;
            }
            // Backups and restores open what they need themselves.
            if let Security::Backup(args) = cmd {
                return backup::run(config, args, out).await;
            }
            if let Security::Restore {
                file,
                force,
                no_rotate,
            } = cmd
            {
                return backup::restore(config, &file, force, no_rotate, out).await;
            }
            // Commands that only read open the key store read-only and write nothing.
            let read_only = matches!(
                cmd,
                Security::Status
                    | Security::MekInfo
                    | Security::KeyStats
                    | Security::Tek(Tek::List { .. })
                    | Security::Mek(Mek::RotationStatus)
            );
            let tde = if read_only {
                TdeSubsystem::open_read_only(config).await?
            } else {
                TdeSubsystem::new(config).await?
            };
            security(cmd, &tde, out).await
        }
    }
}

async fn security(cmd: Security, tde: &TdeSubsystem, out: &Out) -> Result<ExitCode, TdeError> {
    let km = tde.key_manager();
    match cmd {
        Security::Status => {
            let checklist = tde::security_checklist(tde).await;
            let keys = km.key_availability().await?;
            let health = km
                .mek_provider
                .health()
                .await
                .unwrap_or_else(|e| tde::ProviderHealth {
                    healthy: false,
                    latency: std::time::Duration::ZERO,
                    detail: e.to_string(),
                });
            let mek = match tde.config().kms_config {
                Some(tde::KmsConfig::Aws(_) | tde::KmsConfig::Azure(_)) => km.mek_info().await.ok(),
                _ => None,
            };
            let kms = output::KmsView::new(tde, mek.as_ref(), Some(&health));
            let azure = output::AzureView::new(tde, mek.as_ref());
            // When tables are unreadable: the newest bundle holding the lost MEK versions.
            let lost = (!keys.all_readable())
                .then(|| backup::lost_mek_report(tde.config(), &keys))
                .flatten();
            let migration = migrate::status_view(tde, Some(&keys)).await?;
            // Process-wide: this process ran the same start-up as the database.
            let memory = tde.memory_protection();
            out.status(
                tde,
                &checklist,
                &output::StatusParts {
                    keys: Some(&keys),
                    health: Some(&health),
                    kms: kms.as_ref(),
                    azure: azure.as_ref(),
                    lost_mek: lost.as_deref(),
                    migration: migration.as_ref(),
                    memory: Some(&memory),
                },
            );
            if !keys.all_readable() || checklist.iter().any(|c| c.status == CheckStatus::Fail) {
                return Ok(ExitCode::from(EXIT_CHECKLIST_FAILED));
            }
        }
        Security::MekInfo => out.mek_info(&km.mek_info().await?),
        Security::KeyStats => {
            out.key_stats(
                &km.key_stats().await?,
                &tde::audit_status(tde).await?,
                Some(&tde.memory_protection().arena),
            );
        }
        Security::Mek(Mek::Generate { id }) => {
            let id = id.unwrap_or_else(|| tde.default_mek_id().clone());
            let mek = km.generate_mek(&id).await?;
            out.message(&format!(
                "generated {mek} in {}",
                km.mek_provider.description()
            ));
        }
        Security::Mek(Mek::ChangePassphrase) => {
            return change_passphrase(tde.config(), out).await;
        }
        Security::Mek(Mek::Rotate { emergency }) => {
            return rotate::rotate(tde, emergency, out).await;
        }
        Security::Mek(Mek::RotationStatus) => return rotate::status(tde, out).await,
        Security::Mek(Mek::Verify) => return rotate::verify(tde, out).await,
        Security::Mek(Mek::Rollback) => return rotate::rollback(tde, out).await,
        Security::Mek(Mek::Deactivate) => return rotate::deactivate(tde, out).await,
        Security::Mek(Mek::Migrate(_) | Mek::MigrationStatus(_))
        | Security::AuditVerify { .. }
        | Security::Audit(_)
        | Security::Backup(_)
        | Security::Restore { .. } => {
            return Err(TdeError::Unsupported {
                what: "a backup command inside a started subsystem".into(),
                hint: "run it as `heliosdb-cli security backup` or `restore`".into(),
            });
        }
        Security::Tek(Tek::Create { table }) => {
            let meta = km.create_table_key(&table).await?;
            out.keys(&[meta]);
        }
        Security::Tek(Tek::List { kind }) => {
            let kind = match kind {
                KeyKind::All => None,
                KeyKind::Master => Some(KeyType::Master),
                KeyKind::Table => Some(KeyType::Table),
            };
            out.keys(&km.list_keys(kind).await?);
        }
        Security::Tek(Tek::Rotate { table }) => {
            let meta = km.rotate_table(&table.parse()?).await?;
            out.keys(&[meta]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn change_passphrase(config: &TdeConfig, out: &Out) -> Result<ExitCode, TdeError> {
    let file = config.secure_file_config.as_ref().ok_or_else(|| {
        TdeError::config(
            "secure_file_config",
            "change-passphrase applies to the secure file provider only; configure it",
        )
    })?;
    let (mode, _) = tde::SecurityMode::resolve(config.security_mode.as_deref())?;
    // Both passphrases are read (and their variables removed from the environment) by the
    // provider, which checks a passphrase file like an MEK file.
    let result = SecureFileMekProvider::change_passphrase_from_env(file, mode);
    // The provider is not started here (its files may be split between two passphrases), so
    // the record goes to the log directly; the next start's first keyed record covers it.
    let detail = match &result {
        Ok(r) => format!(
            "secure-file passphrase of {}: {} files re-encrypted, {} already converted; \
             passphrase generation {}",
            file.storage_path.display(),
            r.rewritten,
            r.already_converted,
            r.generation
        ),
        Err(_) => format!("secure-file passphrase of {}", file.storage_path.display()),
    };
    let event =
        tde::AuditEvent::outcome_of(tde::AuditAction::CredentialChanged, None, &result, detail)
            .with_provider(tde::ProviderKind::SecureFile);
    tde::record_audit_event(config, event).await;
    let report = result?;
    out.message(&format!(
        "passphrase changed: {} files re-encrypted, {} already converted by an earlier run; \
         passphrase generation {}",
        report.rewritten, report.already_converted, report.generation
    ));
    Ok(ExitCode::SUCCESS)
}

/// Whether the raw command line asks for JSON output (used when clap cannot parse it).
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .zip(args.iter().skip(1).map(Some).chain([None]))
        .any(|(a, next)| {
            a == "--format=json" || (a == "--format" && next.is_some_and(|n| n == "json"))
        })
}

/// Parses the command line. Help and version print and exit 0; an invalid command line exits
/// 2, reported as JSON when `--format json` is on it.
fn parse_args(args: &[OsString]) -> Result<Cli, ExitCode> {
    let parsed = Cli::command()
        .try_get_matches_from(args)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            let informational = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if wants_json(args) && !informational {
                let code = Failure::usage(&e.to_string()).report(&Out::new(output::Format::Json));
                return Err(ExitCode::from(code));
            }
            // clap's own rendering (with usage) on stderr, help on stdout; a closed stream is
            // not an error.
            let _ = e.print();
            Err(ExitCode::from(
                u8::try_from(e.exit_code()).unwrap_or(failure::EXIT_USAGE),
            ))
        }
    }
}

fn main() -> ExitCode {
    failure::install_panic_hook();
    let args: Vec<OsString> = std::env::args_os().collect();
    let format = if wants_json(&args) {
        output::Format::Json
    } else {
        output::Format::Table
    };
    // A panic outside the command itself (parsing, start-up) is reported the same way.
    std::panic::catch_unwind(AssertUnwindSafe(|| real_main(&args))).unwrap_or_else(|_| {
        ExitCode::from(Failure::internal(failure::take_last_panic()).report(&Out::new(format)))
    })
}

fn real_main(args: &[OsString]) -> ExitCode {
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let out = Out::new(cli.format);
    // Debug builds read fail points from FAILPOINTS, for the tests of failure paths (a failing
    // audit write); in a build without the `failpoints` feature this does nothing.
    #[cfg(debug_assertions)]
    let _fail_points = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELIOSDB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let f = Failure {
                kind: "runtime".into(),
                message: format!(
                    "cannot start the async runtime: {e}; check the process limits (threads, \
                     memory) and retry"
                ),
                code: failure::EXIT_ERROR,
            };
            return ExitCode::from(f.report(&out));
        }
    };
    // A panic anywhere below is reported like any other failure, on one line (or as JSON).
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(run(cli, &out))));
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => ExitCode::from(Failure::from(&e).report(&out)),
        Err(_) => ExitCode::from(Failure::internal(failure::take_last_panic()).report(&out)),
    };
    match out.take_write_error() {
        Some(e) => ExitCode::from(Failure::from(&TdeError::io("<stdout>", e)).report(&out)),
        None => code,
    }
}
