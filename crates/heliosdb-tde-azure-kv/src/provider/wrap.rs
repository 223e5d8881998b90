//! Wrap and unwrap: the binding (`TEK || SHA-256(associated data)` for `RSA-OAEP-256` and
//! `A256KW`, GCM's own associated data for `A256GCM`), the payload, and the Key Vault calls,
//! always under an explicit key version.

use super::AzureKvMekProvider;
use crate::errors::Op;
use crate::names::kid_version;
use crate::payload::{Payload, TAG_LEN};
use crate::settings::WrapAlgorithm;
use azure_core::http::RequestContent;
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm as AzAlg, KeyClientEncryptOptions, KeyClientWrapKeyOptions,
    KeyOperationParameters, KeyOperationResult,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use heliosdb_tde_core::{
    KEY_LEN, KeyBytes, MekRef, ProviderKind, Result, TableKey, TdeError, WrapContext, WrappedTek,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The length of a bound value: the TEK and the SHA-256 of its associated data.
pub(crate) const BOUND_LEN: usize = KEY_LEN + 32;
/// Random bytes appended to the bound value under `A256KW`: AES key wrap is deterministic,
/// and without them wrapping one TEK twice would give the same ciphertext.
pub(crate) const KW_SALT_LEN: usize = 16;

/// The length of the value wrapped with `alg`: 64 bytes for `RSA-OAEP-256`, 80 for `A256KW`.
pub(crate) fn bound_len(alg: WrapAlgorithm) -> usize {
    if alg == WrapAlgorithm::A256Kw {
        BOUND_LEN + KW_SALT_LEN
    } else {
        BOUND_LEN
    }
}

fn az_alg(a: WrapAlgorithm) -> AzAlg {
    match a {
        WrapAlgorithm::RsaOaep256 => AzAlg::RsaOaep256,
        WrapAlgorithm::A256Kw => AzAlg::A256Kw,
        WrapAlgorithm::A256Gcm => AzAlg::A256Gcm,
    }
}

/// `TEK || SHA-256(aad)`, then `salt` (empty except under `A256KW`), in a buffer wiped on
/// drop.
pub(crate) fn bind(tek: &[u8; KEY_LEN], aad: &[u8], salt: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(BOUND_LEN + salt.len()));
    out.extend_from_slice(tek);
    out.extend_from_slice(&Sha256::digest(aad));
    out.extend_from_slice(salt);
    out
}

/// Checks an unwrapped bound value of `expected_len` bytes against `aad` (the hash half in
/// constant time; a salt after it is ignored) and returns the TEK half; `Err` with what is
/// wrong.
pub(crate) fn unbind<'a>(
    value: &'a [u8],
    aad: &[u8],
    expected_len: usize,
) -> std::result::Result<&'a [u8], String> {
    if value.len() != expected_len {
        return Err(format!(
            "the unwrapped value has {} bytes, not {expected_len} (TEK, binding hash{})",
            value.len(),
            if expected_len > BOUND_LEN {
                ", salt"
            } else {
                ""
            }
        ));
    }
    let expected = Sha256::digest(aad);
    let diff = value[KEY_LEN..BOUND_LEN]
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(
            "the binding hash does not match this table, TEK version and MEK version".into(),
        );
    }
    Ok(&value[..KEY_LEN])
}

/// The JSON body of a wrap or encrypt request, built in a buffer wiped on drop (the plaintext
/// is in it as base64url).
fn body(alg: WrapAlgorithm, value: &[u8], aad: Option<&[u8]>) -> Zeroizing<String> {
    // Sized for the whole body up front: a string that grows leaves the base64 of the
    // plaintext behind in the allocation it gives up, unwiped.
    let b64 = |n: usize| base64::encoded_len(n, false).unwrap_or(0);
    let capacity = 32 + alg.name().len() + b64(value.len()) + aad.map_or(0, |a| b64(a.len()));
    let mut s = Zeroizing::new(String::with_capacity(capacity));
    s.push_str("{\"alg\":\"");
    s.push_str(alg.name());
    s.push_str("\",\"value\":\"");
    URL_SAFE_NO_PAD.encode_string(value, &mut s);
    s.push('"');
    if let Some(aad) = aad {
        s.push_str(",\"aad\":\"");
        URL_SAFE_NO_PAD.encode_string(aad, &mut s);
        s.push('"');
    }
    s.push('}');
    s
}

impl AzureKvMekProvider {
    pub(crate) async fn wrap(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        ctx.ensure_names(tek)?;
        let (kv, state) = self.version(mek).await?;
        state.ensure_can_encrypt(&format!("mek:{mek}"), "wrap a TEK")?;
        let name = self.key_name_for(&mek.id);
        let version = self.explicit(&name, &kv.id)?.to_string();
        let alg = self.settings.algorithm;
        let header = WrappedTek::new(
            tek.algorithm(),
            ProviderKind::AzureKeyVault,
            mek.clone(),
            Vec::new(),
        );
        let aad = ctx.aad_for(&header);
        let secret = tek.bytes().expose_secret();
        let (op, json) = if alg.uses_encrypt() {
            (Op::Encrypt, body(alg, secret, Some(&aad)))
        } else {
            let salt = if alg == WrapAlgorithm::A256Kw {
                KeyBytes::generate()?
                    .expose_secret()
                    .get(..KW_SALT_LEN)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            (Op::Wrap, body(alg, &bind(secret, &aad, &salt), None))
        };
        // The SDK takes its own copy of the body (see the crate docs); ours is wiped.
        let content: RequestContent<KeyOperationParameters> =
            RequestContent::from(json.as_bytes().to_vec());
        drop(json);
        let out: KeyOperationResult = self
            .run(op, &name, async {
                if alg.uses_encrypt() {
                    self.client
                        .encrypt(
                            &name,
                            content,
                            Some(KeyClientEncryptOptions {
                                key_version: Some(version.clone()),
                                ..Default::default()
                            }),
                        )
                        .await?
                        .into_model()
                } else {
                    self.client
                        .wrap_key(
                            &name,
                            content,
                            Some(KeyClientWrapKeyOptions {
                                key_version: Some(version.clone()),
                                ..Default::default()
                            }),
                        )
                        .await?
                        .into_model()
                }
            })
            .await?;
        if let Some(kid) = out.kid.as_deref()
            && let Some(used) = kid_version(kid)
            && used != version
        {
            return Err(self.protocol(
                &name,
                op.name(),
                &format!("the vault used version {used}, not the requested {version}"),
            ));
        }
        let payload = Payload {
            algorithm: alg,
            version,
            ciphertext: out.result.unwrap_or_default(),
            iv: if alg.uses_encrypt() {
                out.iv.unwrap_or_default()
            } else {
                Vec::new()
            },
            tag: if alg.uses_encrypt() {
                out.authentication_tag.unwrap_or_default()
            } else {
                Vec::new()
            },
        };
        let bytes = payload.encode().ok_or_else(|| {
            self.protocol(
                &name,
                op.name(),
                &format!(
                    "the answer's ciphertext, iv or tag is missing or out of range (tag must be {TAG_LEN} bytes)"
                ),
            )
        })?;
        Ok(WrappedTek {
            payload: bytes,
            ..header
        })
    }

    pub(crate) async fn unwrap(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let mek = &wrapped.mek;
        let what = format!("TEK {} wrapped by {mek}", ctx.tek_id());
        if wrapped.provider != ProviderKind::AzureKeyVault {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the envelope names provider {:?}, not Azure Key Vault",
                    wrapped.provider
                ),
            });
        }
        let p = Payload::decode(&wrapped.payload)
            .map_err(|d| TdeError::corrupt("Azure Key Vault-wrapped TEK", what.clone(), d))?;
        let name = self.key_name_for(&mek.id);
        let mut found = None;
        for fresh in [false, true] {
            // Unwrap accepts any version tagged with the envelope's number: two versions with
            // one number (two rotations at once) are both HeliosDB's, and the binding names
            // the number.
            let view = self.view(&mek.id, fresh).await?;
            let lc = view.lifecycle(&mek.id);
            if let Some(state) = lc.state(mek) {
                found = Some((
                    view.ids_of(mek.version).contains(&p.version.as_str()),
                    state,
                ));
                break;
            }
        }
        let (matches, state) = found.ok_or_else(|| self.not_found(mek, &name))?;
        if !matches {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "{what}: the payload was made under Key Vault version {} of key {name}, which is not MEK version {}",
                    p.version,
                    mek.version.get()
                ),
            });
        }
        state.ensure_can_decrypt(&format!("mek:{mek}"), "unwrap a TEK")?;
        let version = self.explicit(&name, &p.version)?.to_string();
        let aad = ctx.aad_for(wrapped);
        let gcm = p.algorithm.uses_encrypt();
        let params = KeyOperationParameters {
            algorithm: Some(az_alg(p.algorithm)),
            value: Some(p.ciphertext.clone()),
            iv: gcm.then(|| p.iv.clone()),
            authentication_tag: gcm.then(|| p.tag.clone()),
            additional_authenticated_data: gcm.then(|| aad.clone()),
        };
        let op = if gcm { Op::Decrypt } else { Op::Unwrap };
        let out: KeyOperationResult = self
            .run(op, &name, async {
                let content = params.try_into()?;
                if gcm {
                    self.client
                        .decrypt(&name, &version, content, None)
                        .await?
                        .into_model()
                } else {
                    self.client
                        .unwrap_key(&name, &version, content, None)
                        .await?
                        .into_model()
                }
            })
            .await?;
        let value = Zeroizing::new(out.result.unwrap_or_default());
        let tek = if gcm {
            if value.len() != KEY_LEN {
                return Err(TdeError::AuthenticationFailed {
                    what: format!(
                        "{what}: the decrypted value has {} bytes, not {KEY_LEN}",
                        value.len()
                    ),
                });
            }
            &value[..]
        } else {
            unbind(&value, &aad, bound_len(p.algorithm)).map_err(|d| {
                TdeError::AuthenticationFailed {
                    what: format!("{what}: {d}"),
                }
            })?
        };
        Ok(TableKey::new(
            ctx.tek_id(),
            wrapped.algorithm,
            KeyBytes::from_slice(tek)?,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_binding_checks_the_hash_half() {
        let tek = [7u8; KEY_LEN];
        let b = bind(&tek, b"aad-1", &[]);
        assert_eq!(b.len(), BOUND_LEN);
        assert_eq!(unbind(&b, b"aad-1", BOUND_LEN).unwrap(), &tek[..]);
        assert!(
            unbind(&b, b"aad-2", BOUND_LEN)
                .unwrap_err()
                .contains("binding hash")
        );
        assert!(
            unbind(&b[..63], b"aad-1", BOUND_LEN)
                .unwrap_err()
                .contains("63 bytes")
        );
        assert!(unbind(&[0u8; 32], b"aad-1", BOUND_LEN).is_err());
        // A256KW: the salt follows the hash and is not checked; the length is.
        let k = bind(&tek, b"aad-1", &[9u8; KW_SALT_LEN]);
        assert_eq!(k.len(), bound_len(WrapAlgorithm::A256Kw));
        assert_eq!(unbind(&k, b"aad-1", 80).unwrap(), &tek[..]);
        assert!(unbind(&k, b"aad-2", 80).is_err());
        assert!(unbind(&b, b"aad-1", 80).unwrap_err().contains("64 bytes"));
        assert_eq!(bound_len(WrapAlgorithm::RsaOaep256), 64);
    }

    #[test]
    fn request_bodies_are_key_vault_json() {
        let j = body(WrapAlgorithm::RsaOaep256, &[0xfb, 0xff], None);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["alg"], "RSA-OAEP-256");
        assert_eq!(v["value"], "-_8");
        assert!(v.get("aad").is_none());
        let j = body(WrapAlgorithm::A256Gcm, &[1, 2, 3], Some(b"ctx"));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["alg"], "A256GCM");
        assert_eq!(v["aad"], "Y3R4");
    }

    #[test]
    fn request_bodies_never_grow_their_buffer() {
        // A string that outgrew its first allocation would have at least doubled it.
        for alg in [
            WrapAlgorithm::RsaOaep256,
            WrapAlgorithm::A256Kw,
            WrapAlgorithm::A256Gcm,
        ] {
            for aad in [None, Some(&[7u8; 300][..])] {
                let j = body(alg, &[9u8; BOUND_LEN + KW_SALT_LEN], aad);
                assert!(
                    j.capacity() <= j.len() + 32,
                    "{}: {} bytes in a buffer of {}",
                    alg.name(),
                    j.len(),
                    j.capacity()
                );
            }
        }
    }
}
