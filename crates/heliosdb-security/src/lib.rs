//! HeliosDB key management for transparent data encryption (TDE).
//!
//! Everything an application needs is in [`tde`]: the configuration ([`tde::TdeConfig`]), the
//! running subsystem ([`tde::TdeSubsystem`]) and its [`tde::KeyManager`], the cipher engine for
//! pages, and the types they speak. Backends are cargo features (`secure-file` by default).

pub mod tde;
