//! Unit and property tests of the identifiers.

use super::*;
use proptest::prelude::*;

#[test]
fn id_arguments_parse_strings_once_and_borrow_ids() {
    let id = MekId::new("master_key_001").unwrap();
    assert!(matches!(id.as_mek_id().unwrap(), Cow::Borrowed(b) if std::ptr::eq(b, &id)));
    assert!(matches!((&&id).as_mek_id().unwrap(), Cow::Borrowed(_)));
    assert_eq!(*"master_key_001".as_mek_id().unwrap(), id);
    assert_eq!(*String::from("master_key_001").as_mek_id().unwrap(), id);
    let e = "not valid!".as_mek_id().unwrap_err().to_string();
    assert!(e.contains("MEK id"), "{e}");

    let t = TableId::new("public.users").unwrap();
    assert!(matches!(t.as_table_id().unwrap(), Cow::Borrowed(_)));
    assert_eq!(*"public.users".as_table_id().unwrap(), t);
    assert!("no spaces".as_table_id().is_err());
}

#[test]
fn mek_ids() {
    assert!(MekId::new("master_key_001").is_ok());
    assert!(MekId::new("prod-mek.2").is_ok());
    for bad in [
        "",
        "_x",
        "-x",
        "a/b",
        "a b",
        "a@b",
        "é",
        "../x",
        &"a".repeat(65),
    ] {
        let err = MekId::new(bad).unwrap_err();
        assert!(
            matches!(err, TdeError::InvalidIdentifier { kind: "MEK id", .. }),
            "{bad}: {err}"
        );
    }
    assert!(MekId::new("a".repeat(64)).is_ok());
}

#[test]
fn table_ids() {
    for ok in ["users", "public.users", "_t", "s$1:p-2"] {
        assert!(TableId::new(ok).is_ok(), "{ok}");
    }
    for bad in ["", ".x", "a/b", "a\0b", "a\nb", "a@b"] {
        assert!(TableId::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn versions_start_at_one() {
    assert!(MekVersion::new(0).is_err());
    assert_eq!(TekVersion::FIRST.next().unwrap().get(), 2);
    assert!(TekVersion::new(u32::MAX).unwrap().next().is_err());
}

#[test]
fn display_and_parse() {
    let k: KeyId = "tek:public.users@v3".parse().unwrap();
    assert_eq!(k.to_string(), "tek:public.users@v3");
    assert_eq!(k.key_type(), crate::KeyType::Table);
    let m: KeyId = "mek:master_key_001@v2".parse().unwrap();
    assert_eq!(m.key_type(), crate::KeyType::Master);
    assert!("users@v0".parse::<TekId>().is_err());
    assert!("users".parse::<TekId>().is_err());
    assert!("users@vx".parse::<TekId>().is_err());
    assert!("x:users@v1".parse::<KeyId>().is_err());
    let t: TekId = "users@7".parse().unwrap();
    assert_eq!(t.version.get(), 7);
}

#[test]
fn serde_validates() {
    // Deserialising runs the same checks as construction.
    let r: std::result::Result<MekId, _> =
        serde::de::value::StrDeserializer::<serde::de::value::Error>::new("a/b")
            .deserialize_string_into();
    assert!(r.is_err());
}

trait DeStr {
    fn deserialize_string_into<T: serde::de::DeserializeOwned>(
        self,
    ) -> std::result::Result<T, serde::de::value::Error>;
}
impl<'a> DeStr for serde::de::value::StrDeserializer<'a, serde::de::value::Error> {
    fn deserialize_string_into<T: serde::de::DeserializeOwned>(
        self,
    ) -> std::result::Result<T, serde::de::value::Error> {
        T::deserialize(self)
    }
}

proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,80}") {
        let _ = s.parse::<KeyId>();
        let _ = s.parse::<TekId>();
        let _ = s.parse::<MekRef>();
    }

    #[test]
    fn valid_ids_round_trip(name in "[a-z0-9][a-z0-9_.-]{0,40}", v in 1u32..) {
        let m = MekRef::new(MekId::new(name.clone()).unwrap(), MekVersion::new(v).unwrap());
        prop_assert_eq!(m.to_string().parse::<MekRef>().unwrap(), m);
        let t = TekId::new(TableId::new(name).unwrap(), TekVersion::new(v).unwrap());
        let k = KeyId::from(t);
        prop_assert_eq!(k.to_string().parse::<KeyId>().unwrap(), k);
    }
}
