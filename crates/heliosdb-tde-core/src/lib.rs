#![doc = include_str!("../README.md")]

pub mod aad;
pub mod audit;
pub mod bytes;
pub mod config;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod material;
pub mod memory;
pub mod metadata;
pub mod mode;
pub mod provider;
pub mod provider_set;
pub mod store;
pub mod time;

pub use aad::{WrapContext, WrapPurpose};
pub use audit::{AuditAction, AuditEvent, AuditOutcome, AuditSink};
pub use bytes::ByteReader;
pub use config::{
    AwsKmsConfig, AzureKeyVaultConfig, ConfigSecret, HSM_PIN_ENV, HsmConfig, KdfParams, KmsConfig,
    SecureFileConfig, VaultTransitConfig,
};
pub use envelope::{ProviderKind, WrappedTek};
pub use error::{Result, TdeError, chain_contains};
pub use ids::{
    AUDIT_TABLE, AsMekId, AsTableId, KeyId, MekId, MekRef, MekVersion, RESERVED_TABLE_PREFIX,
    TableId, TekId, TekVersion,
};
pub use lifecycle::MekLifecycle;
pub use material::{KEY_LEN, KeyBytes, MasterKey, TableKey};
pub use metadata::{EncryptionAlgorithm, KeyMetadata, KeyState, KeyType, UsageCounters};
pub use mode::{ModeSource, SECURITY_MODE_ENV, SecurityMode};
pub use provider::{
    DeletionProtection, MekBackupItem, MekInfo, MekProvider, MekVersionInfo, ProviderHealth,
    ServiceRotation,
};
pub use provider_set::{Member, ProviderSet, shared_mek_id};
pub use store::{
    AUDIT_JOURNAL_PREFIX, ExportItem, ExportSummary, ImportItem, KeyStore, StoreBatch,
    StoreIdentity, StoreOp, TekRecord,
};
pub use time::Timestamp;
