//! The MEK provider trait: where master keys live and how TEKs are wrapped under them.
//!
//! A provider owns its MEKs. The trait only ever moves *TEKs* across its boundary — in the
//! clear on wrap, wrapped on return — so an HSM or a cloud KMS can keep every MEK inside,
//! and no method requires MEK bytes to leave the provider.
//!
//! Every wrap is bound to a [`WrapContext`] (table, TEK version, purpose) plus the MEK
//! reference; see [`crate::aad`].

use crate::aad::WrapContext;
/// Which family of provider holds the MEK; it lives next to the envelope that records it.
pub use crate::envelope::ProviderKind;
use crate::envelope::WrappedTek;
use crate::error::Result;
use crate::ids::{MekId, MekRef, MekVersion};
use crate::material::TableKey;
use crate::metadata::{EncryptionAlgorithm, KeyState};
use crate::time::Timestamp;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// One version of an MEK as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MekVersionInfo {
    /// The MEK version.
    pub mek: MekRef,
    /// Its lifecycle state in the provider.
    pub state: KeyState,
    /// Its algorithm.
    pub algorithm: EncryptionAlgorithm,
    /// When it was created.
    pub created_at: Timestamp,
    /// Where this version's key is kept when each version is a separate service key (a KMS key
    /// ARN), for operators; `None` when [`MekInfo::location`] says it all. Never a secret.
    pub key_location: Option<String>,
    /// Rotation of key material done by the service itself under this one version (KMS
    /// automatic rotation), which HeliosDB does not see as a new version; `None` for providers
    /// without it.
    pub service_rotation: Option<ServiceRotation>,
    /// What the service itself records about this version, for operators (Azure Key Vault:
    /// the version's tags and enabled flag); `None` when there is nothing beyond the state.
    /// Never a secret.
    pub service_detail: Option<String>,
}

impl MekVersionInfo {
    /// A version in the [`KeyState::Active`] state: how every new version starts.
    pub fn active(mek: MekRef, algorithm: EncryptionAlgorithm, created_at: Timestamp) -> Self {
        Self::new(mek, KeyState::Active, algorithm, created_at)
    }

    /// A version in `state`, with no key location, service rotation or service detail.
    pub fn new(
        mek: MekRef,
        state: KeyState,
        algorithm: EncryptionAlgorithm,
        created_at: Timestamp,
    ) -> Self {
        Self {
            mek,
            state,
            algorithm,
            created_at,
            key_location: None,
            service_rotation: None,
            service_detail: None,
        }
    }

    /// When this version's key material was last made new: its creation, or the service's last
    /// rotation of it if that is later. The flag says whether the service rotation was used.
    pub fn material_age_reference(&self) -> (Timestamp, bool) {
        match self.service_rotation.as_ref().and_then(|r| r.last_rotated) {
            Some(t) if t > self.created_at => (t, true),
            _ => (self.created_at, false),
        }
    }
}

/// Rotation of key material by the service under one MEK version (AWS KMS automatic or
/// on-demand rotation): old ciphertexts keep decrypting, nothing is re-wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceRotation {
    /// Whether the service rotates the material on a schedule.
    pub enabled: bool,
    /// The schedule's period in days, when enabled.
    pub period_days: Option<u32>,
    /// When the material was last rotated by the service (scheduled or on demand), if ever.
    pub last_rotated: Option<Timestamp>,
}

impl ServiceRotation {
    /// A service rotation status.
    pub fn new(enabled: bool, period_days: Option<u32>, last_rotated: Option<Timestamp>) -> Self {
        Self {
            enabled,
            period_days,
            last_rotated,
        }
    }
}

/// Whether the service holding an MEK protects it against permanent deletion (Azure Key Vault
/// purge protection, a Vault Transit key's `deletion_allowed` flag).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeletionProtection {
    /// `true` when nobody can delete the key for good before a retention period ends.
    pub protected: bool,
    /// What the service reports, and how to turn protection on where it is off.
    pub detail: String,
}

impl DeletionProtection {
    /// A deletion-protection status.
    pub fn new(protected: bool, detail: impl Into<String>) -> Self {
        Self {
            protected,
            detail: detail.into(),
        }
    }
}

/// An MEK and all its versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MekInfo {
    /// The MEK id.
    pub id: MekId,
    /// The provider holding it.
    pub provider: ProviderKind,
    /// Where the provider keeps it, for operators (a directory, a key ARN, a token label).
    /// Never a secret.
    pub location: String,
    /// Every version, oldest first.
    pub versions: Vec<MekVersionInfo>,
    /// Whether the service protects the key against permanent deletion; `None` when the
    /// provider cannot tell (a local provider, or AWS KMS, where a key policy decides it).
    pub deletion_protection: Option<DeletionProtection>,
}

impl MekInfo {
    /// The newest version that may wrap new TEKs, if any.
    pub fn active_version(&self) -> Option<MekVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state.can_encrypt())
            .map(|v| v.mek.version)
    }

    /// The newest version, whatever its state.
    pub fn latest_version(&self) -> Option<MekVersion> {
        self.versions.iter().map(|v| v.mek.version).max()
    }
}

/// The result of a provider health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderHealth {
    /// Whether the provider can serve wrap and unwrap requests now.
    pub healthy: bool,
    /// How long the check took.
    pub latency: Duration,
    /// What was checked, or what is wrong.
    pub detail: String,
}

/// A holder of master encryption keys.
///
/// Implementations are shared across tasks (`Send + Sync`), print no secrets in `Debug`, and
/// are object safe so that the key manager can hold an `Arc<dyn MekProvider>` chosen at run time.
///
/// Contract, checked for every provider by the `heliosdb-tde-conformance` suite:
/// * `wrap_tek` refuses an MEK version that is not [`KeyState::Active`]; `unwrap_tek` refuses one
///   whose state cannot decrypt ([`KeyState::can_decrypt`]);
/// * the envelope returned by `wrap_tek` names the MEK version used, and unwrapping it with any
///   other [`WrapContext`] fails with [`crate::TdeError::AuthenticationFailed`];
/// * transient outages are [`crate::TdeError::ProviderUnavailable`] with `retryable: true`.
#[async_trait]
pub trait MekProvider: Send + Sync + fmt::Debug {
    /// Which family of provider this is.
    fn kind(&self) -> ProviderKind;

    /// A human-readable description, for example `In-Memory (INSECURE - testing only)`.
    fn description(&self) -> String;

    /// Whether the provider is fit for production. Production mode refuses providers that
    /// return `false`.
    fn is_secure(&self) -> bool;

    /// Creates version 1 of a new MEK inside the provider. Fails with
    /// [`crate::TdeError::AlreadyExists`] if the id exists.
    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo>;

    /// Wraps a TEK under the given MEK version, bound to `ctx`.
    async fn wrap_tek(&self, mek: &MekRef, tek: &TableKey, ctx: &WrapContext)
    -> Result<WrappedTek>;

    /// Unwraps a TEK. The MEK version is the one named in the envelope; `ctx` must be the
    /// context it was wrapped with.
    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey>;

    /// Re-wraps a TEK under another MEK version (`new_mek`), keeping `ctx`.
    ///
    /// The default unwraps and wraps again, so the TEK passes through this process. Providers
    /// with server-side re-encryption override it so that the TEK never leaves them.
    async fn rewrap_tek(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        let tek = self.unwrap_tek(wrapped, ctx).await?;
        self.wrap_tek(new_mek, &tek, ctx).await
    }

    /// Describes an MEK and its versions. Fails with [`crate::TdeError::KeyNotFound`] if the
    /// id is unknown.
    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo>;

    /// Every MEK id the provider holds.
    async fn list_meks(&self) -> Result<Vec<MekId>>;

    /// Creates the next version of an MEK and makes it active. Older versions become
    /// [`KeyState::DecryptOnly`]: they still unwrap existing TEKs.
    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo>;

    /// Moves one MEK version to another lifecycle state, for example to
    /// [`KeyState::Deactivated`] after a rotation has been verified, or back to
    /// [`KeyState::Active`] on rollback. The provider enforces [`KeyState::can_transition_to`].
    ///
    /// Callers (the rotation orchestrator) are responsible for checking that no TEK still
    /// depends on a version before deactivating it.
    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()>;

    /// Moves one MEK version to [`KeyState::Deactivated`].
    async fn deactivate_mek_version(&self, mek: &MekRef) -> Result<()> {
        self.set_mek_state(mek, KeyState::Deactivated).await
    }

    /// Checks that the provider is reachable and usable.
    async fn health(&self) -> Result<ProviderHealth>;

    /// What a backup bundle records for each of `meks` so that a restore finds it again: a
    /// non-secret reference, and, for a provider that keeps MEKs in its own files, the file as
    /// stored (still encrypted under the provider's passphrase). Never a key in the clear, a
    /// passphrase, a PIN, a token or a client secret. A version the provider does not hold is
    /// [`crate::TdeError::KeyNotFound`] (or the provider's missing-MEK error).
    ///
    /// The default answers with references only, from [`MekProvider::mek_info`]: right for
    /// every provider whose keys never leave their service.
    async fn backup_material(&self, meks: &[MekRef]) -> Result<Vec<MekBackupItem>> {
        let mut out = Vec::with_capacity(meks.len());
        let mut infos: Vec<MekInfo> = Vec::new();
        let missing = |mek: &MekRef| {
            crate::lifecycle::mek_not_found(
                mek,
                format!(
                    "the MEK provider {} does not hold this version",
                    self.description()
                ),
            )
        };
        for mek in meks {
            if !infos.iter().any(|i| i.id == mek.id) {
                infos.push(self.mek_info(&mek.id).await?);
            }
            let info = infos
                .iter()
                .find(|i| i.id == mek.id)
                .ok_or_else(|| missing(mek))?;
            let version = info
                .versions
                .iter()
                .find(|v| v.mek == *mek)
                .ok_or_else(|| missing(mek))?;
            let location = version.key_location.as_deref().unwrap_or(&info.location);
            out.push(MekBackupItem::reference(
                mek.clone(),
                format!("{location} ({mek})"),
            ));
        }
        Ok(out)
    }
}

/// What a backup records of one MEK version (see [`MekProvider::backup_material`]).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MekBackupItem {
    /// The MEK version.
    pub mek: MekRef,
    /// Where the provider keeps it (a file name, a token and key label, a key ARN or id).
    /// Never a secret.
    pub reference: String,
    /// For a provider that keeps the MEK in a file of its own: the file name and its bytes as
    /// stored (encrypted under the provider's passphrase).
    pub file: Option<(String, Vec<u8>)>,
}

impl MekBackupItem {
    /// A reference to a key that stays in its service.
    pub fn reference(mek: MekRef, reference: impl Into<String>) -> Self {
        Self {
            mek,
            reference: reference.into(),
            file: None,
        }
    }

    /// A provider's own file of the MEK (as stored, encrypted), named `name`; the name is
    /// also the reference.
    pub fn file(mek: MekRef, name: impl Into<String>, bytes: Vec<u8>) -> Self {
        let name = name.into();
        Self {
            mek,
            reference: name.clone(),
            file: Some((name, bytes)),
        }
    }
}

impl fmt::Debug for MekBackupItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MekBackupItem")
            .field("mek", &self.mek)
            .field("reference", &self.reference)
            .field(
                "file",
                &self
                    .file
                    .as_ref()
                    .map(|(n, b)| format!("{n} ({} bytes)", b.len())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_items_debug_shows_no_file_bytes() {
        let mek = MekRef::new(MekId::new("k").unwrap(), MekVersion::FIRST);
        let bytes = b"SECRET-LOOKING-FILE-CONTENT".to_vec();
        let item = MekBackupItem::file(mek, "k.v1.mek", bytes.clone());
        let text = format!("{item:?}");
        assert!(
            text.contains("k.v1.mek") && text.contains("27 bytes"),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains(&format!("{bytes:?}")), "{text}");
    }

    fn version(created: u64, rotation: Option<ServiceRotation>) -> MekVersionInfo {
        let mek = MekRef::new(MekId::new("k").unwrap(), MekVersion::FIRST);
        let mut v = MekVersionInfo::active(mek, EncryptionAlgorithm::Aes256Gcm, Timestamp(created));
        v.service_rotation = rotation;
        v
    }

    #[test]
    fn material_age_uses_the_later_of_creation_and_service_rotation() {
        assert_eq!(
            version(500, None).material_age_reference(),
            (Timestamp(500), false)
        );
        let never = ServiceRotation::new(true, Some(90), None);
        assert_eq!(
            version(500, Some(never)).material_age_reference(),
            (Timestamp(500), false)
        );
        let later = ServiceRotation::new(true, Some(90), Some(Timestamp(900)));
        assert_eq!(
            version(500, Some(later)).material_age_reference(),
            (Timestamp(900), true)
        );
        // A rotation record older than the version (clock skew, an adopted key) never makes the
        // version look older than it is.
        let earlier = ServiceRotation::new(false, None, Some(Timestamp(100)));
        assert_eq!(
            version(500, Some(earlier)).material_age_reference(),
            (Timestamp(500), false)
        );
    }
}
