use super::*;

fn id() -> MekId {
    MekId::new("master_key_001").unwrap()
}

fn kv(n: usize, created: u64, tags: &[(&str, &str)], enabled: bool) -> KeyVersion {
    KeyVersion {
        id: format!("v{n:031}"),
        kid: format!("https://v.vault.azure.net/keys/k/v{n:031}"),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        enabled,
        created: Timestamp(created * 1000),
        recovery_level: Some("Recoverable+Purgeable".into()),
        index: n,
    }
}

fn tagged(n: usize, created: u64, version: &str, state: &str) -> KeyVersion {
    kv(
        n,
        created,
        &[
            (TAG_MEK_ID, "master_key_001"),
            (TAG_MEK_VERSION, version),
            (TAG_STATE, state),
        ],
        true,
    )
}

fn v(n: u32) -> MekVersion {
    MekVersion::new(n).unwrap()
}

#[test]
fn an_unadopted_key_has_no_mek_versions_but_a_candidate() {
    let view = View::build(
        &id(),
        "k",
        vec![
            kv(0, 10, &[], false),
            kv(1, 11, &[], true),
            kv(2, 12, &[], false),
        ],
    )
    .unwrap();
    assert!(view.numbered.is_empty());
    assert!(view.lifecycle(&id()).is_empty());
    assert_eq!(view.adoption_candidate().unwrap().index, 1);
    assert_eq!(view.newest().unwrap().index, 2);
}

#[test]
fn untagged_versions_are_numbered_after_the_tagged_ones_and_decrypt_only() {
    let all = vec![
        kv(0, 5, &[], true), // history from before adoption: left out
        tagged(1, 10, "1", "DecryptOnly"),
        tagged(2, 20, "2", "Active"),
        kv(4, 30, &[], true),
        kv(3, 30, &[], true), // same second: the listing order decides
    ];
    let view = View::build(&id(), "k", all).unwrap();
    assert_eq!(view.untagged, vec![v(3), v(4)]);
    assert_eq!(view.get(v(3)).unwrap().index, 3);
    assert_eq!(view.get(v(4)).unwrap().index, 4);
    let lc = view.lifecycle(&id());
    let states: Vec<(u32, KeyState)> = lc
        .versions(&id())
        .map(|i| (i.mek.version.get(), i.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (1, KeyState::DecryptOnly),
            (2, KeyState::Active),
            (3, KeyState::DecryptOnly),
            (4, KeyState::DecryptOnly)
        ]
    );
    assert!(lc.versions(&id()).all(|i| i.key_location.is_some()));
    assert!(view.duplicate(&id(), "k", "p").is_none());
}

#[test]
fn two_versions_with_one_number_are_reported_naming_both() {
    let all = vec![
        tagged(1, 10, "1", "DecryptOnly"),
        tagged(2, 20, "2", "Active"),
        tagged(3, 21, "2", "Active"),
    ];
    let view = View::build(&id(), "k", all).unwrap();
    let e = view
        .duplicate(&id(), "k", "Azure Key Vault")
        .unwrap()
        .to_string();
    assert!(
        e.contains(&"v".to_string())
            && e.contains(&format!("v{:031}", 2))
            && e.contains(&format!("v{:031}", 3)),
        "{e}"
    );
    assert_eq!(view.ids_of(v(2)).len(), 2);
}

#[test]
fn a_key_tagged_for_another_mek_is_refused_naming_both_ids() {
    let other = kv(
        0,
        10,
        &[(TAG_MEK_ID, "someone_else"), (TAG_MEK_VERSION, "1")],
        true,
    );
    let e = View::build(&id(), "k", vec![other])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("someone_else") && e.contains("master_key_001"),
        "{e}"
    );
}

#[test]
fn active_versions_are_normalised_to_the_newest() {
    let all = vec![tagged(1, 10, "1", "Active"), tagged(2, 20, "2", "Active")];
    let lc = View::build(&id(), "k", all).unwrap().lifecycle(&id());
    assert_eq!(
        lc.state(&MekRef::new(id(), v(1))),
        Some(KeyState::DecryptOnly)
    );
    assert_eq!(lc.state(&MekRef::new(id(), v(2))), Some(KeyState::Active));
}

#[test]
fn purge_protection_follows_the_recovery_level() {
    for (level, protected) in [
        ("Recoverable", true),
        ("CustomizedRecoverable", true),
        ("Recoverable+ProtectedSubscription", true),
        ("Recoverable+Purgeable", false),
        ("CustomizedRecoverable+Purgeable", false),
        ("Purgeable", false),
    ] {
        let (p, detail) = deletion_protection(level);
        assert_eq!(p, protected, "{level}");
        assert!(detail.contains(level));
        assert_eq!(
            detail.contains("--enable-purge-protection true"),
            !protected,
            "{detail}"
        );
    }
}

#[test]
fn the_cache_expires_and_forgets() {
    let inv = Inventory::default();
    assert!(inv.cached(&id()).is_none());
    inv.store(&id(), vec![tagged(1, 10, "1", "Active")]);
    assert_eq!(inv.cached(&id()).unwrap().len(), 1);
    inv.forget(&id());
    assert!(inv.cached(&id()).is_none());
}

#[test]
fn the_detail_names_the_version_its_flag_and_tags() {
    let d = tagged(0, 1, "2", "DecryptOnly").detail();
    assert!(d.contains("enabled"), "{d}");
    assert!(d.contains("heliosdb-mek-version=2"), "{d}");
    assert!(d.contains("heliosdb-state=DecryptOnly"), "{d}");
    assert!(!d.contains("outside"), "{d}");
    let d = kv(1, 2, &[], false).detail();
    assert!(d.contains("disabled") && d.contains("no tags"), "{d}");
    assert!(d.contains("made outside HeliosDB"), "{d}");
}
