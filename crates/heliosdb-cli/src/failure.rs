//! How a failed command is reported: one line on stderr (`error: ...`), or with `--format json`
//! a JSON document `{"error": {"kind": ..., "message": ...}}` on stdout; and the exit code.
//!
//! Panics go through the same path: the panic hook only records the message (a panic that a
//! library catches, such as the storage engine's on damaged data, must print nothing), and
//! `main` reports a panic that reaches it as an internal error.

use crate::output::Out;
use heliosdb_security::tde::TdeError;
use serde_json::json;
use std::io::Write;
use std::sync::Mutex;

/// An operation failed; the message says why and what to do.
pub(crate) const EXIT_ERROR: u8 = 1;
/// The command line is invalid (clap's code).
pub(crate) const EXIT_USAGE: u8 = 2;
/// The MEK provider is unreachable for now (a retryable `ProviderUnavailable`: a KMS or Vault
/// server down, cut off or sealed, an HSM not answering, a rotation paused by its circuit
/// breaker): running the same command again later may succeed, so scripts can retry.
pub(crate) const EXIT_PROVIDER_UNAVAILABLE: u8 = 5;
/// A bug: the program panicked (EX_SOFTWARE of sysexits.h, "internal software error").
pub(crate) const EXIT_INTERNAL: u8 = 70;

/// A failure to report: a stable machine-readable kind, a one-line message, an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// `snake_case`: the [`TdeError`] variant (`invalid_config`, `corrupt`, `in_use`...), or
    /// `usage`, `internal`.
    pub(crate) kind: String,
    /// What happened and what to do, on one line.
    pub(crate) message: String,
    /// The process exit code.
    pub(crate) code: u8,
}

/// Joins the lines of `text` into one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kind of a [`TdeError`]: [`TdeError::kind`], the variant's name in `snake_case`.
fn kind_of(e: &TdeError) -> String {
    e.kind().into()
}

/// The exit code of a command that failed with `e`: [`EXIT_PROVIDER_UNAVAILABLE`] when the
/// provider is unreachable for now (`e.is_retryable()`), else [`EXIT_ERROR`].
pub(crate) fn exit_code(e: &TdeError) -> u8 {
    if e.is_retryable() {
        EXIT_PROVIDER_UNAVAILABLE
    } else {
        EXIT_ERROR
    }
}

impl From<&TdeError> for Failure {
    fn from(e: &TdeError) -> Self {
        Self {
            kind: kind_of(e),
            message: one_line(&e.to_string()),
            code: exit_code(e),
        }
    }
}

impl Failure {
    /// An invalid command line; `message` is clap's rendering, of which the first line says
    /// what is wrong.
    pub(crate) fn usage(message: &str) -> Self {
        let first = message
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid command line");
        Self {
            kind: "usage".into(),
            message: format!(
                "{}; run heliosdb-cli --help for usage",
                first.trim_start_matches("error: ")
            ),
            code: EXIT_USAGE,
        }
    }

    /// A panic that reached `main`; `panic` is what the hook recorded.
    pub(crate) fn internal(panic: Option<String>) -> Self {
        let what = panic.unwrap_or_else(|| "a panic without a message".into());
        Self {
            kind: "internal".into(),
            message: one_line(&format!(
                "internal error: {what}. This is a bug in heliosdb-cli; please report it with \
                 the command you ran"
            )),
            code: EXIT_INTERNAL,
        }
    }

    /// Prints the failure in `out`'s format (JSON on stdout, text on stderr) and returns the
    /// exit code. Never panics, whatever state stdout and stderr are in.
    pub(crate) fn report(&self, out: &Out) -> u8 {
        if out.is_json() {
            out.json_value(json!({
                "error": { "kind": self.kind, "message": self.message }
            }));
        } else {
            let _ = writeln!(std::io::stderr().lock(), "error: {}", self.message);
        }
        self.code
    }
}

/// The message of the last panic, recorded by the hook of [`install_panic_hook`].
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default panic hook, which prints the message and a backtrace hint on stderr
/// even for panics that are caught (the storage engine panics on some damaged pages and the key
/// store turns that into an error). The hook records the message and location for `main`,
/// which reports a panic that reaches it as one line, and logs it at debug level
/// (`HELIOSDB_LOG=debug`, for bug reports); it prints nothing else.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let text = match info.location() {
            Some(l) => format!("{} (at {}:{})", one_line(&message), l.file(), l.line()),
            None => one_line(&message),
        };
        tracing::debug!("panic: {text}");
        if let Ok(mut slot) = LAST_PANIC.lock() {
            *slot = Some(text);
        }
    }));
}

/// The message of the last panic, if any.
pub(crate) fn take_last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|mut p| p.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_variant_names() {
        assert_eq!(
            kind_of(&TdeError::config("cache_limit", "must be at least 1")),
            "invalid_config"
        );
        assert_eq!(kind_of(&TdeError::corrupt("a", "b", "c")), "corrupt");
        assert_eq!(
            kind_of(&TdeError::io(
                "/x",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )),
            "io"
        );
        // The kinds scripts already match on keep their names.
        for (e, kind) in [
            (TdeError::Random("x".into()), "random"),
            (
                TdeError::Provider {
                    provider: "p".into(),
                    message: "m".into(),
                    hint: "h".into(),
                },
                "provider",
            ),
            (
                TdeError::InUse {
                    what: "w".into(),
                    location: "l".into(),
                    hint: "h".into(),
                },
                "in_use",
            ),
        ] {
            assert_eq!(kind_of(&e), kind);
        }
    }

    #[test]
    fn a_retryable_provider_outage_exits_5_and_other_errors_1() {
        let outage = |retryable| TdeError::ProviderUnavailable {
            provider: "HashiCorp Vault Transit at http://127.0.0.1:8200 (mount transit)".into(),
            reason: "connection refused".into(),
            retryable,
        };
        let f = Failure::from(&outage(true));
        assert_eq!((f.code, f.kind.as_str()), (5, "provider_unavailable"));
        assert_eq!(EXIT_PROVIDER_UNAVAILABLE, 5);
        // Not retryable (bad credentials, a broken configuration): retrying would not help.
        assert_eq!(Failure::from(&outage(false)).code, EXIT_ERROR);
        assert_eq!(Failure::from(&TdeError::config("x", "y")).code, EXIT_ERROR);
        assert_eq!(
            Failure::from(&TdeError::corrupt("a", "b", "c")).code,
            EXIT_ERROR
        );
    }

    #[test]
    fn messages_are_one_line() {
        let f = Failure::from(&TdeError::config("x", "first\n  second\n\nthird"));
        assert_eq!(f.message, "invalid configuration: x: first second third");
        let f = Failure::internal(Some("boom\nmore".into()));
        assert!(!f.message.contains('\n'), "{}", f.message);
        assert_eq!(f.code, EXIT_INTERNAL);
        assert_eq!(
            Failure::usage("error: unexpected argument\n\nUsage: x").message,
            "unexpected argument; run heliosdb-cli --help for usage"
        );
    }
}
