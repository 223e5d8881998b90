//! Shared helpers: TEK records wrapped under a fixed test MEK, so that a record written by one
//! process can be unwrapped by another.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use heliosdb_tde_cipher::{Backend, wrap};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, KeyId, KeyMetadata, MasterKey, ProviderKind, TableKey, TekId,
    TekRecord, WrapContext,
};

pub fn test_mek() -> MasterKey {
    MasterKey::new(
        "store_test_mek@v1".parse().unwrap(),
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::from_slice(&[0x37; 32]).unwrap(),
    )
}

/// A fresh TEK for `id`, wrapped under the test MEK, as a record.
pub fn record(id: &str) -> (TableKey, TekRecord) {
    let id: TekId = id.parse().unwrap();
    let tek = TableKey::generate(id.clone(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let mek = test_mek();
    let wrapped = wrap::wrap_tek(
        Backend::default(),
        &mek,
        ProviderKind::InMemory,
        &tek,
        &WrapContext::table_key(&id),
    )
    .unwrap();
    let meta = KeyMetadata::new_active(
        KeyId::Table(id.clone()),
        EncryptionAlgorithm::Aes256Gcm,
        Some(mek.mek().clone()),
    );
    (tek, TekRecord::new(id, meta, wrapped).unwrap())
}

/// Unwraps a stored record with the test MEK.
pub fn unwrap(rec: &TekRecord) -> TableKey {
    wrap::unwrap_tek(
        Backend::default(),
        &test_mek(),
        &rec.wrapped,
        &WrapContext::table_key(&rec.id),
    )
    .unwrap()
}
