//! [`AzureKvMekProvider`]: the [`MekProvider`] over Azure Key Vault / Managed HSM.

mod keys;
mod lifecycle;
mod wrap;

use crate::client::{client_options, http_client};
use crate::errors::{self, Call, Op};
use crate::names::mek_key_name;
use crate::settings::{self, Settings, WrapAlgorithm};
use crate::versions::{Inventory, KeyVersion, View};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use heliosdb_tde_core::{
    AzureKeyVaultConfig, EncryptionAlgorithm, KeyState, MekId, MekInfo, MekProvider, MekRef,
    MekVersionInfo, ProviderHealth, ProviderKind, Result, SecurityMode, TableKey, TdeError,
    WrapContext, WrappedTek,
};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The limitation of RSA wraps, shown by `security status`.
/// What RSA wrapping cannot prove, in one line ([`AzureKvMekProvider::rsa_limitation`], and
/// `security status` for an RSA key).
pub const RSA_LIMITATION: &str = "RSA-OAEP-256 wraps use the key's public half, which anyone with keys/get can read: the binding stops a wrapped TEK from being moved to another table, TEK version or MEK version, but it does not prove that HeliosDB made the wrap (someone who can write the key store and read the public key can plant a TEK of their choosing); Managed HSM keys (A256GCM, A256KW) do not have this gap";

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
    /// own credential, a test's static token). [`AzureKvMekProvider::credential_kind`] is then
    /// `custom`.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Resolves host names with `resolver` (tests map `*.kv.localhost` to 127.0.0.1). It
    /// applies to the vault and to the credential's token endpoint.
    pub fn dns_resolver(mut self, resolver: Arc<dyn reqwest::dns::Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Checks the configuration, connects, and checks the default MEK's key: see
    /// [`AzureKvMekProvider::open`].
    pub async fn open(self) -> Result<AzureKvMekProvider> {
        let config = &self.config;
        let settings = Settings::from_config(config, self.mode)?;
        let mut warnings = settings.warnings.clone();
        let http = http_client(config, &settings, self.resolver.clone())?;
        let options = client_options(&http, &settings);
        let (credential, credential_kind) = match self.credential {
            Some(c) => (c, "custom".to_string()),
            None => {
                let built = crate::credential::build(config, self.mode, options.clone())?;
                warnings.extend(built.warning);
                (built.credential, config.credential.clone())
            }
        };
        let client = KeyClient::new(
            &settings.vault_url,
            credential,
            Some(KeyClientOptions {
                client_options: options,
                verify_challenge_resource: Some(config.verify_challenge_resource),
                ..Default::default()
            }),
        )
        .map_err(|e| {
            TdeError::config(
                "kms_config.vault_url",
                format!(
                    "{} is not usable: {}",
                    settings.vault_url,
                    errors::chain(&e)
                ),
            )
        })?;
        let mut provider = AzureKvMekProvider {
            client: Arc::new(client),
            description: format!(
                "Azure Key Vault ({}, key {}, {}, credential {credential_kind})",
                settings.vault_url, settings.key_name, settings.algorithm
            ),
            managed_hsm: config.is_managed_hsm() || !settings.algorithm.is_rsa(),
            tenant: settings::tenant_id(config),
            settings,
            default_mek: self.default_mek,
            credential_kind,
            mode: self.mode,
            warnings,
            inventory: Inventory::default(),
            changes: tokio::sync::Mutex::new(()),
        };
        if let Some(w) = provider.check_default_key().await? {
            provider.warnings.push(w);
        }
        Ok(provider)
    }
}

/// An MEK provider that keeps every MEK in Azure Key Vault or Azure Managed HSM: one Key Vault
/// key per MEK, one key version per MEK version, each version tagged with its MEK id, version
/// number and state. See the crate documentation.
///
/// Build it inside the Tokio runtime that uses it: its HTTP connection pool belongs to that
/// runtime.
pub struct AzureKvMekProvider {
    client: Arc<KeyClient>,
    settings: Settings,
    default_mek: MekId,
    credential_kind: String,
    tenant: Option<String>,
    managed_hsm: bool,
    mode: SecurityMode,
    description: String,
    warnings: Vec<String>,
    inventory: Inventory,
    /// Serialises this process's changes (generate, rotate, state changes).
    changes: tokio::sync::Mutex<()>,
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
    /// `ca_cert`, no redirects) and the credential, lists the versions of the default MEK's key
    /// (`key_name`), refuses a key tagged for another MEK id, and checks the version that serves
    /// new wraps (the active one, or before adoption the key's newest enabled version): its type
    /// and size against `wrap_algorithm`, its operations, its enabled flag. A missing key is not
    /// created here: `generate_mek` of the default id creates it (or adopts an existing
    /// `key_name` as version 1).
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
        self.warnings.clone()
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

    pub(crate) fn call<'a>(&'a self, op: Op, key: &'a str) -> Call<'a> {
        Call {
            provider: &self.description,
            op,
            key,
            vault: &self.settings.vault_url,
            credential: &self.credential_kind,
            tenant: self.tenant.as_deref(),
            managed_hsm: self.managed_hsm,
        }
    }

    /// Runs one SDK call under the hard deadline, mapping its error.
    pub(crate) async fn run<T>(
        &self,
        op: Op,
        key: &str,
        fut: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T> {
        let deadline = self.settings.call_deadline();
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(errors::map(&self.call(op, key), &e)),
            Err(_) => Err(TdeError::ProviderUnavailable {
                provider: self.description.clone(),
                reason: format!(
                    "{} of key {key} at {} got no answer within {} s (kms_config.timeout_secs and max_retry_secs, retries and sign-in included)",
                    op.name(),
                    self.settings.vault_url,
                    deadline.as_secs()
                ),
                retryable: true,
            }),
        }
    }

    pub(crate) fn not_found(&self, mek: &dyn fmt::Display, key: &str) -> TdeError {
        heliosdb_tde_core::lifecycle::mek_not_found(
            mek,
            format!(
                "the vault {} has no HeliosDB version of key {key}; check kms_config.vault_url and kms_config.key_name, or create the MEK with `heliosdb-cli security mek generate`",
                self.settings.vault_url
            ),
        )
    }

    /// Lists the versions of `id`'s key and caches them.
    pub(crate) async fn refresh(&self, id: &MekId) -> Result<Vec<KeyVersion>> {
        let name = self.key_name_for(id);
        let versions = self.list_versions(&name).await?;
        self.inventory.store(id, versions.clone());
        Ok(versions)
    }

    /// The view of `id`'s versions: cached if read recently (unless `fresh`), else listed.
    pub(crate) async fn view(&self, id: &MekId, fresh: bool) -> Result<View> {
        let versions = match self.inventory.cached(id).filter(|_| !fresh) {
            Some(v) => v,
            None => self.refresh(id).await?,
        };
        View::build(id, &self.key_name_for(id), versions)
    }

    /// The view, refused when two versions carry the same number.
    pub(crate) async fn strict_view(&self, id: &MekId, fresh: bool) -> Result<View> {
        let view = self.view(id, fresh).await?;
        match view.duplicate(id, &self.key_name_for(id), &self.description) {
            Some(e) => Err(e),
            None => Ok(view),
        }
    }

    /// The key version and state of one MEK version (listed again once if the cache does not
    /// know it, for a version another process made).
    pub(crate) async fn version(&self, mek: &MekRef) -> Result<(KeyVersion, KeyState)> {
        for fresh in [false, true] {
            let view = self.strict_view(&mek.id, fresh).await?;
            let lc = view.lifecycle(&mek.id);
            if let (Some(k), Some(state)) = (view.get(mek.version), lc.state(mek)) {
                return Ok((k.clone(), state));
            }
        }
        Err(self.not_found(mek, &self.key_name_for(&mek.id)))
    }

    /// At open: the default MEK's key is this MEK's, and the version that serves new wraps
    /// fits the algorithm. Returns a development-mode warning for an exportable key
    /// (production mode refuses it).
    async fn check_default_key(&self) -> Result<Option<String>> {
        let id = self.default_mek.clone();
        let view = self.view(&id, true).await?;
        let lc = view.lifecycle(&id);
        let serving = match lc.versions(&id).find(|v| v.state == KeyState::Active) {
            Some(active) => view.get(active.mek.version).cloned(),
            None if lc.versions(&id).next().is_none() => view.adoption_candidate().cloned(),
            None => None,
        };
        if let Some(kv) = serving {
            // The listing already says whether it is enabled; Key Vault refuses a `get` of a
            // disabled version, which would hide which version and what to do.
            if !kv.enabled {
                return Err(self.disabled(&self.settings.key_name, &kv.id));
            }
            let key = self.get_key(&self.settings.key_name, &kv.id).await?;
            self.check_key(&self.settings.key_name, &key, &kv.id)?;
            if key.attributes.as_ref().and_then(|a| a.exportable) == Some(true) {
                return Ok(Some(format!(
                    "the Key Vault key {} (version {}) is exportable: its material can leave the vault (development mode only; production mode refuses it)",
                    self.settings.key_name, kv.id
                )));
            }
        }
        Ok(None)
    }

    pub(crate) fn disabled(&self, key: &str, version: &str) -> TdeError {
        TdeError::InvalidKeyState {
            key: format!("azure key {key} version {version}"),
            state: KeyState::Deactivated,
            operation: "serve new wraps".into(),
            hint: format!(
                "the version that serves new wraps is disabled in the vault; enable it: `az keyvault key set-attributes --vault-name <vault> --name {key} --version {version} --enabled true`"
            ),
        }
    }
}

#[async_trait]
impl MekProvider for AzureKvMekProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureKeyVault
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn is_secure(&self) -> bool {
        true
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        self.generate(mek_id, algorithm).await
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.wrap(mek, tek, ctx).await
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        self.unwrap(wrapped, ctx).await
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        let view = self.strict_view(mek_id, true).await?;
        let name = self.key_name_for(mek_id);
        let lc = view.lifecycle(mek_id);
        let mut info = lc
            .mek_info(
                mek_id,
                ProviderKind::AzureKeyVault,
                format!("Azure Key Vault {} key {name}", self.settings.vault_url),
            )
            .ok_or_else(|| self.not_found(mek_id, &name))?;
        if let Some(level) = view.newest().and_then(|v| v.recovery_level.clone()) {
            let (protected, detail) = crate::versions::deletion_protection(&level);
            info.deletion_protection = Some(heliosdb_tde_core::DeletionProtection::new(
                protected, detail,
            ));
        }
        Ok(info)
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        self.list_mek_ids().await
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        self.rotate(mek_id).await
    }

    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        self.set_state(mek, state).await
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let name = self.settings.key_name.clone();
        let result = async {
            let view = self.view(&self.default_mek, true).await?;
            let lc = view.lifecycle(&self.default_mek);
            let active = lc
                .versions(&self.default_mek)
                .find(|v| v.state == KeyState::Active)
                .and_then(|v| view.get(v.mek.version).cloned());
            match active.or_else(|| view.adoption_candidate().cloned()) {
                Some(kv) => {
                    self.get_key(&name, &kv.id).await?;
                    Ok(format!(
                        "{}: key {name} version {} answers get",
                        self.description, kv.id
                    ))
                }
                None => Ok::<String, TdeError>(format!(
                    "{}: the vault answers; key {name} does not exist yet (`heliosdb-cli security mek generate` creates it)",
                    self.description
                )),
            }
        }
        .await;
        Ok(match result {
            Ok(detail) => ProviderHealth {
                healthy: true,
                latency: start.elapsed(),
                detail,
            },
            Err(e) => ProviderHealth {
                healthy: false,
                latency: start.elapsed(),
                detail: format!("{}: {e}", self.description),
            },
        })
    }
}
