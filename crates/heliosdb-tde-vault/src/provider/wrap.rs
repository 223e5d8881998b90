//! TEK wrapping through Transit: `encrypt`, `decrypt` and `rewrap`, the checks on the envelope
//! and on the `vault:vN:` payload around them, and how Transit's refusals map to typed errors.

use super::VaultMekProvider;
use crate::client::CallError;
use crate::transit::payload_version;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KEY_LEN, KeyBytes, KeyState, MekId, MekRef, ProviderKind, Result,
    TableKey, TdeError, WrapContext, WrappedTek,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zeroize::{Zeroize, Zeroizing};

fn s(v: &Value, what: &str) -> std::result::Result<String, CallError> {
    v["data"][what]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CallError::Protocol(format!("the answer has no data.{what}")))
}

impl VaultMekProvider {
    /// Maps a Transit encrypt/decrypt/rewrap failure.
    fn transit_error(&self, what: &str, mek: &MekRef, e: CallError) -> TdeError {
        let text = e.text();
        match &e {
            CallError::Status(s, _) if *s == StatusCode::BAD_REQUEST => {
                if text.contains("message authentication failed") {
                    TdeError::AuthenticationFailed {
                        what: format!("{what} ({mek})"),
                    }
                } else if text.contains("too old") {
                    TdeError::InvalidKeyState {
                        key: format!("mek:{mek}"),
                        state: KeyState::Deactivated,
                        operation: what.to_string(),
                        hint: format!(
                            "Vault refuses this version: the key's min_decryption_version is above {}. If TEKs still depend on it, lower it (`bao write {}/keys/{}/config min_decryption_version={}`)",
                            mek.version,
                            self.client.settings.mount,
                            self.name(&mek.id),
                            mek.version
                        ),
                    }
                } else if text.contains("not found") {
                    self.not_found(mek)
                } else {
                    self.fail(what, e)
                }
            }
            _ => self.fail(what, e),
        }
    }

    fn context(ctx: &WrapContext, id: &MekId) -> String {
        B64.encode(ctx.derivation_context(id))
    }

    fn check_payload(wrapped: &WrappedTek, ctx: &WrapContext) -> Result<String> {
        let what = format!("TEK {} wrapped by {}", ctx.tek_id(), wrapped.mek);
        // The derivation context does not cover the envelope header (it must stay the same
        // through a server-side rewrap), so the provider checks the header itself: this
        // provider writes only current-format Vault envelopes of AES-256-GCM TEKs.
        if wrapped.format != heliosdb_tde_core::envelope::FORMAT_VERSION
            || wrapped.provider != ProviderKind::Vault
            || wrapped.algorithm != EncryptionAlgorithm::Aes256Gcm
        {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the envelope header (format {}, provider {:?}, algorithm {}) is not that of a Vault wrap",
                    wrapped.format,
                    wrapped.provider,
                    wrapped.algorithm.name()
                ),
            });
        }
        let v = payload_version(&wrapped.payload)
            .map_err(|d| TdeError::corrupt("Vault-wrapped TEK", what.clone(), d))?;
        if v != wrapped.mek.version.get() {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the payload is a Transit v{v} ciphertext, the envelope says {}",
                    wrapped.mek.version
                ),
            });
        }
        // Checked above: ASCII.
        Ok(String::from_utf8_lossy(&wrapped.payload).into_owned())
    }

    fn envelope(
        &self,
        mek: &MekRef,
        algorithm: EncryptionAlgorithm,
        v: &Value,
    ) -> Result<WrappedTek> {
        let ct = s(v, "ciphertext").map_err(|e| self.fail("wrapping a TEK", e))?;
        match payload_version(ct.as_bytes()) {
            Ok(n) if n == mek.version.get() => {}
            _ => {
                return Err(self.fail(
                    "wrapping a TEK",
                    CallError::Protocol(format!(
                        "Transit returned a ciphertext that is not a v{} wrap of a 32-byte TEK",
                        mek.version
                    )),
                ));
            }
        }
        Ok(WrappedTek::new(
            algorithm,
            ProviderKind::Vault,
            mek.clone(),
            ct.into_bytes(),
        ))
    }

    /// `wrap_tek`: Transit `encrypt` under the version, bound by the derivation context.
    pub(super) async fn transit_encrypt(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        ctx.ensure_names(tek)?;
        self.state(mek)
            .await?
            .ensure_can_encrypt(&format!("mek:{mek}"), "wrap a TEK")?;
        let plaintext = Zeroizing::new(B64.encode(tek.bytes().expose_secret()));
        let mut body = json!({
            "plaintext": plaintext.as_str(),
            "context": Self::context(ctx, &mek.id),
            "key_version": mek.version.get(),
        });
        let path = format!(
            "{}/encrypt/{}",
            self.client.settings.mount,
            self.name(&mek.id)
        );
        let r = self.client.call(Method::POST, &path, Some(&body)).await;
        // The request's copy of the plaintext (the JSON value) is wiped as soon as it is sent.
        if let Value::String(text) = &mut body["plaintext"] {
            text.zeroize();
        }
        let v = r.map_err(|e| self.transit_error("wrap a TEK", mek, e))?;
        self.envelope(mek, tek.algorithm(), &v)
    }

    /// `unwrap_tek`: Transit `decrypt`, after the envelope checks.
    pub(super) async fn transit_decrypt(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
    ) -> Result<TableKey> {
        let ciphertext = Self::check_payload(wrapped, ctx)?;
        let mek = &wrapped.mek;
        self.state(mek)
            .await?
            .ensure_can_decrypt(&format!("mek:{mek}"), "unwrap a TEK")?;
        let body = json!({ "ciphertext": ciphertext, "context": Self::context(ctx, &mek.id) });
        let path = format!(
            "{}/decrypt/{}",
            self.client.settings.mount,
            self.name(&mek.id)
        );
        let mut v = self
            .client
            .call(Method::POST, &path, Some(&body))
            .await
            .map_err(|e| self.transit_error("unwrap a TEK", mek, e))?;
        // `pointer_mut`, not indexing: an answer whose `data` is not an object must be an
        // error, never a panic.
        let text = match v.pointer_mut("/data/plaintext").map(Value::take) {
            Some(Value::String(s)) => Zeroizing::new(s),
            _ => {
                return Err(self.fail(
                    "unwrapping a TEK",
                    CallError::Protocol("the answer has no data.plaintext".into()),
                ));
            }
        };
        let bytes = Zeroizing::new(B64.decode(text.as_bytes()).map_err(|e| {
            TdeError::corrupt(
                "Vault-unwrapped TEK",
                ctx.tek_id().to_string(),
                e.to_string(),
            )
        })?);
        if bytes.len() != KEY_LEN {
            return Err(TdeError::corrupt(
                "Vault-unwrapped TEK",
                ctx.tek_id().to_string(),
                format!("{} bytes, expected {KEY_LEN}", bytes.len()),
            ));
        }
        Ok(TableKey::new(
            ctx.tek_id(),
            wrapped.algorithm,
            KeyBytes::from_slice(&bytes)?,
        ))
    }

    /// `rewrap_tek`: Transit `rewrap` on the server (decrypt then encrypt across MEK ids).
    pub(super) async fn transit_rewrap(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        if new_mek.id != wrapped.mek.id {
            tracing::debug!(target: "heliosdb::tde::vault", from = %wrapped.mek, to = %new_mek, "rewrap across MEK ids: decrypt then encrypt");
            let tek = self.transit_decrypt(wrapped, ctx).await?;
            return self.transit_encrypt(new_mek, &tek, ctx).await;
        }
        let ciphertext = Self::check_payload(wrapped, ctx)?;
        self.state(&wrapped.mek)
            .await?
            .ensure_can_decrypt(&format!("mek:{}", wrapped.mek), "re-wrap a TEK")?;
        self.state(new_mek)
            .await?
            .ensure_can_encrypt(&format!("mek:{new_mek}"), "re-wrap a TEK")?;
        let body = json!({
            "ciphertext": ciphertext,
            "context": Self::context(ctx, &new_mek.id),
            "key_version": new_mek.version.get(),
        });
        let path = format!(
            "{}/rewrap/{}",
            self.client.settings.mount,
            self.name(&new_mek.id)
        );
        let v = self
            .client
            .call(Method::POST, &path, Some(&body))
            .await
            .map_err(|e| self.transit_error("re-wrap a TEK", &wrapped.mek, e))?;
        self.envelope(new_mek, wrapped.algorithm, &v)
    }
}
