//! KMS automatic rotation: keys the provider creates with `enable_key_rotation` have rotation
//! on; a rotation of key material inside the active key (`RotateKeyOnDemand`) keeps every TEK
//! unwrapping without a re-wrap, and `mek_info` reports it in `service_rotation`.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, fresh, tek};
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_core::{EncryptionAlgorithm, MekProvider};

async fn rotation_enabled(m: &common::Moto, key: &str) -> bool {
    m.client()
        .get_key_rotation_status()
        .key_id(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetKeyRotationStatus({key}): {e:?}"))
        .key_rotation_enabled()
}

#[tokio::test]
async fn new_keys_have_rotation_on_and_on_demand_rotation_needs_no_rewrap() {
    let Some(m) = common::moto() else { return };
    let proxy = FaultProxy::start_http(m.addr()).await.unwrap();
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.endpoint = Some(proxy.url());
    c.enable_key_rotation = true;
    c.rotation_period_days = Some(180);
    let p = f.open_with(&c).await;
    let id = fresh("autorot");
    let v1 = p
        .generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let v1_arn = p.mek_info(&id).await.unwrap().versions[0]
        .key_location
        .clone()
        .unwrap();
    assert!(
        rotation_enabled(&m, &v1_arn).await,
        "v1 was created without rotation"
    );
    // A HeliosDB rotation (a new key) turns it on for the new key as well.
    let v2 = p.rotate_mek(&id).await.unwrap().mek;
    let info = p.mek_info(&id).await.unwrap();
    let v2_arn = info.versions[1].key_location.clone().unwrap();
    assert!(
        rotation_enabled(&m, &v2_arn).await,
        "v2 was created without rotation"
    );
    let sr = info.versions[1]
        .service_rotation
        .clone()
        .expect("service_rotation is reported");
    assert!(sr.enabled, "{sr:?}");
    // moto's GetKeyRotationStatus leaves out RotationPeriodInDays; AWS gives it.
    assert!(
        sr.period_days.is_none() || sr.period_days == Some(180),
        "{sr:?}"
    );
    assert_eq!(sr.last_rotated, None, "{sr:?}");

    // TEKs under the active key, then KMS rotates its key material.
    let names: Vec<String> = (0..10).map(|i| format!("ar_t{i}@v1")).collect();
    let mut wrapped = Vec::new();
    for n in &names {
        let k = tek(n);
        let w = p.wrap_tek(&v2, &k, &ctx(n)).await.unwrap();
        wrapped.push((n.clone(), k, w));
    }
    m.client()
        .rotate_key_on_demand()
        .key_id(&v2_arn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("RotateKeyOnDemand: {e:?}"));

    // Every TEK still unwraps, through a fresh provider, with no re-wrap and no new key.
    let fresh_p = f.open_with(&c).await;
    proxy.clear_requests();
    for (n, k, w) in &wrapped {
        let back = fresh_p.unwrap_tek(w, &ctx(n)).await.unwrap();
        assert_eq!(
            back.bytes().expose_secret(),
            k.bytes().expose_secret(),
            "{n}"
        );
    }
    assert_eq!(proxy.requests_for_target("ReEncrypt"), 0);
    assert_eq!(proxy.requests_for_target("TrentService.Encrypt"), 0);
    assert_eq!(proxy.requests_for_target("CreateKey"), 0);
    let info = fresh_p.mek_info(&id).await.unwrap();
    assert_eq!(
        info.versions.len(),
        2,
        "the HeliosDB version did not change"
    );
    assert_eq!(info.active_version(), Some(v2.version));
    let sr = info.versions[1]
        .service_rotation
        .clone()
        .expect("service_rotation is reported");
    assert!(sr.enabled, "{sr:?}");
    let last = sr.last_rotated.expect("the on-demand rotation's date");
    assert!(
        last >= info.versions[1].created_at,
        "{sr:?} {:?}",
        info.versions[1]
    );
    let (reference, by_service) = info.versions[1].material_age_reference();
    assert!(by_service || reference == info.versions[1].created_at);
    // v1 was not rotated by KMS.
    assert_eq!(
        info.versions[0]
            .service_rotation
            .as_ref()
            .and_then(|r| r.last_rotated),
        None
    );
    assert_eq!(v1.version.get(), 1);
}

/// Without `enable_key_rotation`, keys the provider creates have rotation off.
#[tokio::test]
async fn by_default_new_keys_have_rotation_off() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let id = fresh("norot");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let info = p.mek_info(&id).await.unwrap();
    let arn = info.versions[0].key_location.clone().unwrap();
    assert!(!rotation_enabled(&m, &arn).await);
    if let Some(sr) = &info.versions[0].service_rotation {
        assert!(!sr.enabled, "{sr:?}");
    }
}
