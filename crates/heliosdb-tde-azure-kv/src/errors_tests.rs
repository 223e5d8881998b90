use super::*;

fn call(op: Op, mhsm: bool) -> Call<'static> {
    Call {
        provider: "Azure Key Vault (https://v.vault.azure.net)",
        op,
        key: "heliosdb-mek",
        vault: "https://v.vault.azure.net",
        credential: "client_secret",
        tenant: Some("contoso-tenant"),
        managed_hsm: mhsm,
    }
}

#[test]
fn statuses_and_inner_codes_map_to_typed_errors() {
    let c = call(Op::Wrap, false);
    let e = http_error(&c, 401, "Unauthorized", "", "bad token");
    assert!(matches!(e, TdeError::Provider { .. }), "{e}");
    let t = e.to_string();
    assert!(
        t.contains("client_secret") && t.contains("contoso-tenant"),
        "{t}"
    );

    let e = http_error(
        &c,
        403,
        "Forbidden",
        "KeyDisabled",
        "Operation wrapKey is not allowed on a disabled key.",
    );
    assert!(
        matches!(
            e,
            TdeError::InvalidKeyState {
                state: KeyState::Deactivated,
                ..
            }
        ),
        "{e}"
    );
    // The code decides, not the words: an RBAC denial that mentions "disabled" is a missing
    // permission.
    let e = http_error(
        &c,
        403,
        "Forbidden",
        "ForbiddenByRbac",
        "Caller is not authorized; public network access is disabled for this identity.",
    );
    assert!(!matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    assert!(e.to_string().contains("Key Vault Crypto"), "{e}");
    let e = http_error(
        &c,
        403,
        "Forbidden",
        "KeyOperationForbidden",
        "Operation wrapKey is not permitted on this key.",
    );
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");

    let e = http_error(
        &c,
        403,
        "Forbidden",
        "ForbiddenByRbac",
        "Caller is not authorized",
    );
    let t = e.to_string();
    assert!(matches!(e, TdeError::Provider { .. }), "{e}");
    assert!(
        t.contains("Key Vault Crypto User") && t.contains("wrapKey") && t.contains("heliosdb-mek"),
        "{t}"
    );
    let t = http_error(
        &call(Op::Create, false),
        403,
        "Forbidden",
        "AccessDenied",
        "x",
    )
    .to_string();
    assert!(t.contains("Key Vault Crypto Officer"), "{t}");
    let t = http_error(&call(Op::Unwrap, true), 403, "Forbidden", "", "x").to_string();
    assert!(t.contains("Managed HSM Crypto User"), "{t}");
    let t = http_error(&call(Op::Update, true), 403, "Forbidden", "", "x").to_string();
    assert!(t.contains("Managed HSM Crypto Officer"), "{t}");

    let e = http_error(
        &c,
        404,
        "KeyNotFound",
        "",
        "A key with (name/id) heliosdb-mek was not found",
    );
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("https://v.vault.azure.net"), "{e}");

    let e = http_error(
        &call(Op::Unwrap, false),
        400,
        "BadParameter",
        "",
        "decryption failed",
    );
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let e = http_error(
        &call(Op::Decrypt, true),
        400,
        "BadParameter",
        "",
        "tag mismatch",
    );
    assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e}");
    let e = http_error(&c, 400, "BadParameter", "", "bad alg");
    assert!(matches!(e, TdeError::Provider { .. }), "{e}");

    for s in [408, 429, 500, 502, 503, 504] {
        let e = http_error(&c, s, "Throttled", "", "slow down");
        assert!(e.is_retryable(), "{s}: {e}");
    }
}

#[test]
fn key_vault_error_bodies_are_read() {
    let (code, inner, msg) = parse_body(
        br#"{"error":{"code":"Forbidden","message":"Operation decrypt is not permitted on this key.","innererror":{"code":"KeyOperationForbidden"}}}"#,
    );
    assert_eq!(code, "Forbidden");
    assert_eq!(inner, "KeyOperationForbidden");
    assert!(msg.contains("not permitted"));
    assert_eq!(
        parse_body(b""),
        (String::new(), String::new(), String::new())
    );
    assert_eq!(
        parse_body(b"<html>"),
        (String::new(), String::new(), String::new())
    );
}

#[test]
fn sdk_errors_map_by_kind_and_keep_the_chain() {
    let c = call(Op::Get, false);
    let e = azure_core::Error::with_message(ErrorKind::Connection, "connection refused");
    let t = map(&c, &e);
    assert!(t.is_retryable(), "{t}");
    assert!(t.to_string().contains("https://v.vault.azure.net"), "{t}");
    // A TLS failure is recognised by type: a rustls error inside the I/O errors hyper wraps it
    // in names kms_config.ca_cert and is not an outage; the same words as bare text are not.
    let tls = std::io::Error::other(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    ));
    let t = map(&c, &azure_core::Error::new(ErrorKind::Connection, tls));
    assert!(!t.is_retryable(), "{t}");
    assert!(t.to_string().contains("kms_config.ca_cert"), "{t}");
    let e = azure_core::Error::with_message(
        ErrorKind::Connection,
        "invalid peer certificate: UnknownIssuer",
    );
    let t = map(&c, &e);
    assert!(t.is_retryable(), "{t}");
    assert!(!t.to_string().contains("kms_config.ca_cert"), "{t}");
    let e = azure_core::Error::with_message(
        ErrorKind::Credential,
        "ClientSecretCredential authentication failed",
    );
    let t = map(&c, &e).to_string();
    assert!(
        t.contains("client_secret") && t.contains("contoso-tenant"),
        "{t}"
    );
    let raw = azure_core::http::RawResponse::from_bytes(
        azure_core::http::StatusCode::Forbidden,
        azure_core::http::headers::Headers::new(),
        br#"{"error":{"code":"Forbidden","message":"no","innererror":{"code":"KeyDisabled"}}}"#
            .to_vec(),
    );
    let e = azure_core::Error::with_message(
        ErrorKind::HttpResponse {
            status: azure_core::http::StatusCode::Forbidden,
            error_code: Some("Forbidden".into()),
            raw_response: Some(Box::new(raw)),
        },
        "no",
    );
    assert!(matches!(map(&c, &e), TdeError::InvalidKeyState { .. }));
}

#[test]
fn a_tls_error_is_recognised_by_type_however_deeply_it_is_wrapped() {
    use heliosdb_tde_core::chain_contains;
    use std::io::{Error, ErrorKind as IoKind};
    let tls = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    // hyper-rustls's shape: an I/O error wrapping an I/O error wrapping the rustls error.
    let nested = Error::other(Error::new(IoKind::InvalidData, tls()));
    assert!(chain_contains::<rustls::Error>(&nested));
    assert!(!chain_contains::<rustls::Error>(&Error::from(
        IoKind::ConnectionRefused
    )));
    // Text that merely mentions a certificate is not a TLS error.
    let text = Error::other("invalid peer certificate: UnknownIssuer");
    assert!(!chain_contains::<rustls::Error>(&text));
}
