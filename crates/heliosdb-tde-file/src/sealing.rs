//! Key derivation and sealing: the Argon2id file key, and a MEK sealed into (or opened from)
//! a complete file image (`docs/formats/mek-file.md`).

use crate::{DEFAULT_KDF, format};
use heliosdb_tde_cipher::{AeadKey, Backend};
use heliosdb_tde_core::{
    KEY_LEN, KdfParams, KeyBytes, MasterKey, Result, SecureFileConfig, TdeError,
};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use zeroize::Zeroizing;

/// The Argon2id parameters for new files: the configured ones or [`DEFAULT_KDF`], within the
/// bounds files are read with (a file this crate would refuse to read is never written).
pub(crate) fn configured_kdf(config: &SecureFileConfig) -> Result<KdfParams> {
    let kdf = config.kdf.unwrap_or(DEFAULT_KDF);
    if !format::kdf_within_bounds(&kdf) {
        return Err(TdeError::config(
            "secure_file_config.kdf",
            format!(
                "memory {} KiB, {} passes, {} lanes is outside the bounds ({}); the default \
                 is 65536 KiB, 3 passes, 4 lanes",
                kdf.m_cost_kib,
                kdf.t_cost,
                kdf.p_cost,
                format::kdf_bounds_text()
            ),
        ));
    }
    Ok(kdf)
}

/// Whether a file's parameters are below the policy: less memory or fewer passes. (Fewer lanes
/// cost an attacker nothing: the work is memory times passes.)
pub(crate) fn below_policy(file: &KdfParams, policy: &KdfParams) -> bool {
    file.m_cost_kib < policy.m_cost_kib || file.t_cost < policy.t_cost
}

pub(crate) fn kdf_text(k: &KdfParams) -> String {
    format!(
        "memory {} KiB, {} passes, {} lanes",
        k.m_cost_kib, k.t_cost, k.p_cost
    )
}

/// Derives the 256-bit file key from a passphrase. Parameters outside the bounds are refused
/// before any work.
fn derive(passphrase: &SecretString, salt: &[u8], kdf: KdfParams) -> Result<KeyBytes> {
    if !format::kdf_within_bounds(&kdf) {
        return Err(TdeError::config(
            "secure_file_config.kdf",
            format!(
                "{} is outside the bounds ({})",
                kdf_text(&kdf),
                format::kdf_bounds_text()
            ),
        ));
    }
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| TdeError::config("secure_file_config.kdf", e.to_string()))?;
    // Argon2's working memory: `hash_password_into` frees its own without wiping it, and its
    // last blocks determine the file key, so it is supplied here and wiped on drop.
    let blocks = params.block_count();
    let mut memory = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(blocks).map_err(|_| {
        TdeError::config(
            "secure_file_config.kdf",
            argon2::Error::OutOfMemory.to_string(),
        )
    })?;
    memory.resize(blocks, argon2::Block::default());
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    KeyBytes::try_fill_with(|out| {
        argon
            .hash_password_into_with_memory(
                passphrase.expose_secret().as_bytes(),
                salt,
                out,
                &mut memory[..],
            )
            .map_err(|e| TdeError::config("secure_file_config.kdf", e.to_string()))
    })
}

/// Encrypts `key` into a complete file image.
pub(crate) fn seal_file(
    backend: Backend,
    passphrase: &SecretString,
    kdf: KdfParams,
    header: &mut format::Header,
    key: &KeyBytes,
) -> Result<Vec<u8>> {
    let mut salt = vec![0u8; format::SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| TdeError::Random(e.to_string()))?;
    header.salt = salt;
    header.kdf = kdf;
    let file_key = derive(passphrase, &header.salt, kdf)?;
    let aead = AeadKey::new(backend, file_key.expose_secret())?;
    let nonce = heliosdb_tde_cipher::aead::random_nonce()?;
    let mut out = header.encode();
    // Sealed in place: the buffer holds the MEK in the clear until the seal succeeds, and is
    // wiped when dropped, on an error too.
    let mut ct = Zeroizing::new([0u8; KEY_LEN]);
    ct.copy_from_slice(key.expose_secret());
    let tag = aead.seal_detached(&nonce, &out, &mut ct[..])?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct[..]);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a parsed file. `Err(())` means the passphrase is wrong (or the file was altered).
pub(crate) fn open_file(
    backend: Backend,
    passphrase: &SecretString,
    file: &format::MekFile,
) -> Result<std::result::Result<MasterKey, ()>> {
    let file_key = derive(passphrase, &file.header.salt, file.header.kdf)?;
    let aead = AeadKey::new(backend, file_key.expose_secret())?;
    let opened = KeyBytes::try_fill_with(|buf| {
        buf.copy_from_slice(&file.ciphertext);
        aead.open_detached(&file.nonce, &file.header_bytes, buf, &file.tag)
    });
    Ok(opened
        .map(|bytes| MasterKey::new(file.header.mek.clone(), file.header.algorithm, bytes))
        .map_err(|_| ()))
}

/// Parses and decrypts a MEK file image with `passphrase`: `Ok(Some(key))` when it opens,
/// `Ok(None)` when the passphrase is wrong or the file was altered, and an error when the image
/// is malformed. `path` names the file in errors. (The provider uses the same code; this entry
/// point exists for tools and fuzzing.)
pub fn open_image(
    bytes: &[u8],
    path: &Path,
    passphrase: &SecretString,
) -> Result<Option<MasterKey>> {
    let file = format::parse(bytes, path)?;
    Ok(open_file(Backend::default(), passphrase, &file)?.ok())
}
