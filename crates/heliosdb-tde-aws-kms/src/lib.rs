//! AWS KMS MEK provider.
