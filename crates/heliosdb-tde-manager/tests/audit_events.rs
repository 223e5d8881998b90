//! The audit events of every key operation (issue 16, section 1) and the audit key with the
//! reserved table `_heliosdb.audit` (section 3, the manager's side), over the real redb key
//! store and the in-memory and secure-file providers, with failures injected by the
//! `Instrumented` provider double and by a tampered wrapped TEK.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use async_trait::async_trait;
use heliosdb_tde_conformance::instrumented::{Instrumented, Method};
use heliosdb_tde_core::{
    AUDIT_TABLE, AuditAction, AuditEvent, AuditSink, KeyState, KeyStore, KeyType, MekId,
    MekProvider, MekRef, MekVersion, ProviderKind, Result, SecurityMode, StoreBatch, TableId,
    TableKey, TdeError, TekId, Timestamp,
};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, RotationConfig, UsagePolicy};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A sink that keeps every event, and the TEK id of every audit key attached to it.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<AuditEvent>>,
    attached: Mutex<Vec<TekId>>,
}

impl Recorder {
    fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn attached(&self) -> Vec<String> {
        self.attached
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect()
    }
}

#[async_trait]
impl AuditSink for Recorder {
    async fn record(&self, event: AuditEvent) -> Result<()> {
        self.events.lock().unwrap().push(event);
        Ok(())
    }

    async fn attach_key(&self, key: Arc<TableKey>, _store: Arc<dyn KeyStore>) -> Result<()> {
        self.attached.lock().unwrap().push(key.id().clone());
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    SecureFile,
}

impl Kind {
    fn provider_kind(self) -> ProviderKind {
        match self {
            Kind::Memory => ProviderKind::InMemory,
            Kind::SecureFile => ProviderKind::SecureFile,
        }
    }
}

fn mek_id() -> MekId {
    MekId::new("master_key_001").unwrap()
}

fn mek(v: u32) -> MekRef {
    MekRef::new(mek_id(), MekVersion::new(v).unwrap())
}

fn config() -> KeyManagerConfig {
    KeyManagerConfig::new(mek_id(), SecurityMode::Development)
        .with_rotation(
            RotationConfig::default()
                .with_grace_period(Duration::ZERO)
                .with_max_attempts(1)
                .with_backoff(Duration::from_millis(1), Duration::from_millis(1))
                .with_abort_after_consecutive_failures(1),
        )
        .with_usage(
            UsagePolicy::default()
                .with_soft_limit(3)
                .with_reservation_block(2),
        )
}

fn outage() -> TdeError {
    TdeError::ProviderUnavailable {
        provider: "test double".into(),
        reason: "injected outage".into(),
        retryable: true,
    }
}

/// Fails every call of `method` with a retryable outage.
fn fail(p: &Instrumented, method: Method) {
    p.fail_when(method, |_| Some(outage()));
}

struct Env {
    dir: tempfile::TempDir,
    provider: Arc<Instrumented>,
    store: Arc<dyn KeyStore>,
    rec: Arc<Recorder>,
    km: KeyManager,
}

impl Env {
    /// A manager over a fresh store and provider; `start`: the default MEK is ensured.
    async fn new(kind: Kind, start: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn MekProvider> = match kind {
            Kind::Memory => Arc::new(InMemoryMekProvider::new()),
            Kind::SecureFile => Arc::new(common::secure_file_provider(&dir.path().join("mek"))),
        };
        let provider = Arc::new(Instrumented::new(inner));
        let store: Arc<dyn KeyStore> =
            Arc::new(RedbKeyStore::open_dir(&dir.path().join("keys")).unwrap());
        let rec = Arc::new(Recorder::default());
        let km = KeyManager::new(provider.clone(), store.clone(), config())
            .unwrap()
            .with_audit(rec.clone());
        if start {
            km.ensure_default_mek().await.unwrap();
        }
        Self {
            dir,
            provider,
            store,
            rec,
            km,
        }
    }

    /// A second manager over the same provider and store: its cache is cold.
    async fn fresh_manager(&self) -> KeyManager {
        let km = KeyManager::new(self.provider.clone(), self.store.clone(), config())
            .unwrap()
            .with_audit(self.rec.clone());
        km.ensure_default_mek().await.unwrap();
        km
    }
}

/// What one case expects of the events of one action.
struct Expect {
    action: AuditAction,
    /// One event per key, in order (`None`: the event names no key).
    keys: &'static [Option<&'static str>],
    success: bool,
    error_kind: Option<&'static str>,
    /// Text every one of these events' detail contains.
    detail: &'static str,
}

const fn ok(
    action: AuditAction,
    keys: &'static [Option<&'static str>],
    detail: &'static str,
) -> Expect {
    Expect {
        action,
        keys,
        success: true,
        error_kind: None,
        detail,
    }
}

const fn failed(
    action: AuditAction,
    keys: &'static [Option<&'static str>],
    error_kind: &'static str,
    detail: &'static str,
) -> Expect {
    Expect {
        action,
        keys,
        success: false,
        error_kind: Some(error_kind),
        detail,
    }
}

const MEK_V1: &[Option<&str>] = &[Some("mek:master_key_001@v1")];
const MEK_V2: &[Option<&str>] = &[Some("mek:master_key_001@v2")];
const OTHER_V1: &[Option<&str>] = &[Some("mek:other_mek@v1")];
const T1_V1: &[Option<&str>] = &[Some("tek:t1@v1")];
const T1_V2: &[Option<&str>] = &[Some("tek:t1@v2")];
const BATCH: &[Option<&str>] = &[Some("tek:a@v1"), Some("tek:b@v1"), Some("tek:c@v1")];

/// Every case: a name (the setup and operation `act` runs for it) and what it records.
fn cases() -> Vec<(&'static str, Expect)> {
    use AuditAction as A;
    vec![
        ("generate_mek", ok(A::MekGenerated, OTHER_V1, "")),
        (
            "generate_mek fails",
            failed(A::MekGenerated, OTHER_V1, "provider_unavailable", ""),
        ),
        (
            "generate_mek with an invalid id",
            failed(A::MekGenerated, &[None], "invalid_identifier", ""),
        ),
        ("first start", ok(A::MekGenerated, MEK_V1, "")),
        (
            "first start fails",
            failed(A::MekGenerated, MEK_V1, "provider_unavailable", ""),
        ),
        (
            "generate an existing MEK",
            failed(A::MekGenerated, MEK_V1, "already_exists", ""),
        ),
        ("mek rotation", ok(A::MekRotated, MEK_V2, "started")),
        (
            "mek rotation fails",
            failed(A::MekRotated, MEK_V1, "provider_unavailable", "failed"),
        ),
        (
            "mek rotation paused",
            failed(
                A::MekRotationPaused,
                MEK_V2,
                "provider_unavailable",
                "paused",
            ),
        ),
        ("mek rotation resumed", ok(A::MekRotated, MEK_V2, "resumed")),
        ("deactivate", ok(A::MekStateChanged, MEK_V1, "deactivated")),
        (
            "deactivate fails",
            failed(A::MekStateChanged, MEK_V1, "provider_unavailable", ""),
        ),
        ("rollback", ok(A::MekStateChanged, MEK_V1, "rolled back")),
        (
            "rollback fails",
            failed(A::MekStateChanged, MEK_V1, "provider_unavailable", ""),
        ),
        ("compromise", ok(A::MekStateChanged, MEK_V1, "compromised")),
        (
            "compromise fails",
            failed(
                A::MekStateChanged,
                MEK_V1,
                "provider_unavailable",
                "compromised",
            ),
        ),
        ("reactivate", ok(A::MekStateChanged, MEK_V1, "active")),
        (
            "reactivate fails",
            failed(A::MekStateChanged, MEK_V1, "provider_unavailable", ""),
        ),
        ("create", ok(A::TekCreated, T1_V1, "master_key_001@v1")),
        (
            "create fails",
            failed(A::TekCreated, T1_V1, "provider_unavailable", ""),
        ),
        (
            "create an existing table key",
            failed(A::TekCreated, T1_V1, "already_exists", ""),
        ),
        (
            "create with an invalid name",
            failed(A::TekCreated, &[None], "invalid_identifier", ""),
        ),
        (
            "create a reserved table key",
            failed(
                A::TekCreated,
                &[Some("tek:_heliosdb.audit@v1")],
                "invalid_identifier",
                "",
            ),
        ),
        ("create batch", ok(A::TekCreated, BATCH, "in a batch of 3")),
        (
            "create batch fails",
            failed(A::TekCreated, BATCH, "provider_unavailable", "batch of 3"),
        ),
        ("rotate manual", ok(A::TekRotated, T1_V2, "trigger=manual")),
        (
            "rotate manual fails",
            failed(
                A::TekRotated,
                T1_V2,
                "provider_unavailable",
                "trigger=manual",
            ),
        ),
        (
            "rotate emergency",
            ok(A::TekRotated, T1_V2, "trigger=emergency"),
        ),
        ("rotate usage", ok(A::TekRotated, T1_V2, "trigger=usage")),
        ("unwrap", ok(A::TekUnwrapped, T1_V1, "master_key_001@v1")),
        (
            "unwrap fails",
            failed(A::TekUnwrapped, T1_V1, "provider_unavailable", ""),
        ),
        (
            "unwrap tampered",
            failed(A::TekUnwrapped, T1_V1, "authentication_failed", ""),
        ),
        (
            "tek state on rotation",
            ok(A::TekStateChanged, T1_V1, "decrypt-only"),
        ),
        (
            "tek state on compromise",
            // Made decrypt-only by the table's rotation, then compromised.
            ok(
                A::TekStateChanged,
                &[Some("tek:t1@v1"), Some("tek:t1@v1")],
                "",
            ),
        ),
    ]
}

/// Runs the setup of case `name` (its events are dropped), then its operation; returns the
/// events the operation recorded.
async fn act(env: &Env, name: &str) -> Vec<AuditEvent> {
    let km = &env.km;
    let p = &env.provider;
    let far = Timestamp::now().saturating_add(Duration::from_secs(3600));
    // Setup.
    match name {
        "first start" | "first start fails" => {}
        _ => {
            km.ensure_default_mek().await.unwrap();
        }
    }
    match name {
        "generate_mek"
        | "generate_mek fails"
        | "generate_mek with an invalid id"
        | "create with an invalid name"
        | "generate an existing MEK"
        | "first start"
        | "first start fails"
        | "create"
        | "create fails"
        | "create batch"
        | "create batch fails"
        | "create a reserved table key" => {}
        "mek rotation resumed" => {
            km.create_table_key("t1").await.unwrap();
            fail(p, Method::RewrapTek);
            km.rotate_mek_with_dual_encryption(&mek_id())
                .await
                .unwrap_err();
            p.clear(Method::RewrapTek);
        }
        "deactivate" | "deactivate fails" | "rollback" | "rollback fails" | "reactivate"
        | "reactivate fails" => {
            km.create_table_key("t1").await.unwrap();
            km.rotate_mek_with_dual_encryption(&mek_id()).await.unwrap();
        }
        "mek rotation"
        | "mek rotation fails"
        | "mek rotation paused"
        | "compromise"
        | "compromise fails" => {
            km.create_table_key("t1").await.unwrap();
            km.create_table_key("t2").await.unwrap();
        }
        _ => {
            km.create_table_key("t1").await.unwrap();
        }
    }
    env.rec.take();
    // The operation.
    match name {
        "generate_mek" => {
            km.generate_mek("other_mek").await.unwrap();
        }
        "generate_mek fails" => {
            fail(p, Method::GenerateMek);
            km.generate_mek("other_mek").await.unwrap_err();
        }
        "generate_mek with an invalid id" => {
            km.generate_mek("bad/id").await.unwrap_err();
        }
        "create with an invalid name" => {
            km.create_table_key("bad/name").await.unwrap_err();
        }
        "first start" => {
            km.ensure_default_mek().await.unwrap();
        }
        "first start fails" => {
            fail(p, Method::GenerateMek);
            km.ensure_default_mek().await.unwrap_err();
        }
        "generate an existing MEK" => {
            let e = km.generate_mek("master_key_001").await.unwrap_err();
            assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e}");
        }
        "mek rotation" | "mek rotation resumed" => {
            km.rotate_mek_with_dual_encryption(&mek_id()).await.unwrap();
        }
        "mek rotation fails" => {
            fail(p, Method::RotateMek);
            km.rotate_mek_with_dual_encryption(&mek_id())
                .await
                .unwrap_err();
        }
        "mek rotation paused" => {
            fail(p, Method::RewrapTek);
            let e = km
                .rotate_mek_with_dual_encryption(&mek_id())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("paused"), "{e}");
        }
        "deactivate" => {
            km.deactivate_old_mek_at(&mek_id(), far).await.unwrap();
        }
        "deactivate fails" => {
            fail(p, Method::DeactivateMekVersion);
            km.deactivate_old_mek_at(&mek_id(), far).await.unwrap_err();
        }
        "rollback" => {
            km.rollback_mek_rotation(&mek_id(), None).await.unwrap();
        }
        "rollback fails" => {
            fail(p, Method::SetMekState);
            km.rollback_mek_rotation(&mek_id(), None).await.unwrap_err();
        }
        "compromise" | "rotate emergency" | "tek state on compromise" => {
            km.emergency_rotate_mek(&mek_id(), None).await.unwrap();
        }
        "compromise fails" => {
            fail(p, Method::SetMekState);
            km.emergency_rotate_mek(&mek_id(), None).await.unwrap_err();
        }
        "reactivate" => {
            km.set_mek_version_state(&mek(1), KeyState::Active)
                .await
                .unwrap();
        }
        "reactivate fails" => {
            fail(p, Method::SetMekState);
            km.set_mek_version_state(&mek(1), KeyState::Active)
                .await
                .unwrap_err();
        }
        "create" => {
            km.create_table_key("t1").await.unwrap();
        }
        "create fails" | "create batch fails" => {
            fail(p, Method::WrapTek);
            if name == "create fails" {
                km.create_table_key("t1").await.unwrap_err();
            } else {
                km.create_table_keys(&["a", "b", "c"]).await.unwrap_err();
            }
        }
        "create an existing table key" => {
            km.create_table_key("t1").await.unwrap_err();
        }
        "create a reserved table key" => {
            let e = km.create_table_key(AUDIT_TABLE).await.unwrap_err();
            assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");
        }
        "create batch" => {
            km.create_table_keys(&["a", "b", "c"]).await.unwrap();
        }
        "rotate manual" | "tek state on rotation" => {
            km.rotate_table(&TableId::new("t1").unwrap()).await.unwrap();
        }
        "rotate manual fails" => {
            fail(p, Method::WrapTek);
            km.rotate_table(&TableId::new("t1").unwrap())
                .await
                .unwrap_err();
        }
        "rotate usage" => {
            // The soft limit is 3: the third page rotates the key.
            for _ in 0..3 {
                km.seal_page("t1", b"aad", b"page").await.unwrap();
            }
        }
        "unwrap" => {
            let cold = env.fresh_manager().await;
            env.rec.take();
            cold.get_table_key("t1", None).await.unwrap();
            // Hits are not recorded.
            cold.get_table_key("t1", None).await.unwrap();
            cold.get_table_key("t1", None).await.unwrap();
        }
        "unwrap fails" => {
            let cold = env.fresh_manager().await;
            env.rec.take();
            fail(p, Method::UnwrapTek);
            cold.get_table_key("t1", None).await.unwrap_err();
        }
        "unwrap tampered" => {
            let id: TekId = "t1@v1".parse().unwrap();
            let mut rec = env.store.get_tek(&id).await.unwrap().unwrap();
            let last = rec.wrapped.payload.len() - 1;
            rec.wrapped.payload[last] ^= 0x01;
            env.store
                .apply(StoreBatch::new().upsert(rec))
                .await
                .unwrap();
            let cold = env.fresh_manager().await;
            env.rec.take();
            let e = cold.get_table_key("t1", None).await.unwrap_err();
            assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
        }
        other => panic!("no such case: {other}"),
    }
    env.rec.take()
}

async fn run_cases(kind: Kind) {
    for (name, expect) in cases() {
        let env = Env::new(kind, false).await;
        let events = act(&env, name).await;
        let ctx = format!("{kind:?} / {name}: {events:#?}");
        // Every event names the provider.
        for e in &events {
            assert_eq!(e.provider, Some(kind.provider_kind()), "{ctx}");
            if e.is_success() {
                assert_eq!(e.error_kind, None, "{ctx}");
            } else {
                assert!(e.error_kind.is_some(), "{ctx}");
            }
        }
        let of_action: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.action == expect.action)
            .collect();
        let keys: Vec<Option<String>> = of_action
            .iter()
            .map(|e| e.key.as_ref().map(|k| k.to_string()))
            .collect();
        let want: Vec<Option<String>> = expect.keys.iter().map(|k| k.map(str::to_string)).collect();
        assert_eq!(keys, want, "{ctx}");
        for e in of_action {
            assert_eq!(e.is_success(), expect.success, "{ctx}");
            assert_eq!(e.error_kind, expect.error_kind, "{ctx}");
            assert!(e.detail.contains(expect.detail), "{ctx}");
        }
        drop(env.dir);
    }
}

/// Every action of the table, for success and for an injected failure: the action, the
/// key, the outcome, the error kind and the provider (in-memory provider).
#[tokio::test]
async fn every_operation_is_recorded_on_success_and_failure_in_memory() {
    run_cases(Kind::Memory).await;
}

/// The same table over the secure-file provider.
#[tokio::test]
async fn every_operation_is_recorded_on_success_and_failure_secure_file() {
    run_cases(Kind::SecureFile).await;
}

/// Emergency rotation: one compromise event for the old MEK version, the rotation of every
/// table with `trigger=emergency`, and the TEK versions the compromised MEK wrapped marked.
#[tokio::test]
async fn an_emergency_rotation_records_each_step_once() {
    let env = Env::new(Kind::Memory, true).await;
    env.km.create_table_key("t1").await.unwrap();
    env.rec.take();
    env.km.emergency_rotate_mek(&mek_id(), None).await.unwrap();
    let events = env.rec.take();
    let names: Vec<(String, String, bool)> = events
        .iter()
        .map(|e| {
            (
                e.action.name().to_string(),
                e.key.as_ref().map(|k| k.to_string()).unwrap_or_default(),
                e.is_success(),
            )
        })
        .collect();
    let n = |s: &str, k: &str| (s.to_string(), k.to_string(), true);
    assert_eq!(
        names,
        [
            n("mek.state_changed", "mek:master_key_001@v1"),
            n("mek.rotated", "mek:master_key_001@v2"),
            n("tek.rotated", "tek:t1@v2"),
            n("tek.state_changed", "tek:t1@v1"),
            n("tek.state_changed", "tek:t1@v1"),
        ],
        "{events:#?}"
    );
    assert!(events[1].detail.contains("emergency=true"), "{events:#?}");
}

/// User table keys cannot take a `_heliosdb` name, alone or in a batch (nothing of the batch is
/// created), and cannot seal pages under HeliosDB's own keys.
#[tokio::test]
async fn reserved_table_names_are_refused() {
    let env = Env::new(Kind::Memory, true).await;
    let km = &env.km;
    for name in [
        AUDIT_TABLE,
        "_heliosdb",
        "_heliosdb_mine",
        "_heliosdb.other",
    ] {
        let e = km.create_table_key(name).await.unwrap_err();
        assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(
                "table names starting with _heliosdb are reserved for HeliosDB's own keys; \
                 choose another name"
            ),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    let e = km
        .create_table_keys(&["ok_table", "_heliosdb.x"])
        .await
        .unwrap_err();
    assert!(matches!(e, TdeError::InvalidIdentifier { .. }), "{e}");
    assert!(km.list_keys(Some(KeyType::Table)).await.unwrap().is_empty());
    // A name that merely contains the prefix is a user table.
    km.create_table_key("my_heliosdb").await.unwrap();

    km.ensure_audit_key().await.unwrap();
    assert!(km.table_sealer(AUDIT_TABLE).await.is_err());
    assert!(km.seal_page(AUDIT_TABLE, b"", b"page").await.is_err());
}

/// The audit key is hidden from table lists, key statistics and the emergency rotation's
/// lists; an emergency rotation still gives it a new version and re-attaches it to the sink.
#[tokio::test]
async fn the_audit_key_is_hidden_and_an_emergency_rotation_renews_and_reattaches_it() {
    let env = Env::new(Kind::Memory, true).await;
    let km = &env.km;
    assert!(km.audit_key().await.unwrap().is_none());
    km.attach_audit_key().await.unwrap();
    let v1 = km.audit_key().await.unwrap().unwrap();
    assert_eq!(v1.id().to_string(), "_heliosdb.audit@v1");
    assert_eq!(env.rec.attached(), ["_heliosdb.audit@v1"]);
    // Created once: a second ensure returns the same key and creates nothing.
    let again = km.ensure_audit_key().await.unwrap();
    assert_eq!(again.bytes().expose_secret(), v1.bytes().expose_secret());
    assert_eq!(
        km.store()
            .table_teks(&TableId::audit())
            .await
            .unwrap()
            .len(),
        1
    );
    // Wrapped under the default MEK like any TEK.
    let rec = env
        .store
        .latest_tek(&TableId::audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.wrapped.mek, mek(1));

    km.create_table_key("t1").await.unwrap();
    let tables: Vec<String> = km
        .list_keys(Some(KeyType::Table))
        .await
        .unwrap()
        .iter()
        .map(|m| m.key_id.to_string())
        .collect();
    assert_eq!(tables, ["tek:t1@v1"]);
    let stats = km.key_stats().await.unwrap();
    assert_eq!(stats.tables, 1);
    assert_eq!(stats.teks_by_state.values().sum::<u64>(), 1);

    let em = km.emergency_rotate_mek(&mek_id(), None).await.unwrap();
    let names = |v: &[TableId]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&em.tables_rotated), ["t1"]);
    assert_eq!(names(&em.tables_needing_reencryption), ["t1"]);
    assert_eq!(
        em.audit_key.as_ref().map(|t| t.to_string()).as_deref(),
        Some("_heliosdb.audit@v2")
    );
    let v2 = km.audit_key().await.unwrap().unwrap();
    assert_eq!(v2.id().to_string(), "_heliosdb.audit@v2");
    assert_ne!(v2.bytes().expose_secret(), v1.bytes().expose_secret());
    assert_eq!(
        env.rec.attached(),
        ["_heliosdb.audit@v1", "_heliosdb.audit@v2"]
    );
    // Both versions stay available for verifying older records.
    let versions: Vec<String> = km
        .audit_key_versions()
        .await
        .unwrap()
        .iter()
        .map(|k| k.id().to_string())
        .collect();
    assert_eq!(versions, ["_heliosdb.audit@v1", "_heliosdb.audit@v2"]);
    let events = env.rec.take();
    assert!(
        events.iter().any(|e| e.action == AuditAction::TekRotated
            && e.key.as_ref().map(|k| k.to_string()).as_deref() == Some("tek:_heliosdb.audit@v2")
            && e.detail.contains("trigger=emergency")),
        "{events:#?}"
    );
    assert_eq!(km.key_stats().await.unwrap().tables, 1);

    // A manual rotation of the audit table re-attaches too.
    km.rotate_table(&TableId::audit()).await.unwrap();
    assert_eq!(
        env.rec.attached().last().map(String::as_str),
        Some("_heliosdb.audit@v3")
    );
}

/// MEK rotation re-wraps the audit key like any TEK: after the old MEK version is deactivated,
/// a cold manager still unwraps the same key, under the new version.
#[tokio::test]
async fn mek_rotation_rewraps_the_audit_key() {
    for kind in [Kind::Memory, Kind::SecureFile] {
        let env = Env::new(kind, true).await;
        let km = &env.km;
        let before = km.ensure_audit_key().await.unwrap();
        km.rotate_mek_with_dual_encryption(&mek_id()).await.unwrap();
        let far = Timestamp::now().saturating_add(Duration::from_secs(3600));
        km.deactivate_old_mek_at(&mek_id(), far).await.unwrap();
        let rec = env
            .store
            .latest_tek(&TableId::audit())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.wrapped.mek, mek(2), "{kind:?}");
        assert!(rec.previous_wrap.is_none(), "{kind:?}");
        let cold = env.fresh_manager().await;
        env.rec.take();
        let after = cold.audit_key().await.unwrap().unwrap();
        assert_eq!(after.id(), before.id(), "{kind:?}");
        assert_eq!(
            after.bytes().expose_secret(),
            before.bytes().expose_secret(),
            "{kind:?}"
        );
        // The unwrap of the audit key on a cold cache is itself recorded.
        let events = env.rec.take();
        assert!(
            events.iter().any(|e| e.action == AuditAction::TekUnwrapped
                && e.is_success()
                && e.detail.contains("master_key_001@v2")),
            "{events:#?}"
        );
    }
}

/// Without an audit sink nothing is recorded and nothing fails; `attach_audit_key` still
/// creates the key.
#[tokio::test]
async fn attach_without_a_sink_creates_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> =
        Arc::new(RedbKeyStore::open_dir(&dir.path().join("keys")).unwrap());
    let km = KeyManager::new(Arc::new(InMemoryMekProvider::new()), store, config()).unwrap();
    km.ensure_default_mek().await.unwrap();
    assert!(!km.has_audit());
    km.attach_audit_key().await.unwrap();
    assert!(km.audit_key().await.unwrap().is_some());
}
