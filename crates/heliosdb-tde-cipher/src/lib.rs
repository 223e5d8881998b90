#![doc = include_str!("../README.md")]
// Unsafe code: one block, the `pthread_atfork` registration in `fork.rs` (the only module that
// allows it). See its SAFETY comment and ARCHITECTURE.md, "Unsafe code".
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "aws-lc", feature = "ring", feature = "rustcrypto")))]
compile_error!(
    "heliosdb-tde-cipher needs at least one backend feature: aws-lc, ring or rustcrypto"
);

pub mod aead;
mod error;
mod fork;
mod keyring;
mod nonce;
mod page;
#[cfg(feature = "test-hooks")]
pub mod testing;
mod usage;
pub mod wrap;

pub use aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN};
pub use error::CipherError;
pub use keyring::LocalKeyring;
pub use page::{
    FORMAT_VERSION, HEADER_LEN, PageHeader, SealedParts, TableCipher, sealed_tek_version,
};
pub use usage::{HARD_LIMIT, UsageLimits, UsageSnapshot};
