//! The conformance suite against real AWS KMS. Ignored: CI never runs it. To run it, with AWS
//! credentials in the environment (or a profile) allowed the actions listed in
//! `docs/providers/aws-kms.md`:
//!
//! ```sh
//! HELIOSDB_AWS_LIVE_KEY_ID=arn:aws:kms:eu-west-1:111122223333:key/... AWS_REGION=eu-west-1 \
//!   cargo test -p heliosdb-tde-aws-kms --test live -- --ignored live
//! ```
//!
//! The checks create KMS keys (one per MEK version they make, under a fresh alias prefix
//! `alias/heliosdb-live-<random>`); KMS bills each key per month until it is deleted, so
//! schedule their deletion afterwards (the test prints the prefix).

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use heliosdb_tde_aws_kms::AwsKmsMekProvider;
use heliosdb_tde_conformance::{provider, services};
use heliosdb_tde_core::{AwsKmsConfig, MekProvider, SecurityMode};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "talks to real AWS KMS: set HELIOSDB_AWS_LIVE_KEY_ID, AWS_REGION and credentials"]
async fn live() {
    let probe = (|| {
        let key = std::env::var("HELIOSDB_AWS_LIVE_KEY_ID")
            .map_err(|_| "HELIOSDB_AWS_LIVE_KEY_ID is not set".to_string())?;
        let region =
            std::env::var("AWS_REGION").map_err(|_| "AWS_REGION is not set".to_string())?;
        Ok::<_, String>((key, region))
    })();
    let Some((key, region)) = services::require("AWS KMS (live)", probe) else {
        return;
    };
    let mut c = AwsKmsConfig::new(region, key);
    c.alias_prefix = format!("alias/heliosdb-live-{}", common::random());
    println!("live AWS KMS test: aliases under {}", c.alias_prefix);
    let p = AwsKmsMekProvider::open(&c, &common::fresh("live"), SecurityMode::Production)
        .await
        .unwrap_or_else(|e| panic!("open against AWS KMS failed: {e}"));
    assert!(p.health().await.unwrap().healthy);
    let p: Arc<dyn MekProvider> = Arc::new(p);
    provider::run_all(p).await;
}
