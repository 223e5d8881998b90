//! Provider migration from the command line (`security mek migrate`, `migration-status`,
//! `--verify`, `--finish`, `--rollback`) against a real SoftHSM2 token (provisioned by
//! `cargo xtask test`): the CLI killed with SIGKILL at random moments while it moves 10,000
//! TEKs, a concurrent task sealing and opening pages during a pass, rollbacks, a source whose
//! PIN changes, and bad input that must change no key file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Rng, Unreadable, kill_after_store_changes, snapshot};
use heliosdb_security::tde::{
    MigrationSourceConfig, RotationPhase, TdeConfig, TdeSubsystem, sealed_tek_version,
};
use heliosdb_tde_conformance::softhsm;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");
const PASS: &str = "migration test passphrase, long enough for production";
/// The SO PIN and user PIN of the token the PIN test initialises for itself.
const OWN_SO_PIN: &str = "87654321";
const OWN_PIN: &str = "112233";
const OWN_PIN_CHANGED: &str = "445566";

/// SoftHSM's file object store is read by every process at start, and a module loaded in this
/// process does not see tokens created after it was loaded: the tests here run one at a time,
/// and the token of the PIN test is created before any of them loads the module.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn own_token_label() -> String {
    format!("mig-pin-{}", std::process::id())
}

/// Takes the lock and makes sure the token is there and this binary's own token exists;
/// `None` (after a loud skip) without a token.
fn serial() -> Option<std::sync::MutexGuard<'static, ()>> {
    let g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    softhsm::token_present()?;
    static OWN: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &own_token_label(),
                "--so-pin",
                OWN_SO_PIN,
                "--pin",
                OWN_PIN,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util: {}", text(&out));
    });
    Some(g)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_secret(path: &Path, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One test's directory: a key store, a secure-file MEK directory, PIN and passphrase files,
/// and the configurations written into it.
struct Setup {
    dir: tempfile::TempDir,
    grace_days: u64,
}

impl Setup {
    fn new(grace_days: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_secret(&dir.path().join("secrets/pass.txt"), PASS);
        write_secret(&dir.path().join("secrets/pin.txt"), &softhsm::pin());
        Self { dir, grace_days }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store_file(&self) -> PathBuf {
        self.path().join("keys/tek-store.redb")
    }

    /// The key files: the key store and every MEK directory (the audit log is beside them).
    fn key_files(&self) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        snapshot(
            &[
                self.path().join("keys"),
                self.path().join("mek"),
                self.path().join("mek2"),
            ],
            Unreadable::Skip,
        )
    }

    fn write(&self, name: &str, mek_id: &str, section: &str) -> PathBuf {
        let cfg = self.path().join(name);
        std::fs::write(
            &cfg,
            format!(
                "key_storage_path = \"{d}/keys\"\ndefault_mek_id = \"{mek_id}\"\n\
                 security_mode = \"production\"\nrotation_grace_days = {g}\n\
                 audit_log_path = \"{d}/audit.log\"\n\n{section}",
                d = self.path().display(),
                g = self.grace_days,
            ),
        )
        .unwrap();
        cfg
    }

    fn file_section(&self, mek_dir: &str) -> String {
        format!(
            "[secure_file_config]\nstorage_path = \"{d}/{mek_dir}\"\npassphrase_file = \
             \"{d}/secrets/pass.txt\"\n",
            d = self.path().display()
        )
    }

    /// The test token (or `label`) with the PIN from `pin_file`.
    fn hsm_section(&self, label: Option<&str>, pin_file: &str) -> String {
        let toml = softhsm::hsm_config_toml();
        let toml = match label {
            Some(l) => toml.replace(
                &format!("token_label = \"{}\"", softhsm::token_label()),
                &format!("token_label = \"{l}\""),
            ),
            None => toml,
        };
        format!(
            "{toml}pin_file = \"{}\"\n",
            self.path().join("secrets").join(pin_file).display()
        )
    }
}

fn cli(cfg: &Path, args: &[&str]) -> Output {
    command(cfg, args).output().unwrap()
}

fn command(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_CONFIG")
        .env_remove("HELIOSDB_MEK_PASSPHRASE")
        .env_remove("HELIOSDB_HSM_PIN")
        .env_remove("FAILPOINTS");
    c
}

fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "{t}");
    t
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn load(cfg: &Path) -> TdeConfig {
    let mut c = TdeConfig::from_toml_file(cfg).unwrap();
    c.apply_env_with(|_| None).unwrap();
    c
}

/// The configuration `mek migrate --to target` runs with (source: `source`).
fn migration_config(source: &Path, target: &Path) -> TdeConfig {
    let mut t = load(target);
    t.migration_source = Some(MigrationSourceConfig::from_config(&load(source)));
    t
}

/// Creates `n` tables' TEKs through the API, in batches.
async fn create_tables(cfg: TdeConfig, n: usize) -> Vec<String> {
    let tde = TdeSubsystem::new(cfg).await.unwrap();
    let tables: Vec<String> = (0..n).map(|i| format!("t{i:05}")).collect();
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    for chunk in refs.chunks(2000) {
        tde.key_manager().create_table_keys(chunk).await.unwrap();
    }
    tables
}

/// Every TEK of `tables` unwraps with `cfg` (a fresh subsystem, cold cache).
async fn all_unwrap(cfg: TdeConfig, tables: &[String]) {
    let tde = TdeSubsystem::new(cfg).await.unwrap();
    for t in tables {
        tde.key_manager()
            .get_table_key(t, None)
            .await
            .unwrap_or_else(|e| panic!("{t} does not unwrap: {e}"));
    }
}

/// The journal as `migration-status --format json` shows it (`None`: no migration).
fn status(source: &Path, target: &Path) -> Option<serde_json::Value> {
    let out = cli(
        source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migration-status",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    v.get("phase").is_some().then_some(v)
}

/// (phase, TEKs moved) of the journal, read through a writable start in this process: after a
/// SIGKILL the key store needs the recovery that only a writable open does (a read-only
/// command such as `migration-status` says so and stops).
fn progress(source: &Path, target: &Path) -> Option<(String, u64)> {
    rt().block_on(async {
        let tde = TdeSubsystem::new(migration_config(source, target))
            .await
            .unwrap();
        tde.key_manager()
            .mek_migration_status()
            .await
            .unwrap()
            .map(|s| (s.phase.to_string(), s.reencrypted))
    })
}

/// Runs `mek migrate --to target` and SIGKILLs it once it has written the key store `k` times
/// (each committed page of moved TEKs writes it), or lets it end if it ends first. Returns
/// whether it was killed.
fn migrate_and_kill(source: &Path, target: &Path, store: &Path, k: u64) -> bool {
    kill_after_store_changes(
        command(
            source,
            &[
                "security",
                "mek",
                "migrate",
                "--to",
                target.to_str().unwrap(),
            ],
        ),
        store,
        k,
    )
}

#[test]
fn secure_file_to_softhsm_with_10000_teks_killed_at_random_moments() {
    let Some(_one) = serial() else { return };
    let mut rng = Rng::seeded("10000 TEKs");
    let s = Setup::new(0);
    let pid = std::process::id();
    let source = s.write("source.toml", "master_key_001", &s.file_section("mek"));
    let target_id = format!("mig_{pid}_big");
    let target = s.write("target.toml", &target_id, &s.hsm_section(None, "pin.txt"));
    let rt = rt();
    let tables = rt.block_on(create_tables(load(&source), 10_000));

    // Kills at random moments: after a random number (from the seeded generator) of writes of
    // the key store by the running command.
    // A writable start repairs the store after each kill; the first moment to kill is drawn
    // from a window that moves later while kills find no page committed yet (a run writes the
    // store a few times before its first page), so that kills land between pages whatever the
    // machine's speed.
    let mut mid = 0;
    let mut moved_seen: Vec<u64> = Vec::new();
    let mut lo = 1;
    for round in 1..=40 {
        if mid >= 6 && moved_seen.iter().any(|&m| m > 0) {
            break;
        }
        let k = rng.between(lo, lo + 1);
        let killed = migrate_and_kill(&source, &target, &s.store_file(), k);
        let p = progress(&source, &target);
        eprintln!("round {round}: killed after {k} store writes: {killed}, journal {p:?}");
        match &p {
            Some((phase, moved)) if phase != "dual-active" => {
                assert!(killed, "the command ended without finishing: {p:?}");
                mid += 1;
                // No page since the last kill: kill later; a page or more: a little sooner, so
                // that the pass is not over before the kills are.
                if moved_seen.last().is_none_or(|&last| *moved <= last) {
                    lo += 1;
                } else {
                    lo = lo.saturating_sub(1).max(1);
                }
                moved_seen.push(*moved);
            }
            Some(_) => break,
            None => lo += 1,
        }
    }
    assert!(mid >= 5, "only {mid} kills landed during the migration");
    assert!(
        moved_seen.iter().any(|&m| m > 0 && m < 10_001),
        "no kill landed between two pages: {moved_seen:?}"
    );
    assert!(
        moved_seen.windows(2).all(|w| w[0] <= w[1]),
        "the work done is kept: {moved_seen:?}"
    );

    // Completion with the CLI.
    let out = cli(
        &source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["phase"], "dual-active", "{v}");
    assert_eq!(
        v["keys_moved"], 10_001,
        "the counts add up across the resumed passes (10,000 table keys and the audit key): {v}"
    );
    assert_eq!(v["failed_total"], 0, "{v}");
    assert_eq!(v["source_provider"], "secure-file", "{v}");
    assert_eq!(v["target_provider"], "pkcs11-hsm", "{v}");
    assert!(v["next_step"].as_str().unwrap().contains("--verify"), "{v}");

    // The counts match: the journal, the statistics and the status.
    let (phase, moved) = progress(&source, &target).unwrap();
    assert_eq!((phase.as_str(), moved), ("dual-active", 10_001));
    // After a clean exit the read-only command shows the journal too.
    let st = status(&source, &target).unwrap();
    assert_eq!(
        (st["phase"].as_str(), st["reencrypted"].as_u64()),
        (Some("dual_active"), Some(10_001)),
        "{st}"
    );
    assert_eq!(st["migration"]["source_provider"], "secure-file", "{st}");
    assert!(
        st["next_step"].as_str().unwrap().contains("--verify"),
        "{st}"
    );
    // The configuration with migration_source is the migration's configuration: status shows
    // the migration and both providers.
    let with_source = s.path().join("migrating.toml");
    std::fs::write(
        &with_source,
        format!(
            "{}\n[migration_source]\ndefault_mek_id = \"master_key_001\"\n\
             [migration_source.secure_file_config]\nstorage_path = \"{d}/mek\"\n\
             passphrase_file = \"{d}/secrets/pass.txt\"\n",
            std::fs::read_to_string(&target).unwrap(),
            d = s.path().display()
        ),
    )
    .unwrap();
    let stats = json(&cli(
        &with_source,
        &["--format", "json", "security", "key-stats"],
    ));
    assert_eq!(stats["tables"], 10_000, "{stats}");
    assert_eq!(stats["teks_by_state"]["active"], 10_000, "{stats}");

    let out = cli(&with_source, &["--format", "json", "security", "status"]);
    let st = json(&out);
    let m = &st["migration"];
    assert_eq!(m["in_progress"], true, "{st}");
    assert_eq!(m["phase"], "dual-active", "{m}");
    assert_eq!(m["moved"], 10_001, "{m}");
    assert_eq!(m["total"], 10_001, "{m}");
    assert_eq!(m["source"]["provider"], "secure-file", "{m}");
    assert_eq!(m["source"]["healthy"], true, "{m}");
    assert_eq!(m["target"]["provider"], "pkcs11-hsm", "{m}");
    assert_eq!(m["target"]["healthy"], true, "{m}");
    assert_eq!(st["provider_health"]["healthy"], true, "{st}");
    let detail = st["provider_health"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("target pkcs11-hsm") && detail.contains("source secure-file"),
        "{detail}"
    );
    let t = text(&cli(&with_source, &["security", "status"]));
    assert!(
        t.contains("Migration:       IN PROGRESS, phase dual-active: 10001 of 10001 TEKs moved"),
        "{t}"
    );
    assert!(t.contains("Source:") && t.contains("Target:"), "{t}");

    // --finish before --verify: refused, no key file changes.
    let before = s.key_files();
    let out = cli(&with_source, &["security", "mek", "migrate", "--finish"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("verif"), "{}", text(&out));
    assert_eq!(
        before,
        s.key_files(),
        "a refused --finish changes no key file"
    );

    // --verify (with --to and a configuration that agrees), then --finish (grace period 0).
    let out = cli(
        &with_source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--verify",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    assert_eq!(
        (v["stranded"].as_u64(), v["phase"].as_str()),
        (Some(0), Some("verified"))
    );
    let out = cli(&with_source, &["security", "mek", "migrate", "--finish"]);
    let t = ok(&out);
    assert!(t.contains("remove migration_source"), "{t}");

    // Every TEK unwraps through the target alone.
    rt.block_on(all_unwrap(load(&target), &tables));
    assert!(progress(&source, &target).is_none_or(|(p, _)| p == "migrated"));
    // The source alone cannot read them any more.
    rt.block_on(async {
        match TdeSubsystem::open_read_only(load(&source)).await {
            Err(e) => eprintln!("the source alone does not start: {e}"),
            Ok(tde) => {
                for t in tables.iter().step_by(97) {
                    assert!(
                        tde.key_manager().get_table_key(t, None).await.is_err(),
                        "{t} still unwraps through the source"
                    );
                }
            }
        }
    });
}

#[test]
fn a_task_sealing_and_opening_pages_during_a_pass_sees_no_error() {
    let Some(_one) = serial() else { return };
    let s = Setup::new(30);
    let pid = std::process::id();
    let source = s.write("source.toml", "master_key_001", &s.file_section("mek"));
    let target = s.write(
        "target.toml",
        &format!("mig_{pid}_seal"),
        &s.hsm_section(None, "pin.txt"),
    );
    let rt = rt();
    rt.block_on(async {
        let tables = create_tables(load(&source), 2_000).await;
        let tde = Arc::new(
            TdeSubsystem::new(migration_config(&source, &target))
                .await
                .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let pages = Arc::new(AtomicU64::new(0));
        let task = {
            let (tde, stop, pages, tables) =
                (tde.clone(), stop.clone(), pages.clone(), tables.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) || pages.load(Ordering::Relaxed) == 0 {
                    let t = &tables[(i * 7919) % tables.len()];
                    let aad = format!("{t}/page/{i}");
                    let plain = vec![(i % 251) as u8; 8192];
                    let sealed = tde
                        .page_sealer(t)
                        .await
                        .map_err(|e| format!("seal {t}: {e}"))?
                        .seal(aad.as_bytes(), &plain)
                        .await
                        .map_err(|e| format!("seal {t}: {e}"))?;
                    let v = sealed_tek_version(&sealed).map_err(|e| format!("{t}: {e}"))?;
                    let opened = tde
                        .page_opener(t, v)
                        .await
                        .map_err(|e| format!("open {t}: {e}"))?
                        .open(aad.as_bytes(), &sealed)
                        .map_err(|e| format!("open {t}: {e}"))?;
                    if opened != plain {
                        return Err(format!("{t}: the page opened to other bytes"));
                    }
                    pages.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::task::yield_now().await;
                }
                Ok::<u64, String>(pages.load(Ordering::Relaxed))
            })
        };
        let r = tde.key_manager().migrate_mek(None).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let sealed = task.await.unwrap().unwrap();
        assert!(sealed > 0);
        eprintln!("{sealed} pages sealed and opened during the pass");
        assert_eq!(r.keys_moved, 2_001, "2,000 table keys and the audit key");
        assert_eq!(r.failed_total, 0);
        assert_eq!(r.phase, RotationPhase::DualActive);
        drop(tde);
        all_unwrap(migration_config(&source, &target), &tables).await;
    });
}

/// Kills `migrate --to` until the journal shows a migration stopped between its first and last
/// page; returns the TEKs moved then.
fn kill_halfway(s: &Setup, source: &Path, target: &Path, rng: &mut Rng, total: u64) -> u64 {
    let mut lo = 1;
    for _ in 0..30 {
        let k = rng.between(lo, lo + 2);
        migrate_and_kill(source, target, &s.store_file(), k);
        match progress(source, target) {
            Some((phase, moved)) if phase != "dual-active" && moved > 0 => {
                assert!(moved < total);
                return moved;
            }
            Some((phase, _)) if phase == "dual-active" => {
                panic!("the migration finished before a kill landed")
            }
            // Killed before the first page: kill later next time.
            _ => lo += 2,
        }
    }
    panic!("no kill landed during the migration");
}

#[test]
fn rollback_halfway_and_after_completion_leaves_every_tek_readable_with_the_source_alone() {
    let Some(_one) = serial() else { return };
    let mut rng = Rng::seeded("rollback");
    let pid = std::process::id();
    let rt = rt();
    for (case, halfway) in [("half", true), ("done", false)] {
        let s = Setup::new(30);
        let source = s.write("source.toml", "master_key_001", &s.file_section("mek"));
        let target = s.write(
            "target.toml",
            &format!("mig_{pid}_rb_{case}"),
            &s.hsm_section(None, "pin.txt"),
        );
        let tables = rt.block_on(create_tables(load(&source), 5_000));
        if halfway {
            let moved = kill_halfway(&s, &source, &target, &mut rng, 5_001);
            eprintln!("killed with {moved} TEKs moved");
        } else {
            ok(&cli(
                &source,
                &[
                    "security",
                    "mek",
                    "migrate",
                    "--to",
                    target.to_str().unwrap(),
                ],
            ));
            ok(&cli(
                &source,
                &[
                    "security",
                    "mek",
                    "migrate",
                    "--verify",
                    "--to",
                    target.to_str().unwrap(),
                ],
            ));
            // The grace period runs: --finish is refused and changes nothing.
            let before = s.key_files();
            let out = cli(
                &source,
                &[
                    "security",
                    "mek",
                    "migrate",
                    "--finish",
                    "--to",
                    target.to_str().unwrap(),
                ],
            );
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("grace"), "{}", text(&out));
            assert_eq!(before, s.key_files());
        }
        let out = cli(
            &source,
            &[
                "--format",
                "json",
                "security",
                "mek",
                "migrate",
                "--rollback",
                "--to",
                target.to_str().unwrap(),
            ],
        );
        let v = json(&out);
        assert!(out.status.success(), "{v}");
        assert_eq!(v["phase"], "rolled-back", "{v}");
        assert!(
            v["next_step"]
                .as_str()
                .unwrap()
                .contains("put the source configuration back"),
            "{v}"
        );
        rt.block_on(all_unwrap(load(&source), &tables));
        // The source alone: every key readable, and no migration shown.
        let st = json(&cli(&source, &["--format", "json", "security", "status"]));
        assert_eq!(st["key_availability"]["all_readable"], true, "{st}");
        assert!(st["migration"].is_null(), "{st}");
    }
}

/// Changes the user PIN of this binary's own token from `old` to `new` (C_SetPIN in a
/// read-write public session).
fn change_pin(old: &str, new: &str) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::types::AuthPin;
    static CTX: std::sync::OnceLock<Pkcs11> = std::sync::OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        let ctx = Pkcs11::new(softhsm::module_path()).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => panic!("{e}"),
        }
        ctx
    });
    let label = own_token_label();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim() == label)
        })
        .unwrap_or_else(|| panic!("token {label} not found"));
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .set_pin(&AuthPin::new(old.into()), &AuthPin::new(new.into()))
        .unwrap();
}

#[test]
fn a_source_whose_pin_changes_stops_the_migration_and_it_resumes_with_the_pin_restored() {
    let Some(_one) = serial() else { return };
    let mut rng = Rng::seeded("pin change");
    let s = Setup::new(30);
    write_secret(&s.path().join("secrets/own-pin.txt"), OWN_PIN);
    let label = own_token_label();
    // The source is the HSM (its own token, whose PIN the test changes); the target a secure
    // file.
    let source = s.write(
        "source.toml",
        "hsm_source",
        &s.hsm_section(Some(&label), "own-pin.txt"),
    );
    let target = s.write("target.toml", "file_target", &s.file_section("mek2"));
    let rt = rt();
    let tables = rt.block_on(create_tables(load(&source), 5_000));
    let moved = kill_halfway(&s, &source, &target, &mut rng, 5_001);

    // Between two runs: the token's PIN changes. The next run cannot log in to the source:
    // it fails naming the source, and changes nothing.
    change_pin(OWN_PIN, OWN_PIN_CHANGED);
    let before = s.key_files();
    let out = cli(
        &source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    eprintln!("after the PIN change: exit {:?}: {v}", out.status.code());
    assert!(!out.status.success(), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("source"), "the error names the source: {msg}");
    assert!(msg.contains("CKR_PIN_INCORRECT"), "{msg}");
    assert_eq!(before, s.key_files(), "the failed run changes no key file");
    change_pin(OWN_PIN_CHANGED, OWN_PIN);
    let (_, still) = progress(&source, &target).unwrap();
    assert_eq!(still, moved, "the work done is kept");

    // During a run: the PIN changes once the command has started moving TEKs. Sessions that
    // are already logged in keep working, so the run goes on.
    let mut child = command(
        &source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--to",
            target.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let store = s.store_file();
    let stamp = || {
        std::fs::metadata(&store)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let first = stamp();
    while stamp() == first && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    change_pin(OWN_PIN, OWN_PIN_CHANGED);
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "PIN changed during the run: exit {:?}: {}",
        out.status.code(),
        text(&out)
    );
    let during = out.status.code();
    change_pin(OWN_PIN_CHANGED, OWN_PIN);
    // With the PIN restored, the same command resumes (if needed) and completes.
    let out = cli(
        &source,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["keys_moved"], 5_001, "{v}");
    assert_eq!(v["phase"], "dual-active", "{v}");
    assert_eq!(
        during,
        Some(0),
        "a run whose sessions were logged in before the PIN changed completes"
    );
    rt.block_on(all_unwrap(migration_config(&source, &target), &tables));
}

#[test]
fn bad_input_is_a_clear_error_and_changes_no_key_file() {
    let Some(_one) = serial() else { return };
    let pid = std::process::id();
    let s = Setup::new(30);
    write_secret(&s.path().join("secrets/wrong-pin.txt"), "999999");
    let source = s.write("source.toml", "master_key_001", &s.file_section("mek"));
    let rt = rt();
    let tables = rt.block_on(create_tables(load(&source), 1_500));
    let to = |target: &Path, extra: &[&str]| {
        let mut args = vec!["--format", "json", "security", "mek", "migrate", "--to"];
        args.push(target.to_str().unwrap());
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let refused = |target: &Path, extra: &[&str], needle: &str| {
        let before = s.key_files();
        let args = to(target, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&source, &args);
        let v = json(&out);
        assert_eq!(out.status.code(), Some(1), "{v}");
        let msg = v["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(before, s.key_files(), "{msg}: a key file changed");
        msg
    };

    // The same provider and MEK as the source.
    let same = s.write("same.toml", "master_key_001", &s.file_section("mek"));
    let msg = refused(&same, &[], "nothing to migrate");
    eprintln!("same provider: {msg}");

    // A target that cannot be reached: a wrong PIN, a token that does not exist.
    let wrong_pin = s.write(
        "wrong-pin.toml",
        &format!("mig_{pid}_bad"),
        &s.hsm_section(None, "wrong-pin.txt"),
    );
    let msg = refused(&wrong_pin, &[], "target");
    assert!(msg.contains("CKR_PIN_INCORRECT"), "{msg}");
    let missing = s.write(
        "missing-token.toml",
        &format!("mig_{pid}_bad"),
        &s.hsm_section(Some("no-such-token"), "pin.txt"),
    );
    let msg = refused(&missing, &[], "target");
    assert!(msg.contains("no-such-token"), "{msg}");

    // --verify, --finish and --rollback with no migration in progress: refused before any
    // start, so not even the target's MEK is made (its directory would be mek2).
    let fresh = s.write(
        "fresh.toml",
        &format!("mig_{pid}_fresh"),
        &s.file_section("mek2"),
    );
    for flag in ["--verify", "--finish", "--rollback"] {
        refused(&fresh, &[flag], "no provider migration is in progress");
        assert!(
            !s.path().join("mek2").exists(),
            "{flag} made the target's MEK directory"
        );
    }

    // A migration stopped after two pages (a fail point after the second commit), with TEKs still under the source
    // only: --verify reports them (exit 4), --finish is refused.
    let target = s.write(
        "target.toml",
        &format!("mig_{pid}_bad_ok"),
        &s.hsm_section(None, "pin.txt"),
    );
    let args = to(&target, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = command(&source, &args)
        .env("FAILPOINTS", "rotation::after_page_commit=1*off->return")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let (phase, moved) = progress(&source, &target).unwrap();
    assert!(moved > 0 && moved < 1_501, "{phase} {moved}");
    // --verify and --finish are refused while the pass has not finished, and change nothing.
    let msg = refused(&target, &["--verify"], "run the migration again");
    eprintln!("verify halfway: {msg}");
    let msg = refused(&target, &["--finish"], "verify it first");
    eprintln!("finish while TEKs depend on the source: {msg}");

    // --to a different target while the configuration describes another migration.
    let migrating = s.path().join("migrating.toml");
    std::fs::write(
        &migrating,
        format!(
            "{}\n[migration_source]\ndefault_mek_id = \"master_key_001\"\n\
             [migration_source.secure_file_config]\nstorage_path = \"{d}/mek\"\n\
             passphrase_file = \"{d}/secrets/pass.txt\"\n",
            std::fs::read_to_string(&target).unwrap(),
            d = s.path().display()
        ),
    )
    .unwrap();
    let before = s.key_files();
    let out = cli(
        &migrating,
        &[
            "--format",
            "json",
            "security",
            "mek",
            "migrate",
            "--to",
            wrong_pin.to_str().unwrap(),
        ],
    );
    let v = json(&out);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already describes a migration"),
        "{v}"
    );
    assert_eq!(before, s.key_files());

    // The migration completes after all that, and every TEK still unwraps.
    let v = json(&cli(
        &migrating,
        &["--format", "json", "security", "mek", "migrate"],
    ));
    assert_eq!(v["keys_moved"], 1_501, "{v}");
    rt.block_on(all_unwrap(migration_config(&source, &target), &tables));
}
