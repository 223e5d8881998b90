use heliosdb_tde_core::{TdeError, TekVersion};

/// An error from the cipher engine.
///
/// Messages name what failed and what to do; they never contain key material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CipherError {
    /// The tag did not verify: wrong key, tampered data, or associated data that differs from
    /// the one used when sealing (for example a page moved to another table or page number).
    #[error(
        "authentication failed: the data was modified, moved, or sealed under another key. No \
         plaintext was released (an in-place buffer is cleared); check the key version and the \
         associated data, or restore the data from a replica or backup"
    )]
    AuthenticationFailed,

    /// The sealed data is not in a format this build reads.
    #[error("malformed sealed data: {0}")]
    Malformed(String),

    /// The data was sealed under another TEK version than this cipher's.
    #[error(
        "the data was sealed with TEK version {found}, but this cipher holds version \
         {expected}; fetch the key version named in the page header"
    )]
    KeyVersionMismatch {
        /// The cipher's TEK version.
        expected: TekVersion,
        /// The version in the header.
        found: TekVersion,
    },

    /// The key reached its hard invocation limit, or the cipher the end of its reserved block
    /// of invocation numbers.
    #[error(
        "this cipher has used invocation numbers up to {invocations}, the end of its budget \
         (the key's hard limit, at most 2^32 for the 32-bit invocation field of the nonce, NIST \
         SP 800-38D 8.2.1, or the end of the block reserved for it); rotate the table key or \
         reserve a new block. Decryption still works"
    )]
    NonceBudgetExhausted {
        /// Encryptions performed.
        invocations: u64,
    },

    /// Invalid limits or buffer sizes supplied by the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The selected backend was not compiled into this build.
    #[error(
        "cipher backend {0} is not compiled into this build; enable the heliosdb-tde-cipher \
         feature of the same name"
    )]
    BackendUnavailable(&'static str),

    /// The backend refused the key or failed internally.
    #[error("the {0} AES-GCM backend failed")]
    Backend(&'static str),

    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
}

impl From<CipherError> for TdeError {
    fn from(e: CipherError) -> Self {
        match e {
            CipherError::AuthenticationFailed => TdeError::AuthenticationFailed {
                what: "sealed page".into(),
            },
            CipherError::NonceBudgetExhausted { invocations } => TdeError::NonceBudgetExhausted {
                key: "table key".into(),
                invocations,
            },
            CipherError::Random(s) => TdeError::Random(s),
            CipherError::BackendUnavailable(b) => TdeError::Unsupported {
                what: format!("cipher backend {b}"),
                hint: format!("enable the heliosdb-tde-cipher feature {b}"),
            },
            CipherError::KeyVersionMismatch { expected, found } => {
                TdeError::WrongKeyVersion { expected, found }
            }
            CipherError::InvalidArgument(s) => TdeError::InvalidArgument(s),
            CipherError::Backend(b) => TdeError::ProviderUnavailable {
                provider: format!("the {b} AES-GCM backend"),
                reason: "it failed internally".into(),
                retryable: false,
            },
            m @ CipherError::Malformed(_) => {
                TdeError::corrupt("sealed data", "cipher", m.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cipher error becomes the matching typed error; only malformed data is `Corrupt`.
    #[test]
    fn every_cipher_error_maps_to_its_own_kind() {
        let v = |n| TekVersion::new(n).unwrap();
        let e: TdeError = CipherError::KeyVersionMismatch {
            expected: v(2),
            found: v(1),
        }
        .into();
        assert!(matches!(e, TdeError::WrongKeyVersion { .. }), "{e:?}");
        assert!(!e.to_string().contains("backup"), "{e}");
        let e: TdeError = CipherError::InvalidArgument("page too short".into()).into();
        assert!(matches!(e, TdeError::InvalidArgument(_)), "{e:?}");
        let e: TdeError = CipherError::Backend("ring").into();
        assert!(matches!(e, TdeError::ProviderUnavailable { .. }), "{e:?}");
        let e: TdeError = CipherError::Malformed("short header".into()).into();
        assert!(matches!(e, TdeError::Corrupt { .. }), "{e:?}");
        let e: TdeError = CipherError::AuthenticationFailed.into();
        assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");
        let e: TdeError = CipherError::NonceBudgetExhausted { invocations: 7 }.into();
        assert!(matches!(e, TdeError::NonceBudgetExhausted { .. }), "{e:?}");
        let e: TdeError = CipherError::BackendUnavailable("ring").into();
        assert!(matches!(e, TdeError::Unsupported { .. }), "{e:?}");
        let e: TdeError = CipherError::Random("no entropy".into()).into();
        assert!(matches!(e, TdeError::Random(_)), "{e:?}");
    }
}
