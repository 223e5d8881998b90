//! Raw AES-256-GCM over the compiled-in backends: 256-bit keys, 96-bit nonces, 128-bit tags.
//!
//! This is the one place that talks to aws-lc-rs, ring or aes-gcm. Everything above it (page
//! sealing, TEK wrapping, MEK files) goes through [`AeadKey`].

use crate::error::CipherError;
use heliosdb_tde_core::KEY_LEN;
use std::fmt;
use zeroize::Zeroize;

/// Nonce length in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes (128 bits).
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc-rs (feature `aws-lc`).
    AwsLc,
    /// ring (feature `ring`).
    Ring,
    /// RustCrypto aes-gcm, pure Rust (feature `rustcrypto`).
    RustCrypto,
}

impl Backend {
    /// Every backend compiled into this build, fastest first.
    pub fn available() -> Vec<Backend> {
        let mut v = Vec::new();
        if cfg!(feature = "aws-lc") {
            v.push(Backend::AwsLc);
        }
        if cfg!(feature = "ring") {
            v.push(Backend::Ring);
        }
        if cfg!(feature = "rustcrypto") {
            v.push(Backend::RustCrypto);
        }
        v
    }

    /// The feature name of the backend.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc",
            Backend::Ring => "ring",
            Backend::RustCrypto => "rustcrypto",
        }
    }

    /// Whether the backend is compiled into this build.
    pub fn is_available(self) -> bool {
        Self::available().contains(&self)
    }
}

impl Default for Backend {
    /// The fastest compiled-in backend: aws-lc, then ring, then rustcrypto.
    fn default() -> Self {
        if cfg!(feature = "aws-lc") {
            Backend::AwsLc
        } else if cfg!(feature = "ring") {
            Backend::Ring
        } else {
            Backend::RustCrypto
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = CipherError;
    fn from_str(s: &str) -> Result<Self, CipherError> {
        match s {
            "aws-lc" | "awslc" | "aws-lc-rs" => Ok(Backend::AwsLc),
            "ring" => Ok(Backend::Ring),
            "rustcrypto" | "aes-gcm" => Ok(Backend::RustCrypto),
            _ => Err(CipherError::InvalidArgument(format!(
                "unknown cipher backend {s:?}; accepted: aws-lc, ring, rustcrypto"
            ))),
        }
    }
}

// One `Inner` exists per expanded key and lives as long as the key; keeping ring's key schedule
// inline avoids a pointer chase on every seal.
#[allow(clippy::large_enum_variant)]
enum Inner {
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    #[cfg(feature = "ring")]
    Ring(ring::aead::LessSafeKey),
    #[cfg(feature = "rustcrypto")]
    RustCrypto(Box<aes_gcm::Aes256Gcm>),
}

/// An expanded AES-256-GCM key on one backend.
///
/// Nonce handling is the caller's job: every nonce must be unique per key. The page API of this
/// crate builds counted deterministic nonces and the wrap API draws random ones; use those
/// unless you are implementing a format.
pub struct AeadKey {
    inner: Inner,
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("algorithm", &"AES-256-GCM")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl AeadKey {
    /// Expands `key` for `backend`.
    pub fn new(backend: Backend, key: &[u8; KEY_LEN]) -> Result<Self, CipherError> {
        let inner = match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => {
                let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
                    .map_err(|_| CipherError::Backend("aws-lc"))?;
                Inner::AwsLc(aws_lc_rs::aead::LessSafeKey::new(unbound))
            }
            #[cfg(feature = "ring")]
            Backend::Ring => {
                let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                    .map_err(|_| CipherError::Backend("ring"))?;
                Inner::Ring(ring::aead::LessSafeKey::new(unbound))
            }
            #[cfg(feature = "rustcrypto")]
            Backend::RustCrypto => {
                use aes_gcm::KeyInit;
                let cipher = aes_gcm::Aes256Gcm::new_from_slice(key)
                    .map_err(|_| CipherError::Backend("rustcrypto"))?;
                Inner::RustCrypto(Box::new(cipher))
            }
            #[allow(unreachable_patterns)]
            other => return Err(CipherError::BackendUnavailable(other.name())),
        };
        Ok(Self { inner })
    }

    /// The backend this key runs on.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(_) => Backend::AwsLc,
            #[cfg(feature = "ring")]
            Inner::Ring(_) => Backend::Ring,
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(_) => Backend::RustCrypto,
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CipherError> {
        let mut tag = [0u8; TAG_LEN];
        match &self.inner {
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                let t = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(aad),
                        buf,
                    )
                    .map_err(|_| CipherError::Backend("aws-lc"))?;
                tag.copy_from_slice(t.as_ref());
            }
            #[cfg(feature = "ring")]
            Inner::Ring(k) => {
                use ring::aead::{Aad, Nonce};
                let t = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(aad),
                        buf,
                    )
                    .map_err(|_| CipherError::Backend("ring"))?;
                tag.copy_from_slice(t.as_ref());
            }
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(k) => {
                use aes_gcm::aead::AeadInOut;
                let t = k
                    .encrypt_inout_detached(nonce.into(), aad, buf.into())
                    .map_err(|_| CipherError::Backend("rustcrypto"))?;
                tag.copy_from_slice(t.as_slice());
            }
        }
        Ok(tag)
    }

    /// Decrypts `buf` in place after checking `tag`.
    ///
    /// On failure the buffer is cleared, so that no unauthenticated plaintext is ever exposed,
    /// and [`CipherError::AuthenticationFailed`] is returned.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        let ok = match &self.inner {
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    tag,
                    buf,
                )
                .is_ok()
            }
            #[cfg(feature = "ring")]
            Inner::Ring(k) => {
                use ring::aead::{Aad, Nonce, Tag};
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    Tag::from(*tag),
                    buf,
                    0..,
                )
                .is_ok()
            }
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(k) => {
                use aes_gcm::aead::AeadInOut;
                k.decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into())
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            buf.zeroize();
            Err(CipherError::AuthenticationFailed)
        }
    }
}

/// A fresh random nonce from the operating system's CSPRNG.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CipherError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| CipherError::Random(e.to_string()))?;
    Ok(n)
}
