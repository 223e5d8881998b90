//! Transparent data encryption: configuration, subsystem, key manager and page cipher.
//!
//! ```text
//! TdeConfig --TdeSubsystem::new--> TdeSubsystem { KeyManager { MekProvider, KeyStore, cache } }
//! ```

mod audit;
mod backup;
mod checked;
mod checklist;
mod config;
mod memory;
mod migration;
mod subsystem;

pub use audit::{AuditStatus, audit_status, audit_tail, verify_audit, verify_audit_structure};
pub use backup::{
    BackupTarget, BundleCheck, ProviderCheck, RESTORE_PENDING_ENTRY, RestoreOptions, RestoreReport,
    backup_offline, bundle_holding, record_audit_event, restore, verify_bundle,
    verify_bundle_with_provider,
};
pub use checklist::{CheckItem, CheckStatus, security_checklist, security_checklist_at};
pub use config::{ENV_PREFIX, TdeConfig};
pub use heliosdb_tde_core::memory::{ArenaStats, CoreDumpState, Protection};
pub use heliosdb_tde_core::{AuditAction, AuditEvent};
pub use heliosdb_tde_manager::audit::{
    AuditCheckpoint, AuditFilter, AuditFsync, AuditLogOptions, AuditRecord, AuditSinkStats,
};
pub use heliosdb_tde_manager::backup::{BackupReport, Manifest as BackupManifest};
pub use memory::{MemoryProtection, MemoryProtectionConfig, RESERVED_KEY_SLOTS};
pub use migration::{MigrateToError, MigrationSourceConfig, recorded_migration};
pub use subsystem::{PageOpener, PageSealer, TdeSubsystem};

/// The cipher engine's page cipher, which does NOT persist its invocation count: a sealer built
/// from it directly can exceed a key's nonce budget across restarts. For benchmarks and tools
/// that do their own accounting only; engines seal through [`TdeSubsystem::page_sealer`].
pub use heliosdb_tde_cipher::TableCipher as UnmeteredTableCipher;
pub use heliosdb_tde_cipher::{
    Backend as CipherBackend, CipherError, PageHeader, SealedParts, UsageLimits, UsageSnapshot,
    sealed_tek_version,
};
pub use heliosdb_tde_core::Member as ProviderSetMember;
pub use heliosdb_tde_core::{
    AwsKmsConfig, AzureKeyVaultConfig, ConfigSecret, DeletionProtection, EncryptionAlgorithm,
    HsmConfig, KdfParams, KeyId, KeyMetadata, KeyState, KeyType, KmsConfig, MekId, MekInfo,
    MekProvider, MekRef, MekVersionInfo, ModeSource, ProviderHealth, ProviderKind, ProviderSet,
    SecureFileConfig, SecurityMode, ServiceRotation, TableId, TableKey, TdeError, TekId,
    TekVersion, Timestamp, VaultTransitConfig,
};
pub use heliosdb_tde_manager::MigrationInfo;
pub use heliosdb_tde_manager::{
    AuditVerification, EmergencyRotation, FileAuditSink, KeyAvailability, KeyManager,
    KeyManagerConfig, KeyStats, MekAvailability, MekMigrationResult, MekRotationResult,
    Phase as RotationPhase, Progress as RotationProgress, RotationConfig, RotationState,
    UsagePolicy, Verification, verify_audit_log,
};
pub use heliosdb_tde_memory::InMemoryMekProvider;

/// The secure file provider (feature `secure-file`).
#[cfg(feature = "secure-file")]
pub use heliosdb_tde_file::{PassphraseChange, SecureFileMekProvider};

/// The HashiCorp Vault / OpenBao Transit provider (feature `vault`).
#[cfg(feature = "vault")]
pub use heliosdb_tde_vault::VaultMekProvider;

/// The AWS KMS provider (feature `aws-kms`).
#[cfg(feature = "aws-kms")]
pub use heliosdb_tde_aws_kms::AwsKmsMekProvider;

/// The Azure Key Vault / Managed HSM provider (feature `azure-kv`).
#[cfg(feature = "azure-kv")]
pub use heliosdb_tde_azure_kv::{
    AzureKvMekProvider, RSA_LIMITATION as AZURE_RSA_LIMITATION, WrapAlgorithm as AzureWrapAlgorithm,
};

/// The PKCS#11 HSM provider (feature `pkcs11-hsm`).
#[cfg(feature = "pkcs11-hsm")]
pub use heliosdb_tde_pkcs11::{Pkcs11MekProvider, Pkcs11Settings};

/// Results of the TDE subsystem.
pub type Result<T, E = TdeError> = std::result::Result<T, E>;
