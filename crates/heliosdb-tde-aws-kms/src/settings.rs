//! Checking an [`AwsKmsConfig`], the alias scheme, and the AWS SDK client it describes.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use heliosdb_tde_core::{AwsKmsConfig, MekId, MekRef, MekVersion, Result, SecurityMode, TdeError};
use std::time::Duration;

/// The SDK's attempts per call when neither the configuration nor `AWS_MAX_ATTEMPTS` says.
pub(crate) const DEFAULT_ATTEMPTS: u32 = 3;
/// KMS accepts automatic rotation periods from 90 to 2560 days.
pub(crate) const ROTATION_DAYS: std::ops::RangeInclusive<u32> = 90..=2560;

fn field(name: &str) -> String {
    format!("kms_config.{name}")
}

/// Checks the fields of an AWS KMS configuration; errors are [`TdeError::InvalidConfig`] naming
/// the field (`kms_config.<field>`). Production mode refuses a plain `http://` endpoint.
pub fn check_config(config: &AwsKmsConfig, mode: SecurityMode) -> Result<()> {
    if config.region.trim().is_empty() {
        return Err(TdeError::config(
            field("region"),
            "is empty; name the key's region, e.g. us-east-1 (AWS_REGION overrides it)",
        ));
    }
    if !config
        .region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(TdeError::config(
            field("region"),
            format!(
                "{:?} is not an AWS region name (lower-case letters, digits and '-', e.g. us-east-1)",
                config.region
            ),
        ));
    }
    if config.key_id.trim().is_empty() {
        return Err(TdeError::config(
            field("key_id"),
            "is empty; give the KMS key that holds the default MEK (key id, key ARN or alias/<name>; HELIOSDB_KMS_KEY_ID overrides it)",
        ));
    }
    if let Some(region) = arn_region(&config.key_id)
        && region != config.region
    {
        return Err(TdeError::config(
            field("key_id"),
            format!(
                "the key ARN is in region {region} but kms_config.region is {}; KMS keys are regional: use a key in {}, or set the region to {region}",
                config.region, config.region
            ),
        ));
    }
    if let Some(endpoint) = &config.endpoint {
        let scheme_ok = endpoint.starts_with("https://") || endpoint.starts_with("http://");
        let host = endpoint.split_once("://").map_or("", |(_, rest)| rest);
        if !scheme_ok
            || host.is_empty()
            || host.starts_with('/')
            || endpoint.contains(char::is_whitespace)
        {
            return Err(TdeError::config(
                field("endpoint"),
                format!(
                    "{endpoint:?} is not an endpoint URL; write https://<host>[:port] (a VPC endpoint), or leave it out for AWS's own endpoint"
                ),
            ));
        }
        if endpoint.starts_with("http://") && mode == SecurityMode::Production {
            return Err(TdeError::config(
                field("endpoint"),
                format!(
                    "{endpoint} is plain HTTP, which production mode refuses: the table keys would cross the network in the clear. Use an https:// endpoint, or run in development mode for a local test server"
                ),
            ));
        }
    }
    if let Some(profile) = &config.profile
        && profile.trim().is_empty()
    {
        return Err(TdeError::config(
            field("profile"),
            "is empty; name an AWS profile or leave the field out for the SDK's default chain",
        ));
    }
    check_alias_prefix(&config.alias_prefix)?;
    if config.timeout_secs == 0 {
        return Err(TdeError::config(
            field("timeout_secs"),
            "is 0; give the seconds a whole KMS call may take, e.g. 10",
        ));
    }
    if config.connect_timeout_ms == 0 {
        return Err(TdeError::config(
            field("connect_timeout_ms"),
            "is 0; give the milliseconds a connection attempt may take, e.g. 3000",
        ));
    }
    if config.max_attempts == Some(0) {
        return Err(TdeError::config(
            field("max_attempts"),
            "is 0; give the attempts per KMS call (1 disables retries; 3 is the SDK's default)",
        ));
    }
    if let Some(mode) = &config.retry_mode {
        parse_retry_mode(mode).ok_or_else(|| {
            TdeError::config(
                field("retry_mode"),
                format!("{mode:?} is not a retry mode; use \"standard\" or \"adaptive\""),
            )
        })?;
    }
    if let Some(days) = config.rotation_period_days
        && !ROTATION_DAYS.contains(&days)
    {
        return Err(TdeError::config(
            field("rotation_period_days"),
            format!(
                "{days} is outside what KMS accepts ({} to {} days)",
                ROTATION_DAYS.start(),
                ROTATION_DAYS.end()
            ),
        ));
    }
    Ok(())
}

fn check_alias_prefix(prefix: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(TdeError::config(
            field("alias_prefix"),
            format!("{prefix:?} {why}; the default is alias/heliosdb"),
        ))
    };
    let Some(rest) = prefix.strip_prefix("alias/") else {
        return bad("does not start with alias/");
    };
    if rest.is_empty() || rest.ends_with('/') {
        return bad("needs a name after alias/ and no trailing /");
    }
    if rest.starts_with("aws/") || rest == "aws" {
        return bad("is in alias/aws/, which AWS reserves for its own keys");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return bad(
            "may hold only letters, digits and / _ - (the characters every KMS implementation accepts in alias names)",
        );
    }
    // Room for "/<mek id>/v<version>" within KMS's 256 characters.
    if prefix.len() > 120 {
        return bad("is longer than 120 characters");
    }
    Ok(())
}

/// The region of a KMS key or alias ARN (`arn:<partition>:kms:<region>:...`), if `id` is one.
pub(crate) fn arn_region(id: &str) -> Option<&str> {
    let mut parts = id.split(':');
    (parts.next()? == "arn").then_some(())?;
    let _partition = parts.next()?;
    (parts.next()? == "kms").then_some(())?;
    parts.next()
}

fn parse_retry_mode(mode: &str) -> Option<RetryConfig> {
    match mode.trim().to_ascii_lowercase().as_str() {
        "standard" => Some(RetryConfig::standard()),
        "adaptive" => Some(RetryConfig::adaptive()),
        _ => None,
    }
}

/// The SDK's retry configuration: the configured mode and attempts, else `AWS_RETRY_MODE` and
/// `AWS_MAX_ATTEMPTS`, else standard with 3 attempts.
pub(crate) fn retry_config(config: &AwsKmsConfig) -> Result<(RetryConfig, u32, String)> {
    let env_mode = std::env::var("AWS_RETRY_MODE")
        .ok()
        .filter(|s| !s.is_empty());
    let (mode_name, mode) = match (&config.retry_mode, env_mode) {
        (Some(m), _) => (m.clone(), parse_retry_mode(m)),
        (None, Some(m)) => (
            m.clone(),
            Some(parse_retry_mode(&m).ok_or_else(|| {
                TdeError::config(
                    "AWS_RETRY_MODE",
                    format!("{m:?} is not a retry mode; use standard or adaptive"),
                )
            })?),
        ),
        (None, None) => ("standard".to_string(), Some(RetryConfig::standard())),
    };
    let mode = mode.ok_or_else(|| {
        TdeError::config(
            field("retry_mode"),
            format!("{mode_name:?} is not a retry mode; use \"standard\" or \"adaptive\""),
        )
    })?;
    let attempts = match config.max_attempts {
        Some(n) => n,
        None => match std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    TdeError::config(
                        "AWS_MAX_ATTEMPTS",
                        format!("{v:?} is not a positive number of attempts"),
                    )
                })?,
            None => DEFAULT_ATTEMPTS,
        },
    };
    Ok((mode.with_max_attempts(attempts), attempts, mode_name))
}

/// Builds the KMS client the configuration describes, in the current Tokio runtime (its
/// connection pool belongs to that runtime).
pub(crate) async fn client(config: &AwsKmsConfig) -> Result<aws_sdk_kms::Client> {
    let (retry, _, _) = retry_config(config)?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .operation_timeout(Duration::from_secs(config.timeout_secs))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk = loader.load().await;
    Ok(aws_sdk_kms::Client::new(&sdk))
}

/// The alias of one MEK version: `<prefix>/<id with '.' written '/'>/v<N>`.
///
/// Alias names hold only letters, digits and `/ _ -` (AWS's API pattern also allows `:`, but
/// other KMS implementations refuse it), and MEK ids hold letters, digits and `_ - .`. Every
/// `.` becomes a `/`: MEK ids never hold `/`, so the encoding is injective, and the version is
/// always the last `/v<digits>` component, so it decodes back.
pub(crate) fn alias_name(prefix: &str, mek: &MekRef) -> String {
    format!("{}v{}", alias_dir(prefix, &mek.id), mek.version.get())
}

/// The alias "directory" of one MEK: `<prefix>/<encoded id>/`. (The directory of `a` is a
/// prefix of the directory of `a.b`: readers check the decoded id, not the prefix alone.)
pub(crate) fn alias_dir(prefix: &str, id: &MekId) -> String {
    format!("{prefix}/{}/", id.as_str().replace('.', "/"))
}

/// The MEK version an alias names, if it is one of this prefix's.
pub(crate) fn parse_alias(prefix: &str, alias: &str) -> Option<MekRef> {
    let rest = alias.strip_prefix(prefix)?.strip_prefix('/')?;
    let (id, version) = rest.rsplit_once("/v")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = MekId::new(id.replace('/', ".")).ok()?;
    let version = MekVersion::new(version.parse().ok()?).ok()?;
    Some(MekRef::new(id, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> AwsKmsConfig {
        AwsKmsConfig::new("us-east-1", "alias/db")
    }

    type Change = Box<dyn Fn(&mut AwsKmsConfig)>;

    fn field_of(c: &AwsKmsConfig, mode: SecurityMode) -> String {
        match check_config(c, mode) {
            Err(TdeError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let dev = SecurityMode::Development;
        assert!(check_config(&ok(), SecurityMode::Production).is_ok());
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.region = String::new()), "kms_config.region"),
            (
                Box::new(|c| c.region = "US East".into()),
                "kms_config.region",
            ),
            (Box::new(|c| c.key_id = " ".into()), "kms_config.key_id"),
            (
                Box::new(|c| c.key_id = "arn:aws:kms:eu-west-1:111122223333:key/x".into()),
                "kms_config.key_id",
            ),
            (
                Box::new(|c| c.endpoint = Some("localhost:4566".into())),
                "kms_config.endpoint",
            ),
            (
                Box::new(|c| c.profile = Some(String::new())),
                "kms_config.profile",
            ),
            (
                Box::new(|c| c.alias_prefix = "heliosdb".into()),
                "kms_config.alias_prefix",
            ),
            (
                Box::new(|c| c.alias_prefix = "alias/aws/x".into()),
                "kms_config.alias_prefix",
            ),
            (
                Box::new(|c| c.alias_prefix = "alias/a.b".into()),
                "kms_config.alias_prefix",
            ),
            (
                Box::new(|c| c.alias_prefix = "alias/a:b".into()),
                "kms_config.alias_prefix",
            ),
            (
                Box::new(|c| c.alias_prefix = "alias/x/".into()),
                "kms_config.alias_prefix",
            ),
            (Box::new(|c| c.timeout_secs = 0), "kms_config.timeout_secs"),
            (
                Box::new(|c| c.connect_timeout_ms = 0),
                "kms_config.connect_timeout_ms",
            ),
            (
                Box::new(|c| c.max_attempts = Some(0)),
                "kms_config.max_attempts",
            ),
            (
                Box::new(|c| c.retry_mode = Some("fast".into())),
                "kms_config.retry_mode",
            ),
            (
                Box::new(|c| c.rotation_period_days = Some(30)),
                "kms_config.rotation_period_days",
            ),
            (
                Box::new(|c| c.rotation_period_days = Some(3000)),
                "kms_config.rotation_period_days",
            ),
        ];
        for (change, expected) in cases {
            let mut c = ok();
            change(&mut c);
            assert_eq!(field_of(&c, dev), expected, "{c:?}");
        }
    }

    #[test]
    fn plain_http_is_refused_in_production_only() {
        let mut c = ok();
        c.endpoint = Some("http://127.0.0.1:5000".into());
        assert!(check_config(&c, SecurityMode::Development).is_ok());
        assert_eq!(
            field_of(&c, SecurityMode::Production),
            "kms_config.endpoint"
        );
        c.endpoint = Some("https://vpce-1.kms.us-east-1.vpce.amazonaws.com".into());
        assert!(check_config(&c, SecurityMode::Production).is_ok());
    }

    #[test]
    fn the_region_check_names_both_regions() {
        let mut c = ok();
        c.key_id = "arn:aws:kms:eu-west-1:111122223333:key/abc".into();
        let text = check_config(&c, SecurityMode::Development)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("eu-west-1") && text.contains("us-east-1"),
            "{text}"
        );
        assert_eq!(arn_region("alias/x"), None);
        assert_eq!(
            arn_region("arn:aws-us-gov:kms:us-gov-west-1:1:key/x"),
            Some("us-gov-west-1")
        );
    }

    #[test]
    fn aliases_round_trip_and_dots_are_encoded() {
        let mek = MekRef::new(
            MekId::new("prod.mek-1").unwrap(),
            MekVersion::new(12).unwrap(),
        );
        let alias = alias_name("alias/heliosdb", &mek);
        assert_eq!(alias, "alias/heliosdb/prod/mek-1/v12");
        assert_eq!(parse_alias("alias/heliosdb", &alias), Some(mek));
        // An id that looks like a version component still decodes: the version is the last
        // component.
        let odd = MekRef::new(MekId::new("a.v2").unwrap(), MekVersion::FIRST);
        assert_eq!(alias_name("alias/p", &odd), "alias/p/a/v2/v1");
        assert_eq!(parse_alias("alias/p", "alias/p/a/v2/v1"), Some(odd));
        for other in [
            "alias/heliosdb//v1",
            "alias/heliosdb/x:y/v1",
            "alias/heliosdb/x/v",
            "alias/heliosdb/x/v1a",
            "alias/heliosdbx/v1",
            "alias/other/x/v1",
            "alias/heliosdb/x/v0",
        ] {
            assert_eq!(parse_alias("alias/heliosdb", other), None, "{other}");
        }
    }
}
