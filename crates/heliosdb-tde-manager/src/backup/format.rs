//! The bundle's byte layout (`docs/formats/backup-bundle.md`): writing its pieces, and a total
//! reader that checks every byte before anything is used.

use super::manifest::Manifest;
use heliosdb_tde_core::{Result, TdeError};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"HDBKEYS\0";
/// The bundle format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic, version and flags.
pub(crate) const HEADER_LEN: u64 = 12;
/// Tag and length before each section's payload.
pub(crate) const SECTION_HEADER_LEN: u64 = 9;
/// The trailing SHA-256.
pub(crate) const TRAILER_LEN: u64 = 32;
/// The longest entry name (a TEK's store key, a journal entry name, a file name).
pub const MAX_NAME: usize = 1024;
/// The longest entry value, and the largest manifest.
pub const MAX_VALUE: usize = 16 << 20;

/// The four sections, in the order they appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// The JSON manifest.
    Manifest = 1,
    /// The TEK records.
    Teks = 2,
    /// The journal entries.
    Journal = 3,
    /// The provider material (MEK files).
    Material = 4,
}

impl Section {
    /// Every section, in order.
    pub const ALL: [Section; 4] = [
        Section::Manifest,
        Section::Teks,
        Section::Journal,
        Section::Material,
    ];

    /// Its name in messages and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Section::Manifest => "manifest",
            Section::Teks => "teks",
            Section::Journal => "journal",
            Section::Material => "material",
        }
    }
}

/// Where a section's payload lies in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// A writer that counts and hashes what passes through it.
pub(crate) struct Hashing<W> {
    pub(crate) inner: W,
    pub(crate) hash: Sha256,
    pub(crate) written: u64,
}

impl<W: Write> Hashing<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one entry: u16 name length, name, u32 value length, value.
pub(crate) fn put_entry(w: &mut impl Write, name: &[u8], value: &[u8]) -> io::Result<()> {
    let (Ok(n), Ok(v)) = (u16::try_from(name.len()), u32::try_from(value.len())) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a backup entry is too large",
        ));
    };
    if name.len() > MAX_NAME || value.len() > MAX_VALUE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a backup entry is too large",
        ));
    }
    w.write_all(&n.to_be_bytes())?;
    w.write_all(name)?;
    w.write_all(&v.to_be_bytes())?;
    w.write_all(value)
}

/// Writes the bundle header.
pub(crate) fn put_header(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_be_bytes())?;
    w.write_all(&0u16.to_be_bytes())
}

/// Writes a section's tag and length.
pub(crate) fn put_section_header(w: &mut impl Write, s: Section, len: u64) -> io::Result<()> {
    w.write_all(&[s as u8])?;
    w.write_all(&len.to_be_bytes())
}

/// A checked bundle: its manifest and where each section lies in `reader`.
#[derive(Debug)]
pub struct CheckedBundle {
    /// The manifest, checked against the sections.
    pub manifest: Manifest,
    pub(crate) spans: [Span; 4],
}

fn corrupt(loc: &str, section: &str, offset: u64, detail: impl std::fmt::Display) -> TdeError {
    TdeError::corrupt(
        "backup bundle",
        loc,
        format!("{section} at byte {offset}: {detail}; take a new backup or use another bundle"),
    )
}

fn io_err(loc: &str, e: io::Error) -> TdeError {
    TdeError::io(loc, e)
}

/// Reads exactly `buf.len()` bytes at the current position; a short read is the bundle being
/// cut short, reported for `section` at `offset`.
fn read_exact_at<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    loc: &str,
    section: &str,
    offset: u64,
) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(loc, section, offset, "the bundle was cut short"),
        _ => io_err(loc, e),
    })
}

/// Checks a whole bundle of `total` bytes read from `r`: header, section framing, the section
/// checksums recorded in the manifest, the trailing checksum, and every entry's framing and
/// order with the counts the manifest states. `loc` names the bundle in errors. Nothing but
/// the manifest is held in memory.
pub fn check<R: Read + Seek>(r: &mut R, total: u64, loc: &str) -> Result<CheckedBundle> {
    if total < HEADER_LEN {
        return Err(corrupt(
            loc,
            "header",
            0,
            format!("the file has {total} bytes, too few for a backup bundle"),
        ));
    }
    r.seek(SeekFrom::Start(0)).map_err(|e| io_err(loc, e))?;
    let mut header = [0u8; HEADER_LEN as usize];
    read_exact_at(r, &mut header, loc, "header", 0)?;
    if header[..8] != MAGIC {
        return Err(corrupt(
            loc,
            "header",
            0,
            "this is not a HeliosDB key backup bundle (wrong magic bytes)",
        ));
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            loc,
            "header",
            8,
            format!(
                "bundle format {version} is not supported (this build reads format \
                 {FORMAT_VERSION}); use the HeliosDB version that wrote it"
            ),
        ));
    }
    let flags = u16::from_be_bytes([header[10], header[11]]);
    if flags != 0 {
        return Err(corrupt(
            loc,
            "header",
            10,
            format!("unknown flags {flags:#06x}"),
        ));
    }
    // Framing: four sections in order, each inside the file, then exactly the trailer.
    let mut spans = [Span::default(); 4];
    let mut at = HEADER_LEN;
    for (i, s) in Section::ALL.iter().enumerate() {
        if at + SECTION_HEADER_LEN > total {
            return Err(corrupt(
                loc,
                &format!("section {}", s.name()),
                at,
                "the bundle was cut short before this section",
            ));
        }
        r.seek(SeekFrom::Start(at)).map_err(|e| io_err(loc, e))?;
        let mut sh = [0u8; SECTION_HEADER_LEN as usize];
        read_exact_at(r, &mut sh, loc, &format!("section {}", s.name()), at)?;
        if sh[0] != *s as u8 {
            return Err(corrupt(
                loc,
                &format!("section {}", s.name()),
                at,
                format!("expected section tag {}, found {}", *s as u8, sh[0]),
            ));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&sh[1..]);
        let len = u64::from_be_bytes(len_bytes);
        let start = at + SECTION_HEADER_LEN;
        if len > total.saturating_sub(start) {
            return Err(corrupt(
                loc,
                &format!("section {}", s.name()),
                at,
                format!(
                    "its length {len} runs past the end of the file ({total} bytes): the bundle \
                     was cut short"
                ),
            ));
        }
        if *s == Section::Manifest && len > MAX_VALUE as u64 {
            return Err(corrupt(
                loc,
                "section manifest",
                at,
                format!("a manifest of {len} bytes is implausibly large"),
            ));
        }
        spans[i] = Span { offset: start, len };
        at = start + len;
    }
    if total - at != TRAILER_LEN {
        return Err(corrupt(
            loc,
            "trailer",
            at,
            format!(
                "expected the 32-byte checksum after the last section, found {} bytes: the \
                 bundle was cut short or has bytes appended",
                total - at
            ),
        ));
    }
    // One pass over the file: the trailing checksum and each section's checksum.
    r.seek(SeekFrom::Start(0)).map_err(|e| io_err(loc, e))?;
    let mut whole = Sha256::new();
    let mut per = [Sha256::new(), Sha256::new(), Sha256::new(), Sha256::new()];
    let mut manifest_bytes = Vec::with_capacity(usize::try_from(spans[0].len).unwrap_or(0));
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while pos < at {
        let want = usize::try_from((at - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        read_exact_at(r, &mut buf[..want], loc, "file", pos)?;
        let chunk = &buf[..want];
        whole.update(chunk);
        for (i, span) in spans.iter().enumerate() {
            let lo = span.offset.max(pos);
            let hi = (span.offset + span.len).min(pos + want as u64);
            if lo < hi {
                let part = &chunk[(lo - pos) as usize..(hi - pos) as usize];
                per[i].update(part);
                if i == 0 {
                    manifest_bytes.extend_from_slice(part);
                }
            }
        }
        pos += want as u64;
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    read_exact_at(r, &mut trailer, loc, "trailer", at)?;
    let trailer_ok = whole.finalize().as_slice() == trailer;
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            return Err(corrupt(
                loc,
                "section manifest",
                spans[0].offset,
                if trailer_ok {
                    format!("the manifest is not valid: {e}")
                } else {
                    "the manifest is damaged (it is not valid JSON and the bundle's checksum \
                     does not match)"
                        .to_string()
                },
            ));
        }
    };
    if manifest.format != u32::from(FORMAT_VERSION) {
        return Err(corrupt(
            loc,
            "section manifest",
            spans[0].offset,
            format!("the manifest says format {}", manifest.format),
        ));
    }
    let hashes: Vec<[u8; 32]> = per.into_iter().map(|h| h.finalize().into()).collect();
    for (i, s) in Section::ALL.iter().enumerate().skip(1) {
        let recorded = manifest.section(*s);
        if recorded.length != spans[i].len
            || !recorded
                .sha256
                .eq_ignore_ascii_case(&hex::encode(hashes[i]))
        {
            return Err(corrupt(
                loc,
                &format!("section {}", s.name()),
                spans[i].offset,
                "its checksum does not match the manifest: the section was damaged",
            ));
        }
    }
    if !trailer_ok {
        return Err(corrupt(
            loc,
            "header or manifest",
            0,
            "the bundle's checksum does not match although every section's does: the header, \
             a section header or the manifest was damaged",
        ));
    }
    let checked = CheckedBundle { manifest, spans };
    // Entry framing, order and counts.
    let mut teks = 0u64;
    let mut tables = 0u64;
    let mut last_table: Option<Vec<u8>> = None;
    walk(r, &checked, Section::Teks, loc, &mut |key, _| {
        teks += 1;
        // The store key starts with the table id and a 0 separator (keystore-record.md).
        let table = key.split(|b| *b == 0).next().unwrap_or(key);
        // HeliosDB's own keys (the audit key) are no user's table.
        let reserved = table.starts_with(heliosdb_tde_core::RESERVED_TABLE_PREFIX.as_bytes());
        if !reserved && last_table.as_deref() != Some(table) {
            tables += 1;
            last_table = Some(table.to_vec());
        }
        Ok(())
    })?;
    let mut journal = 0u64;
    let journal_at = checked.spans[2].offset;
    walk(r, &checked, Section::Journal, loc, &mut |name, _| {
        std::str::from_utf8(name).map_err(|_| {
            corrupt(
                loc,
                "section journal",
                journal_at,
                "an entry name is not UTF-8",
            )
        })?;
        journal += 1;
        Ok(())
    })?;
    let mut material = 0u64;
    walk(r, &checked, Section::Material, loc, &mut |_, _| {
        material += 1;
        Ok(())
    })?;
    let c = &checked.manifest.counts;
    for (what, found, stated) in [
        ("teks", teks, c.teks),
        ("journal", journal, c.journal),
        ("material", material, c.material),
    ] {
        if found != stated {
            return Err(corrupt(
                loc,
                &format!("section {what}"),
                checked.spans[Section::ALL
                    .iter()
                    .position(|s| s.name() == what)
                    .unwrap_or(0)]
                .offset,
                format!("it holds {found} entries but the manifest states {stated}"),
            ));
        }
    }
    if tables != c.tables {
        return Err(corrupt(
            loc,
            "section teks",
            checked.spans[1].offset,
            format!(
                "it holds keys of {tables} tables but the manifest states {}",
                c.tables
            ),
        ));
    }
    Ok(checked)
}

/// A visitor of a section's entries: (name, value).
pub type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Visits every entry of one section in order, checking its framing and that names ascend
/// strictly.
pub(crate) fn walk<R: Read + Seek>(
    r: &mut R,
    bundle: &CheckedBundle,
    section: Section,
    loc: &str,
    visit: &mut EntryVisitor<'_>,
) -> Result<()> {
    let span = bundle.spans[section as usize - 1];
    let label = format!("section {}", section.name());
    r.seek(SeekFrom::Start(span.offset))
        .map_err(|e| io_err(loc, e))?;
    let mut r = io::BufReader::with_capacity(64 * 1024, r.take(span.len));
    let end = span.offset + span.len;
    let mut at = span.offset;
    let mut previous: Option<Vec<u8>> = None;
    let mut name = Vec::new();
    let mut value = Vec::new();
    while at < end {
        let entry_at = at;
        if end - at < 2 {
            return Err(corrupt(loc, &label, at, "an entry is cut short"));
        }
        let mut n = [0u8; 2];
        read_exact_at(&mut r, &mut n, loc, &label, at)?;
        let n = usize::from(u16::from_be_bytes(n));
        at += 2;
        if n == 0 || n > MAX_NAME || (end - at) < n as u64 + 4 {
            return Err(corrupt(
                loc,
                &label,
                entry_at,
                format!("an entry name of {n} bytes does not fit"),
            ));
        }
        name.resize(n, 0);
        read_exact_at(&mut r, &mut name, loc, &label, at)?;
        at += n as u64;
        let mut v = [0u8; 4];
        read_exact_at(&mut r, &mut v, loc, &label, at)?;
        let v = u32::from_be_bytes(v) as usize;
        at += 4;
        if v > MAX_VALUE || (end - at) < v as u64 {
            return Err(corrupt(
                loc,
                &label,
                entry_at,
                format!("an entry value of {v} bytes does not fit"),
            ));
        }
        value.resize(v, 0);
        read_exact_at(&mut r, &mut value, loc, &label, at)?;
        at += v as u64;
        if previous.as_deref().is_some_and(|p| name.as_slice() <= p) {
            return Err(corrupt(
                loc,
                &label,
                entry_at,
                "entries are out of order (each name must be greater than the one before)",
            ));
        }
        visit(&name, &value)?;
        previous = Some(std::mem::take(&mut name));
    }
    Ok(())
}

/// Writes `len` bytes from `from` to `to`.
pub(crate) fn copy_exact(from: &mut impl Read, to: &mut impl Write, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut from.take(len), to)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the backup spool file was cut short",
        ));
    }
    Ok(())
}

/// The SHA-256 of `bytes`, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
