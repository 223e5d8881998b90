//! Validated identifiers for keys and tables.
//!
//! Identifiers end up in file names, HSM labels, KMS aliases, associated data and log lines, so
//! they are checked once, on construction, and are plain ASCII from then on.
//!
//! * An MEK id such as `master_key_001`: 1 to 64 characters from `A-Z a-z 0-9 _ - .`, starting
//!   with a letter or digit.
//! * A table id such as `public.users`: 1 to 128 characters from `A-Z a-z 0-9 _ - . $ :`,
//!   starting with a letter, digit or `_`.
//! * Versions start at 1.

use crate::error::{Result, TdeError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Longest MEK id accepted.
pub const MAX_MEK_ID_LEN: usize = 64;
/// Longest table id accepted.
pub const MAX_TABLE_ID_LEN: usize = 128;

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    first: (&str, fn(u8) -> bool),
    rest: (&str, fn(u8) -> bool),
) -> Result<()> {
    let (first_rule, first_ok) = first;
    let (rest_rule, rest_ok) = rest;
    let reject = |reason: String| {
        Err(TdeError::InvalidIdentifier {
            kind,
            value: value.chars().take(max + 8).collect(),
            reason,
        })
    };
    let bytes = value.as_bytes();
    let Some(&first) = bytes.first() else {
        return reject("it is empty".into());
    };
    if bytes.len() > max {
        return reject(format!(
            "it is {} bytes long; the limit is {max}",
            bytes.len()
        ));
    }
    if !first_ok(first) {
        return reject(format!("it must start with {first_rule}"));
    }
    if let Some(pos) = bytes.iter().position(|&b| !rest_ok(b)) {
        return reject(format!(
            "the character at byte {pos} is not allowed; use {rest_rule}"
        ));
    }
    Ok(())
}

/// The name of a master encryption key, such as `master_key_001`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MekId(String);

impl MekId {
    /// Validates and wraps an MEK id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check(
            "MEK id",
            &id,
            MAX_MEK_ID_LEN,
            ("a letter or a digit", |b| b.is_ascii_alphanumeric()),
            ("letters, digits and _ - .", |b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
            }),
        )?;
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a table whose pages are encrypted, such as `public.users`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableId(String);

impl TableId {
    /// Validates and wraps a table id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check(
            "table id",
            &id,
            MAX_TABLE_ID_LEN,
            ("a letter, a digit or _", |b| {
                b.is_ascii_alphanumeric() || b == b'_'
            }),
            ("letters, digits and _ - . $ :", |b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$' | b':')
            }),
        )?;
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reserved table whose TEK is the audit log's key (see [`AUDIT_TABLE`]).
    pub fn audit() -> Self {
        Self(AUDIT_TABLE.to_string())
    }

    /// Whether the name is reserved for HeliosDB's own keys (it starts with
    /// [`RESERVED_TABLE_PREFIX`]): such tables are refused for user tables and hidden from
    /// table lists and counts.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_TABLE_PREFIX)
    }
}

/// Table names starting with this are HeliosDB's own (the audit key); user tables may not use
/// them.
pub const RESERVED_TABLE_PREFIX: &str = "_heliosdb";

/// The reserved table whose TEK is the audit log's MAC key: wrapped under the default MEK like
/// any TEK, so that MEK rotation re-wraps it and backups carry it.
pub const AUDIT_TABLE: &str = "_heliosdb.audit";

macro_rules! string_id_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = TdeError;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = TdeError;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = TdeError;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_id_impls!(MekId);
string_id_impls!(TableId);

macro_rules! id_arg {
    ($(#[$doc:meta])* $trait:ident, $method:ident, $t:ty) => {
        $(#[$doc])*
        pub trait $trait {
            /// The validated id: borrowed when it already is one, parsed (once) from a string.
            fn $method(&self) -> Result<Cow<'_, $t>>;
        }
        impl $trait for $t {
            fn $method(&self) -> Result<Cow<'_, $t>> {
                Ok(Cow::Borrowed(self))
            }
        }
        impl $trait for str {
            fn $method(&self) -> Result<Cow<'_, $t>> {
                <$t>::new(self).map(Cow::Owned)
            }
        }
        impl $trait for String {
            fn $method(&self) -> Result<Cow<'_, $t>> {
                self.as_str().$method()
            }
        }
        impl<T: $trait + ?Sized> $trait for &T {
            fn $method(&self) -> Result<Cow<'_, $t>> {
                (**self).$method()
            }
        }
    };
}
id_arg!(
    /// An MEK id argument. APIs that take `&(impl AsMekId + ?Sized)` accept a validated [`MekId`]
    /// (used as is, never re-parsed) or a string such as `"master_key_001"` (validated at that
    /// edge, with the usual error for an invalid id).
    AsMekId,
    as_mek_id,
    MekId
);
id_arg!(
    /// A table id argument: a validated [`TableId`] (used as is) or a string (validated at that
    /// edge). See [`AsMekId`].
    AsTableId,
    as_table_id,
    TableId
);

macro_rules! version_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "u32", into = "u32")]
        pub struct $t(u32);

        impl $t {
            /// The first version.
            pub const FIRST: Self = Self(1);

            /// Wraps a version number; versions start at 1.
            pub fn new(v: u32) -> Result<Self> {
                if v == 0 {
                    return Err(TdeError::InvalidIdentifier {
                        kind: $kind,
                        value: "0".into(),
                        reason: "versions start at 1".into(),
                    });
                }
                Ok(Self(v))
            }

            /// The version number.
            pub fn get(self) -> u32 {
                self.0
            }

            /// The version after this one.
            pub fn next(self) -> Result<Self> {
                self.0.checked_add(1).map(Self).ok_or_else(|| TdeError::InvalidIdentifier {
                    kind: $kind,
                    value: self.0.to_string(),
                    reason: "no version follows the largest one".into(),
                })
            }
        }

        impl TryFrom<u32> for $t {
            type Error = TdeError;
            fn try_from(v: u32) -> Result<Self> {
                Self::new(v)
            }
        }

        impl From<$t> for u32 {
            fn from(v: $t) -> u32 {
                v.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "v{}", self.0)
            }
        }
    };
}

version_type!(
    /// A version of an MEK. Rotation creates the next version under the same id.
    MekVersion,
    "MEK version"
);
version_type!(
    /// A version of a table's TEK. Rotating a table key creates the next version.
    TekVersion,
    "TEK version"
);

fn parse_version(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('v').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn split_at_version<'a>(s: &'a str, kind: &'static str) -> Result<(&'a str, u32)> {
    let bad = || TdeError::InvalidIdentifier {
        kind,
        value: s.chars().take(200).collect(),
        reason: "expected NAME@vN, for example master_key_001@v1 or users@v2".into(),
    };
    let (name, version) = s.rsplit_once('@').ok_or_else(bad)?;
    let version = parse_version(version).ok_or_else(bad)?;
    Ok((name, version))
}

/// One version of one MEK: what a TEK is wrapped under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MekRef {
    /// The MEK id.
    pub id: MekId,
    /// The MEK version.
    pub version: MekVersion,
}

impl MekRef {
    /// Pairs an id and a version.
    pub fn new(id: MekId, version: MekVersion) -> Self {
        Self { id, version }
    }
}

impl fmt::Display for MekRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

impl FromStr for MekRef {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, version) = split_at_version(s, "MEK reference")?;
        Ok(Self::new(MekId::new(name)?, MekVersion::new(version)?))
    }
}

/// One version of one table's TEK.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TekId {
    /// The table.
    pub table: TableId,
    /// The key version.
    pub version: TekVersion,
}

impl TekId {
    /// Pairs a table and a version.
    pub fn new(table: TableId, version: TekVersion) -> Self {
        Self { table, version }
    }
}

impl fmt::Display for TekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.table, self.version)
    }
}

impl FromStr for TekId {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, version) = split_at_version(s, "TEK id")?;
        Ok(Self::new(TableId::new(name)?, TekVersion::new(version)?))
    }
}

/// Any key in the hierarchy, as listed by `list_keys`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyId {
    /// A master key version.
    Master(MekRef),
    /// A table key version.
    Table(TekId),
}

impl KeyId {
    /// Which tier the key belongs to.
    pub fn key_type(&self) -> crate::KeyType {
        match self {
            KeyId::Master(_) => crate::KeyType::Master,
            KeyId::Table(_) => crate::KeyType::Table,
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::Master(m) => write!(f, "mek:{m}"),
            KeyId::Table(t) => write!(f, "tek:{t}"),
        }
    }
}

impl FromStr for KeyId {
    type Err = TdeError;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("mek:") {
            Ok(KeyId::Master(rest.parse()?))
        } else if let Some(rest) = s.strip_prefix("tek:") {
            Ok(KeyId::Table(rest.parse()?))
        } else {
            Err(TdeError::InvalidIdentifier {
                kind: "key id",
                value: s.chars().take(200).collect(),
                reason: "expected mek:NAME@vN or tek:TABLE@vN".into(),
            })
        }
    }
}

impl From<TekId> for KeyId {
    fn from(t: TekId) -> Self {
        KeyId::Table(t)
    }
}

impl From<MekRef> for KeyId {
    fn from(m: MekRef) -> Self {
        KeyId::Master(m)
    }
}

#[cfg(test)]
mod tests;
