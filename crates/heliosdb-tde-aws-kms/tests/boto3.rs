//! An independent client: boto3 (from the test peers' venv) decrypts a TEK wrapped by the
//! provider, given the key and the same encryption context, and gets the TEK's bytes; with
//! another table's context KMS refuses (`InvalidCiphertextException`).

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Payload, ctx, tek};
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Reads one JSON request on stdin and prints the plaintext in hex, or `ERROR <code>`.
const SCRIPT: &str = r#"
import json, sys
import boto3, botocore
req = json.load(sys.stdin)
kms = boto3.client("kms", endpoint_url=req["endpoint"], region_name=req["region"])
try:
    out = kms.decrypt(CiphertextBlob=bytes.fromhex(req["blob"]), KeyId=req["key_id"],
                      EncryptionContext=req["context"])
    print("PLAINTEXT " + out["Plaintext"].hex())
except botocore.exceptions.ClientError as e:
    print("ERROR " + e.response["Error"]["Code"])
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn boto3_decrypt(
    python: &str,
    m: &common::Moto,
    key_id: &str,
    blob: &[u8],
    context: &BTreeMap<String, String>,
) -> String {
    let context: Vec<String> = context
        .iter()
        .map(|(k, v)| format!("{}: {}", json_string(k), json_string(v)))
        .collect();
    let request = format!(
        "{{\"endpoint\": {}, \"region\": {}, \"key_id\": {}, \"blob\": \"{}\", \"context\": {{{}}}}}",
        json_string(&m.endpoint),
        json_string(&m.region),
        json_string(key_id),
        hex(blob),
        context.join(", ")
    );
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn boto3_decrypts_what_the_provider_wrapped() {
    let Some(m) = common::moto() else { return };
    let Some(python) = common::python() else {
        return;
    };
    let f = m.fixture().await;
    let p = f.open().await;
    let mek = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("orders@v3");
    let c = ctx("orders@v3");
    let w = p.wrap_tek(&mek, &key, &c).await.unwrap();
    let payload = Payload::parse(&w.payload);
    assert_eq!(payload.format, 1);
    assert_eq!(payload.arn, f.key.arn);
    let context = c.context_map(&mek);
    assert_eq!(
        context.get("heliosdb:table").map(String::as_str),
        Some("orders")
    );

    // The same key (by id and by ARN) and encryption context: the TEK's 32 bytes.
    let expected = format!("PLAINTEXT {}", hex(key.bytes().expose_secret()));
    for key_id in [&f.key.id, &f.key.arn] {
        let out = boto3_decrypt(&python, &m, key_id, &payload.blob, &context);
        assert_eq!(out, expected, "KeyId {key_id}");
    }
    // And the provider unwraps to the same bytes.
    let back = p.unwrap_tek(&w, &c).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());

    // Another table's context: refused by KMS.
    let other = ctx("customers@v3").context_map(&mek);
    let out = boto3_decrypt(&python, &m, &f.key.arn, &payload.blob, &other);
    assert_eq!(out, "ERROR InvalidCiphertextException");
    // No context at all: refused too.
    let out = boto3_decrypt(&python, &m, &f.key.arn, &payload.blob, &BTreeMap::new());
    assert_eq!(out, "ERROR InvalidCiphertextException");
}
