//! Versions and aliases: how the provider finds, adopts and creates the KMS key of each MEK
//! version, seen through the operator's SDK client on moto.

// Tests: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Payload, ctx, fresh, mek_ref, tek};
use heliosdb_tde_aws_kms::AwsKmsMekProvider;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekProvider, MekVersion, SecurityMode, TdeError,
};

/// `key_id` as a key id, an ARN and an alias (and a key made by a bare `create-key`, whose
/// answer moto gives without a key usage): each becomes version 1 of the default MEK, with the
/// `v1` alias pointing at it.
#[tokio::test]
async fn key_id_as_id_arn_or_alias_becomes_v1() {
    let Some(m) = common::moto() else { return };
    for form in ["id", "arn", "alias", "bare create-key"] {
        let mut f = m.fixture().await;
        if form == "bare create-key" {
            f.key = common::create_bare_key(&m.client()).await;
            f.config.key_id = f.key.arn.clone();
        }
        let mut c = f.config.clone();
        c.key_id = match form {
            "id" => f.key.id.clone(),
            "arn" | "bare create-key" => f.key.arn.clone(),
            _ => {
                let alias = format!("alias/heliosdb-test-op-{}", common::random());
                m.create_alias(&alias, &f.key.id).await;
                alias
            }
        };
        let p = f.open_with(&c).await;
        assert_eq!(p.default_key_arn(), f.key.arn, "{form}");
        assert_eq!(p.region(), m.region);
        assert_eq!(p.alias_prefix(), c.alias_prefix);
        assert!(
            f.aliases().await.is_empty(),
            "{form}: open() created an alias"
        );
        let info = p
            .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap();
        assert_eq!(info.mek, mek_ref(&f.default_mek, 1));
        let e = p
            .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap_err();
        assert!(matches!(e, TdeError::AlreadyExists { .. }), "{form}: {e:?}");
        let mi = p.mek_info(&f.default_mek).await.unwrap();
        assert_eq!(mi.versions.len(), 1);
        assert_eq!(
            mi.versions[0].key_location.as_deref(),
            Some(f.key.arn.as_str()),
            "{form}"
        );
        let v1_alias = p.alias_name(&info.mek);
        assert!(v1_alias.starts_with(&c.alias_prefix), "{v1_alias}");
        assert!(v1_alias.ends_with("/v1"), "{v1_alias}");
        let aliases = f.aliases().await;
        assert_eq!(aliases.len(), 1, "{form}: {aliases:?}");
        assert_eq!(
            aliases.get(&v1_alias),
            Some(&f.key.id),
            "{form}: {aliases:?}"
        );
        // The adopted key is tagged with the MEK's identity and state.
        let tags = m.tags(&f.key.id).await;
        assert_eq!(
            tags.get("heliosdb:mek_id").map(String::as_str),
            Some(f.default_mek.as_str()),
            "{tags:?}"
        );
        assert_eq!(
            tags.get("heliosdb:mek_version").map(String::as_str),
            Some("1")
        );
        assert!(tags.contains_key("heliosdb:state"), "{tags:?}");
        // It wraps with that key: the payload names its ARN.
        let w = p
            .wrap_tek(&info.mek, &tek("a@v1"), &ctx("a@v1"))
            .await
            .unwrap();
        assert_eq!(Payload::parse(&w.payload).arn, f.key.arn);
        // A new provider over the same settings finds the version through the alias.
        let again = f.open_with(&c).await;
        assert!(again.unwrap_tek(&w, &ctx("a@v1")).await.is_ok(), "{form}");
        assert_eq!(
            again.mek_info(&f.default_mek).await.unwrap().versions.len(),
            1
        );
    }
}

/// An MEK id with `.` (which alias names do not allow) round-trips through its alias: the
/// alias holds no `.`, `list_meks` of a fresh provider gives the id back, and ids that differ
/// only by `.`, `_`, `-` get distinct aliases.
#[tokio::test]
async fn an_mek_id_with_a_dot_round_trips_through_its_alias() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let suffix = common::random();
    let ids: Vec<MekId> = ["tenant.a", "tenant_a", "tenant-a", "tenant.a.b"]
        .iter()
        .map(|base| format!("{base}_{suffix}").parse().unwrap())
        .collect();
    let mut aliases = Vec::new();
    for id in &ids {
        let info = p
            .generate_mek(id, EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap_or_else(|e| panic!("generate_mek({id}): {e}"));
        let alias = p.alias_name(&info.mek);
        assert!(
            alias.starts_with(&format!("{}/", f.config.alias_prefix)),
            "{alias}"
        );
        assert!(alias.ends_with("/v1"), "{alias}");
        assert!(!alias.contains('.'), "{alias}");
        aliases.push(alias);
    }
    let on_server = f.aliases().await;
    for a in &aliases {
        assert!(on_server.contains_key(a), "{a} not in {on_server:?}");
    }
    assert_eq!(on_server.len(), ids.len(), "{on_server:?}");
    // A fresh provider reads the ids back from the aliases alone.
    let fresh_p = f.open().await;
    let listed = fresh_p.list_meks().await.unwrap();
    for id in &ids {
        assert!(listed.contains(id), "{id} not in {listed:?}");
        let info = fresh_p.mek_info(id).await.unwrap();
        assert_eq!(&info.id, id);
        let w = fresh_p
            .wrap_tek(&info.versions[0].mek, &tek("d@v1"), &ctx("d@v1"))
            .await
            .unwrap();
        assert!(p.unwrap_tek(&w, &ctx("d@v1")).await.is_ok());
    }
}

/// `create_keys = false`: rotation fails with the exact operator commands while there is no
/// key at the next alias, creates nothing, and adopts the key once the operator made it.
#[tokio::test]
async fn without_create_keys_the_operator_key_is_adopted() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let mut c = f.config.clone();
    c.create_keys = false;
    let p = f.open_with(&c).await;
    let v1 = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let v2_alias = p.alias_name(&mek_ref(&f.default_mek, 2));
    let keys_before = m.key_ids().await;
    let e = p.rotate_mek(&f.default_mek).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("aws kms create-key"), "{text}");
    assert!(text.contains("aws kms create-alias"), "{text}");
    assert!(
        text.contains(&format!("--alias-name {v2_alias} ")),
        "{text}"
    );
    assert!(text.contains("--key-spec SYMMETRIC_DEFAULT"), "{text}");
    assert!(text.contains("--key-usage ENCRYPT_DECRYPT"), "{text}");
    let keys_after = m.key_ids().await;
    assert!(
        m.new_keys_of(&keys_before, &keys_after, &f.default_mek)
            .await
            .is_empty(),
        "a key was created with create_keys = false"
    );
    assert_eq!(f.aliases().await.len(), 1, "only the v1 alias");
    assert_eq!(p.mek_info(&f.default_mek).await.unwrap().versions.len(), 1);

    // The operator runs the two commands.
    let op = m.create_key().await;
    m.create_alias(&v2_alias, &op.id).await;
    let v2 = p.rotate_mek(&f.default_mek).await.unwrap();
    assert_eq!(v2.mek, mek_ref(&f.default_mek, 2));
    let info = p.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(
        info.versions[1].key_location.as_deref(),
        Some(op.arn.as_str())
    );
    assert_eq!(info.active_version(), Some(v2.mek.version));
    let w = p
        .wrap_tek(&v2.mek, &tek("o@v1"), &ctx("o@v1"))
        .await
        .unwrap();
    assert_eq!(Payload::parse(&w.payload).arn, op.arn);
    assert_eq!(v1.version, MekVersion::FIRST);
}

/// A key left at the next alias by a rotation interrupted after `CreateKey` and `CreateAlias`
/// is adopted by the next rotation, not duplicated.
#[tokio::test]
async fn a_key_left_by_an_interrupted_rotation_is_adopted() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let id = fresh("interrupted");
    p.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    let v2_alias = p.alias_name(&mek_ref(&id, 2));
    let left = m.create_key().await;
    m.create_alias(&v2_alias, &left.id).await;
    let before = m.key_ids().await;
    let v2 = p.rotate_mek(&id).await.unwrap();
    let after = m.key_ids().await;
    assert_eq!(v2.mek, mek_ref(&id, 2));
    assert!(
        m.new_keys_of(&before, &after, &id).await.is_empty(),
        "the rotation created a key instead of adopting the one at {v2_alias}"
    );
    let info = p.mek_info(&id).await.unwrap();
    assert_eq!(info.versions.len(), 2);
    assert_eq!(
        info.versions[1].key_location.as_deref(),
        Some(left.arn.as_str())
    );
    assert_eq!(
        m.tags(&left.id)
            .await
            .get("heliosdb:mek_version")
            .map(String::as_str),
        Some("2"),
        "the adopted key is tagged"
    );
    // The next rotation creates exactly one key, tagged as version 3.
    let before = m.key_ids().await;
    let v3 = p.rotate_mek(&id).await.unwrap();
    let after = m.key_ids().await;
    assert_eq!(v3.mek.version.get(), 3);
    let created = m.new_keys_of(&before, &after, &id).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(f.aliases().await.len(), 3);
}

/// Deactivation disables the key in KMS and the provider refuses to unwrap even though moto
/// would still decrypt; reactivation enables the key again.
#[tokio::test]
async fn deactivation_disables_the_key_and_reactivation_enables_it() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let v1 = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("deact@v1");
    let c = ctx("deact@v1");
    let w = p.wrap_tek(&v1, &key, &c).await.unwrap();
    let v2 = p.rotate_mek(&f.default_mek).await.unwrap().mek;
    assert_eq!(m.key_state(&f.key.id).await, "Enabled");

    p.deactivate_mek_version(&v1).await.unwrap();
    assert_eq!(
        m.key_state(&f.key.id).await,
        "Disabled",
        "DisableKey was not called"
    );
    let e = p.unwrap_tek(&w, &c).await.unwrap_err();
    assert!(matches!(e, TdeError::InvalidKeyState { .. }), "{e}");
    // moto does not enforce the disabled state: the provider refused on its own.
    let payload = Payload::parse(&w.payload);
    let direct = m
        .decrypt(&payload.blob, &payload.arn, &c.context_map(&v1))
        .await;
    let bytes = direct.unwrap_or_else(|code| {
        panic!("moto (5.2.5) decrypts under a disabled key, yet it answered {code}")
    });
    assert_eq!(bytes.as_slice(), key.bytes().expose_secret().as_slice());
    // A fresh provider reads the state from the tags.
    let fresh_p = f.open().await;
    let info = fresh_p.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);
    assert!(fresh_p.unwrap_tek(&w, &c).await.is_err());
    // Health looks at the active version (v2), which is fine.
    assert!(p.health().await.unwrap().healthy);

    p.set_mek_state(&v1, KeyState::DecryptOnly).await.unwrap();
    assert_eq!(
        m.key_state(&f.key.id).await,
        "Enabled",
        "EnableKey was not called"
    );
    let back = p.unwrap_tek(&w, &c).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
    let info = f.open().await.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::DecryptOnly);
    assert_eq!(info.versions[1].state, KeyState::Active);
    assert_eq!(info.active_version(), Some(v2.version));
}

/// `open` creates and changes nothing (no alias, no tag) before `generate_mek`: the default
/// MEK does not exist yet.
#[tokio::test]
async fn open_changes_nothing() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let before = m.tags(&f.key.id).await;
    let p: AwsKmsMekProvider =
        AwsKmsMekProvider::open(&f.config, &f.default_mek, SecurityMode::Development)
            .await
            .unwrap();
    assert!(f.aliases().await.is_empty());
    assert_eq!(m.tags(&f.key.id).await, before);
    let e = p.mek_info(&f.default_mek).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e}");
}

/// A version the provider creates copies the previous version's key policy (`GetKeyPolicy`),
/// is described `HeliosDB MEK <id> version <N>` and tagged with the MEK's identity and state.
#[tokio::test]
async fn new_version_keys_copy_the_policy_and_are_described_and_tagged() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let policy = format!(
        r#"{{"Version":"2012-10-17","Id":"heliosdb-test-{}","Statement":[{{"Sid":"Root","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::123456789012:root"}},"Action":"kms:*","Resource":"*"}}]}}"#,
        common::random()
    );
    m.client()
        .put_key_policy()
        .key_id(&f.key.id)
        .policy_name("default")
        .policy(&policy)
        .send()
        .await
        .unwrap();
    let p = f.open().await;
    p.generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    p.rotate_mek(&f.default_mek).await.unwrap();
    let info = p.mek_info(&f.default_mek).await.unwrap();
    let v2_arn = info.versions[1].key_location.clone().unwrap();
    let v2_policy = m
        .client()
        .get_key_policy()
        .key_id(&v2_arn)
        .policy_name("default")
        .send()
        .await
        .unwrap()
        .policy
        .unwrap_or_default();
    assert_eq!(v2_policy, policy, "v2 does not carry v1's key policy");
    let described = m
        .client()
        .describe_key()
        .key_id(&v2_arn)
        .send()
        .await
        .unwrap();
    let meta = described.key_metadata().unwrap();
    assert_eq!(
        meta.description(),
        Some(format!("HeliosDB MEK {} version 2", f.default_mek).as_str())
    );
    assert_eq!(
        meta.key_spec().map(|s| s.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    assert_eq!(
        meta.key_usage().map(|u| u.as_str()),
        Some("ENCRYPT_DECRYPT")
    );
    let v2_id = meta.key_id().to_string();
    let tags = m.tags(&v2_id).await;
    assert_eq!(
        tags.get("heliosdb:mek_id").map(String::as_str),
        Some(f.default_mek.as_str())
    );
    assert_eq!(
        tags.get("heliosdb:mek_version").map(String::as_str),
        Some("2")
    );
    assert!(tags.contains_key("heliosdb:state"), "{tags:?}");
    // And the v1 key's state tag follows the rotation (no longer active).
    let v1_tags = m.tags(&f.key.id).await;
    assert_ne!(
        v1_tags.get("heliosdb:state"),
        tags.get("heliosdb:state"),
        "v1 {v1_tags:?} / v2 {tags:?}"
    );
}

/// `health()` names the active version's key and the `KeyState` KMS reports; `Destroyed` is
/// refused as unsupported (deletion is scheduled by the operator in KMS).
#[tokio::test]
async fn health_names_the_active_key_and_destroyed_is_unsupported() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let v1 = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let h = p.health().await.unwrap();
    assert!(h.healthy, "{h:?}");
    assert!(h.detail.contains(&f.key.arn), "{h:?}");
    assert!(h.detail.contains("Enabled"), "{h:?}");
    p.rotate_mek(&f.default_mek).await.unwrap();
    let v2_arn = p.mek_info(&f.default_mek).await.unwrap().versions[1]
        .key_location
        .clone()
        .unwrap();
    let h = p.health().await.unwrap();
    assert!(h.healthy && h.detail.contains(&v2_arn), "{h:?}");

    let e = p.set_mek_state(&v1, KeyState::Destroyed).await.unwrap_err();
    assert!(matches!(e, TdeError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("schedule-key-deletion"), "{e}");
    assert_eq!(m.key_state(&f.key.id).await, "Enabled");
    assert_eq!(
        p.mek_info(&f.default_mek).await.unwrap().versions[0].state,
        KeyState::DecryptOnly
    );
}

/// Two alias prefixes are two separate sets of MEKs: a provider lists and finds only its own.
#[tokio::test]
async fn alias_prefixes_isolate_providers() {
    let Some(m) = common::moto() else { return };
    let a = m.fixture().await;
    let b = m.fixture().await;
    let pa = a.open().await;
    let pb = b.open().await;
    let id = fresh("isolated");
    pa.generate_mek(&id, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap();
    assert!(pa.list_meks().await.unwrap().contains(&id));
    assert!(!pb.list_meks().await.unwrap().contains(&id));
    let e = pb.mek_info(&id).await.unwrap_err();
    assert!(matches!(e, TdeError::KeyNotFound { .. }), "{e:?}");
    assert_eq!(a.aliases().await.len(), 1);
    assert!(b.aliases().await.is_empty());
}

/// A rotation made by another process (another provider over the same aliases) is seen by
/// this provider once its cache of tags and aliases expires (at most 10 s): the old version
/// then refuses to wrap and the new one wraps. Polled with a generous deadline.
#[tokio::test]
async fn another_processs_rotation_is_seen_after_the_cache_expires() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let a = f.open().await;
    let v1 = a
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("ttl@v1");
    let c = ctx("ttl@v1");
    a.wrap_tek(&v1, &key, &c).await.unwrap();
    let b = f.open().await;
    let v2 = b.rotate_mek(&f.default_mek).await.unwrap().mek;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match a.wrap_tek(&v1, &key, &c).await {
            Err(TdeError::InvalidKeyState { .. }) => break,
            Err(e) => panic!("unexpected error while waiting for the rotation: {e:?}"),
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the provider still wraps under v1 a minute after another process rotated"
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
    let info = a.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(info.active_version(), Some(v2.version));
    let w = a.wrap_tek(&v2, &key, &c).await.unwrap();
    assert!(b.unwrap_tek(&w, &c).await.is_ok());
}

/// The normal end of a rotation: TEKs re-wrapped under v2, v1 (the configured `key_id`)
/// deactivated and so disabled in KMS. A restart (a new provider over the same settings) must
/// open, serve v2 and report healthy: the configured key being disabled is then expected.
#[tokio::test]
async fn a_restart_after_rotation_and_deactivation_opens() {
    let Some(m) = common::moto() else { return };
    let f = m.fixture().await;
    let p = f.open().await;
    let v1 = p
        .generate_mek(&f.default_mek, EncryptionAlgorithm::Aes256Gcm)
        .await
        .unwrap()
        .mek;
    let key = tek("restart@v1");
    let c = ctx("restart@v1");
    let w1 = p.wrap_tek(&v1, &key, &c).await.unwrap();
    let v2 = p.rotate_mek(&f.default_mek).await.unwrap().mek;
    let w2 = p.rewrap_tek(&w1, &c, &v2).await.unwrap();
    p.deactivate_mek_version(&v1).await.unwrap();
    assert_eq!(m.key_state(&f.key.id).await, "Disabled");

    let restarted = AwsKmsMekProvider::open(&f.config, &f.default_mek, SecurityMode::Development)
        .await
        .unwrap_or_else(|e| panic!("a restart after a completed rotation failed: {e}"));
    let back = restarted.unwrap_tek(&w2, &c).await.unwrap();
    assert_eq!(back.bytes().expose_secret(), key.bytes().expose_secret());
    let h = restarted.health().await.unwrap();
    assert!(h.healthy, "{h:?}");
    let info = restarted.mek_info(&f.default_mek).await.unwrap();
    assert_eq!(info.versions[0].state, KeyState::Deactivated);
    assert_eq!(info.active_version(), Some(v2.version));
}
