//! `cargo xtask package`: every publishable crate packages and builds from what would be
//! uploaded.
//!
//! `cargo package --workspace` verifies each crate against the other workspace crates through
//! a local registry overlay whose unpacked sources land in `$CARGO_HOME/registry/src/-<hash>/`,
//! keyed by name and version only: a crate changed since the last packaging run, with the same
//! version, would be verified against the stale copy. Packaging therefore runs with a private
//! `CARGO_HOME` under `target/`, whose overlay directories this module may remove before each
//! run.
//!
//! GUARD: nothing here, or anywhere in xtask, deletes anything under the user's
//! `~/.cargo` (`$CARGO_HOME`): it is a cache shared with every other build on the machine.
//! [`clear_overlays`] refuses any directory outside `target/`, and a test checks that it does.

use crate::{Result, cargo, run_cmd};
use std::path::{Path, PathBuf};

/// The private `CARGO_HOME` of the packaging step.
pub fn private_cargo_home(root: &Path) -> PathBuf {
    root.join("target").join("xtask").join("package-cargo-home")
}

/// Packages every publishable crate with a private `CARGO_HOME`.
pub fn run(root: &Path) -> Result {
    let home = private_cargo_home(root);
    std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    // Registry mirrors, proxies and the like in the user's configuration still apply (read
    // only: the file is copied, never changed).
    if let Some(user_home) = user_cargo_home() {
        for name in ["config.toml", "config"] {
            let from = user_home.join(name);
            if from.is_file() {
                std::fs::copy(&from, home.join(name))
                    .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
            }
        }
    }
    clear_overlays(root, &home)?;
    forget_verified_builds(root)?;
    let mut cmd = cargo();
    cmd.args(["package", "--workspace", "--allow-dirty"]);
    // `--workspace` packages (and builds) `publish = false` members too; they are never
    // uploaded, so building them again from a package proves nothing and costs minutes.
    for name in unpublished(root)? {
        cmd.args(["--exclude", &name]);
    }
    run_cmd(cmd.env("CARGO_HOME", &home))
}

/// The workspace members with `publish = false` (as the workspace rules read them).
pub fn unpublished(root: &Path) -> Result<Vec<String>> {
    Ok(crate::tidy::model::load(root)?
        .into_iter()
        .filter(|c| !c.publishable)
        .map(|c| c.name)
        .collect())
}

/// The user's cargo home (read only).
fn user_cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Removes the local-registry overlays (`registry/src/-<hash>/`) of `home`, which must be a
/// private cargo home under `<root>/target/`; any other directory is refused.
pub fn clear_overlays(root: &Path, home: &Path) -> Result {
    if !home.starts_with(root.join("target")) || home.components().any(|c| c.as_os_str() == "..") {
        return Err(format!(
            "refusing to clear package overlays in {}: only a private CARGO_HOME under {} may \
             be cleared, never a shared one",
            home.display(),
            root.join("target").display()
        ));
    }
    let src = home.join("registry").join("src");
    let Ok(entries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('-') {
            std::fs::remove_dir_all(e.path())
                .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Makes cargo rebuild our crates as the overlay registry serves them.
///
/// Verification builds in the workspace's `target/`, and cargo never re-checks the sources of
/// a registry crate: a workspace crate changed since the last packaging run, with the same
/// version, would be verified against the rlib built from the stale copy. The fingerprints of
/// those units (ours, built from an unpacked overlay, `registry/src/-<hash>/`) are removed, so
/// that only they are rebuilt; everything else in `target/` is kept.
fn forget_verified_builds(root: &Path) -> Result {
    for profile in ["debug", "release"] {
        let dir = root.join("target").join(profile).join(".fingerprint");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("heliosdb-") || !built_from_overlay(&e.path()) {
                continue;
            }
            std::fs::remove_dir_all(e.path())
                .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Whether a fingerprint directory's dependency info names a file of an unpacked overlay.
fn built_from_overlay(fingerprint: &Path) -> bool {
    let needle = b"registry/src/-";
    std::fs::read_dir(fingerprint)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("dep-"))
        .filter_map(|f| std::fs::read(f.path()).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unpublished_members_are_the_publish_false_ones() {
        let names = unpublished(&crate::workspace_root()).unwrap();
        for name in ["xtask", "heliosdb-benches", "heliosdb-tde-conformance"] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "heliosdb-security"), "{names:?}");
    }

    #[test]
    fn only_a_private_cargo_home_is_cleared() {
        let root = crate::workspace_root();
        let home = private_cargo_home(&root);
        assert!(home.starts_with(root.join("target")));
        assert!(clear_overlays(&root, &home).is_ok());
        for shared in [
            PathBuf::from("/root/.cargo"),
            root.join(".cargo"),
            root.join("target/../../.cargo"),
        ] {
            let e = clear_overlays(&root, &shared).unwrap_err();
            assert!(e.contains("refusing"), "{e}");
        }
        if let Some(user) = user_cargo_home() {
            assert!(clear_overlays(&root, &user).is_err());
        }
    }

    /// The package-overlay workaround once deleted `~/.cargo/registry/src/-*`; no xtask source
    /// may remove a directory outside the functions that are limited to `target/`.
    #[test]
    fn no_xtask_source_deletes_in_a_shared_cargo_home() {
        let src = crate::workspace_root().join("xtask/src");
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                if code.contains("remove_dir_all") {
                    // package.rs clears only under target/ (checked above); bench.rs,
                    // services.rs, deny.rs and the tidy tests clean their own directories.
                    assert!(
                        !code.contains("\"registry\"") || name == "package.rs",
                        "{}: removes directories and names the cargo registry",
                        path.display()
                    );
                }
            }
        }
    }
}
