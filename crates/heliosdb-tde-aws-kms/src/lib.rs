#![doc = include_str!("../README.md")]

mod errors;
mod keys;
mod payload;
mod provider;
mod settings;

pub use provider::AwsKmsMekProvider;
pub use settings::check_config;
