//! The lifecycle record of an MEK version: the value of a token data object.

use heliosdb_tde_core::{KeyState, Timestamp};

/// A lifecycle record, stored as the value of a token data object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) state: KeyState,
    pub(crate) created_at: Timestamp,
    /// Incremented by each state change. Data-object values are read-only on some tokens, so
    /// a change writes a new record and then destroys the old one; after a crash in between,
    /// the highest sequence wins.
    pub(crate) seq: u64,
}

impl Record {
    /// The value bytes: `v1;state=<code>;created=<ms>;seq=<n>`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!(
            "v1;state={};created={};seq={}",
            self.state.code(),
            self.created_at.as_millis(),
            self.seq
        )
        .into_bytes()
    }

    /// The record in a data object's value; `None` for anything that is not one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(';');
        if parts.next()? != "v1" {
            return None;
        }
        let state = parts.next()?.strip_prefix("state=")?.parse::<u8>().ok()?;
        let created = parts
            .next()?
            .strip_prefix("created=")?
            .parse::<u64>()
            .ok()?;
        let seq = parts.next()?.strip_prefix("seq=")?.parse::<u64>().ok()?;
        Some(Self {
            state: KeyState::from_code(state)?,
            created_at: Timestamp(created),
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_fixed() {
        let r = Record {
            state: KeyState::DecryptOnly,
            created_at: Timestamp(1_700_000_000_123),
            seq: 7,
        };
        assert_eq!(r.encode(), b"v1;state=2;created=1700000000123;seq=7");
        assert_eq!(Record::decode(&r.encode()), Some(r));
    }

    #[test]
    fn every_state_round_trips() {
        for state in [
            KeyState::Active,
            KeyState::DecryptOnly,
            KeyState::Deactivated,
            KeyState::Compromised,
            KeyState::Destroyed,
        ] {
            let r = Record {
                state,
                created_at: Timestamp(5),
                seq: u64::MAX,
            };
            assert_eq!(Record::decode(&r.encode()), Some(r), "{state:?}");
        }
    }

    #[test]
    fn anything_else_is_not_a_record() {
        for bad in [
            &b""[..],
            b"v2;state=1;created=0;seq=1",
            b"v1;state=9;created=0;seq=1",
            b"v1;state=1;created=-1;seq=1",
            b"v1;state=1;created=0",
            b"v1;created=0;state=1;seq=1",
            b"v1;state=1;created=0;seq=x",
            b"\xff\xfe",
        ] {
            assert_eq!(
                Record::decode(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
