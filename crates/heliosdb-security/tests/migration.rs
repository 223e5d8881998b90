//! Provider migration through the facade, secure file to secure file (another directory): a
//! whole migration under a concurrent page load, resume after an interrupted pass, rollback
//! halfway and after completion, bad input, and the conformance suite over a provider set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::file_config;
use heliosdb_security::tde::{
    EncryptionAlgorithm, KeyManager, KeyManagerConfig, MekId, MekProvider, MekRef,
    MigrationSourceConfig, ProviderKind, ProviderSet, RotationConfig, RotationPhase,
    SecureFileConfig, SecureFileMekProvider, SecurityMode, TableKey, TdeConfig, TdeError,
    TdeSubsystem, TekId, Timestamp, sealed_tek_version,
};
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{KeyStore, MekVersion, TekRecord, WrapContext};
use heliosdb_tde_keystore::{RedbKeyStore, STORE_FILE_NAME};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TEKS: usize = 2_000;
/// The source's MEK: `file_config`'s default.
const SRC_MEK: &str = "master_key_001";
/// The target's MEK.
const DST_MEK: &str = "master_key_002";

fn id(s: &str) -> MekId {
    MekId::new(s).unwrap()
}

fn later() -> Timestamp {
    Timestamp::now().saturating_add(Duration::from_secs(31 * 86_400))
}

/// A key store and MEK directory under `src/` (the source), a second MEK directory under
/// `dst/` (the target), and the three configurations: the source alone, the target alone, and
/// the target with the source as `migration_source`.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: TdeConfig,
    target: TdeConfig,
    migration: TdeConfig,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let source = file_config(&root.join("src"), "development");
        let target = TdeConfig {
            key_storage_path: source.key_storage_path.clone(),
            default_mek_id: DST_MEK.into(),
            ..file_config(&root.join("dst"), "development")
        };
        let migration = TdeConfig {
            migration_source: Some(MigrationSourceConfig::from_config(&source)),
            ..target.clone()
        };
        Self {
            _dir: dir,
            root,
            source,
            target,
            migration,
        }
    }

    fn store_path(&self) -> PathBuf {
        self.source.key_storage_path.join(STORE_FILE_NAME)
    }

    fn file(c: &TdeConfig) -> &SecureFileConfig {
        c.secure_file_config.as_ref().unwrap()
    }

    /// `TEKS` tables `t00000...` with a TEK each, under the source.
    async fn populate(&self) {
        let tde = TdeSubsystem::new(self.source.clone()).await.unwrap();
        let names = table_names();
        for chunk in names.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            tde.key_manager().create_table_keys(&refs).await.unwrap();
        }
    }

    /// Every file under the key store and both MEK directories, by path.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        for d in [
            self.source.key_storage_path.clone(),
            Self::file(&self.source).storage_path.clone(),
            Self::file(&self.target).storage_path.clone(),
        ] {
            walk(&d, &mut out);
        }
        out
    }

    /// The source's MEK directory opened alone, and the key store read-only.
    fn source_alone(&self) -> (Arc<dyn MekProvider>, RedbKeyStore) {
        let p = SecureFileMekProvider::open(Self::file(&self.source), SecurityMode::Development)
            .unwrap();
        (
            Arc::new(p),
            RedbKeyStore::open_read_only(&self.store_path()).unwrap(),
        )
    }

    /// A migration pass through a key manager whose source stops answering (retryable
    /// errors) after `answers` unwraps: the pass pauses with part of the TEKs moved. Returns
    /// how many.
    async fn paused_pass(&self, answers: u64) -> u64 {
        let dev = SecurityMode::Development;
        let src = SecureFileMekProvider::open(Self::file(&self.source), dev).unwrap();
        let dst = SecureFileMekProvider::open(Self::file(&self.target), dev).unwrap();
        let flaky = Arc::new(Instrumented::new(Arc::new(src)));
        flaky.fail_when(Method::UnwrapTek, move |c| {
            (c.n > answers).then(|| TdeError::ProviderUnavailable {
                provider: "the migration source".into(),
                reason: "the test cut it off".into(),
                retryable: true,
            })
        });
        let set = ProviderSet::new(Arc::new(dst), id(DST_MEK), flaky.clone(), id(SRC_MEK)).unwrap();
        let store = RedbKeyStore::open_existing(&self.store_path()).unwrap();
        let rotation = RotationConfig::default()
            .with_batch_size(100)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
            .with_abort_after_consecutive_failures(4);
        let config = KeyManagerConfig::new(id(DST_MEK), dev)
            .with_rotation(rotation)
            .with_migration_source(id(SRC_MEK));
        let km = KeyManager::new(Arc::new(set), Arc::new(store), config).unwrap();
        km.ensure_default_mek().await.unwrap();
        let e = km.migrate_mek(None).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let st = km.mek_migration_status().await.unwrap().unwrap();
        assert_eq!(st.phase, RotationPhase::Rewrapping);
        assert!(
            st.reencrypted > 0 && st.reencrypted < TEKS as u64,
            "{} moved",
            st.reencrypted
        );
        assert!(flaky.calls(Method::UnwrapTek) > answers);
        st.reencrypted
    }
}

fn table_names() -> Vec<String> {
    (0..TEKS).map(|i| format!("t{i:05}")).collect()
}

async fn records(store: &dyn KeyStore) -> Vec<TekRecord> {
    store.scan_teks(None, usize::MAX).await.unwrap()
}

/// How many of the store's TEKs `p` alone unwraps, and how many there are.
async fn unwrapped_by(store: &dyn KeyStore, p: &dyn MekProvider) -> (usize, usize) {
    let all = records(store).await;
    let mut ok = 0;
    for r in &all {
        if p.unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    (ok, all.len())
}

/// Every table's newest TEK through `tde` (a fresh start: each one is a cache miss, so it is
/// unwrapped through the configured provider).
async fn read_every_table(tde: &TdeSubsystem, extra: &[String]) {
    for t in table_names().iter().chain(extra) {
        tde.key_manager()
            .get_table_key(t.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}

/// Seals a page of `table` and opens it again.
async fn seal_and_open(tde: &TdeSubsystem, table: &str, i: u64) -> Result<(), String> {
    let data = format!("page {i} of {table}").into_bytes();
    let aad = format!("{table}/{i}").into_bytes();
    let sealer = tde.page_sealer(table).await.map_err(|e| e.to_string())?;
    let sealed = sealer.seal(&aad, &data).await.map_err(|e| e.to_string())?;
    let v = sealed_tek_version(&sealed).map_err(|e| e.to_string())?;
    let opener = tde.page_opener(table, v).await.map_err(|e| e.to_string())?;
    let opened = opener.open(&aad, &sealed).map_err(|e| e.to_string())?;
    if opened != data {
        return Err(format!("{table}: the page opened to other bytes"));
    }
    Ok(())
}

/// Seals and opens pages of existing tables, and of new tables it creates, until `stop` (and
/// at least two rounds); returns the new tables, or the first error.
async fn page_load(
    tde: Arc<TdeSubsystem>,
    stop: Arc<AtomicBool>,
    first_round: tokio::sync::oneshot::Sender<()>,
) -> Result<Vec<String>, String> {
    let mut first_round = Some(first_round);
    let mut created = Vec::new();
    let mut i = 0u64;
    loop {
        let t = format!("t{:05}", (i * 7919) % TEKS as u64);
        seal_and_open(&tde, &t, i).await?;
        if i.is_multiple_of(4) {
            let n = format!("during_{i}");
            tde.key_manager()
                .create_table_key(n.as_str())
                .await
                .map_err(|e| format!("create {n}: {e}"))?;
            seal_and_open(&tde, &n, i).await?;
            created.push(n);
        }
        i += 1;
        if let Some(tx) = first_round.take() {
            let _ = tx.send(());
        }
        if stop.load(Ordering::SeqCst) && i >= 2 {
            return Ok(created);
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_migration_under_a_page_load_then_finish_and_the_target_alone() {
    let s = Setup::new();
    s.populate().await;

    // `security status` before the first start with the migration source reads the keys
    // through the source and writes nothing.
    let before = s.snapshot();
    let ro = TdeSubsystem::open_read_only(s.migration.clone())
        .await
        .unwrap();
    assert!(ro.migration_source().is_some());
    ro.key_manager()
        .get_table_key("t00000", None)
        .await
        .unwrap();
    drop(ro);
    assert_eq!(s.snapshot(), before);

    let tde = Arc::new(TdeSubsystem::new(s.migration.clone()).await.unwrap());
    let set = tde.migration_source().expect("a migration source");
    assert_eq!(set.source_mek().as_str(), SRC_MEK);
    assert_eq!(set.target_mek().as_str(), DST_MEK);
    assert!(
        set.source().description().contains("src"),
        "{}",
        set.source().description()
    );
    assert!(
        set.target().description().contains("dst"),
        "{}",
        set.target().description()
    );
    let health = tde.key_manager().mek_provider.health().await.unwrap();
    assert!(health.healthy, "{}", health.detail);
    assert!(health.detail.contains("source") && health.detail.contains("target"));

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(page_load(tde.clone(), stop.clone(), tx));
    rx.await.unwrap();
    let res = tde.key_manager().migrate_mek(None).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let created = load
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the page load failed: {e}"));
    assert!(!created.is_empty());
    assert!(res.started);
    assert_eq!(res.phase, RotationPhase::DualActive);
    assert_eq!(res.keys_moved, TEKS as u64);
    assert_eq!(res.failed_total, 0);

    // Every TEK, those created during the migration too, unwraps through the target alone.
    let store = tde.key_manager().store().clone();
    let set = tde.migration_source().unwrap();
    let (ok, total) = unwrapped_by(store.as_ref(), set.target().as_ref()).await;
    assert_eq!(total, TEKS + created.len());
    assert_eq!(ok, total);

    let v = tde.key_manager().verify_mek_migration().await.unwrap();
    assert_eq!(v.stranded, 0);
    assert_eq!(v.state.phase, RotationPhase::Verified);
    let e = tde.key_manager().finish_mek_migration().await.unwrap_err();
    assert!(e.to_string().contains("grace period"), "{e}");
    let done = tde
        .key_manager()
        .finish_mek_migration_at(later())
        .await
        .unwrap();
    assert_eq!(done.phase, RotationPhase::Migrated);
    drop(store);
    drop(tde);

    // The target alone (migration_source removed) reads every TEK.
    let tde = TdeSubsystem::new(s.target.clone()).await.unwrap();
    assert!(tde.migration_source().is_none());
    read_every_table(&tde, &created).await;
    for r in records(tde.key_manager().store().as_ref()).await {
        assert_eq!(r.wrapped.mek.id.as_str(), DST_MEK, "{}", r.id);
        assert!(r.previous_wrap.is_none(), "{}", r.id);
    }
    drop(tde);

    // The source alone unwraps none of them: the envelopes name the target.
    let (src, store) = s.source_alone();
    let (ok, total) = unwrapped_by(&store, src.as_ref()).await;
    assert_eq!((ok, total), (0, TEKS + created.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_migration_resumes_and_completes() {
    let s = Setup::new();
    s.populate().await;
    let moved = s.paused_pass(700).await;

    let tde = TdeSubsystem::new(s.migration.clone()).await.unwrap();
    assert!(
        tde.warnings()
            .iter()
            .any(|w| w.contains("provider migration") && w.contains("resume")),
        "{:?}",
        tde.warnings()
    );
    let st = tde
        .key_manager()
        .mek_migration_status()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.reencrypted, moved);
    let res = tde.key_manager().migrate_mek(None).await.unwrap();
    assert!(!res.started);
    assert_eq!(res.phase, RotationPhase::DualActive);
    assert_eq!(res.keys_moved, TEKS as u64);
    let set = tde.migration_source().unwrap();
    let store = tde.key_manager().store();
    let (ok, total) = unwrapped_by(store.as_ref(), set.target().as_ref()).await;
    assert_eq!((ok, total), (TEKS, TEKS));
    let v = tde.key_manager().verify_mek_migration().await.unwrap();
    assert_eq!(v.stranded, 0);
}

/// After a rollback: a start with the source's configuration reads every table, and the source
/// provider alone unwraps every TEK.
async fn everything_under_the_source(s: &Setup, created: &[String]) {
    let tde = TdeSubsystem::new(s.source.clone()).await.unwrap();
    read_every_table(&tde, created).await;
    for r in records(tde.key_manager().store().as_ref()).await {
        assert_eq!(r.wrapped.mek.id.as_str(), SRC_MEK, "{}", r.id);
    }
    drop(tde);
    let (src, store) = s.source_alone();
    let (ok, total) = unwrapped_by(&store, src.as_ref()).await;
    assert_eq!((ok, total), (TEKS + created.len(), TEKS + created.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_halfway_returns_every_tek_to_the_source() {
    let s = Setup::new();
    s.populate().await;
    s.paused_pass(900).await;
    let tde = TdeSubsystem::new(s.migration.clone()).await.unwrap();
    // A table created during the migration is wrapped under the target.
    tde.key_manager()
        .create_table_key("during_rollback")
        .await
        .unwrap();
    let r = records(tde.key_manager().store().as_ref()).await;
    let new = r
        .iter()
        .find(|r| r.id.table.as_str() == "during_rollback")
        .unwrap();
    assert_eq!(new.wrapped.mek.id.as_str(), DST_MEK);
    let st = tde
        .key_manager()
        .rollback_mek_migration(None)
        .await
        .unwrap();
    assert_eq!(st.old.id.as_str(), SRC_MEK);
    drop(tde);
    everything_under_the_source(&s, &["during_rollback".to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_after_completion_returns_every_tek_to_the_source() {
    let s = Setup::new();
    s.populate().await;
    let tde = TdeSubsystem::new(s.migration.clone()).await.unwrap();
    tde.key_manager()
        .create_table_key("before_pass")
        .await
        .unwrap();
    let res = tde.key_manager().migrate_mek(None).await.unwrap();
    assert_eq!(res.phase, RotationPhase::DualActive);
    let v = tde.key_manager().verify_mek_migration().await.unwrap();
    assert_eq!(v.state.phase, RotationPhase::Verified);
    tde.key_manager()
        .create_table_key("after_pass")
        .await
        .unwrap();
    tde.key_manager()
        .rollback_mek_migration(None)
        .await
        .unwrap();
    drop(tde);
    everything_under_the_source(&s, &["before_pass".to_string(), "after_pass".to_string()]).await;
}

#[tokio::test]
async fn a_source_that_is_the_target_or_shares_its_mek_id_is_refused_and_changes_nothing() {
    let s = Setup::new();
    s.populate().await;
    let before = s.snapshot();
    // The same provider and the same MEK as the configuration itself.
    let same = TdeConfig {
        migration_source: Some(MigrationSourceConfig::from_config(&s.source)),
        ..s.source.clone()
    };
    let e = TdeSubsystem::new(same).await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidConfig { .. }), "{e}");
    assert!(
        e.to_string().contains("same provider") && e.to_string().contains("same MEK"),
        "{e}"
    );
    // Another provider with the source's MEK id.
    let shared = TdeConfig {
        default_mek_id: SRC_MEK.into(),
        ..s.migration.clone()
    };
    let e = TdeSubsystem::new(shared).await.unwrap_err();
    assert!(e.to_string().contains("both use the MEK id"), "{e}");
    assert_eq!(s.snapshot(), before);
    assert!(!Setup::file(&s.target).storage_path.exists());
}

#[tokio::test]
async fn an_unreachable_target_or_source_is_named_and_changes_nothing() {
    let s = Setup::new();
    s.populate().await;
    let before = s.snapshot();

    // The target's passphrase file is missing.
    let mut no_pass = s.migration.clone();
    let f = no_pass.secure_file_config.as_mut().unwrap();
    f.passphrase_file = Some(s.root.join("dst/secrets/missing.txt"));
    let e = TdeSubsystem::new(no_pass).await.unwrap_err();
    assert!(e.to_string().contains("target (secure-file)"), "{e}");
    assert_eq!(s.snapshot(), before);
    assert!(!Setup::file(&s.target).storage_path.exists());

    // The source's directory does not exist: named, and not created.
    let mut gone = s.migration.clone();
    let missing = s.root.join("nowhere/mek");
    gone.migration_source
        .as_mut()
        .unwrap()
        .secure_file_config
        .as_mut()
        .unwrap()
        .storage_path = missing.clone();
    let e = TdeSubsystem::new(gone).await.unwrap_err();
    assert!(
        e.to_string().contains("migration source (secure-file)"),
        "{e}"
    );
    assert!(!missing.exists());

    // A first start of the migration creates the target's MEK; then wrong passphrases.
    drop(TdeSubsystem::new(s.migration.clone()).await.unwrap());
    let before = s.snapshot();
    let wrong = |dir: &str| {
        let p = s.root.join(dir).join("secrets/wrong.txt");
        std::fs::write(&p, "another long and sufficiently random passphrase\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let mut bad_target = s.migration.clone();
    bad_target
        .secure_file_config
        .as_mut()
        .unwrap()
        .passphrase_file = Some(wrong("dst"));
    let e = TdeSubsystem::new(bad_target).await.unwrap_err();
    assert!(e.to_string().contains("target (secure-file)"), "{e}");
    assert!(!e.to_string().contains("migration source"), "{e}");
    let mut bad_source = s.migration.clone();
    bad_source
        .migration_source
        .as_mut()
        .unwrap()
        .secure_file_config
        .as_mut()
        .unwrap()
        .passphrase_file = Some(wrong("src"));
    let e = TdeSubsystem::new(bad_source.clone()).await.unwrap_err();
    assert!(
        e.to_string().contains("migration source (secure-file)"),
        "{e}"
    );
    // The read-only start (`security status`) names it too.
    let e = TdeSubsystem::open_read_only(bad_source).await.unwrap_err();
    assert!(
        e.to_string().contains("migration source (secure-file)"),
        "{e}"
    );
    assert_eq!(s.snapshot(), before);
}

#[tokio::test]
async fn finish_before_verification_or_while_a_tek_depends_on_the_source_is_refused() {
    let s = Setup::new();
    s.populate().await;
    let tde = TdeSubsystem::new(s.migration.clone()).await.unwrap();
    tde.key_manager().migrate_mek(None).await.unwrap();
    let before = s.snapshot();
    let e = tde
        .key_manager()
        .finish_mek_migration_at(later())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("verify it first"), "{e}");
    assert_eq!(s.snapshot(), before);
    let v = tde.key_manager().verify_mek_migration().await.unwrap();
    assert_eq!(v.state.phase, RotationPhase::Verified);
    drop(tde);

    // Someone starts the old configuration and creates a TEK under the source.
    let old = TdeSubsystem::new(s.source.clone()).await.unwrap();
    old.key_manager().create_table_key("late").await.unwrap();
    let r = records(old.key_manager().store().as_ref()).await;
    let late = r.iter().find(|r| r.id.table.as_str() == "late").unwrap();
    assert_eq!(late.wrapped.mek.id.as_str(), SRC_MEK);
    drop(old);

    let tde = TdeSubsystem::new(s.migration.clone()).await.unwrap();
    let before = s.snapshot();
    let e = tde
        .key_manager()
        .finish_mek_migration_at(later())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("can only be unwrapped through the source"),
        "{e}"
    );
    assert_eq!(s.snapshot(), before);
    // The read-only start shows the migration and both providers meanwhile.
    drop(tde);
    let ro = TdeSubsystem::open_read_only(s.migration.clone())
        .await
        .unwrap();
    assert!(ro.migration_source().is_some());
    let st = ro
        .key_manager()
        .mek_migration_status()
        .await
        .unwrap()
        .unwrap();
    assert!(st.is_migration());
    assert_eq!(s.snapshot(), before);
}

/// Two secure-file providers in temporary directories (development mode), each with its MEK.
async fn two_file_providers(dir: &Path) -> (Arc<dyn MekProvider>, Arc<dyn MekProvider>) {
    let open = |name: &str| {
        let c = SecureFileConfig::new(dir.join(name));
        SecureFileMekProvider::open_with_passphrase(
            &c,
            SecurityMode::Development,
            "a long and sufficiently random passphrase".into(),
            Vec::new(),
        )
        .unwrap()
    };
    let (t, s) = (open("dst"), open("src"));
    t.generate_mek(&id(DST_MEK), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    s.generate_mek(&id(SRC_MEK), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    (Arc::new(t), Arc::new(s))
}

#[tokio::test]
async fn the_conformance_suite_passes_over_a_set_of_two_secure_file_providers() {
    let dir = tempfile::tempdir().unwrap();
    let (target, source) = two_file_providers(dir.path()).await;
    let set = ProviderSet::new(target, id(DST_MEK), source, id(SRC_MEK)).unwrap();
    heliosdb_tde_conformance::provider::run_all(Arc::new(set)).await;
}

fn refused(r: Result<TableKey, TdeError>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: a relabelled envelope unwrapped"),
        Err(TdeError::AuthenticationFailed { .. } | TdeError::KeyNotFound { .. }) => {}
        Err(e) => panic!("{what}: expected an authentication failure, got {e}"),
    }
}

#[tokio::test]
async fn a_wrap_presented_under_the_other_members_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (file_target, file_source) = two_file_providers(dir.path()).await;
    // Two secure-file members, and a set whose source is of another kind (in-memory).
    let memory: Arc<dyn MekProvider> = Arc::new(heliosdb_security::tde::InMemoryMekProvider::new());
    memory
        .generate_mek(&id(SRC_MEK), EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let sets = [
        ProviderSet::new(file_target.clone(), id(DST_MEK), file_source, id(SRC_MEK)).unwrap(),
        ProviderSet::new(file_target, id(DST_MEK), memory, id(SRC_MEK)).unwrap(),
    ];
    let tek_id: TekId = "users@v1".parse().unwrap();
    let ctx = WrapContext::table_key(&tek_id);
    let key = TableKey::generate(tek_id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    for set in &sets {
        let src_ref = MekRef::new(id(SRC_MEK), MekVersion::FIRST);
        let dst_ref = MekRef::new(id(DST_MEK), MekVersion::FIRST);
        let from_source = set.wrap_tek(&src_ref, &key, &ctx).await.unwrap();
        let from_target = set.wrap_tek(&dst_ref, &key, &ctx).await.unwrap();
        assert_eq!(from_source.provider, set.source().kind());
        assert_eq!(from_target.provider, set.target().kind());
        // Each unwraps as it is.
        set.unwrap_tek(&from_source, &ctx).await.unwrap();
        set.unwrap_tek(&from_target, &ctx).await.unwrap();
        // The source's wrap under the target's identity: its MEK, its kind, both.
        for (mek, kind) in [
            (dst_ref.clone(), from_source.provider),
            (src_ref.clone(), ProviderKind::Pkcs11),
            (dst_ref.clone(), set.target().kind()),
        ] {
            let mut w = from_source.clone();
            w.mek = mek;
            w.provider = kind;
            refused(set.unwrap_tek(&w, &ctx).await, "source wrap as target");
        }
        // And the reverse.
        for (mek, kind) in [
            (src_ref.clone(), from_target.provider),
            (dst_ref.clone(), ProviderKind::Pkcs11),
            (src_ref.clone(), set.source().kind()),
        ] {
            let mut w = from_target.clone();
            w.mek = mek;
            w.provider = kind;
            refused(set.unwrap_tek(&w, &ctx).await, "target wrap as source");
        }
    }
}

#[tokio::test]
async fn an_in_memory_source_is_refused_in_production_and_empty_in_development() {
    let s = Setup::new();
    s.populate().await;
    let before = s.snapshot();
    let in_memory = |mode: &str| TdeConfig {
        security_mode: Some(mode.into()),
        migration_source: Some(MigrationSourceConfig::new(SRC_MEK)),
        ..s.target.clone()
    };
    let e = TdeSubsystem::new(in_memory("production"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("in-memory is allowed as a migration source only in development mode"),
        "{e}"
    );
    let e = TdeSubsystem::new(in_memory("development"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("migration source (in-memory)") && text.contains("starts empty"),
        "{text}"
    );
    assert_eq!(s.snapshot(), before);
}

#[tokio::test]
async fn a_bundle_check_or_restore_under_a_migration_configuration_is_refused_and_changes_nothing()
{
    let s = Setup::new();
    s.populate().await;
    // A bundle of the source, taken before the migration.
    let bundle = s.root.join("before.htkb");
    let tde = TdeSubsystem::new(s.source.clone()).await.unwrap();
    tde.backup(&bundle).await.unwrap();
    drop(tde);
    let before = s.snapshot();
    let e = heliosdb_security::tde::verify_bundle_with_provider(&s.migration, &bundle)
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("migration_source"), "{e}");
    let e = heliosdb_security::tde::restore(
        &s.migration,
        &bundle,
        heliosdb_security::tde::RestoreOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TdeError::Unsupported { .. }), "{e:?}");
    assert_eq!(
        s.snapshot(),
        before,
        "a refused check or restore changed a key file"
    );
    // With the source's own configuration the same bundle checks out.
    let check = heliosdb_security::tde::verify_bundle_with_provider(&s.source, &bundle)
        .await
        .unwrap();
    assert!(check.ok(), "{check:?}");
    assert!(check.unwraps.total >= TEKS as u64, "{check:?}");
}

/// A development database on the in-memory provider (its MEK exists only in this process) moves
/// to real keys without a restart: `migrate_to` takes the running provider as the source.
#[tokio::test]
async fn a_development_database_on_the_in_memory_provider_moves_to_real_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let dev = TdeConfig {
        key_storage_path: keys.clone(),
        security_mode: Some("development".into()),
        cache_limit: 100,
        ..Default::default()
    };
    let tde = TdeSubsystem::new(dev.clone()).await.unwrap();
    let mut pages = Vec::new();
    for t in ["app.users", "app.orders"] {
        tde.key_manager().create_table_key(t).await.unwrap();
        let sealer = tde.page_sealer(t).await.unwrap();
        let sealed = sealer.seal(t.as_bytes(), b"rows").await.unwrap();
        let v = heliosdb_security::tde::sealed_tek_version(&sealed).unwrap();
        pages.push((t, v, sealed));
    }
    let target = TdeConfig {
        key_storage_path: keys.clone(),
        default_mek_id: "file_mek".into(),
        ..file_config(&dir.path().join("real"), "development")
    };

    // Refusals hand the running subsystem back, still working.
    let same_id = TdeConfig {
        default_mek_id: dev.default_mek_id.clone(),
        ..target.clone()
    };
    let failed = tde.migrate_to(same_id).await.unwrap_err();
    assert!(
        failed.error.to_string().contains("migration_source"),
        "{}",
        failed.error
    );
    let tde = failed.previous.unwrap();
    let mut bad_pass = target.clone();
    let pass = dir.path().join("wrong-pass");
    std::fs::write(&pass, "another long passphrase, not the right one\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The target's MEK directory does not exist yet, so any passphrase opens it: make one.
    drop(
        TdeSubsystem::new(TdeConfig {
            key_storage_path: dir.path().join("other-keys"),
            ..target.clone()
        })
        .await
        .unwrap(),
    );
    bad_pass
        .secure_file_config
        .as_mut()
        .unwrap()
        .passphrase_file = Some(pass);
    let failed = tde.migrate_to(bad_pass).await.unwrap_err();
    assert!(
        failed.error.to_string().contains("target (secure-file)"),
        "{}",
        failed.error
    );
    let tde = failed.previous.unwrap();
    for (t, v, sealed) in &pages {
        let opener = tde.page_opener(t, *v).await.unwrap();
        assert_eq!(opener.open(t.as_bytes(), sealed).unwrap(), b"rows");
    }

    // The migration itself.
    let tde = tde.migrate_to(target.clone()).await.unwrap();
    let km = tde.key_manager();
    let r = km.migrate_mek(None).await.unwrap();
    assert_eq!(r.source_provider, "in-memory");
    assert_eq!(r.target_provider, "secure-file");
    assert!(r.keys_moved >= 2, "{r:?}");
    assert_eq!(km.verify_mek_migration().await.unwrap().stranded, 0);
    km.finish_mek_migration_at(later()).await.unwrap();
    drop(tde);
    // A new process with the real configuration alone reads every page.
    let tde = TdeSubsystem::new(target).await.unwrap();
    for (t, v, sealed) in &pages {
        let opener = tde.page_opener(t, *v).await.unwrap();
        assert_eq!(opener.open(t.as_bytes(), sealed).unwrap(), b"rows");
    }
}
