//! Key-hierarchy types for HeliosDB transparent data encryption (TDE).
//!
//! HeliosDB protects data with a two-tier key hierarchy:
//!
//! * a **Master Encryption Key (MEK)** lives inside a provider (a passphrase-protected file, a
//!   cloud KMS, an HSM, or — for tests only — process memory) and never has to leave it;
//! * per-table **Table Encryption Keys (TEKs)** encrypt pages. A TEK is stored only in wrapped
//!   form: encrypted under an MEK version, bound to its identity by associated data.
//!
//! This crate is the bottom layer of the workspace. It holds the vocabulary every other crate
//! shares and performs no I/O and starts no runtime:
//!
//! * validated identifiers ([`MekId`], [`MekRef`], [`TableId`], [`TekId`], [`KeyId`]);
//! * key metadata and lifecycle states ([`KeyMetadata`], [`KeyState`], [`KeyType`]);
//! * the MEK lifecycle policy every provider applies ([`MekLifecycle`]);
//! * zeroizing key material ([`KeyBytes`], [`TableKey`], [`MasterKey`]);
//! * the traits that join the layers ([`MekProvider`], [`KeyStore`], [`AuditSink`]);
//! * the wire formats ([`WrappedTek`] and the [`WrapContext`] associated-data binding);
//! * the [`SecurityMode`] and the single error type [`TdeError`].

pub mod aad;
pub mod audit;
pub mod bytes;
pub mod config;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod material;
pub mod metadata;
pub mod mode;
pub mod provider;
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
pub use error::{Result, TdeError};
pub use ids::{KeyId, MekId, MekRef, MekVersion, TableId, TekId, TekVersion};
pub use lifecycle::MekLifecycle;
pub use material::{KEY_LEN, KeyBytes, MasterKey, TableKey};
pub use metadata::{EncryptionAlgorithm, KeyMetadata, KeyState, KeyType, UsageCounters};
pub use mode::{ModeSource, SECURITY_MODE_ENV, SecurityMode};
pub use provider::{MekInfo, MekProvider, MekVersionInfo, ProviderHealth};
pub use store::{KeyStore, StoreBatch, StoreOp, TekRecord};
pub use time::Timestamp;
