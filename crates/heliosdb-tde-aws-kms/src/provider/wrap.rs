//! TEK wrapping with `Encrypt`, `Decrypt` and `ReEncrypt`, and the checks and the payload
//! around them.

use super::AwsKmsMekProvider;
use crate::errors;
use crate::keys::{self, VersionKey};
use crate::payload;
use aws_sdk_kms::primitives::Blob;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KEY_LEN, KeyBytes, MekRef, ProviderKind, Result, TableKey, TdeError,
    WrapContext, WrappedTek,
};
use std::collections::HashMap;
use zeroize::Zeroizing;

impl AwsKmsMekProvider {
    fn context(ctx: &WrapContext, mek: &MekRef) -> HashMap<String, String> {
        ctx.context_map(mek).into_iter().collect()
    }

    /// The checks made before any KMS call on an envelope: a current-format AWS KMS envelope
    /// of an AES-256-GCM TEK, whose payload names the key of the version it claims.
    fn check_envelope(
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        key: &VersionKey,
    ) -> Result<Vec<u8>> {
        let what = format!("TEK {} wrapped by {}", ctx.tek_id(), wrapped.mek);
        if wrapped.format != heliosdb_tde_core::envelope::FORMAT_VERSION
            || wrapped.provider != ProviderKind::AwsKms
            || wrapped.algorithm != EncryptionAlgorithm::Aes256Gcm
        {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the envelope header (format {}, provider {:?}, algorithm {}) is not that of an AWS KMS wrap",
                    wrapped.format,
                    wrapped.provider,
                    wrapped.algorithm.name()
                ),
            });
        }
        let p = payload::decode(&wrapped.payload)
            .map_err(|d| TdeError::corrupt("AWS KMS-wrapped TEK", what.clone(), d))?;
        if p.arn != key.arn {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the payload was made under {}, but version {} is {}",
                    p.arn, wrapped.mek.version, key.arn
                ),
            });
        }
        Ok(p.blob)
    }

    fn envelope(
        &self,
        mek: &MekRef,
        key: &VersionKey,
        action: &str,
        blob: Option<Blob>,
        arn: Option<&str>,
    ) -> Result<WrappedTek> {
        let call = self.call(action, &key.arn);
        let blob =
            blob.ok_or_else(|| keys::protocol(&call, action, "the answer has no CiphertextBlob"))?;
        if let Some(arn) = arn
            && arn != key.arn
        {
            return Err(keys::protocol(
                &call,
                action,
                &format!("KMS used {arn}, not the requested {}", key.arn),
            ));
        }
        let payload = payload::encode(&key.arn, blob.as_ref())
            .ok_or_else(|| keys::protocol(&call, action, "the ciphertext is empty or too large"))?;
        Ok(WrappedTek::new(
            EncryptionAlgorithm::Aes256Gcm,
            ProviderKind::AwsKms,
            mek.clone(),
            payload,
        ))
    }

    /// `wrap_tek`: `Encrypt` under the version's key, bound by the encryption context.
    pub(super) async fn kms_encrypt(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        ctx.ensure_names(tek)?;
        let (key, state) = self.version(mek).await?;
        state.ensure_can_encrypt(&format!("mek:{mek}"), "wrap a TEK")?;
        // The SDK takes its own copy of the plaintext into the request (see the crate docs).
        let plaintext = Blob::new(tek.bytes().expose_secret().to_vec());
        let out = self
            .client
            .encrypt()
            .key_id(&key.arn)
            .plaintext(plaintext)
            .set_encryption_context(Some(Self::context(ctx, mek)))
            .send()
            .await
            .map_err(|e| errors::map(&self.call("Encrypt", &key.arn), e))?;
        self.envelope(
            mek,
            &key,
            "Encrypt",
            out.ciphertext_blob,
            out.key_id.as_deref(),
        )
    }

    /// `unwrap_tek`: `Decrypt`, after the envelope checks.
    pub(super) async fn kms_decrypt(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
    ) -> Result<TableKey> {
        let mek = &wrapped.mek;
        let (key, state) = self.version(mek).await?;
        let blob = Self::check_envelope(wrapped, ctx, &key)?;
        state.ensure_can_decrypt(&format!("mek:{mek}"), "unwrap a TEK")?;
        let mut out = self
            .client
            .decrypt()
            .key_id(&key.arn)
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(Self::context(ctx, mek)))
            .send()
            .await
            .map_err(|e| errors::map(&self.call("Decrypt", &key.arn), e))?;
        let plaintext = Zeroizing::new(
            out.plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        if plaintext.len() != KEY_LEN {
            return Err(TdeError::corrupt(
                "AWS KMS-unwrapped TEK",
                ctx.tek_id().to_string(),
                format!("{} bytes, expected {KEY_LEN}", plaintext.len()),
            ));
        }
        Ok(TableKey::new(
            ctx.tek_id(),
            wrapped.algorithm,
            KeyBytes::from_slice(&plaintext)?,
        ))
    }

    /// `rewrap_tek`: `ReEncrypt` from the old version's key to the new one's, inside KMS.
    pub(super) async fn kms_re_encrypt(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        let (old_key, old_state) = self.version(&wrapped.mek).await?;
        let blob = Self::check_envelope(wrapped, ctx, &old_key)?;
        old_state.ensure_can_decrypt(&format!("mek:{}", wrapped.mek), "re-wrap a TEK")?;
        let (new_key, new_state) = self.version(new_mek).await?;
        new_state.ensure_can_encrypt(&format!("mek:{new_mek}"), "re-wrap a TEK")?;
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(blob))
            .source_key_id(&old_key.arn)
            .set_source_encryption_context(Some(Self::context(ctx, &wrapped.mek)))
            .destination_key_id(&new_key.arn)
            .set_destination_encryption_context(Some(Self::context(ctx, new_mek)))
            .send()
            .await
            .map_err(|e| errors::map(&self.call("ReEncrypt", &old_key.arn), e))?;
        self.envelope(
            new_mek,
            &new_key,
            "ReEncrypt",
            out.ciphertext_blob,
            out.key_id.as_deref(),
        )
    }
}
