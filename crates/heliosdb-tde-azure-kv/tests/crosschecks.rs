//! Independent checks of the test server's cryptography: the SDK's `KeyClient` talks to the
//! server (Python `cryptography`, OpenSSL) and the results are checked against a fixed known
//! answer (RFC 3394 §4.6) and against `aws-lc-rs` (AWS-LC), so the server is never checked only
//! against itself. These tests need the server only, not the provider.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::key_wrap::{AES_256, KeyEncryptionKey, KeyWrap as _};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicKeyComponents};
use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, JsonWebKey, KeyClientDecryptOptions, KeyClientEncryptOptions,
    KeyClientGetKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters, KeyOperationResult,
    KeyType,
};
use common::content;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 3394 §4.6: 256 bits of key data wrapped with a 256-bit KEK.
const RFC3394_KEK: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";
const RFC3394_DATA: &str = "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F";
const RFC3394_WRAPPED: &str =
    "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21";

fn oct_jwk(k: &[u8], ops: &[&str]) -> JsonWebKey {
    JsonWebKey {
        kty: Some(KeyType::OctHsm),
        k: Some(k.to_vec()),
        key_ops: Some(ops.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn op(alg: EncryptionAlgorithm, value: &[u8]) -> KeyOperationParameters {
    KeyOperationParameters {
        algorithm: Some(alg),
        value: Some(value.to_vec()),
        ..Default::default()
    }
}

async fn wrap(kc: &KeyClient, name: &str, version: &str, p: KeyOperationParameters) -> Vec<u8> {
    kc.wrap_key(
        name,
        content(p),
        Some(KeyClientWrapKeyOptions {
            key_version: Some(version.into()),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("wrap_key: {e:?}"))
    .into_model()
    .unwrap()
    .result
    .expect("a wrapped value")
}

async fn unwrap_sdk(
    kc: &KeyClient,
    name: &str,
    version: &str,
    p: KeyOperationParameters,
) -> azure_core::Result<Vec<u8>> {
    let r = kc.unwrap_key(name, version, content(p), None).await?;
    Ok(r.into_model()?.result.expect("an unwrapped value"))
}

async fn encrypt(
    kc: &KeyClient,
    name: &str,
    version: &str,
    p: KeyOperationParameters,
) -> KeyOperationResult {
    kc.encrypt(
        name,
        content(p),
        Some(KeyClientEncryptOptions {
            key_version: Some(version.into()),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("encrypt: {e:?}"))
    .into_model()
    .unwrap()
}

async fn decrypt(
    kc: &KeyClient,
    name: &str,
    version: &str,
    p: KeyOperationParameters,
) -> azure_core::Result<Vec<u8>> {
    let r = kc
        .decrypt(
            name,
            version,
            content(p),
            None::<KeyClientDecryptOptions<'_>>,
        )
        .await?;
    Ok(r.into_model()?.result.expect("a decrypted value"))
}

fn status(e: &azure_core::Error) -> Option<u16> {
    e.http_status().map(u16::from)
}

#[tokio::test]
async fn rfc3394_vector_through_a256kw() {
    let Some(s) = common::server() else { return };
    let hsm = s.hsm();
    let kc = hsm.key_client().await;
    let kek = hex(RFC3394_KEK);
    let data = hex(RFC3394_DATA);
    let expected = hex(RFC3394_WRAPPED);
    let key = hsm
        .import("rfc3394-kek", oct_jwk(&kek, &["wrapKey", "unwrapKey"]))
        .await;
    let version = common::version_of(&key);

    // The server's A256KW gives the RFC's ciphertext...
    let wrapped = wrap(
        &kc,
        "rfc3394-kek",
        &version,
        op(EncryptionAlgorithm::A256Kw, &data),
    )
    .await;
    assert_eq!(wrapped, expected, "A256KW through the SDK is not RFC 3394");
    // ...and so does aws-lc-rs, an implementation of its own.
    let mut out = [0u8; 40];
    let local = KeyEncryptionKey::new(&AES_256, &kek)
        .unwrap()
        .wrap(&data, &mut out)
        .unwrap();
    assert_eq!(local, &expected[..]);

    // The server unwraps the RFC's ciphertext to the key data.
    let back = unwrap_sdk(
        &kc,
        "rfc3394-kek",
        &version,
        op(EncryptionAlgorithm::A256Kw, &expected),
    )
    .await
    .unwrap();
    assert_eq!(back, data);

    // A changed bit fails the integrity check on both sides.
    let mut bad = expected.clone();
    bad[5] ^= 1;
    let e = unwrap_sdk(
        &kc,
        "rfc3394-kek",
        &version,
        op(EncryptionAlgorithm::A256Kw, &bad),
    )
    .await
    .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    let mut out = [0u8; 40];
    assert!(
        KeyEncryptionKey::new(&AES_256, &kek)
            .unwrap()
            .unwrap(&bad, &mut out)
            .is_err()
    );
}

#[tokio::test]
async fn a256kw_local_wrap_unwraps_in_the_server() {
    let Some(s) = common::server() else { return };
    let hsm = s.hsm();
    let kc = hsm.key_client().await;
    let mut kek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut kek).unwrap();
    let mut data = [0u8; 64];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    let key = hsm
        .import("kw-random", oct_jwk(&kek, &["wrapKey", "unwrapKey"]))
        .await;
    let version = common::version_of(&key);
    let mut out = [0u8; 72];
    let local = KeyEncryptionKey::new(&AES_256, &kek)
        .unwrap()
        .wrap(&data, &mut out)
        .unwrap()
        .to_vec();
    let back = unwrap_sdk(
        &kc,
        "kw-random",
        &version,
        op(EncryptionAlgorithm::A256Kw, &local),
    )
    .await
    .unwrap();
    assert_eq!(back, data);
    let remote = wrap(
        &kc,
        "kw-random",
        &version,
        op(EncryptionAlgorithm::A256Kw, &data),
    )
    .await;
    assert_eq!(remote, local, "AES-KW is deterministic: both sides agree");
}

/// `n` without the leading zero byte a JWK may carry.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

#[tokio::test]
async fn rsa_oaep_256_local_encrypt_unwraps_in_the_server() {
    let Some(s) = common::server() else { return };
    let vault = s.vault();
    let kc = vault.key_client().await;
    let key = vault.create_rsa("oaep-check", 2048).await;
    let version = common::version_of(&key);
    // The public JWK as `get_key` returns it (the same version, by id).
    let got = kc
        .get_key(
            "oaep-check",
            Some(KeyClientGetKeyOptions {
                key_version: Some(version.clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let jwk = got.key.expect("a JWK");
    assert_eq!(jwk.kty, Some(KeyType::Rsa));
    assert!(jwk.d.is_none(), "get_key returned private key material");
    let n = jwk.n.expect("n");
    let e = jwk.e.expect("e");
    let public = PublicKeyComponents {
        n: strip_zeros(&n),
        e: strip_zeros(&e),
    }
    .try_into()
    .expect("a valid RSA public key");
    let oaep = OaepPublicEncryptingKey::new(public).unwrap();
    assert_eq!(oaep.ciphertext_size(), 256, "a 2048-bit key");

    let mut msg = [0u8; 64];
    aws_lc_rs::rand::fill(&mut msg).unwrap();
    let mut buf = vec![0u8; oaep.ciphertext_size()];
    let ct = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, &msg, &mut buf, None)
        .unwrap()
        .to_vec();
    let back = unwrap_sdk(
        &kc,
        "oaep-check",
        &version,
        op(EncryptionAlgorithm::RsaOaep256, &ct),
    )
    .await
    .unwrap();
    assert_eq!(
        back, msg,
        "the server's RSA-OAEP-256 disagrees with aws-lc-rs"
    );

    // A ciphertext made with another OAEP hash (SHA-1) does not decrypt as RSA-OAEP-256: the
    // server really checks the padding with SHA-256.
    let mut buf = vec![0u8; oaep.ciphertext_size()];
    let sha1 = oaep
        .encrypt(&aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1, &msg, &mut buf, None)
        .unwrap()
        .to_vec();
    let e = unwrap_sdk(
        &kc,
        "oaep-check",
        &version,
        op(EncryptionAlgorithm::RsaOaep256, &sha1),
    )
    .await
    .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
}

#[tokio::test]
async fn a256gcm_server_encrypt_opens_locally_and_aad_is_bound() {
    let Some(s) = common::server() else { return };
    let hsm = s.hsm();
    let kc = hsm.key_client().await;
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    let key = hsm
        .import("gcm-check", oct_jwk(&k, &["encrypt", "decrypt"]))
        .await;
    let version = common::version_of(&key);
    let plaintext = b"thirty-two bytes of table key!!!".to_vec();
    let aad = b"heliosdb-tek|users@v1|mek-v1".to_vec();
    let mut p = op(EncryptionAlgorithm::A256Gcm, &plaintext);
    p.additional_authenticated_data = Some(aad.clone());
    let r = encrypt(&kc, "gcm-check", &version, p).await;
    let ct = r.result.clone().expect("ciphertext");
    let iv = r.iv.clone().expect("the service makes the iv");
    let tag = r.authentication_tag.clone().expect("a tag");
    assert_eq!(iv.len(), 12);
    assert_eq!(tag.len(), 16);
    assert_ne!(ct, plaintext);

    // aws-lc-rs opens it with the same aad...
    let local = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap());
    let mut buf = [ct.clone(), tag.clone()].concat();
    let opened = local
        .open_in_place(
            Nonce::try_assume_unique_for_key(&iv).unwrap(),
            Aad::from(&aad),
            &mut buf,
        )
        .expect("aws-lc-rs opens the server's A256GCM");
    assert_eq!(opened, &plaintext[..]);
    // ...and refuses it with another aad.
    let mut buf = [ct.clone(), tag.clone()].concat();
    assert!(
        local
            .open_in_place(
                Nonce::try_assume_unique_for_key(&iv).unwrap(),
                Aad::from(b"heliosdb-tek|orders@v1|mek-v1"),
                &mut buf,
            )
            .is_err(),
        "aws-lc-rs opened the ciphertext under another aad"
    );

    // The server decrypts it with the same aad and refuses another aad (400).
    let with = |aad: &[u8]| KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::A256Gcm),
        value: Some(ct.clone()),
        iv: Some(iv.clone()),
        authentication_tag: Some(tag.clone()),
        additional_authenticated_data: Some(aad.to_vec()),
    };
    assert_eq!(
        decrypt(&kc, "gcm-check", &version, with(&aad))
            .await
            .unwrap(),
        plaintext
    );
    let e = decrypt(&kc, "gcm-check", &version, with(b"heliosdb-tek|orders@v1"))
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
}

#[tokio::test]
async fn a256gcm_local_seal_decrypts_in_the_server() {
    let Some(s) = common::server() else { return };
    let hsm = s.hsm();
    let kc = hsm.key_client().await;
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    let key = hsm
        .import("gcm-seal", oct_jwk(&k, &["encrypt", "decrypt"]))
        .await;
    let version = common::version_of(&key);
    let mut iv = [0u8; 12];
    aws_lc_rs::rand::fill(&mut iv).unwrap();
    let aad = b"bound".to_vec();
    let plaintext = b"sealed by aws-lc-rs".to_vec();
    let local = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap());
    let mut buf = plaintext.clone();
    let tag = local
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut buf)
        .unwrap();
    let p = KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::A256Gcm),
        value: Some(buf.clone()),
        iv: Some(iv.to_vec()),
        authentication_tag: Some(tag.as_ref().to_vec()),
        additional_authenticated_data: Some(aad),
    };
    assert_eq!(
        decrypt(&kc, "gcm-seal", &version, p).await.unwrap(),
        plaintext
    );
}
