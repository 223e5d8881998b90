//! The checks and the payload around `Encrypt`, `Decrypt` and `ReEncrypt`.

use super::AwsKmsMekProvider;
use crate::keys::{self, VersionKey};
use crate::payload;
use aws_sdk_kms::primitives::Blob;
use heliosdb_tde_core::{
    EncryptionAlgorithm, MekRef, ProviderKind, Result, TdeError, WrapContext, WrappedTek,
};
use std::collections::HashMap;

impl AwsKmsMekProvider {
    pub(super) fn context(ctx: &WrapContext, mek: &MekRef) -> HashMap<String, String> {
        ctx.context_map(mek).into_iter().collect()
    }

    /// The checks made before any KMS call on an envelope: a current-format AWS KMS envelope
    /// of an AES-256-GCM TEK, whose payload names the key of the version it claims.
    pub(super) fn check_envelope(
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

    pub(super) fn envelope(
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
}
