//! Reading and writing MEK state: the Transit key, the lifecycle record (cached, adopted,
//! updated with check-and-set), the lifecycle built from both, and the minimum versions
//! enforced on the server.

use crate::client::{CallError, PROVIDER};
use crate::provider::VaultMekProvider;
use crate::records::{Record, Stored};
use crate::transit::{KeyProps, key_name};
use heliosdb_tde_core::lifecycle::{MekLifecycle, mek_not_found};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekRef, MekVersion, MekVersionInfo, Result, TdeError,
    Timestamp,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::fmt;

impl VaultMekProvider {
    pub(crate) fn name(&self, id: &MekId) -> String {
        key_name(&self.client.settings.key_prefix, id)
    }

    pub(crate) fn not_found(&self, mek: &dyn fmt::Display) -> TdeError {
        mek_not_found(
            mek,
            format!(
                "no such Transit key under mount {:?} (key_prefix {:?}) at {}; check kms_config.mount and kms_config.key_prefix, or generate it with `heliosdb-cli security mek generate`",
                self.client.settings.mount,
                self.client.settings.key_prefix,
                self.address()
            ),
        )
    }

    pub(crate) fn record_path(&self, id: &MekId) -> String {
        let st = &self.client.settings;
        format!("{}/data/{}/{id}", st.state_mount, st.state_path)
    }

    pub(crate) async fn read_key(&self, id: &MekId) -> Result<Option<KeyProps>> {
        let path = format!("{}/keys/{}", self.client.settings.mount, self.name(id));
        match self.client.call(Method::GET, &path, None).await {
            Ok(v) => KeyProps::parse(&v).map(Some).ok_or_else(|| {
                self.fail(
                    "reading a Transit key",
                    CallError::Protocol("the answer is not a Transit key".into()),
                )
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.fail("reading a Transit key", e)),
        }
    }

    /// Reads the record and the key from Vault (no cache) and caches them.
    pub(crate) async fn fetch(&self, id: &MekId) -> Result<Stored> {
        let key = self.read_key(id).await?;
        let (record, kv_version) = match self
            .client
            .call(Method::GET, &self.record_path(id), None)
            .await
        {
            Ok(v) => {
                let version = v["data"]["metadata"]["version"].as_u64().unwrap_or(0);
                match &v["data"]["data"] {
                    Value::Null => (Record::new(id), version),
                    d => {
                        let r: Record = serde_json::from_value(d.clone()).map_err(|e| {
                            TdeError::corrupt(
                                "MEK lifecycle record",
                                self.record_path(id),
                                e.to_string(),
                            )
                        })?;
                        (r, version)
                    }
                }
            }
            Err(e) if e.is_not_found() => (Record::new(id), 0),
            Err(e) => return Err(self.fail("reading an MEK lifecycle record", e)),
        };
        if let Some(k) = &key
            && let Some(w) = k.check(&self.name(id), self.client.settings.mode)?
        {
            self.warn(w);
        }
        let stored = Stored {
            record,
            kv_version,
            key,
        };
        self.cache.put(id, stored.clone());
        Ok(stored)
    }

    /// The record and key, from the cache if read less than 10 seconds ago; adopts a key
    /// created outside HeliosDB (writes its first record).
    pub(crate) async fn load(&self, id: &MekId) -> Result<Stored> {
        let stored = match self.cache.get(id) {
            Some(s) => s,
            None => self.fetch(id).await?,
        };
        if stored.key.is_some() && stored.record.versions.is_empty() {
            return self.adopt(id).await;
        }
        Ok(stored)
    }

    pub(crate) async fn adopt(&self, id: &MekId) -> Result<Stored> {
        self.update(id, |rec, key| {
            if !rec.versions.is_empty() {
                return Ok(());
            }
            let Some(key) = key else { return Ok(()) };
            let latest = key.versions.keys().max().copied().unwrap_or(1);
            for (&v, &t) in &key.versions {
                let state = if v == latest {
                    KeyState::Active
                } else if v < key.min_decryption_version {
                    KeyState::Deactivated
                } else {
                    KeyState::DecryptOnly
                };
                rec.set(v, state, Some(t.saturating_mul(1000)));
            }
            tracing::info!(target: "heliosdb::tde::vault", mek = %id, "adopted a Transit key created outside HeliosDB");
            Ok(())
        })
        .await
    }

    /// Reads the record afresh, applies `f`, and writes it with check-and-set; on a conflict
    /// reads and applies once more, then fails.
    pub(crate) async fn update(
        &self,
        id: &MekId,
        f: impl Fn(&mut Record, Option<&KeyProps>) -> Result<()>,
    ) -> Result<Stored> {
        for _ in 0..2 {
            let mut stored = self.fetch(id).await?;
            let before = stored.record.clone();
            f(&mut stored.record, stored.key.as_ref())?;
            if stored.record == before {
                return Ok(stored);
            }
            let body = json!({ "options": { "cas": stored.kv_version }, "data": stored.record });
            match self
                .client
                .call(Method::POST, &self.record_path(id), Some(&body))
                .await
            {
                Ok(v) => {
                    stored.kv_version = v["data"]["version"]
                        .as_u64()
                        .unwrap_or(stored.kv_version.saturating_add(1));
                    self.cache.put(id, stored.clone());
                    return Ok(stored);
                }
                Err(CallError::Status(s, errs))
                    if s == StatusCode::BAD_REQUEST
                        && errs.iter().any(|e| e.contains("check-and-set")) =>
                {
                    self.cache.forget(id);
                }
                Err(e) => return Err(self.fail("writing an MEK lifecycle record", e)),
            }
        }
        Err(TdeError::Provider {
            provider: format!("{PROVIDER} at {}", self.address()),
            message: format!(
                "concurrent MEK state change: the lifecycle record of {id} changed twice while this process updated it"
            ),
            hint: "another process is changing the same MEK; check the MEK with `heliosdb-cli security mek-info` and retry".into(),
        })
    }

    /// The lifecycle of one MEK: recorded versions with their states, and versions Vault
    /// created outside HeliosDB as `DecryptOnly`.
    pub(crate) fn lifecycle(&self, id: &MekId, stored: &Stored) -> MekLifecycle {
        let mut lc = MekLifecycle::new();
        let Some(key) = &stored.key else { return lc };
        let mut all: std::collections::BTreeMap<u32, (KeyState, u64)> = stored
            .record
            .versions
            .iter()
            .map(|(v, r)| (*v, (r.state, r.created_at)))
            .collect();
        for (&v, &t) in &key.versions {
            all.entry(v)
                .or_insert((KeyState::DecryptOnly, t.saturating_mul(1000)));
        }
        for (v, (state, created)) in all {
            if let Ok(version) = MekVersion::new(v) {
                lc.insert(MekVersionInfo::new(
                    MekRef::new(id.clone(), version),
                    state,
                    EncryptionAlgorithm::Aes256Gcm,
                    Timestamp(created),
                ));
            }
        }
        lc
    }

    /// The state of one version: `KeyNotFound` if the MEK or version is unknown.
    pub(crate) async fn state(&self, mek: &MekRef) -> Result<KeyState> {
        let mut stored = self.load(&mek.id).await?;
        if stored.key.is_some()
            && !stored
                .key
                .as_ref()
                .is_some_and(|k| k.versions.contains_key(&mek.version.get()))
        {
            // Maybe created a moment ago by another process: read once more.
            stored = self.fetch(&mek.id).await?;
        }
        self.lifecycle(&mek.id, &stored)
            .state(mek)
            .ok_or_else(|| self.not_found(mek))
    }

    /// Sets `min_decryption_version` and `min_encryption_version` to what the record allows.
    pub(crate) async fn enforce(&self, id: &MekId, stored: &Stored) -> Result<()> {
        let Some(key) = &stored.key else {
            return Ok(());
        };
        let lc = self.lifecycle(id, stored);
        let versions: Vec<(u32, KeyState)> = lc
            .versions(id)
            .map(|v| (v.mek.version.get(), v.state))
            .collect();
        let Some(min_dec) = versions
            .iter()
            .find(|(_, s)| *s != KeyState::Deactivated)
            .map(|(v, _)| *v)
        else {
            return Ok(());
        };
        // The lowest active version: during a rollback the old version is active again before
        // the new one is demoted, and Vault must let it encrypt from that moment.
        let min_enc = versions
            .iter()
            .find(|(_, s)| *s == KeyState::Active)
            .map(|(v, _)| *v)
            .filter(|v| *v >= min_dec)
            .unwrap_or(0);
        if key.min_decryption_version == min_dec && key.min_encryption_version == min_enc {
            return Ok(());
        }
        let path = format!(
            "{}/keys/{}/config",
            self.client.settings.mount,
            self.name(id)
        );
        let body = json!({ "min_decryption_version": min_dec, "min_encryption_version": min_enc });
        self.client
            .call(Method::POST, &path, Some(&body))
            .await
            .map_err(|e| self.fail("setting the key's minimum versions", e))?;
        self.cache.forget(id);
        Ok(())
    }
}
