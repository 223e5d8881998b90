//! The workspace rules, checked from `cargo metadata` (run by `cargo test` via
//! `xtask/tests/tidy.rs`, and by `cargo xtask tidy`).
//!
//! The rules are the layering invariants of ARCHITECTURE.md plus the release hygiene every
//! crate needs to be packaged on its own. Each rule is a function over a small model of the
//! workspace, so that the unit tests below can feed it broken workspaces and see it fail.
//! The rules about public types (`#[non_exhaustive]`) parse the sources, in [`api`].
//! The workspace model is loaded in `model`; the dependency-tree rules are in `deps`.

pub mod api;
mod deps;
pub(crate) mod model;

pub use deps::{
    BACKEND_ONLY_CRATES, LEAN_BY_DEFAULT, LEGACY_HTTP_STACK, check_http_stack, check_tree,
    dependency_names, dependency_tree,
};
pub use model::{CrateInfo, InternalDep, load};

use crate::Result;
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
