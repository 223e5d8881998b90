#![doc = include_str!("../README.md")]

mod client;
mod provider;
mod records;
mod settings;
mod transit;

pub use provider::VaultMekProvider;
