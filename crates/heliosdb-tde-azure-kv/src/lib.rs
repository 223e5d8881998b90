#![doc = include_str!("../README.md")]

mod client;
mod credential;
mod errors;
mod names;
mod payload;
mod provider;
mod settings;
mod versions;

pub use names::mek_key_name;
pub use provider::{AzureKvBuilder, AzureKvMekProvider, RSA_LIMITATION};
pub use settings::{WrapAlgorithm, check_config};
