//! [`AzureKvMekProvider`]: the [`MekProvider`] over Azure Key Vault / Managed HSM.

use crate::names::mek_key_name;
use crate::settings::{Settings, WrapAlgorithm};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use heliosdb_tde_core::{
    AzureKeyVaultConfig, EncryptionAlgorithm, MekId, MekInfo, MekProvider, MekRef,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, SecurityMode, TableKey, TdeError,
    WrapContext, WrappedTek,
};
use std::fmt;
use std::sync::Arc;

/// The limitation of RSA wraps, shown by `security status`.
pub(crate) const RSA_LIMITATION: &str = "RSA-OAEP-256 wraps use the key's public half, which anyone with keys/get can read: the binding stops a wrapped TEK from being moved to another table, TEK version or MEK version, but it does not prove that HeliosDB made the wrap (someone who can write the key store can plant a TEK of their choosing); Managed HSM keys (A256GCM, A256KW) do not have this gap";

/// Builds an [`AzureKvMekProvider`]: [`AzureKvMekProvider::builder`], optional parts, then
/// [`AzureKvBuilder::open`].
pub struct AzureKvBuilder {
    config: AzureKeyVaultConfig,
    default_mek: MekId,
    mode: SecurityMode,
    credential: Option<Arc<dyn TokenCredential>>,
    resolver: Option<Arc<dyn reqwest::dns::Resolve>>,
}

impl fmt::Debug for AzureKvBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKvBuilder")
            .field("vault_url", &self.config.vault_url)
            .field("key_name", &self.config.key_name)
            .field("default_mek", &self.default_mek)
            .field("custom_credential", &self.credential.is_some())
            .field("custom_resolver", &self.resolver.is_some())
            .finish_non_exhaustive()
    }
}

impl AzureKvBuilder {
    /// Uses `credential` instead of the one `kms_config.credential` describes (an application's
    /// own credential, a test's static token).
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Resolves host names with `resolver` (tests map `*.kv.localhost` to 127.0.0.1).
    pub fn dns_resolver(mut self, resolver: Arc<dyn reqwest::dns::Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Checks the configuration, connects, and checks the default MEK's key: see
    /// [`AzureKvMekProvider::open`].
    pub async fn open(self) -> Result<AzureKvMekProvider> {
        let settings = Settings::from_config(&self.config, self.mode)?;
        Err(TdeError::Unsupported {
            what: format!("Azure Key Vault at {}", settings.vault_url),
            hint: "under construction".into(),
        })
    }
}

/// An MEK provider that keeps every MEK in Azure Key Vault or Azure Managed HSM: one Key Vault
/// key per MEK, one key version per MEK version. See the crate documentation.
pub struct AzureKvMekProvider {
    settings: Settings,
    default_mek: MekId,
    credential_kind: String,
}

impl fmt::Debug for AzureKvMekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKvMekProvider")
            .field("vault_url", &self.settings.vault_url)
            .field("key_name", &self.settings.key_name)
            .field("wrap_algorithm", &self.settings.algorithm.name())
            .field("credential", &self.credential_kind)
            .finish_non_exhaustive()
    }
}

impl AzureKvMekProvider {
    /// Opens the provider: `Self::builder(config, default_mek, mode).open()`.
    ///
    /// Checks the configuration ([`crate::check_config`]), builds the HTTP client (timeouts,
    /// `ca_cert`, no redirects) and the credential, reads the default MEK's key (`key_name`) and
    /// checks its type, size, operations and enabled flag against `wrap_algorithm` and its
    /// `heliosdb-mek-id` tag, and reads its versions. A missing key is not created here:
    /// `generate_mek` of the default id creates it (or adopts an existing `key_name` as
    /// version 1).
    pub async fn open(
        config: &AzureKeyVaultConfig,
        default_mek: &MekId,
        mode: SecurityMode,
    ) -> Result<Self> {
        Self::builder(config, default_mek, mode).open().await
    }

    /// A builder, for a credential or DNS resolver of the caller's own.
    pub fn builder(
        config: &AzureKeyVaultConfig,
        default_mek: &MekId,
        mode: SecurityMode,
    ) -> AzureKvBuilder {
        AzureKvBuilder {
            config: config.clone(),
            default_mek: default_mek.clone(),
            mode,
            credential: None,
            resolver: None,
        }
    }

    /// Warnings about settings that development mode accepts (plain HTTP, the challenge check
    /// off, a client secret file others can read, an exportable key).
    pub fn warnings(&self) -> Vec<String> {
        self.settings.warnings.clone()
    }

    /// The vault URL.
    pub fn vault_url(&self) -> &str {
        &self.settings.vault_url
    }

    /// The key name of the default MEK (`kms_config.key_name`).
    pub fn key_name(&self) -> &str {
        &self.settings.key_name
    }

    /// The key name of `mek` ([`crate::mek_key_name`]).
    pub fn key_name_for(&self, mek: &MekId) -> String {
        mek_key_name(&self.settings.key_name, &self.default_mek, mek)
    }

    /// The wrap algorithm.
    pub fn wrap_algorithm(&self) -> WrapAlgorithm {
        self.settings.algorithm
    }

    /// The credential type: `managed_identity`, `workload_identity`, `client_secret`,
    /// `azure_cli`, `developer_tools`, or `custom` for one given to
    /// [`AzureKvBuilder::credential`].
    pub fn credential_kind(&self) -> &str {
        &self.credential_kind
    }

    /// For `RSA-OAEP-256`, one line on what the binding cannot do with RSA keys; `None` for the
    /// Managed HSM algorithms.
    pub fn rsa_limitation(&self) -> Option<&'static str> {
        self.settings.algorithm.is_rsa().then_some(RSA_LIMITATION)
    }
}

#[async_trait]
impl MekProvider for AzureKvMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureKeyVault
    }

    fn description(&self) -> String {
        format!("Azure Key Vault ({})", self.settings.vault_url)
    }

    fn is_secure(&self) -> bool {
        true
    }

    async fn generate_mek(
        &self,
        _mek_id: &MekId,
        _algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        Err(self.wip())
    }

    async fn wrap_tek(
        &self,
        _mek: &MekRef,
        _tek: &TableKey,
        _ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        Err(self.wip())
    }

    async fn unwrap_tek(&self, _wrapped: &WrappedTek, _ctx: &WrapContext) -> Result<TableKey> {
        Err(self.wip())
    }

    async fn mek_info(&self, _mek_id: &MekId) -> Result<MekInfo> {
        Err(self.wip())
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        Err(self.wip())
    }

    async fn rotate_mek(&self, _mek_id: &MekId) -> Result<MekVersionInfo> {
        Err(self.wip())
    }

    async fn set_mek_state(&self, _mek: &MekRef, _state: heliosdb_tde_core::KeyState) -> Result<()> {
        Err(self.wip())
    }

    async fn health(&self) -> Result<ProviderHealth> {
        Err(self.wip())
    }
}

impl AzureKvMekProvider {
    fn wip(&self) -> TdeError {
        TdeError::Unsupported {
            what: "this operation".into(),
            hint: "under construction".into(),
        }
    }
}
