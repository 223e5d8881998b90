//! AES-256-GCM on the HeliosDB TDE data path.
//!
//! This crate is synchronous and allocation-light: it sits between the buffer pool and the
//! disk. It offers
//!
//! * [`TableCipher`]: seals and opens database pages under one table encryption key (TEK),
//!   in place for fixed-size pages (header and tag detached) or into a `Vec`, with
//!   caller-supplied associated data so that a page moved elsewhere fails to open;
//! * a per-key invocation counter with a soft limit (rotation is due) and the hard limit of
//!   2^32 encryptions that NIST SP 800-38D section 8.3 sets for random 96-bit nonces;
//! * [`wrap`]: local TEK wrapping under an in-process master key, for the providers that hold
//!   their MEK in process (in-memory, secure file);
//! * [`LocalKeyring`]: the MEK versions such a provider holds, with checked wrapping under
//!   them;
//! * [`aead`]: the raw AES-256-GCM primitive over the selected backend.
//!
//! # Backends
//!
//! Chosen with cargo features; several can be compiled together and picked at run time with
//! [`Backend`]. All of them produce byte-identical output.
//!
//! | feature | implementation | note |
//! | --- | --- | --- |
//! | `aws-lc` (default) | aws-lc-rs | fastest on CPUs with VAES/AVX-512 |
//! | `ring` | ring | |
//! | `rustcrypto` | aes-gcm (pure Rust) | no C toolchain needed |
//!
//! # Nonces and limits
//!
//! Every seal draws a fresh 96-bit nonce from the operating system's CSPRNG. With random
//! nonces, NIST SP 800-38D section 8.3 requires that one key performs at most 2^32
//! encryptions, which keeps the probability of a nonce collision below 2^-32. [`UsageLimits`]
//! enforces that hard limit (sealing fails with [`CipherError::NonceBudgetExhausted`]) and a
//! configurable soft limit at which [`TableCipher::rotation_due`] turns true, so that the key
//! manager rotates the table key long before the hard limit. Opening is never limited.

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
