//! The shared Key Vault test-server helper (`heliosdb_tde_conformance::azure`) against the real
//! test server: the challenge, the token endpoint, a key's round trip, injected faults in the
//! request log, and paging. Plain reqwest, no Azure SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::azure::{AzureTestEnv, azure, fresh_label};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const API: &str = "api-version=2025-07-01";

async fn send(
    az: &AzureTestEnv,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = az.http_client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, v)
}

#[tokio::test]
async fn an_unauthenticated_request_gets_the_challenge() {
    let Some(az) = azure() else { return };
    let label = fresh_label();
    let resp = az
        .http_client()
        .get(format!("{}/keys/k1/?{API}", az.vault_url(&label)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .expect("no WWW-Authenticate header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer authorization=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("resource=\"https://kv.localhost\""),
        "{challenge}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unauthorized");
    // The Managed HSM namespace names its own resource; the IP vault names localhost.
    let hsm = az
        .http_client()
        .get(format!("{}/keys/k1/?{API}", az.hsm_url(&label)))
        .send()
        .await
        .unwrap();
    assert_eq!(hsm.status().as_u16(), 401);
    let h = hsm.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(h.contains("resource=\"https://hsm.localhost\""), "{h}");
    let ip = az
        .http_client()
        .get(format!("{}/keys/k1/?{API}", az.ip_url()))
        .send()
        .await
        .unwrap();
    let h = ip.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(h.contains("resource=\"https://localhost\""), "{h}");
    // A token scoped to another vault is refused like no token.
    let other = az.mint_token(Some("someone-else"));
    let (status, _) = send(
        &az,
        reqwest::Method::GET,
        format!("{}/keys/k1/?{API}", az.vault_url(&label)),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let log = az.requests(&label);
    assert_eq!(log.first().map(|r| r.2), Some(401), "{log:?}");
}

#[tokio::test]
async fn the_token_endpoint_checks_the_client_secret() {
    let Some(az) = azure() else { return };
    let url = format!("{}/{}/oauth2/v2.0/token", az.authority_url(), az.tenant());
    // The test identity is hex, so the form needs no escaping (reqwest's `form` feature is off).
    let form = |secret: &str| {
        format!(
            "grant_type=client_credentials&client_id={}&client_secret={secret}&scope=https%3A%2F%2Fkv.localhost%2F.default",
            az.client_id()
        )
    };
    let ok = az
        .http_client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(az.client_secret().expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let ok: Value = ok.json().await.unwrap();
    assert_eq!(ok["token_type"], "Bearer");
    assert!(ok["expires_in"].as_u64().unwrap() >= 3600, "{ok}");
    let token = ok["access_token"].as_str().unwrap().to_string();
    assert!(token.len() >= 32);
    // The issued token opens the data plane (a missing key: 404, not 401).
    let label = fresh_label();
    let (status, body) = send(
        &az,
        reqwest::Method::GET,
        format!("{}/keys/missing/?{API}", az.vault_url(&label)),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "KeyNotFound");

    let bad = az
        .http_client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("not-the-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"], "invalid_client");
    assert!(
        bad["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215"),
        "{bad}"
    );
    assert!(bad.get("access_token").is_none());
}

#[tokio::test]
async fn an_rsa_key_wraps_and_unwraps() {
    let Some(az) = azure() else { return };
    let label = fresh_label();
    let token = az.mint_token(Some(&label));
    let token = token.as_str();
    let base = az.vault_url(&label);
    let (status, created) = send(
        &az,
        reqwest::Method::POST,
        format!("{base}/keys/Mek-1/create?{API}"),
        token,
        Some(
            json!({"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"],
                    "tags": {"heliosdb-mek-id": "mek_1"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let kid = created["key"]["kid"].as_str().unwrap().to_string();
    let version = kid.rsplit('/').next().unwrap().to_string();
    assert_eq!(kid, format!("{base}/keys/Mek-1/{version}"));
    assert_eq!(version.len(), 32);
    assert!(
        version
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(created["key"]["kty"], "RSA");
    assert_eq!(created["key"]["e"], "AQAB");
    assert!(created["key"]["n"].as_str().unwrap().len() > 300);
    assert_eq!(
        created["attributes"]["recoveryLevel"],
        "Recoverable+Purgeable"
    );
    assert_eq!(created["tags"]["heliosdb-mek-id"], "mek_1");

    // Names are case-insensitive; the original case stays in the kid.
    let tek = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    let (status, wrapped) = send(
        &az,
        reqwest::Method::POST,
        format!("{base}/keys/mek-1/{version}/wrapkey?{API}"),
        token,
        Some(json!({"alg": "RSA-OAEP-256", "value": tek})),
    )
    .await;
    assert_eq!(status, 200, "{wrapped}");
    assert_eq!(wrapped["kid"], kid.as_str());
    let (status, unwrapped) = send(
        &az,
        reqwest::Method::POST,
        format!("{base}/keys/MEK-1/{version}/unwrapkey?{API}"),
        token,
        Some(json!({"alg": "RSA-OAEP-256", "value": wrapped["value"]})),
    )
    .await;
    assert_eq!(status, 200, "{unwrapped}");
    assert_eq!(unwrapped["value"], tek);

    // An operation the version does not allow is refused by the server.
    let (status, refused) = send(
        &az,
        reqwest::Method::POST,
        format!("{base}/keys/mek-1/{version}/encrypt?{API}"),
        token,
        Some(json!({"alg": "RSA-OAEP-256", "value": tek})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["error"]["innererror"]["code"],
        "KeyOperationForbidden"
    );
}

#[tokio::test]
async fn injected_throttling_shows_in_the_request_log() {
    let Some(az) = azure() else { return };
    let label = fresh_label();
    let token = az.mint_token(None);
    let url = format!("{}/keys/absent/?{API}", az.vault_url(&label));
    az.inject(&label, "get", 2, 429, Some(1), 0);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = az
            .http_client()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Throttled");
            statuses.push(429);
        } else {
            statuses.push(resp.status().as_u16());
        }
    }
    assert_eq!(statuses, [429, 429, 404]);
    let log = az.requests(&label);
    assert_eq!(
        log.iter().map(|r| r.2).collect::<Vec<_>>(),
        [429, 429, 404],
        "{log:?}"
    );
    assert!(
        log.iter()
            .all(|(m, p, _)| m == "GET" && p == "/keys/absent/")
    );
    // A reset forgets the log.
    az.reset(&label);
    assert!(az.requests(&label).is_empty());
}

#[tokio::test]
async fn versions_page_through_next_links() {
    let Some(az) = azure() else { return };
    let label = fresh_label();
    az.set_vault(&label, Some("Recoverable"), Some(2));
    let token = az.mint_token(Some(&label));
    let token = token.as_str();
    let base = az.hsm_url(&label);
    let mut made = Vec::new();
    for _ in 0..5 {
        let (status, b) = send(
            &az,
            reqwest::Method::POST,
            format!("{base}/keys/paged/create?{API}"),
            token,
            Some(json!({"kty": "oct-HSM", "key_size": 256})),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        assert!(b["key"].get("k").is_none(), "oct key material returned");
        assert_eq!(b["attributes"]["recoveryLevel"], "Recoverable");
        made.push(b["key"]["kid"].as_str().unwrap().to_string());
    }
    let mut url = format!("{base}/keys/paged/versions?{API}");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = send(&az, reqwest::Method::GET, url.clone(), token, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for item in page["value"].as_array().unwrap() {
            seen.push(item["kid"].as_str().unwrap().to_string());
        }
        match page["nextLink"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&base), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made);
    let log = az.requests(&label);
    assert_eq!(
        log.iter().filter(|r| r.1 == "/keys/paged/versions").count(),
        3
    );
}

#[tokio::test]
async fn managed_hsm_keys_encrypt_with_aad_and_versions_keep_their_state() {
    let Some(az) = azure() else { return };
    let label = fresh_label();
    let token = az.mint_token(Some(&label));
    let token = token.as_str();
    let base = az.hsm_url(&label);
    let post = |path: &str, body: Value| {
        send(
            &az,
            reqwest::Method::POST,
            format!("{base}{path}?{API}"),
            token,
            Some(body),
        )
    };
    let (status, key) = post(
        "/keys/gcm/create",
        json!({"kty": "oct-HSM", "key_size": 256, "key_ops": ["encrypt", "decrypt"],
               "tags": {"heliosdb-mek-version": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["attributes"]["exportable"], false);
    let v1 = key["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let pt = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    let (status, ct) = post(
        &format!("/keys/gcm/{v1}/encrypt"),
        json!({"alg": "A256GCM", "value": pt, "aad": "Y3R4"}),
    )
    .await;
    assert_eq!(status, 200, "{ct}");
    assert_eq!(ct["iv"].as_str().unwrap().len(), 16, "a 12-byte iv: {ct}");
    assert_eq!(ct["tag"].as_str().unwrap().len(), 22, "a 16-byte tag: {ct}");
    let decrypt = |aad: &str| json!({"alg": "A256GCM", "value": ct["value"], "iv": ct["iv"], "tag": ct["tag"], "aad": aad});
    let (status, back) = post(&format!("/keys/gcm/{v1}/decrypt"), decrypt("Y3R4")).await;
    assert_eq!((status, back["value"].as_str()), (200, Some(pt)), "{back}");
    let (status, refused) = post(&format!("/keys/gcm/{v1}/decrypt"), decrypt("Y3R5")).await;
    assert_eq!(status, 400, "another aad opened the value: {refused}");
    // The service makes the iv; RSA1_5 is refused.
    let (status, _) = post(
        &format!("/keys/gcm/{v1}/encrypt"),
        json!({"alg": "A256GCM", "value": pt, "iv": "AAAAAAAAAAAAAAAA"}),
    )
    .await;
    assert_eq!(status, 400);

    // Rotation makes an untagged version; tags on update replace the whole map.
    let (status, rotated) = send(
        &az,
        reqwest::Method::POST,
        format!("{base}/keys/gcm/rotate?{API}"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated.get("tags").is_none(), "{rotated}");
    assert_eq!(rotated["key"]["key_ops"], json!(["encrypt", "decrypt"]));
    let (status, updated) = send(
        &az,
        reqwest::Method::PATCH,
        format!("{base}/keys/gcm/{v1}?{API}"),
        token,
        Some(json!({"attributes": {"enabled": false}, "tags": {"heliosdb-state": "Deactivated"}})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["tags"], json!({"heliosdb-state": "Deactivated"}));
    assert_eq!(updated["attributes"]["enabled"], false);
    let (status, disabled) = post(
        &format!("/keys/gcm/{v1}/encrypt"),
        json!({"alg": "A256GCM", "value": pt}),
    )
    .await;
    assert_eq!(status, 403, "{disabled}");
    assert_eq!(disabled["error"]["code"], "Forbidden");
    assert_eq!(disabled["error"]["innererror"]["code"], "KeyDisabled");
    assert_eq!(
        disabled["error"]["message"],
        "Operation encrypt is not allowed on a disabled key."
    );
    // The latest version (empty version segment) still works.
    let (status, latest) = post("/keys/gcm//encrypt", json!({"alg": "A256GCM", "value": pt})).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["kid"], rotated["key"]["kid"]);
}
