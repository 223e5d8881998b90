#![doc = include_str!("../README.md")]

mod checks;
mod client;
mod provider;
mod records;
mod settings;
mod state;
mod transit;

pub use provider::VaultMekProvider;
