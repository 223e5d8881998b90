//! Test support for heliosdb-security.
//!
//! Not published: it is a dev-dependency of the provider crates.
//!
//! * [`provider`]: the conformance suite every [`heliosdb_tde_core::MekProvider`] runs.
//! * [`services`]: whether a test that needs a real server runs, fails or skips.

// Test support: a failed expectation here is a test failure, so panicking is the point.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod provider;
pub mod services;
