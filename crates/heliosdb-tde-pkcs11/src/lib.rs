#![doc = include_str!("../README.md")]
// `unsafe` is allowed for one call only: removing `HELIOSDB_HSM_PIN` from the process
// environment once the PIN has been read (`std::env::remove_var` is `unsafe` in edition 2024,
// in `pin.rs`). ARCHITECTURE.md's "Unsafe code" section names this crate and this reason.
#![allow(unsafe_code)]

mod cache;
mod context;
mod error;
mod gcm;
mod hooks;
mod inventory;
mod keys;
mod pin;
mod pool;
mod provider;
mod record;
mod settings;
mod version;

pub use keys::mek_template;
pub use pin::{PinSource, resolve_pin};
pub use provider::Pkcs11MekProvider;
pub use settings::{DEFAULT_POOL_SIZE, DEFAULT_STATE_REFRESH, DEFAULT_TIMEOUT, Pkcs11Settings};

use heliosdb_tde_core::KEY_LEN;

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of the provider payload: IV, encrypted TEK, tag.
pub const PAYLOAD_LEN: usize = IV_LEN + KEY_LEN + TAG_LEN;
