//! Test support for heliosdb-security.
//!
//! Not published: it is a dev-dependency of the provider crates.
//!
//! * [`provider`]: the conformance suite every [`heliosdb_tde_core::MekProvider`] runs.
//! * [`store`]: the conformance suite every [`heliosdb_tde_core::KeyStore`] runs.
//! * [`instrumented`]: a provider decorator that counts calls and injects failures per method.
//! * [`services`]: whether a test that needs a real server runs, fails or skips.
//! * [`softhsm`]: the settings of the SoftHSM2 test token `cargo xtask test` provisions.

// Test support: a failed expectation here is a test failure, so panicking is the point.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod instrumented;
pub mod provider;
pub mod services;
pub mod softhsm;
pub mod store;
