//! The security mode: production refuses insecure setups, development warns about them.
//!
//! The mode is resolved in this order, first match wins:
//!
//! 1. the environment variable `HELIOSDB_SECURITY_MODE` (`production` or `development`; any
//!    other value is an error naming the variable and the accepted values);
//! 2. explicit configuration (`TdeConfig::security_mode`);
//! 3. the build type: release builds mean production, debug builds mean development.

use crate::error::{Result, TdeError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The environment variable that forces the security mode.
pub const SECURITY_MODE_ENV: &str = "HELIOSDB_SECURITY_MODE";

/// Whether insecure setups are refused (production) or only warned about (development).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// Every security rule is enforced; an insecure provider is an error.
    Production,
    /// Insecure providers and weak settings are allowed with a warning. Never for real data.
    Development,
}

/// Where the resolved security mode came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModeSource {
    /// The `HELIOSDB_SECURITY_MODE` environment variable.
    Environment,
    /// The configuration's `security_mode` field.
    Config,
    /// The build type (release or debug).
    BuildType,
}

impl fmt::Display for ModeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModeSource::Environment => "environment variable HELIOSDB_SECURITY_MODE",
            ModeSource::Config => "configuration (security_mode)",
            ModeSource::BuildType => "build type",
        })
    }
}

/// `HELIOSDB_SECURITY_MODE`, if set (a value that is not UTF-8 is kept as an invalid mode).
fn env_mode() -> Option<String> {
    match std::env::var(SECURITY_MODE_ENV) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => Some("<not valid UTF-8>".into()),
    }
}

impl SecurityMode {
    /// The mode a build type implies: release builds are production, debug builds development.
    pub fn for_build(debug_assertions: bool) -> Self {
        if debug_assertions {
            SecurityMode::Development
        } else {
            SecurityMode::Production
        }
    }

    /// Resolves the mode from the process environment, the configured value and this build.
    pub fn resolve(configured: Option<&str>) -> Result<(Self, ModeSource)> {
        Self::resolve_from(env_mode().as_deref(), configured, cfg!(debug_assertions))
    }

    /// As [`SecurityMode::resolve`], for a configured mode that was already parsed (once, where
    /// the configuration was validated).
    pub fn resolve_configured(configured: Option<SecurityMode>) -> Result<(Self, ModeSource)> {
        Self::resolve_parsed(env_mode().as_deref(), configured, cfg!(debug_assertions))
    }

    /// The resolution rule itself, without touching the environment (for tests and tools).
    pub fn resolve_from(
        env: Option<&str>,
        configured: Option<&str>,
        debug_assertions: bool,
    ) -> Result<(Self, ModeSource)> {
        if env.is_some() {
            return Self::resolve_parsed(env, None, debug_assertions);
        }
        let configured = configured
            .map(|v| Self::parse_named(v, "security_mode"))
            .transpose()?;
        Self::resolve_parsed(None, configured, debug_assertions)
    }

    fn resolve_parsed(
        env: Option<&str>,
        configured: Option<SecurityMode>,
        debug_assertions: bool,
    ) -> Result<(Self, ModeSource)> {
        if let Some(v) = env {
            let mode = Self::parse_named(v, SECURITY_MODE_ENV)?;
            return Ok((mode, ModeSource::Environment));
        }
        if let Some(mode) = configured {
            return Ok((mode, ModeSource::Config));
        }
        Ok((Self::for_build(debug_assertions), ModeSource::BuildType))
    }

    fn parse_named(value: &str, name: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "production" => Ok(SecurityMode::Production),
            "development" => Ok(SecurityMode::Development),
            _ => Err(TdeError::config(
                name,
                format!(
                    "{value:?} is not a security mode; accepted values are \"production\" and \
                     \"development\""
                ),
            )),
        }
    }

    /// Whether this is production mode.
    pub fn is_production(self) -> bool {
        self == SecurityMode::Production
    }
}

impl FromStr for SecurityMode {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse_named(s, "security_mode")
    }
}

impl fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityMode::Production => "production",
            SecurityMode::Development => "development",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecurityMode::*;

    #[test]
    fn env_wins_over_config_and_build() {
        for debug in [true, false] {
            for cfg in [None, Some("production"), Some("development")] {
                assert_eq!(
                    SecurityMode::resolve_from(Some("production"), cfg, debug).unwrap(),
                    (Production, ModeSource::Environment)
                );
                assert_eq!(
                    SecurityMode::resolve_from(Some("development"), cfg, debug).unwrap(),
                    (Development, ModeSource::Environment)
                );
            }
        }
    }

    #[test]
    fn config_wins_over_build() {
        assert_eq!(
            SecurityMode::resolve_from(None, Some("production"), true).unwrap(),
            (Production, ModeSource::Config)
        );
        assert_eq!(
            SecurityMode::resolve_from(None, Some("Development"), false).unwrap(),
            (Development, ModeSource::Config)
        );
    }

    #[test]
    fn build_type_is_the_fallback() {
        assert_eq!(
            SecurityMode::resolve_from(None, None, false).unwrap(),
            (Production, ModeSource::BuildType)
        );
        assert_eq!(
            SecurityMode::resolve_from(None, None, true).unwrap(),
            (Development, ModeSource::BuildType)
        );
    }

    #[test]
    fn bad_values_name_the_source_and_the_accepted_values() {
        let e = SecurityMode::resolve_from(Some("prod"), None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HELIOSDB_SECURITY_MODE"), "{e}");
        assert!(
            e.contains("\"production\"") && e.contains("\"development\""),
            "{e}"
        );
        // A bad environment value is an error even when the config is valid.
        assert!(SecurityMode::resolve_from(Some(""), Some("production"), true).is_err());
        let e = SecurityMode::resolve_from(None, Some("secure"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("security_mode"), "{e}");
    }
}
