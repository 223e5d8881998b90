//! The one error type of the key hierarchy.
//!
//! Every failure a user can cause has its own variant, and every message says what happened and
//! what to do about it. Messages that operators look up start with a fixed text, kept exactly so
//! that a search finds the fix: `Production mode requires a secure MEK provider. Current
//! provider: ... is NOT suitable for production.`, `MEK provider error: Passphrase environment
//! variable ... not found`, `IO error: Permission denied (os error 13)`.
//!
//! No variant ever carries key material: they hold identifiers, paths, modes and reasons only.

use std::path::PathBuf;

/// Shorthand for results in the key hierarchy.
pub type Result<T, E = TdeError> = std::result::Result<T, E>;

/// An error from the key hierarchy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TdeError {
    /// Production mode refused an insecure MEK provider.
    #[error(
        "Production mode requires a secure MEK provider. Current provider: {provider} is NOT \
         suitable for production. SECURITY RISK: this provider keeps encryption keys in \
         unprotected memory. Configure a production-safe MEK provider (HSM, Cloud KMS, or Secure \
         File), or, for development only, set HELIOSDB_SECURITY_MODE=development."
    )]
    InsecureProvider {
        /// The provider's human-readable description.
        provider: String,
    },

    /// The passphrase environment variable of the secure file provider is not set.
    #[error(
        "MEK provider error: Passphrase environment variable {var} not found. Set it before \
         starting: export {var}=\"your-strong-passphrase\" (25+ characters), or configure a \
         passphrase file."
    )]
    PassphraseEnvMissing {
        /// The name of the variable that was read.
        var: String,
    },

    /// A key file or directory has permissions that let other users read or change it.
    #[error(
        "insecure permissions on {}: mode {mode:04o} gives group or other users access. Fix: \
         chmod {expected:03o} {}",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have (`0o600` for files, `0o700` for directories).
        expected: u32,
    },

    /// Authenticated decryption failed: wrong key or passphrase, tampered data, or data bound to
    /// another context (table, key version, MEK) than the one presented.
    #[error(
        "authentication failed for {what}: the key is wrong or the data was modified or moved. \
         Check that the right MEK, passphrase or key version is in use; the data was not changed"
    )]
    AuthenticationFailed {
        /// What failed to open, for example `TEK users@v2 wrapped by master_key_001@v1`.
        what: String,
    },

    /// A key does not exist.
    #[error("key not found: {key}. {hint}")]
    KeyNotFound {
        /// The key that was looked up.
        key: String,
        /// What to do about it.
        hint: String,
    },

    /// A key with this identity exists already.
    #[error("key already exists: {key}. Use a new id, or rotate the existing key instead")]
    AlreadyExists {
        /// The key that exists.
        key: String,
    },

    /// A file or directory a command would write over holds data, and the command replaces
    /// existing data only when asked (`--force`).
    #[error("{what} already exists: {hint}")]
    TargetExists {
        /// What exists, with its path.
        what: String,
        /// What to do.
        hint: String,
    },

    /// The operation is not allowed in the key's lifecycle state.
    #[error("cannot {operation} with {key}: the key is {state}. {hint}")]
    InvalidKeyState {
        /// The key.
        key: String,
        /// Its current state.
        state: crate::KeyState,
        /// What was attempted.
        operation: String,
        /// What to do about it.
        hint: String,
    },

    /// An MEK rotation is in a phase where the requested step cannot run.
    #[error("cannot {operation}: the rotation of {mek} is in phase {phase}. {hint}")]
    RotationPhase {
        /// The MEK being rotated.
        mek: String,
        /// The rotation's phase.
        phase: String,
        /// What was attempted.
        operation: String,
        /// What to do about it.
        hint: String,
    },

    /// The MEK provider could not be reached or refused service.
    #[error(
        "MEK provider {provider} unavailable: {reason}. {}",
        if *retryable { "The operation can be retried once the provider is reachable" } else { "Check the provider's configuration and credentials" }
    )]
    ProviderUnavailable {
        /// The provider's description.
        provider: String,
        /// What went wrong.
        reason: String,
        /// Whether retrying the same call may succeed.
        retryable: bool,
    },

    /// Another provider failure (an HSM return code, a KMS error...).
    #[error("{provider} error: {message}. {hint}")]
    Provider {
        /// Which provider, for example `HSM` or `AWS KMS`.
        provider: String,
        /// The provider's own code or message, for example `CKR_PIN_INCORRECT`.
        message: String,
        /// What to do about it.
        hint: String,
    },

    /// Stored or received data is malformed: truncated, wrong magic, unknown version...
    #[error(
        "corrupt {what} in {location}: {detail}. Restore it from a backup; nothing was changed"
    )]
    Corrupt {
        /// What was being read, for example `wrapped TEK envelope`.
        what: String,
        /// Where: a file, a key id, a record.
        location: String,
        /// What exactly is wrong.
        detail: String,
    },

    /// An identifier does not follow the naming rules.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidIdentifier {
        /// Which kind of identifier.
        kind: &'static str,
        /// The rejected value (identifiers are never secret).
        value: String,
        /// The rule it breaks.
        reason: String,
    },

    /// A configuration field has an invalid value.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field, for example `cache_limit` or `secure_file_config.storage_path`.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// A security rule refused the setup (production mode rules, weak passphrase...).
    #[error("security policy violation: {0}")]
    SecurityPolicy(String),

    /// A key reached its GCM invocation limit (the 32-bit invocation number of its nonces, NIST
    /// SP 800-38D section 8.2.1) and must be rotated.
    #[error(
        "{key} has been used for {invocations} encryptions, the hard limit of its nonces' 32-bit \
         invocation number (NIST SP 800-38D 8.2.1). Rotate the table key; decryption still works"
    )]
    NonceBudgetExhausted {
        /// The key.
        key: String,
        /// Encryptions performed with it.
        invocations: u64,
    },

    /// The requested feature or algorithm is not available in this build or provider.
    #[error("unsupported: {what}. {hint}")]
    Unsupported {
        /// What is not supported.
        what: String,
        /// What to do instead.
        hint: String,
    },

    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed: {0}. No key was created")]
    Random(String),

    /// Sealed data names another TEK version than the key it was opened with.
    #[error(
        "the data was sealed with TEK version {found}, but version {expected} was used to open          it; fetch the key version named in the page header (the data is not damaged)"
    )]
    WrongKeyVersion {
        /// The version used.
        expected: crate::TekVersion,
        /// The version the data names.
        found: crate::TekVersion,
    },

    /// A caller passed an argument outside what the operation accepts (a programming error,
    /// not bad data).
    #[error("invalid argument: {0}. Fix the call; nothing was changed")]
    InvalidArgument(String),

    /// A file or store is held by another process.
    #[error("the {what} {location} is in use by another process ({hint})")]
    InUse {
        /// What is in use, for example `key store`.
        what: String,
        /// Its path or address.
        location: String,
        /// Who may hold it and what to do.
        hint: String,
    },

    /// Key memory cannot get the protection the configuration asks for: usually the pages
    /// cannot be locked because of `RLIMIT_MEMLOCK`. The reason names the limit, the bytes
    /// needed and how to raise it. Nothing was created.
    #[error("key memory cannot be protected: {reason}. No key was created")]
    MemoryProtection {
        /// What failed, the limit in force and how to change it.
        reason: String,
    },

    /// An MEK that stored table keys depend on is not in the provider. Nothing was created.
    #[error(
        "MEK {mek} is missing from the MEK provider {provider}: {teks} table key version(s) of \
         {tables} table(s) in the key store {store} are wrapped under it and cannot be read. \
         Check that the provider's location is right (a wrong path, mount or key id?); only a \
         backup of the MEK can restore these keys. No key was created"
    )]
    MekMissing {
        /// The missing MEK (id, or id and version).
        mek: String,
        /// The provider and its location.
        provider: String,
        /// The key store.
        store: String,
        /// How many TEK versions depend on it.
        teks: u64,
        /// How many tables depend on it.
        tables: u64,
    },

    /// The provider holds an MEK of the expected name, but not the key the store was written
    /// with (its key check value does not unwrap).
    #[error(
        "MEK {mek} in the MEK provider {provider} is not the key the key store {store} was \
         written with: its key check value does not unwrap under it. Point the provider at the \
         right MEK (path, token, key id) or restore that MEK from a backup; nothing was changed"
    )]
    MekMismatch {
        /// The MEK version checked.
        mek: String,
        /// The provider and its location.
        provider: String,
        /// The key store.
        store: String,
    },

    /// An operating-system I/O error on a path.
    #[error("IO error: {source} (path: {})", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TdeError {
    /// A stable snake_case name of the error's kind, for audit records, the CLI's JSON errors
    /// and metrics (for example `authentication_failed`, `provider_unavailable`): the variant's
    /// name in snake_case. Names never change once released; every kind has its own.
    pub fn kind(&self) -> &'static str {
        match self {
            TdeError::InsecureProvider { .. } => "insecure_provider",
            TdeError::PassphraseEnvMissing { .. } => "passphrase_env_missing",
            TdeError::InsecurePermissions { .. } => "insecure_permissions",
            TdeError::AuthenticationFailed { .. } => "authentication_failed",
            TdeError::KeyNotFound { .. } => "key_not_found",
            TdeError::AlreadyExists { .. } => "already_exists",
            TdeError::TargetExists { .. } => "target_exists",
            TdeError::InvalidKeyState { .. } => "invalid_key_state",
            TdeError::RotationPhase { .. } => "rotation_phase",
            TdeError::ProviderUnavailable { .. } => "provider_unavailable",
            TdeError::Provider { .. } => "provider",
            TdeError::Corrupt { .. } => "corrupt",
            TdeError::InvalidIdentifier { .. } => "invalid_identifier",
            TdeError::InvalidConfig { .. } => "invalid_config",
            TdeError::SecurityPolicy(_) => "security_policy",
            TdeError::NonceBudgetExhausted { .. } => "nonce_budget_exhausted",
            TdeError::Unsupported { .. } => "unsupported",
            TdeError::Random(_) => "random",
            TdeError::WrongKeyVersion { .. } => "wrong_key_version",
            TdeError::InvalidArgument(_) => "invalid_argument",
            TdeError::InUse { .. } => "in_use",
            TdeError::MemoryProtection { .. } => "memory_protection",
            TdeError::MekMissing { .. } => "mek_missing",
            TdeError::MekMismatch { .. } => "mek_mismatch",
            TdeError::Io { .. } => "io",
        }
    }

    /// Whether retrying the same operation may succeed (a provider outage, a timeout).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        )
    }

    /// Builds a [`TdeError::Corrupt`].
    pub fn corrupt(
        what: impl Into<String>,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        TdeError::Corrupt {
            what: what.into(),
            location: location.into(),
            detail: detail.into(),
        }
    }

    /// Builds a [`TdeError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TdeError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`TdeError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TdeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Whether an error of type `T` is anywhere in `e`'s chain: the error itself, its sources, and
/// errors wrapped inside `std::io::Error`s, however deeply (`io::Error::source` skips the error
/// it wraps, and HTTP clients wrap TLS errors in I/O errors inside I/O errors). Providers use
/// it to classify failures by type (a TLS certificate error, for example), never by their text.
pub fn chain_contains<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    fn io_holds<T: std::error::Error + 'static>(io: &std::io::Error) -> bool {
        io.get_ref().is_some_and(|inner| {
            inner.downcast_ref::<T>().is_some()
                || inner
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(io_holds::<T>)
        })
    }
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<T>().is_some()
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(io_holds::<T>)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant (the match in `kind` makes a new variant a compile error
    /// there; this list makes it a test failure until it is added here).
    fn one_of_each() -> Vec<TdeError> {
        let s = || String::from("x");
        vec![
            TdeError::InsecureProvider { provider: s() },
            TdeError::PassphraseEnvMissing { var: s() },
            TdeError::InsecurePermissions {
                path: "p".into(),
                mode: 0o644,
                expected: 0o600,
            },
            TdeError::AuthenticationFailed { what: s() },
            TdeError::KeyNotFound {
                key: s(),
                hint: s(),
            },
            TdeError::AlreadyExists { key: s() },
            TdeError::TargetExists {
                what: s(),
                hint: s(),
            },
            TdeError::InvalidKeyState {
                key: s(),
                state: crate::KeyState::Active,
                operation: s(),
                hint: s(),
            },
            TdeError::RotationPhase {
                mek: s(),
                phase: s(),
                operation: s(),
                hint: s(),
            },
            TdeError::ProviderUnavailable {
                provider: s(),
                reason: s(),
                retryable: true,
            },
            TdeError::Provider {
                provider: s(),
                message: s(),
                hint: s(),
            },
            TdeError::corrupt("a", "b", "c"),
            TdeError::InvalidIdentifier {
                kind: "table id",
                value: s(),
                reason: s(),
            },
            TdeError::config("f", "r"),
            TdeError::SecurityPolicy(s()),
            TdeError::NonceBudgetExhausted {
                key: s(),
                invocations: 1,
            },
            TdeError::Unsupported {
                what: s(),
                hint: s(),
            },
            TdeError::Random(s()),
            TdeError::WrongKeyVersion {
                expected: crate::TekVersion::new(1).unwrap(),
                found: crate::TekVersion::new(2).unwrap(),
            },
            TdeError::InvalidArgument(s()),
            TdeError::InUse {
                what: s(),
                location: s(),
                hint: s(),
            },
            TdeError::MemoryProtection { reason: s() },
            TdeError::MekMissing {
                mek: s(),
                provider: s(),
                store: s(),
                teks: 1,
                tables: 1,
            },
            TdeError::MekMismatch {
                mek: s(),
                provider: s(),
                store: s(),
            },
            TdeError::io("p", std::io::Error::other("x")),
        ]
    }

    #[test]
    fn every_error_kind_is_distinct_stable_snake_case() {
        let all = one_of_each();
        let kinds: std::collections::BTreeSet<&str> = all.iter().map(TdeError::kind).collect();
        assert_eq!(
            kinds.len(),
            all.len(),
            "two variants share a kind: {kinds:?}"
        );
        for k in &kinds {
            assert!(
                k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !k.starts_with('_'),
                "{k} is not snake_case"
            );
        }
        // The names audit records and dashboards key on.
        assert_eq!(all[3].kind(), "authentication_failed");
        assert_eq!(all[9].kind(), "provider_unavailable");
    }

    #[test]
    fn guide_texts_are_verbatim() {
        let e = TdeError::InsecureProvider {
            provider: "In-Memory (INSECURE - testing only)".into(),
        };
        assert!(e.to_string().starts_with(
            "Production mode requires a secure MEK provider. Current provider: In-Memory \
             (INSECURE - testing only) is NOT suitable for production."
        ));

        let e = TdeError::PassphraseEnvMissing {
            var: "HELIOSDB_MEK_PASSPHRASE".into(),
        };
        assert!(e.to_string().starts_with(
            "MEK provider error: Passphrase environment variable HELIOSDB_MEK_PASSPHRASE not found"
        ));

        let e = TdeError::io(
            "/var/lib/heliosdb/mek/master_key_001.mek",
            std::io::Error::from_raw_os_error(13),
        );
        assert!(
            e.to_string()
                .starts_with("IO error: Permission denied (os error 13)")
        );
    }

    #[test]
    fn permission_error_gives_the_chmod_fix() {
        let e = TdeError::InsecurePermissions {
            path: "/var/lib/heliosdb/mek".into(),
            mode: 0o755,
            expected: 0o700,
        };
        let s = e.to_string();
        assert!(s.contains("mode 0755"), "{s}");
        assert!(s.contains("chmod 700 /var/lib/heliosdb/mek"), "{s}");
    }

    #[test]
    fn retryable_only_for_retryable_outages() {
        let outage = |retryable| TdeError::ProviderUnavailable {
            provider: "Vault".into(),
            reason: "connection refused".into(),
            retryable,
        };
        assert!(outage(true).is_retryable());
        assert!(!outage(false).is_retryable());
        assert!(!TdeError::Random("x".into()).is_retryable());
        assert!(outage(true).to_string().contains("retried"));
    }

    #[test]
    fn chain_contains_finds_a_type_through_sources_and_nested_io_errors() {
        use std::io::{Error, ErrorKind};
        #[derive(Debug)]
        struct Marker;
        impl std::fmt::Display for Marker {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("certificate marker")
            }
        }
        impl std::error::Error for Marker {}
        #[derive(Debug)]
        struct Outer(Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let nested = Outer(Error::other(Error::new(ErrorKind::InvalidData, Marker)));
        assert!(chain_contains::<Marker>(&nested));
        assert!(chain_contains::<Marker>(&Marker));
        let refused = Outer(Error::from(ErrorKind::ConnectionRefused));
        assert!(!chain_contains::<Marker>(&refused));
        // Text that merely mentions the cause is not the cause.
        assert!(!chain_contains::<Marker>(&Outer(Error::other(
            "certificate marker"
        ))));
    }
}
