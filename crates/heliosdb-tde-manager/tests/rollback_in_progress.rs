//! A plain rotation requested while a rollback is unfinished is refused with the rotation's
//! own error (`TdeError::RotationPhase`, naming the phase), not as a key-state error. The fail
//! point is process-global, so this test has its own binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_core::{KeyStore, MekId, SecurityMode, TdeError};
use heliosdb_tde_keystore::RedbKeyStore;
use heliosdb_tde_manager::{KeyManager, KeyManagerConfig, Phase};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::sync::Arc;

#[tokio::test]
async fn a_rotation_during_an_unfinished_rollback_is_a_rotation_phase_error() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(RedbKeyStore::open_dir(dir.path()).unwrap());
    let km = KeyManager::new(
        Arc::new(InMemoryMekProvider::new()),
        store,
        KeyManagerConfig::new(
            MekId::new("master_key_001").unwrap(),
            SecurityMode::Development,
        ),
    )
    .unwrap();
    km.ensure_default_mek().await.unwrap();
    km.create_table_keys(&["a", "b"]).await.unwrap();
    km.rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap();

    // The rollback stops after its provider step: the journal says RollingBack.
    fail::cfg("rotation::rollback_provider_done", "return").unwrap();
    assert!(
        km.rollback_mek_rotation("master_key_001", None)
            .await
            .is_err()
    );
    fail::remove("rotation::rollback_provider_done");
    let st = km.mek_rotation_status("master_key_001").await.unwrap();
    assert_eq!(st.map(|s| s.phase), Some(Phase::RollingBack));

    let e = km
        .rotate_mek_with_dual_encryption("master_key_001")
        .await
        .unwrap_err();
    match &e {
        TdeError::RotationPhase { phase, hint, .. } => {
            assert_eq!(*phase, Phase::RollingBack.to_string());
            assert!(hint.contains("mek rollback"), "{hint}");
        }
        other => panic!("{other:?}"),
    }
    // Finishing the rollback works.
    km.rollback_mek_rotation("master_key_001", None)
        .await
        .unwrap();
    scenario.teardown();
}
