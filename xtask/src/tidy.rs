//! The workspace rules, checked from `cargo metadata` (run by `cargo test` via
//! `xtask/tests/tidy.rs`, and by `cargo xtask tidy`).
//!
//! The rules are the layering invariants of ARCHITECTURE.md plus the release hygiene every
//! crate needs to be packaged on its own. Each rule is a function over a small model of the
//! workspace, so that the unit tests below can feed it broken workspaces and see it fail.
//! The rules about public types (`#[non_exhaustive]`) parse the sources, in [`api`].

pub mod api;

use crate::Result;
use cargo_metadata::{DependencyKind, MetadataCommand};
use std::collections::BTreeSet;
use std::path::Path;

/// What a crate is for, which decides what it may depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `heliosdb-tde-core`: depends on nothing of ours.
    Core,
    /// `heliosdb-tde-cipher`: core only.
    Cipher,
    /// An MEK provider backend: core, plus cipher if it does local cryptography.
    Backend,
    /// The durable TEK store: core only.
    Store,
    /// The rotation orchestrator: core only.
    Rotation,
    /// The key manager: anything but a backend.
    Manager,
    /// The conformance suite: anything but a backend.
    Conformance,
    /// The facade and the CLI: may know every backend.
    Assembly,
    /// Tooling outside `crates/` (xtask, benches).
    Tooling,
}

/// The planned crate map: every crate name and its role.
pub const CRATE_MAP: &[(&str, Role)] = &[
    ("heliosdb-tde-core", Role::Core),
    ("heliosdb-tde-cipher", Role::Cipher),
    ("heliosdb-tde-memory", Role::Backend),
    ("heliosdb-tde-file", Role::Backend),
    ("heliosdb-tde-pkcs11", Role::Backend),
    ("heliosdb-tde-vault", Role::Backend),
    ("heliosdb-tde-aws-kms", Role::Backend),
    ("heliosdb-tde-azure-kv", Role::Backend),
    ("heliosdb-tde-keystore", Role::Store),
    ("heliosdb-tde-rotation", Role::Rotation),
    ("heliosdb-tde-manager", Role::Manager),
    ("heliosdb-security", Role::Assembly),
    ("heliosdb-cli", Role::Assembly),
    ("heliosdb-tde-conformance", Role::Conformance),
    ("xtask", Role::Tooling),
    ("heliosdb-benches", Role::Tooling),
];

/// The crates that must not be published.
pub const UNPUBLISHED: &[&str] = &["heliosdb-tde-conformance", "xtask", "heliosdb-benches"];

/// The role of a crate, if it is on the map.
pub fn role_of(name: &str) -> Option<Role> {
    CRATE_MAP.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

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

fn uses_workspace_lints(manifest: &str) -> bool {
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

fn scan_unsafe(src: &Path) -> (bool, bool) {
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
fn uses_unsafe_keyword(code: &str) -> bool {
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

/// Checks every rule; returns one line per violation.
pub fn check(crates: &[CrateInfo], architecture_md: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for c in crates {
        let Some(role) = role_of(&c.name) else {
            problems.push(format!(
                "{}: not on the crate map; add it to ARCHITECTURE.md and to tidy::CRATE_MAP",
                c.name
            ));
            continue;
        };
        check_layout(c, role, &mut problems);
        check_layering(c, role, &mut problems);
        check_release(c, &mut problems);
        check_unsafe(c, architecture_md, &mut problems);
        if role != Role::Tooling && !architecture_md.contains(&format!("`{}`", c.name)) {
            problems.push(format!(
                "{}: ARCHITECTURE.md's code map does not mention it",
                c.name
            ));
        }
    }
    problems
}

fn check_layout(c: &CrateInfo, role: Role, problems: &mut Vec<String>) {
    if role != Role::Tooling && c.dir != format!("crates/{}", c.name) {
        problems.push(format!(
            "{}: lives in {} but must live in crates/{}",
            c.name, c.dir, c.name
        ));
    }
    if !c.uses_workspace_lints {
        problems.push(format!(
            "{}: Cargo.toml must opt into the workspace lints ([lints] workspace = true)",
            c.name
        ));
    }
}

fn check_layering(c: &CrateInfo, role: Role, problems: &mut Vec<String>) {
    for d in &c.internal_deps {
        let Some(dep_role) = role_of(&d.name) else {
            continue; // reported for the dependency itself
        };
        let kind = if d.dev {
            "dev-dependency"
        } else {
            "dependency"
        };
        let allowed = match role {
            // Tests of the bottom layers may use anything below the backends.
            Role::Core => d.dev && dep_role == Role::Conformance,
            Role::Cipher | Role::Store => {
                dep_role == Role::Core
                    || (d.dev && matches!(dep_role, Role::Conformance | Role::Cipher))
            }
            // The orchestrator is written against the traits only; its tests drive it over
            // real parts (a provider and the store).
            Role::Rotation => {
                dep_role == Role::Core
                    || (d.dev
                        && matches!(
                            dep_role,
                            Role::Conformance | Role::Cipher | Role::Backend | Role::Store
                        ))
            }
            // A provider's tests may run it under the real manager, store and orchestrator
            // (never another backend).
            Role::Backend => {
                matches!(dep_role, Role::Core | Role::Cipher)
                    || (d.dev
                        && matches!(
                            dep_role,
                            Role::Conformance | Role::Store | Role::Manager | Role::Rotation
                        ))
            }
            Role::Manager | Role::Conformance => {
                (dep_role != Role::Backend && dep_role != Role::Assembly)
                    || (d.dev && dep_role == Role::Backend)
            }
            Role::Assembly | Role::Tooling => true,
        };
        if !allowed {
            problems.push(format!(
                "{}: {kind} on {} breaks the layering rules in ARCHITECTURE.md",
                c.name, d.name
            ));
        }
    }
}

fn check_release(c: &CrateInfo, problems: &mut Vec<String>) {
    let should_publish = !UNPUBLISHED.contains(&c.name.as_str());
    if should_publish != c.publishable {
        problems.push(format!(
            "{}: must {}be publishable (publish = false is for {})",
            c.name,
            if should_publish { "" } else { "not " },
            UNPUBLISHED.join(", ")
        ));
    }
    if c.publishable {
        for m in &c.missing_metadata {
            problems.push(format!("{}: publishable crate is missing `{m}`", c.name));
        }
        for d in c.internal_deps.iter().filter(|d| !d.dev && !d.has_version) {
            problems.push(format!(
                "{}: path dependency on {} needs a version to be packaged",
                c.name, d.name
            ));
        }
    }
}

fn check_unsafe(c: &CrateInfo, architecture_md: &str, problems: &mut Vec<String>) {
    if c.has_unsafe || c.allows_unsafe {
        let documented = architecture_md
            .split("## Unsafe code")
            .nth(1)
            .is_some_and(|s| s.split("\n## ").next().unwrap_or("").contains(&c.name));
        if !documented {
            problems.push(format!(
                "{}: uses unsafe code, which is only allowed in a crate that says why in \
                 ARCHITECTURE.md's \"Unsafe code\" section",
                c.name
            ));
        }
    }
}

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

/// `cargo xtask tidy`: checks the workspace and reports every problem.
pub fn run(root: &Path) -> Result {
    let problems = check_workspace(root)?;
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        Err(format!("tidy found problems:\n  {}", problems.join("\n  ")))
    }
}

/// Loads the workspace at `root` and checks it.
pub fn check_workspace(root: &Path) -> Result<Vec<String>> {
    let crates = load(root)?;
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md"))
        .map_err(|e| format!("cannot read ARCHITECTURE.md: {e}"))?;
    let mut problems = check(&crates, &arch);
    let mut public_types = Vec::new();
    for c in crates.iter().filter(|c| c.publishable) {
        public_types.extend(api::scan_crate(&c.name, &root.join(&c.dir))?);
    }
    problems.extend(api::check(&public_types));
    for c in &crates {
        if LEAN_BY_DEFAULT.contains(&c.name.as_str()) || role_of(&c.name) == Some(Role::Backend) {
            let tree = dependency_tree(root, &c.name)?;
            let mut names: Vec<String> = tree.iter().map(|(n, _)| n.clone()).collect();
            names.dedup();
            problems.extend(check_tree(&c.name, &names));
            problems.extend(check_http_stack(&c.name, &tree));
        }
        let changelog = root.join(&c.dir).join("CHANGELOG.md");
        if c.publishable && !changelog.exists() {
            problems.push(format!("{}: publishable crate has no CHANGELOG.md", c.name));
        }
    }
    for top in [
        "Cargo.toml",
        "crates",
        "xtask",
        "benches",
        "fuzz",
        "docs",
        "deny.toml",
        "README.md",
        "ARCHITECTURE.md",
        ".ci/run",
        ".cargo/config.toml",
    ] {
        if !root.join(top).exists() {
            problems.push(format!("the top level must have {top}"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests;
