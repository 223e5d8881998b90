#![doc = include_str!("../README.md")]
// Test support: a failed expectation here is a test failure, so panicking is the point.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "azure")]
pub mod azure;
pub mod fault;
pub mod instrumented;
#[cfg(feature = "manager")]
pub mod manager;
pub mod moto;
pub mod openbao;
pub mod provider;
pub mod services;
pub mod softhsm;
pub mod store;
