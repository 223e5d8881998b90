#![doc = include_str!("../README.md")]

#[cfg(not(any(feature = "aws-lc", feature = "ring", feature = "rustcrypto")))]
compile_error!(
    "heliosdb-tde-cipher needs at least one backend feature: aws-lc, ring or rustcrypto"
);

pub mod aead;
mod error;
mod keyring;
mod page;
mod usage;
pub mod wrap;

pub use aead::{AeadKey, Backend, NONCE_LEN, TAG_LEN};
pub use error::CipherError;
pub use keyring::LocalKeyring;
pub use page::{
    FORMAT_VERSION, HEADER_LEN, PageHeader, SealedParts, TableCipher, sealed_tek_version,
};
pub use usage::{HARD_LIMIT, UsageLimits, UsageSnapshot};
