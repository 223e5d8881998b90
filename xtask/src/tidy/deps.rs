//! The rules over dependency trees, read with `cargo tree` for one package at a time: no
//! backend-only crate in a lean crate's default tree, no backend under another, one HTTP stack.

use super::{Role, role_of};
use crate::Result;
use std::path::Path;

/// Crates that belong to the cloud KMS and HSM backends: a build that does not ask for those
/// backends must not compile them. (aws-lc-rs and aws-lc-sys are the cipher engine, not AWS
/// KMS, and are allowed.)
pub const BACKEND_ONLY_CRATES: &[&str] = &[
    "aws-sdk-",
    "aws-config",
    "aws-smithy-",
    "aws-types",
    "aws-runtime",
    "aws-sigv4",
    "aws-credential-types",
    "azure_",
    "vaultrs",
    "cryptoki",
    "pkcs11",
];

/// The crates whose default-feature dependency tree must stay free of backend-only crates.
pub const LEAN_BY_DEFAULT: &[&str] = &["heliosdb-tde-file", "heliosdb-security"];

/// Problems in the dependency tree (`names`, normal and build edges) of `package`.
pub fn check_tree(package: &str, names: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if LEAN_BY_DEFAULT.contains(&package) {
        for n in names {
            if BACKEND_ONLY_CRATES.iter().any(|b| n.starts_with(b)) {
                problems.push(format!(
                    "{package}: with default features its dependency tree contains {n}, which \
                     belongs to a cloud KMS or HSM backend; put it behind that backend's feature"
                ));
            }
        }
    }
    if role_of(package) == Some(Role::Backend) {
        for n in names {
            if n != package && role_of(n) == Some(Role::Backend) {
                problems.push(format!(
                    "{package}: its dependency tree contains the backend {n}; no backend may \
                     depend on another"
                ));
            }
        }
    }
    problems
}

/// Crate versions of a second, legacy HTTP/TLS stack (`name`, version prefix): the AWS SDK with
/// its default features compiles hyper 0.14 and rustls 0.21 next to hyper 1 and rustls 0.23.
/// No crate of ours may pull them in: every HTTP client here shares one stack.
pub const LEGACY_HTTP_STACK: &[(&str, &str)] = &[("hyper", "0.14."), ("rustls", "0.21.")];

/// Problems in the dependency tree of `package` given as (name, version) pairs: a crate of the
/// legacy HTTP stack ([`LEGACY_HTTP_STACK`]).
pub fn check_http_stack(package: &str, tree: &[(String, String)]) -> Vec<String> {
    tree.iter()
        .filter(|(n, v)| {
            LEGACY_HTTP_STACK
                .iter()
                .any(|(name, prefix)| n == name && v.starts_with(prefix))
        })
        .map(|(n, v)| {
            format!(
                "{package}: its dependency tree contains {n} v{v}, a second HTTP stack; turn off \
                 the default features of the dependency that brings it (for the AWS SDK: \
                 default-features = false with default-https-client)"
            )
        })
        .collect()
}

/// The crate names in `package`'s dependency tree (normal and build edges, its own default
/// features), from `cargo tree`, which resolves features for that package alone.
pub fn dependency_names(root: &Path, package: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = dependency_tree(root, package)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.dedup();
    Ok(names)
}

/// The (name, version) pairs in `package`'s dependency tree (normal and build edges, its own
/// default features), sorted, each once.
pub fn dependency_tree(root: &Path, package: &str) -> Result<Vec<(String, String)>> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut tree: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let version = words
                .next()
                .unwrap_or("")
                .trim_start_matches('v')
                .to_string();
            Some((name, version))
        })
        .collect();
    tree.sort();
    tree.dedup();
    Ok(tree)
}
