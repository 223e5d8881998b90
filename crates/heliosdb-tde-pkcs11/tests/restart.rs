//! A new process finds an existing MEK by label: its own test binary, so that no other test
//! writes to the token while the child process starts and reads it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::provider;
use heliosdb_tde_core::{EncryptionAlgorithm, KeyState, MekId, MekProvider, TableKey, WrapContext};
use heliosdb_tde_pkcs11::Pkcs11MekProvider;

mod common;

use common::{pin, settings};

async fn hsm() -> Option<Pkcs11MekProvider> {
    common::provider().await
}

const CHILD: &str = "HELIOSDB_PKCS11_CHILD";

/// The other process of `a_new_process_finds_the_mek_by_label`: opens the token afresh and
/// unwraps what the parent wrapped.
#[tokio::test]
async fn child_unwraps_by_label() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (mek_id, rest) = spec.split_once('|').unwrap();
    let (envelope, expected) = rest.split_once('|').unwrap();
    let p = Pkcs11MekProvider::open(settings(&pin())).await.unwrap();
    let info = p.mek_info(&mek_id.parse().unwrap()).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Active);
    let w = heliosdb_tde_core::WrappedTek::decode(&unhex(envelope)).unwrap();
    let ctx = WrapContext::table_key(&"r@v1".parse().unwrap());
    let back = p.unwrap_tek(&w, &ctx).await.unwrap();
    assert_eq!(back.bytes().expose_secret().to_vec(), unhex(expected));
    println!("CHILD-OK");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_new_process_finds_the_mek_by_label() {
    let Some(p) = hsm().await else { return };
    let id: MekId = provider::fresh_mek_id("hsm_restart");
    let mek = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let tek = TableKey::generate("r@v1".parse().unwrap(), EncryptionAlgorithm::Aes256Gcm).unwrap();
    let w = p
        .wrap_tek(&mek, &tek, &WrapContext::table_key(tek.id()))
        .await
        .unwrap();
    drop(p);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_unwraps_by_label", "--nocapture"])
        .env(
            CHILD,
            format!(
                "{id}|{}|{}",
                hex(&w.encode()),
                hex(tek.bytes().expose_secret())
            ),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
