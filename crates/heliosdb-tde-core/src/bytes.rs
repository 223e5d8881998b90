//! [`ByteReader`]: the bounds-checked cursor every binary format of the workspace is parsed
//! with (the wrapped-TEK envelope, the MEK file, the key-store record).
//!
//! Every read names the field it reads, and a read past the end is a [`TdeError::Corrupt`]
//! naming what is being parsed, where it came from, the field and the byte offset; nothing
//! panics and nothing is allocated from an unchecked length.

use crate::error::{Result, TdeError};
use crate::ids::{MekId, MekRef, MekVersion};
use std::borrow::Cow;

/// A cursor over a byte string that refuses to read past its end.
///
/// ```
/// use heliosdb_tde_core::ByteReader;
///
/// let mut r = ByteReader::new(&[1, 0, 0, 0, 7], "example record", "a test");
/// assert_eq!(r.u8("version").unwrap(), 1);
/// assert_eq!(r.u32("count").unwrap(), 7);
/// assert_eq!(r.remaining(), 0);
/// let e = r.u8("flags").unwrap_err().to_string();
/// assert!(e.contains("example record") && e.contains("flags"), "{e}");
/// ```
#[derive(Clone, Debug)]
pub struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
    location: Cow<'a, str>,
}

impl<'a> ByteReader<'a> {
    /// A reader at the start of `buf`, which holds `what` (for example `MEK file`) read from
    /// `location` (a path, a key): both name the input in errors.
    pub fn new(buf: &'a [u8], what: &'a str, location: impl Into<Cow<'a, str>>) -> Self {
        Self {
            buf,
            pos: 0,
            what,
            location: location.into(),
        }
    }

    /// The offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// A [`TdeError::Corrupt`] about this input, with `detail`.
    pub fn err(&self, detail: impl Into<String>) -> TdeError {
        TdeError::corrupt(self.what, self.location.as_ref(), detail)
    }

    /// The next `n` bytes, which hold `field`.
    pub fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&e| e <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated at byte {} while reading the {field} ({n} bytes needed, {} left)",
                self.pos,
                self.remaining()
            ))),
        }
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A flag byte: 0 is `false`, 1 is `true`, anything else is an error.
    pub fn flag(&mut self, field: &str) -> Result<bool> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(self.err(format!("{field}: flag byte {x} is neither 0 nor 1"))),
        }
    }

    /// An MEK reference as every format of the workspace writes it: the id's length (`u8`),
    /// the id (UTF-8, a valid [`MekId`]), then the version (big-endian `u32`, not 0).
    pub fn mek_ref(&mut self) -> Result<MekRef> {
        let len = usize::from(self.u8("MEK id length")?);
        let raw = self.take(len, "MEK id")?;
        let id = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| MekId::new(s).ok())
            .ok_or_else(|| self.err("the MEK id is not a valid identifier"))?;
        let version = MekVersion::new(self.u32("MEK version")?)
            .map_err(|_| self.err("MEK version 0 is invalid"))?;
        Ok(MekRef::new(id, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_in_order_and_stops_at_the_end() {
        let bytes = [7u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0xAA, 0xBB];
        let mut r = ByteReader::new(&bytes, "thing", "here");
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 2);
        assert_eq!(r.u64("c").unwrap(), 3);
        assert!(r.flag("d").unwrap());
        assert_eq!(r.position(), 14);
        assert_eq!(r.array::<2>("e").unwrap(), [0xAA, 0xBB]);
        assert_eq!(r.remaining(), 0);
        let e = r.take(1, "f").unwrap_err();
        match e {
            TdeError::Corrupt {
                what,
                location,
                detail,
            } => {
                assert_eq!(what, "thing");
                assert_eq!(location, "here");
                assert!(
                    detail.contains("byte 16") && detail.contains("the f"),
                    "{detail}"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(r.position(), 16, "a failed read does not move the cursor");
    }

    #[test]
    fn flags_are_zero_or_one() {
        let mut r = ByteReader::new(&[0, 2], "thing", String::from("owned"));
        assert!(!r.flag("x").unwrap());
        let e = r.flag("y").unwrap_err().to_string();
        assert!(e.contains("flag byte 2") && e.contains("owned"), "{e}");
    }

    #[test]
    fn mek_refs() {
        let mut bytes = vec![3u8];
        bytes.extend_from_slice(b"k_1");
        bytes.extend_from_slice(&7u32.to_be_bytes());
        let mut r = ByteReader::new(&bytes, "thing", "here");
        assert_eq!(r.mek_ref().unwrap().to_string(), "k_1@v7");
        let mut bad = bytes.clone();
        bad[1] = b'/';
        let e = ByteReader::new(&bad, "thing", "here")
            .mek_ref()
            .unwrap_err();
        assert!(e.to_string().contains("not a valid identifier"), "{e}");
        let mut zero = bytes.clone();
        zero[4..].copy_from_slice(&[0; 4]);
        let e = ByteReader::new(&zero, "thing", "here")
            .mek_ref()
            .unwrap_err();
        assert!(e.to_string().contains("MEK version 0"), "{e}");
        assert!(
            ByteReader::new(&bytes[..5], "thing", "here")
                .mek_ref()
                .is_err()
        );
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = ByteReader::new(&[1, 2, 3], "thing", "here");
        r.u8("a").unwrap();
        assert!(r.take(usize::MAX, "b").is_err());
        assert_eq!(r.remaining(), 2);
    }

    proptest! {
        #[test]
        fn reads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), ops in prop::collection::vec(0u8..6, 0..32)) {
            let mut r = ByteReader::new(&bytes, "thing", "here");
            for op in ops {
                let before = r.position();
                let ok = match op {
                    0 => r.u8("x").is_ok(),
                    1 => r.u32("x").is_ok(),
                    2 => r.u64("x").is_ok(),
                    3 => r.flag("x").is_ok(),
                    4 => r.array::<3>("x").is_ok(),
                    _ => r.take(usize::from(before as u8), "x").is_ok(),
                };
                prop_assert!(r.position() <= bytes.len());
                prop_assert!(ok || r.position() == before || op == 3);
            }
        }
    }
}
