//! The transport under the SDK: one `reqwest` client (timeouts, `ca_cert`, no redirects, an
//! optional resolver) shared by the `KeyClient` and the credential, and the retry policy that
//! honours `max_retries`, `max_retry_secs` and `Retry-After` with a cap.

use crate::settings::Settings;
use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::policies::{RetryHeaders, RetryPolicy};
use azure_core::http::{ClientOptions, RetryOptions, StatusCode, Transport};
use azure_core::time::Duration as AzDuration;
use heliosdb_tde_core::{AzureKeyVaultConfig, Result, TdeError};
use std::sync::Arc;
use std::time::Duration;

/// The first backoff; it doubles on every retry.
pub(crate) const BASE_DELAY: Duration = Duration::from_millis(250);
/// The longest backoff between two tries (a `Retry-After` may ask for more, up to the budget).
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(8);

/// Retries of 408, 429 and 5xx answers and of connection errors: at most `max_retries`, none
/// once `budget` has passed since the first answer, and no wait longer than `budget` whatever
/// `Retry-After` asks.
#[derive(Debug)]
pub(crate) struct HeliosRetry {
    pub(crate) max_retries: u32,
    pub(crate) budget: Duration,
    headers: RetryHeaders,
}

impl HeliosRetry {
    pub(crate) fn new(max_retries: u32, budget: Duration) -> Self {
        Self {
            max_retries,
            budget,
            headers: RetryHeaders {
                retry_headers: vec![X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER],
            },
        }
    }

    /// The backoff before retry number `retry` (1 for the first): `BASE_DELAY * 2^(retry-1)`,
    /// capped at [`MAX_DELAY`], plus up to 1/8 of it as jitter.
    pub(crate) fn backoff(&self, retry: u32, jitter_seed: u64) -> Duration {
        let exp = retry.saturating_sub(1).min(16);
        let d = BASE_DELAY.saturating_mul(1u32 << exp).min(MAX_DELAY);
        let jitter_ms = u64::try_from(d.as_millis() / 8).unwrap_or(0);
        let j = if jitter_ms == 0 {
            0
        } else {
            jitter_seed % (jitter_ms + 1)
        };
        d + Duration::from_millis(j)
    }

    /// How long to wait before retry number `retry`: the larger of the backoff and the
    /// server's `Retry-After`, never more than the budget.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>, seed: u64) -> Duration {
        let b = self.backoff(retry, seed);
        retry_after.map_or(b, |ra| ra.max(b)).min(self.budget)
    }
}

fn to_std(d: AzDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn to_az(d: Duration) -> AzDuration {
    AzDuration::try_from(d).unwrap_or(AzDuration::ZERO)
}

fn seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl RetryPolicy for HeliosRetry {
    fn is_expired(&self, elapsed: AzDuration, retry_count: u32) -> bool {
        retry_count >= self.max_retries || to_std(elapsed) >= self.budget
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        &[]
    }

    fn sleep_duration(&self, retry_count: u32) -> AzDuration {
        to_az(self.backoff(retry_count, seed()))
    }

    async fn wait(&self, retry_count: u32, retry_after: Option<AzDuration>) {
        let d = self.delay(retry_count, retry_after.map(to_std), seed());
        tokio::time::sleep(d).await;
    }
}

/// Builds the HTTP client: per-request and connect timeouts, `ca_cert` added to the platform
/// roots, redirects off, no proxy from the environment, and `resolver` when given.
pub(crate) fn http_client(
    config: &AzureKeyVaultConfig,
    settings: &Settings,
    resolver: Option<Arc<dyn reqwest::dns::Resolve>>,
) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| TdeError::InvalidConfig {
            field: "kms_config.ca_cert".into(),
            reason: format!("cannot read the CA bundle {}: {e}", ca.display()),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TdeError::InvalidConfig {
                field: "kms_config.ca_cert".into(),
                reason: format!("{} is not a PEM certificate bundle: {e}", ca.display()),
            })?;
        if certs.is_empty() {
            return Err(TdeError::InvalidConfig {
                field: "kms_config.ca_cert".into(),
                reason: format!("{} holds no PEM certificate", ca.display()),
            });
        }
        b = b.tls_certs_merge(certs);
    }
    if let Some(r) = resolver {
        b = b.dns_resolver(r);
    }
    b.build().map_err(|e| TdeError::InvalidConfig {
        field: "kms_config.vault_url".into(),
        reason: format!("cannot build an HTTP client: {e}"),
    })
}

/// The SDK client options: our transport and our retry policy.
pub(crate) fn client_options(http: &reqwest::Client, settings: &Settings) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        retry: RetryOptions::custom(Arc::new(HeliosRetry::new(
            settings.max_retries,
            settings.max_retry,
        ))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_count_or_the_budget() {
        let p = HeliosRetry::new(3, Duration::from_secs(30));
        assert!(!p.is_expired(AzDuration::ZERO, 0));
        assert!(!p.is_expired(AzDuration::seconds(29), 2));
        assert!(p.is_expired(AzDuration::ZERO, 3));
        assert!(p.is_expired(AzDuration::seconds(30), 0));
        let none = HeliosRetry::new(0, Duration::from_secs(30));
        assert!(none.is_expired(AzDuration::ZERO, 0));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = HeliosRetry::new(10, Duration::from_secs(60));
        assert_eq!(p.backoff(1, 0), Duration::from_millis(250));
        assert_eq!(p.backoff(2, 0), Duration::from_millis(500));
        assert_eq!(p.backoff(3, 0), Duration::from_secs(1));
        assert_eq!(p.backoff(10, 0), MAX_DELAY);
        assert_eq!(p.backoff(40, 0), MAX_DELAY);
        // Jitter adds at most an eighth.
        for seed in [1, 7, 31, 999_999] {
            let d = p.backoff(2, seed);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(562),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped_by_the_budget() {
        let p = HeliosRetry::new(3, Duration::from_secs(5));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1)), 0),
            Duration::from_secs(1)
        );
        // A short Retry-After never shortens the backoff.
        assert_eq!(
            p.delay(3, Some(Duration::from_millis(10)), 0),
            Duration::from_secs(1)
        );
        // An unbounded Retry-After is cut to the budget.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), 0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_policy_reads_every_retry_after_header() {
        let p = HeliosRetry::new(1, Duration::from_secs(1));
        let h = p.retry_headers().map(|h| h.retry_headers.len());
        assert_eq!(h, Some(3));
        assert!(p.retry_status_codes().is_empty());
    }
}
