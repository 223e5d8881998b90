//! `generate_mek`, `rotate_mek` and `set_mek_state`: versions are created with `create_key`
//! on the MEK's key, and each version's state is its tags, its operations and its enabled flag,
//! written in one update.

use super::AzureKvMekProvider;
use heliosdb_tde_core::lifecycle::Transition;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekRef, MekVersionInfo, Result, TdeError,
};

impl AzureKvMekProvider {
    pub(crate) async fn generate(
        &self,
        id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        if algorithm != EncryptionAlgorithm::Aes256Gcm {
            return Err(TdeError::Unsupported {
                what: format!("MEK algorithm {}", algorithm.name()),
                hint: "Azure Key Vault MEKs wrap AES-256-GCM table keys; use AES-256-GCM".into(),
            });
        }
        let _changes = self.changes.lock().await;
        let view = self.view(id, true).await?;
        let mek = view.lifecycle(id).plan_generate(id)?;
        let name = self.key_name_for(id);
        let made = match view.adoption_candidate().cloned() {
            Some(kv) => {
                // An existing key: its newest enabled version becomes version 1.
                let key = self.get_key(&name, &kv.id).await?;
                self.check_key(&name, &key, &kv.id)?;
                tracing::info!(target: "heliosdb::tde::azure_kv", key = %name, version = %kv.id, mek = %mek, "adopting the existing key version as MEK version 1");
                self.put_state(&name, &kv, &mek, KeyState::Active).await?
            }
            None if !view.all.is_empty() => {
                return Err(TdeError::InvalidKeyState {
                    key: format!("azure key {name}"),
                    state: KeyState::Deactivated,
                    operation: "adopt the key as MEK version 1".into(),
                    hint: format!(
                        "every version of key {name} is disabled; enable one (`az keyvault key set-attributes --name {name} --version <id> --enabled true`) or choose another key name"
                    ),
                });
            }
            None => self.create_version(&name, &mek, &self.new_shape()).await?,
        };
        self.inventory.forget(id);
        let mut info = MekVersionInfo::active(mek, algorithm, made.created);
        info.key_location = Some(made.kid);
        Ok(info)
    }

    pub(crate) async fn rotate(&self, id: &MekId) -> Result<MekVersionInfo> {
        let _changes = self.changes.lock().await;
        let view = self.strict_view(id, true).await?;
        let name = self.key_name_for(id);
        let lc = view.lifecycle(id);
        let rotation = lc
            .plan_rotation(id)
            .ok_or_else(|| self.not_found(id, &name))??;
        let made = if let Some(&newest) = view.untagged.last() {
            // Versions made outside HeliosDB: the newest becomes the active version (no new
            // key is made), the older ones are tagged decrypt-only under their numbers.
            let kv = view
                .get(newest)
                .cloned()
                .ok_or_else(|| self.not_found(id, &name))?;
            let key = self.get_key(&name, &kv.id).await?;
            self.check_key(&name, &key, &kv.id)?;
            let mek = MekRef::new(id.clone(), newest);
            tracing::info!(target: "heliosdb::tde::azure_kv", key = %name, version = %kv.id, mek = %mek, "adopting a key version made outside HeliosDB as the new active version");
            let made = self.put_state(&name, &kv, &mek, KeyState::Active).await?;
            for &older in &view.untagged[..view.untagged.len() - 1] {
                if let Some(kv) = view.get(older) {
                    let m = MekRef::new(id.clone(), older);
                    self.put_state(&name, kv, &m, KeyState::DecryptOnly).await?;
                }
            }
            (mek, made)
        } else {
            let prev = view
                .get(rotation.previous)
                .ok_or_else(|| self.not_found(id, &name))?;
            let shape = match self.get_key(&name, &prev.id).await {
                Ok(key) => self.check_key(&name, &key, &prev.id)?,
                // A deactivated (disabled) previous version may refuse get: make the new one
                // as a fresh key would be.
                Err(TdeError::InvalidKeyState { .. }) => self.new_shape(),
                Err(e) => return Err(e),
            };
            let made = self.create_version(&name, &rotation.next, &shape).await?;
            (rotation.next.clone(), made)
        };
        let (mek, made) = made;
        // The new version first, then the old ones demoted: a crash in between leaves two
        // active versions, and the newest wins when they are read.
        for old in &rotation.demote {
            if let Some(kv) = view.get(old.version) {
                self.put_state(&name, kv, old, KeyState::DecryptOnly)
                    .await?;
            }
        }
        self.inventory.forget(id);
        let mut info = MekVersionInfo::active(mek, rotation.algorithm, made.created);
        info.key_location = Some(made.kid);
        Ok(info)
    }

    pub(crate) async fn set_state(&self, mek: &MekRef, next: KeyState) -> Result<()> {
        let name = self.key_name_for(&mek.id);
        if next == KeyState::Destroyed {
            return Err(TdeError::Unsupported {
                what: format!("destroying MEK version {mek} in Azure Key Vault"),
                hint: format!(
                    "Key Vault deletes whole keys, not versions: deactivate the version (it is then disabled in the vault), check that no TEK depends on it (`heliosdb-cli security mek verify`); the key {name} can be deleted only with all its versions"
                ),
            });
        }
        let _changes = self.changes.lock().await;
        let view = self.strict_view(&mek.id, true).await?;
        let lc = view.lifecycle(&mek.id);
        let transition = lc
            .plan_transition(mek, next)
            .ok_or_else(|| self.not_found(mek, &name))??;
        let kv = view
            .get(mek.version)
            .cloned()
            .ok_or_else(|| self.not_found(mek, &name))?;
        if transition == Transition::Unchanged {
            // The tag may be right while the vault is not (an outside change to the
            // operations or the enabled flag): the update below writes all three again.
            tracing::debug!(target: "heliosdb::tde::azure_kv", mek = %mek, "state unchanged; rewriting the version's operations and enabled flag");
        }
        self.put_state(&name, &kv, mek, next).await?;
        self.inventory.forget(&mek.id);
        Ok(())
    }
}
