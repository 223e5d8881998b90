//! AWS KMS MEK provider for HeliosDB TDE.
//!
//! [`AwsKmsMekProvider`] keeps every MEK version in AWS KMS as its own KMS key
//! (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`), found through an alias
//! `<alias_prefix>/<mek id>/v<N>`. TEKs are wrapped with `Encrypt`, bound to their identity by
//! an encryption context, and re-wrapped with `ReEncrypt` during an MEK rotation, so no TEK
//! plaintext leaves KMS while it rotates. `docs/providers/aws-kms.md` is the operator's guide.
//!
//! # Where TEK plaintext lives
//! Buffers of this crate that hold TEK plaintext are wiped on drop ([`zeroize`]). The AWS SDK
//! keeps its own copies, which this crate cannot wipe: the request body of `Encrypt` (the
//! plaintext as base64 in JSON), the `Blob` the request owns, and the HTTP buffers of the
//! answer to `Decrypt`. They are freed, not wiped, when each call ends.
//!
//! # What the encryption context reveals
//! KMS writes the encryption context of every call to CloudTrail in clear: table names,
//! TEK versions and MEK ids appear in CloudTrail logs.

mod errors;
mod keys;
mod payload;
mod provider;
mod settings;

pub use provider::AwsKmsMekProvider;
pub use settings::check_config;
