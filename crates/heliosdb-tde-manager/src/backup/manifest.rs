//! The bundle's JSON manifest.

use super::format::Section;
use serde::{Deserialize, Serialize};

/// What a bundle holds, as written in its manifest section (`docs/formats/backup-bundle.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// The bundle format (1).
    pub format: u32,
    /// When the backup was taken, RFC 3339 UTC.
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The HeliosDB version that wrote it.
    pub heliosdb_version: String,
    /// The key store it was taken from.
    pub store: StoreSection,
    /// The MEK provider.
    pub provider: ProviderSection,
    /// The default MEK id.
    pub default_mek: String,
    /// Every MEK version a TEK needs (current wrap or kept previous wrap), plus every usable
    /// version of the default MEK, with the number of TEKs that need it.
    pub mek_versions: Vec<MekVersionEntry>,
    /// Counts.
    pub counts: Counts,
    /// Length and SHA-256 of each data section.
    pub sections: Sections,
}

/// The key store a bundle was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreSection {
    /// The store id, 32 hex digits.
    pub id: String,
    /// The store's key generation as of the snapshot.
    pub generation: u64,
    /// Where the store was (for operators).
    pub location: String,
}

/// The MEK provider a bundle was taken with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProviderSection {
    /// `secure_file`, `pkcs11`, `vault`, `aws_kms`, `azure_kv`, `in_memory`.
    pub kind: String,
    /// Its non-secret location (directory, token, server and mount, key ARN, vault URL).
    pub location: String,
}

/// One MEK version a bundle depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MekVersionEntry {
    /// `<mek id>@v<N>`.
    pub mek: String,
    /// How many TEK records need it (current or previous wrap).
    pub teks: u64,
    /// Where the provider keeps it (never a secret).
    pub reference: String,
    /// The material entry holding its file, for a file provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Entry counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counts {
    /// TEK records.
    pub teks: u64,
    /// Distinct tables among them.
    pub tables: u64,
    /// Journal entries.
    pub journal: u64,
    /// Material entries.
    pub material: u64,
}

/// One data section's length and checksum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SectionDigest {
    /// Payload length in bytes.
    pub length: u64,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
}

/// The data sections' digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sections {
    /// The TEK records.
    pub teks: SectionDigest,
    /// The journal entries.
    pub journal: SectionDigest,
    /// The provider material.
    pub material: SectionDigest,
}

impl Manifest {
    /// The recorded digest of a data section (the manifest's own is empty).
    pub(crate) fn section(&self, s: Section) -> SectionDigest {
        match s {
            Section::Manifest => SectionDigest::default(),
            Section::Teks => self.sections.teks.clone(),
            Section::Journal => self.sections.journal.clone(),
            Section::Material => self.sections.material.clone(),
        }
    }

    /// The store id as bytes, if the manifest's is well formed.
    pub fn store_id(&self) -> Option<[u8; 16]> {
        heliosdb_tde_core::StoreIdentity::parse_id(&self.store.id)
    }

    /// The MEK versions the bundle holds or references.
    pub fn meks(&self) -> impl Iterator<Item = &str> {
        self.mek_versions.iter().map(|m| m.mek.as_str())
    }
}
