//! The model of the workspace the rules check: each crate's manifest facts from
//! `cargo metadata`, and whether its sources use or allow `unsafe`.

use crate::Result;
use cargo_metadata::{DependencyKind, MetadataCommand};
use std::collections::BTreeSet;
use std::path::Path;

/// A dependency edge between two workspace crates.
#[derive(Clone, Debug)]
pub struct InternalDep {
    /// The dependency's crate name.
    pub name: String,
    /// Whether it is a dev-dependency.
    pub dev: bool,
    /// Whether it carries a version requirement (needed to package the dependent crate).
    pub has_version: bool,
}

/// What the rules need to know about one workspace crate.
#[derive(Clone, Debug, Default)]
pub struct CrateInfo {
    /// The package name.
    pub name: String,
    /// The directory of its manifest, relative to the workspace root, with `/` separators.
    pub dir: String,
    /// Whether `cargo publish` may publish it.
    pub publishable: bool,
    /// Dependencies on other workspace crates.
    pub internal_deps: Vec<InternalDep>,
    /// Whether description, license, repository, readme and rust-version are all set.
    pub missing_metadata: Vec<&'static str>,
    /// Whether the manifest opts into `[lints] workspace = true`.
    pub uses_workspace_lints: bool,
    /// Whether its sources contain `unsafe` blocks, functions or impls.
    pub has_unsafe: bool,
    /// Whether its `lib.rs` or `main.rs` allows `unsafe_code` at crate level.
    pub allows_unsafe: bool,
}

/// Loads the model of the workspace at `root`.
pub fn load(root: &Path) -> Result<Vec<CrateInfo>> {
    let meta = MetadataCommand::new()
        .current_dir(root)
        .no_deps()
        .exec()
        .map_err(|e| format!("cargo metadata failed: {e}"))?;
    let members: BTreeSet<String> = meta
        .workspace_packages()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    let mut out = Vec::new();
    for p in meta.workspace_packages() {
        let manifest_dir = p
            .manifest_path
            .parent()
            .map(|d| d.as_std_path().to_path_buf())
            .unwrap_or_default();
        let dir = manifest_dir
            .strip_prefix(root)
            .unwrap_or(&manifest_dir)
            .to_string_lossy()
            .replace('\\', "/");
        let manifest = std::fs::read_to_string(p.manifest_path.as_std_path())
            .map_err(|e| format!("cannot read {}: {e}", p.manifest_path))?;
        let mut missing = Vec::new();
        if p.description.is_none() {
            missing.push("description");
        }
        if p.license.is_none() && p.license_file.is_none() {
            missing.push("license");
        }
        if p.repository.is_none() {
            missing.push("repository");
        }
        match &p.readme {
            Some(r) if manifest_dir.join(r.as_std_path()).exists() => {}
            _ => missing.push("readme"),
        }
        if p.rust_version.is_none() {
            missing.push("rust-version");
        }
        let internal_deps = p
            .dependencies
            .iter()
            .filter(|d| members.contains(&d.name) && d.name != p.name.as_str())
            .map(|d| InternalDep {
                name: d.name.clone(),
                dev: d.kind == DependencyKind::Development,
                has_version: d.req.to_string() != "*",
            })
            .collect();
        let (has_unsafe, allows_unsafe) = scan_unsafe(&manifest_dir.join("src"));
        out.push(CrateInfo {
            name: p.name.to_string(),
            dir,
            publishable: p.publish.as_ref().is_none_or(|v| !v.is_empty()),
            internal_deps,
            missing_metadata: missing,
            uses_workspace_lints: uses_workspace_lints(&manifest),
            has_unsafe,
            allows_unsafe,
        });
    }
    Ok(out)
}

/// Whether the manifest opts into `[lints] workspace = true`.
pub(super) fn uses_workspace_lints(manifest: &str) -> bool {
    let mut in_lints = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lints = line == "[lints]";
        } else if in_lints && line.replace(' ', "") == "workspace=true" {
            return true;
        }
    }
    manifest.contains("lints.workspace = true")
}

/// Whether the sources under `src` use `unsafe`, and whether the crate root allows it.
pub(super) fn scan_unsafe(src: &Path) -> (bool, bool) {
    let mut has = false;
    let mut allows = false;
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines() {
                    let code = strip_strings(line.split("//").next().unwrap_or(""));
                    if uses_unsafe_keyword(&code) {
                        has = true;
                    }
                }
                let root_file = path
                    .file_name()
                    .is_some_and(|n| n == "lib.rs" || n == "main.rs");
                if root_file
                    && text
                        .lines()
                        .any(|l| l.trim_start().starts_with("#![allow(unsafe_code)]"))
                {
                    allows = true;
                }
            }
        }
    }
    (has, allows)
}

/// Whether a line of code (comments and strings removed) has an `unsafe` block, fn, impl or
/// extern block.
pub(super) fn uses_unsafe_keyword(code: &str) -> bool {
    code.match_indices("unsafe").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + "unsafe".len()..].trim_start();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && (after.starts_with('{')
                || after.starts_with("fn")
                || after.starts_with("impl")
                || after.starts_with("extern"))
    })
}

/// The line without the contents of string literals (crudely: text between double quotes).
fn strip_strings(line: &str) -> String {
    line.replace("\\\\", "")
        .replace("\\\"", "")
        .split('"')
        .step_by(2)
        .collect::<Vec<_>>()
        .join("\"\"")
}
