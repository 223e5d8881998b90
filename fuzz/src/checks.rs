//! The property each fuzz target checks, one function per target: it takes one input and
//! panics if the property fails.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, through this crate) and by
//! `crates/heliosdb-security/tests/fuzz_corpus.rs`, which includes this file with `#[path]` to
//! replay the seeds and the saved failures on every `cargo test`. It therefore uses only crates
//! both depend on (the facade, core, cipher, file, keystore, manager, secrecy) and no item of
//! the fuzz crate itself.

use std::path::Path;

/// `envelope`: the wrapped-TEK envelope parser is total, and whatever parses re-encodes to the
/// same bytes. Returns whether the input parsed.
pub fn envelope(data: &[u8]) -> bool {
    match heliosdb_tde_core::WrappedTek::decode(data) {
        Ok(env) => {
            assert_eq!(env.encode(), data, "ambiguous envelope encoding");
            true
        }
        Err(_) => false,
    }
}

/// `page_open`: the page header parser and page open never panic, and never open bytes that
/// were not sealed under the key.
pub struct PageOpen {
    cipher: heliosdb_tde_cipher::TableCipher,
}

impl PageOpen {
    /// A cipher under a fixed key.
    pub fn new() -> Self {
        let key = heliosdb_tde_core::TableKey::new(
            "fuzz@v1".parse().expect("valid TEK id"),
            heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
            heliosdb_tde_core::KeyBytes::from_slice(&[1u8; 32]).expect("32-byte key"),
        );
        let cipher = heliosdb_tde_cipher::TableCipher::new(
            &key,
            heliosdb_tde_cipher::Backend::default(),
            heliosdb_tde_cipher::UsageLimits::default(),
        )
        .expect("cipher");
        Self { cipher }
    }

    /// Checks one input.
    pub fn check(&self, data: &[u8]) {
        let _ = heliosdb_tde_cipher::PageHeader::parse(data);
        assert!(
            self.cipher.open(b"aad", data).is_err(),
            "forged page opened"
        );
    }
}

impl Default for PageOpen {
    fn default() -> Self {
        Self::new()
    }
}

/// `mek_file`: the MEK file parser is total; an image whose KDF parameters are cheap enough is
/// also decrypted, which must fail for anything the fuzzer made (it cannot forge a GCM tag).
/// Returns whether the input parsed.
pub fn mek_file(data: &[u8]) -> bool {
    let path = Path::new("fuzz.v1.mek");
    let Ok(file) = heliosdb_tde_file::format::parse(data, path) else {
        return false;
    };
    let kdf = file.header.kdf;
    if kdf.m_cost_kib <= 64 && kdf.t_cost <= 2 {
        let pass = secrecy::SecretString::from("fuzzing passphrase".to_string());
        let opened = heliosdb_tde_file::open_image(data, path, &pass).expect("parsed image");
        assert!(opened.is_none(), "a forged MEK file decrypted");
    }
    true
}

/// `keystore_record`: key-store record and key decoding is total, and records of the current
/// version re-encode identically. Returns whether the input decoded as a record of the
/// current version.
pub fn keystore_record(data: &[u8]) -> bool {
    use heliosdb_tde_keystore::record;
    let _ = record::parse_tek_key(data, "fuzz");
    let id = "fuzz.table@v1".parse().expect("valid TEK id");
    if let Ok(rec) = record::decode(&id, data, "fuzz") {
        // Records of the current unauthenticated version re-encode identically; older
        // versions (and authenticated ones, decoded here without their key) are rewritten in
        // the current version.
        if data.first() == Some(&record::RECORD_VERSION) {
            assert_eq!(record::encode(&rec), data, "ambiguous record encoding");
            return true;
        }
    }
    false
}

/// `config_toml`: configuration loading, validation and environment overrides never panic.
/// Returns whether the input parsed as a configuration.
pub fn config_toml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(mut config) = heliosdb_security::tde::TdeConfig::from_toml_str(text) else {
        return false;
    };
    let _ = config.validate();
    let _ = config.apply_env_with(|k| (k == "HELIOSDB_TDE_CACHE_LIMIT").then(|| text.to_string()));
    true
}

/// `audit_log`: the audit-log line parser, the hash- and MAC-chain verifier, the file-set
/// walk and the tail reader never panic, and agree with each other.
///
/// The input is read as one chain (`verify_lines`), and as a file set: split on
/// [`AUDIT_FILE_SEPARATOR`] into at most 3 parts, the last the current file `audit.log` and
/// the others rotated files named `audit.log.<first>-<last>` after their line counts, written
/// to a temporary directory. The set is verified without keys, with the fixed audit key
/// [`AUDIT_FUZZ_KEY`] (version 1), with a checkpoint at its end and current-file only; what
/// passes with the key passes every other way, and the tail reader returns its newest records.
/// The same is done with every parsable line resealed (hashes and MACs recomputed in order),
/// so that mutations reach the sequence, format and file-set checks behind the hashes.
/// Returns whether the input, as given, verified with the key.
pub fn audit_log(data: &[u8]) -> bool {
    let _ = heliosdb_tde_manager::audit::verify_lines(
        std::io::Cursor::new(data),
        Path::new("fuzz-audit.log"),
    );
    let parts: Vec<&[u8]> = data.splitn(3, |&b| b == AUDIT_FILE_SEPARATOR).collect();
    let verified = audit_file_set(&parts);
    let resealed: Vec<Vec<u8>> = audit_reseal(&parts);
    let resealed: Vec<&[u8]> = resealed.iter().map(Vec::as_slice).collect();
    audit_file_set(&resealed);
    verified
}

/// Separates the files of an `audit_log` input (a byte JSON text never holds unescaped).
pub const AUDIT_FILE_SEPARATOR: u8 = 0x1e;

/// The audit key (version 1) of the `audit_log` check; the seeds are sealed with it.
pub const AUDIT_FUZZ_KEY: [u8; 32] = [0x5a; 32];

/// The lines of a file, as the verifier counts them.
fn audit_line_count(part: &[u8]) -> u64 {
    let newlines = part.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(part.last().is_some_and(|&b| b != b'\n'))
}

/// The parts with each parsable line sealed again after the previous one, keyed (under
/// [`AUDIT_FUZZ_KEY`], whatever its `akv`) when it has a MAC; other lines are kept.
fn audit_reseal(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    use heliosdb_tde_manager::audit::format::{AuditRecord, ZERO};
    let mut prev = ZERO.to_string();
    let mut prev_mac = ZERO.to_string();
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let mut file = Vec::with_capacity(part.len());
        for (i, line) in part.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                file.push(b'\n');
            }
            let Some(mut r) = std::str::from_utf8(line)
                .ok()
                .and_then(|t| serde_json::from_str::<AuditRecord>(t).ok())
            else {
                file.extend_from_slice(line);
                continue;
            };
            match r.akv.filter(|_| r.mac.is_some()) {
                Some(akv) => r.seal(&prev, Some((akv, &AUDIT_FUZZ_KEY, &prev_mac))),
                None => r.seal(&prev, None),
            }
            prev = r.hash.clone();
            if let Some(m) = &r.mac {
                prev_mac = m.clone();
            }
            file.extend_from_slice(&serde_json::to_vec(&r).expect("a record serializes"));
        }
        out.push(file);
    }
    out
}

/// A temporary directory removed when dropped.
struct AuditTempDir(std::path::PathBuf);

impl Drop for AuditTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `parts` as a log's file set and checks it every way; returns whether it verified
/// with the key.
fn audit_file_set(parts: &[&[u8]]) -> bool {
    use heliosdb_tde_manager::audit::format::rotated_path;
    use heliosdb_tde_manager::audit::verify::{
        AuditFilter, AuditKeys, AuditVerifyOptions, read_audit_tail, verify_audit_log_with,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = AuditTempDir(std::env::temp_dir().join(format!(
        "heliosdb-fuzz-audit-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )));
    std::fs::create_dir_all(&dir.0).expect("temporary directory");
    let log = dir.0.join("audit.log");
    let mut first = 1u64;
    for (i, part) in parts.iter().enumerate() {
        let path = if i + 1 == parts.len() {
            log.clone()
        } else {
            let n = audit_line_count(part);
            let p = rotated_path(&log, first, (first + n).saturating_sub(1));
            first += n;
            p
        };
        std::fs::write(&path, part).expect("write a file of the set");
    }
    let key = heliosdb_tde_core::TableKey::new(
        "fuzz.audit@v1".parse().expect("valid TEK id"),
        heliosdb_tde_core::EncryptionAlgorithm::Aes256Gcm,
        heliosdb_tde_core::KeyBytes::from_slice(&AUDIT_FUZZ_KEY).expect("32-byte key"),
    );
    let keyed = AuditVerifyOptions::new()
        .with_keys(AuditKeys::new().with_version(1, std::sync::Arc::new(key)));
    let structure = verify_audit_log_with(&log, &AuditVerifyOptions::new());
    let with_key = verify_audit_log_with(&log, &keyed);
    let _ = verify_audit_log_with(&log, &keyed.clone().current_file_only());
    let _ = read_audit_tail(&log, 2, &AuditFilter::new().with_action("tek".into()));
    let Ok(k) = with_key else {
        if let Ok(s) = structure {
            assert!(
                s.unauthenticated_tail <= s.lines,
                "more unauthenticated lines than lines"
            );
        }
        return false;
    };
    let s = structure.expect("what verifies with the key verifies without it");
    assert_eq!(k.lines, k.last_seq, "a whole set holds records 1..last");
    assert_eq!((s.lines, &s.last_hash), (k.lines, &k.last_hash));
    assert_eq!(s.last_mac, k.last_mac);
    assert_eq!(s.macs_checked, 0, "MACs checked without a key");
    assert!(k.unauthenticated_tail <= k.lines);
    let at_end = keyed
        .clone()
        .with_checkpoint(k.last_seq, k.last_hash.clone(), k.last_mac.clone());
    let c = verify_audit_log_with(&log, &at_end).expect("a checkpoint at the end verifies");
    assert_eq!(c.checkpoint, (k.last_seq > 0).then_some(k.last_seq));
    let b = verify_audit_log_with(&log, &at_end.current_file_only())
        .expect("what verifies whole verifies current-file only");
    assert_eq!(
        (b.last_seq, &b.last_hash, &b.last_mac),
        (k.last_seq, &k.last_hash, &k.last_mac)
    );
    assert_eq!(b.unauthenticated_tail, k.unauthenticated_tail);
    let tail = read_audit_tail(&log, 3, &AuditFilter::new()).expect("a verified log reads");
    let want: Vec<u64> = (k.last_seq.saturating_sub(2).max(1)..=k.last_seq).collect();
    let got: Vec<u64> = tail.iter().map(|r| r.seq).collect();
    assert_eq!(got, want, "the tail is the newest records, oldest first");
    true
}

/// `backup_bundle`: the backup bundle reader is total, and whatever it accepts is framed as
/// `docs/formats/backup-bundle.md` says: the magic, format 1, the four sections' lengths and
/// the trailer add up to the input, and each data section is long enough for the entries the
/// manifest counts. Returns whether the input was accepted as a bundle.
pub fn backup_bundle(data: &[u8]) -> bool {
    use heliosdb_tde_manager::backup;
    let Ok(bundle) = backup::check(&mut std::io::Cursor::new(data), data.len() as u64, "fuzz")
    else {
        return false;
    };
    assert_eq!(data[..8], backup::MAGIC, "accepted without the magic bytes");
    let m = &bundle.manifest;
    assert_eq!(
        m.format,
        u32::from(backup::FORMAT_VERSION),
        "accepted another format"
    );
    // Header 12, four section headers of 9, the manifest, three data sections, trailer 32.
    let manifest_len = u64::from_be_bytes(data[13..21].try_into().expect("8 bytes"));
    let s = &m.sections;
    let framed = [s.teks.length, s.journal.length, s.material.length]
        .iter()
        .try_fold(12 + 4 * 9 + 32 + manifest_len, |sum, l| sum.checked_add(*l));
    assert_eq!(
        framed,
        Some(data.len() as u64),
        "the accepted sections do not add up to the input"
    );
    // Every entry takes at least its two lengths and a one-byte name.
    for (count, section) in [
        (m.counts.teks, &s.teks),
        (m.counts.journal, &s.journal),
        (m.counts.material, &s.material),
    ] {
        assert!(
            count.saturating_mul(7) <= section.length,
            "{count} entries counted in a section of {} bytes",
            section.length
        );
    }
    assert!(m.counts.tables <= m.counts.teks, "more tables than TEKs");
    // What the manifest exposes beyond its fields.
    let _ = m.store_id();
    let _ = m.meks().count();
    true
}

/// `backup_bundle`, past the checksums: the input's sections (when it is framed as a bundle
/// at all) get correct SHA-256s in its manifest and a correct trailer before the reader sees
/// it, so that changed bytes inside a section reach the entry walk (framing, order, counts)
/// instead of stopping at the first checksum. Returns whether the resealed bundle was accepted.
pub fn backup_bundle_resealed(data: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let Some(sections) = frame_sections(data) else {
        return backup_bundle(data);
    };
    let Ok(mut manifest) = serde_json::from_slice::<serde_json::Value>(sections[0]) else {
        return backup_bundle(data);
    };
    for (i, name) in ["teks", "journal", "material"].iter().enumerate() {
        let payload = sections[i + 1];
        manifest["sections"][*name] = serde_json::json!({
            "length": payload.len(),
            "sha256": hex::encode(Sha256::digest(payload)),
        });
    }
    let Ok(json) = serde_json::to_vec(&manifest) else {
        return backup_bundle(data);
    };
    let mut out = data[..12].to_vec();
    for (i, payload) in std::iter::once(json.as_slice())
        .chain(sections[1..].iter().copied())
        .enumerate()
    {
        out.push(u8::try_from(i + 1).expect("four sections"));
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        out.extend_from_slice(payload);
    }
    let trailer = Sha256::digest(&out);
    out.extend_from_slice(&trailer);
    backup_bundle(&out)
}

/// The four section payloads of an input framed as a bundle (header, four tagged sections,
/// 32 trailing bytes), or `None`.
fn frame_sections(data: &[u8]) -> Option<[&[u8]; 4]> {
    let mut at = 12usize;
    let mut out: [&[u8]; 4] = [&[]; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let head = data.get(at..at.checked_add(9)?)?;
        if usize::from(head[0]) != i + 1 {
            return None;
        }
        let len = usize::try_from(u64::from_be_bytes(head[1..9].try_into().ok()?)).ok()?;
        let start = at + 9;
        *slot = data.get(start..start.checked_add(len)?)?;
        at = start + len;
    }
    (data.len().checked_sub(at)? == 32).then_some(out)
}
