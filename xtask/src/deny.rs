//! `cargo xtask deny`: cargo-deny with the policy in `deny.toml`.
//!
//! Advisories are always checked. The RustSec database is fetched as usual; where it cannot be
//! (a machine that reaches package registries but not GitHub), an offline snapshot of it is
//! used instead: [`SNAPSHOT_ENV`] if set, else `../shared/advisory-db` next to the repository.
//! cargo-deny wants the database as a git repository at `<db-path>/advisory-db-<hash of the
//! URL>`, so the snapshot's files are committed into such a repository under
//! `target/xtask/advisory-dbs/` (with the snapshot's date as the commit date), and cargo-deny
//! runs `--offline` with a copy of `deny.toml` whose `db-path` points there. Only where neither
//! a fetch nor a snapshot is available are advisories left out, with a loud warning.

use crate::{Result, cargo, installed, run_cmd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming an offline snapshot of the RustSec advisory database.
pub const SNAPSHOT_ENV: &str = "HELIOSDB_ADVISORY_DB_SNAPSHOT";

/// Where the snapshot is looked for without [`SNAPSHOT_ENV`], relative to the workspace root.
pub const DEFAULT_SNAPSHOT: &str = "../shared/advisory-db";

/// The directory cargo-deny opens for the default database URL
/// (`https://github.com/rustsec/advisory-db`, which `deny.toml` keeps by not setting `db-urls`).
pub const DB_DIR_NAME: &str = "advisory-db-3157b0e258782691";

/// Runs cargo-deny, installing it if missing.
pub fn run(root: &Path) -> Result {
    if !installed("cargo-deny") {
        run_cmd(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    let fetched = cargo()
        .args(["deny", "fetch", "db"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if fetched {
        return run_cmd(cargo().args(["deny", "--all-features", "check"]));
    }
    let env = std::env::var_os(SNAPSHOT_ENV).map(PathBuf::from);
    if let Some(snapshot) = find_snapshot(root, env)? {
        let date = snapshot_date(&snapshot)?;
        let db_root = build_db(root, &snapshot, &date)?;
        let config = offline_config(root, &db_root)?;
        let snapshot = std::fs::canonicalize(&snapshot).unwrap_or(snapshot);
        // `--offline` also keeps cargo metadata from downloading crates: fetch them first
        // (package registries are reachable where GitHub is not).
        run_cmd(cargo().arg("fetch"))?;
        eprintln!(
            "\nxtask: the RustSec advisory database could not be fetched; checking advisories \
             against the offline snapshot of {date} ({}). Advisories published after {date} \
             are not known to it.\n",
            snapshot.display()
        );
        return run_cmd(
            cargo()
                .args(["deny", "--offline", "--all-features", "--config"])
                .arg(&config)
                .arg("check"),
        );
    }
    eprintln!(
        "\nxtask: WARNING: the RustSec advisory database could not be fetched and no offline \
         snapshot was found (set {SNAPSHOT_ENV}, or put one at {DEFAULT_SNAPSHOT}); cargo-deny \
         checks licenses, bans and sources only. Advisories were NOT checked.\n"
    );
    run_cmd(cargo().args([
        "deny",
        "--all-features",
        "check",
        "licenses",
        "bans",
        "sources",
    ]))
}

/// The snapshot to use: `env` (the value of [`SNAPSHOT_ENV`]) if set, which must then be a
/// snapshot; else [`DEFAULT_SNAPSHOT`] if it is one; else none.
pub fn find_snapshot(root: &Path, env: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let is_snapshot = |p: &Path| p.join("SNAPSHOT.md").is_file() && p.join("crates").is_dir();
    if let Some(p) = env {
        return if is_snapshot(&p) {
            Ok(Some(p))
        } else {
            Err(format!(
                "{SNAPSHOT_ENV}={} is not an advisory database snapshot (no SNAPSHOT.md and \
                 crates/)",
                p.display()
            ))
        };
    }
    let p = root.join(DEFAULT_SNAPSHOT);
    Ok(is_snapshot(&p).then_some(p))
}

/// The snapshot's date (`YYYY-MM-DD`), from the "Snapshot date:" line of its SNAPSHOT.md.
pub fn snapshot_date(snapshot: &Path) -> Result<String> {
    let path = snapshot.join("SNAPSHOT.md");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_snapshot_date(&text)
        .ok_or_else(|| format!("{}: no \"Snapshot date: YYYY-MM-DD\" line", path.display()))
}

fn parse_snapshot_date(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let date = l.split("Snapshot date:").nth(1)?.trim();
        let b = date.as_bytes();
        let ok = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        ok.then(|| date.to_string())
    })
}

/// Builds (or reuses) the git repository cargo-deny reads, from `snapshot`; returns the
/// `db-path` directory that holds it.
fn build_db(root: &Path, snapshot: &Path, date: &str) -> Result<PathBuf> {
    let db_root = root.join("target").join("xtask").join("advisory-dbs");
    let repo = db_root.join(DB_DIR_NAME);
    let marker = db_root.join("snapshot.md");
    let wanted = std::fs::read(snapshot.join("SNAPSHOT.md")).unwrap_or_default();
    if repo.join(".git").is_dir() && std::fs::read(&marker).ok() == Some(wanted.clone()) {
        return Ok(db_root);
    }
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    }
    copy_tree(snapshot, &repo)?;
    let stamp = format!("{date}T00:00:00Z");
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.current_dir(&repo)
            .args(["-c", "user.name=xtask", "-c", "user.email=xtask@localhost"])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .env("GIT_AUTHOR_DATE", &stamp)
            .env("GIT_COMMITTER_DATE", &stamp);
        run_cmd(&mut c)
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&[
        "commit",
        "-q",
        "-m",
        &format!("RustSec advisory database snapshot of {date}"),
    ])?;
    std::fs::write(&marker, wanted).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(db_root)
}

fn copy_tree(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for e in entries.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_name() == ".git" {
            continue;
        }
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| format!("{}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// Writes `deny.toml` with `db-path` set to `db_root` to `target/xtask/deny-offline.toml`.
fn offline_config(root: &Path, db_root: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(root.join("deny.toml"))
        .map_err(|e| format!("cannot read deny.toml: {e}"))?;
    let out = root.join("target").join("xtask").join("deny-offline.toml");
    std::fs::write(&out, with_db_path(&text, db_root)?)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// `deny.toml` with `db-path = "<db_root>"` as the first entry of `[advisories]`.
fn with_db_path(deny_toml: &str, db_root: &Path) -> Result<String> {
    if deny_toml
        .lines()
        .any(|l| l.trim_start().starts_with("db-path") || l.trim_start().starts_with("db-urls"))
    {
        return Err(
            "deny.toml sets db-path or db-urls; the offline snapshot expects the defaults".into(),
        );
    }
    let path = db_root
        .to_string_lossy()
        .replace('\\', "/")
        .replace('"', "\\\"");
    let mut found = false;
    let mut out = String::new();
    for line in deny_toml.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[advisories]" {
            out.push_str(&format!("db-path = \"{path}\"\n"));
            found = true;
        }
    }
    if found {
        Ok(out)
    } else {
        Err("deny.toml has no [advisories] section".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_date_is_read_from_snapshot_md() {
        let text = "# RustSec\n\n* Source: x\n* Snapshot date: 2026-08-21\n";
        assert_eq!(parse_snapshot_date(text).as_deref(), Some("2026-08-21"));
        assert_eq!(parse_snapshot_date("* Snapshot date: yesterday\n"), None);
        assert_eq!(parse_snapshot_date("nothing"), None);
    }

    #[test]
    fn the_offline_config_points_at_the_built_database() {
        let deny = "[graph]\nall-features = true\n\n[advisories]\nversion = 2\n";
        let out = with_db_path(deny, Path::new("/w/target/xtask/advisory-dbs")).unwrap();
        assert!(
            out.contains("[advisories]\ndb-path = \"/w/target/xtask/advisory-dbs\"\nversion = 2"),
            "{out}"
        );
        assert!(with_db_path("[licenses]\n", Path::new("/x")).is_err());
        assert!(with_db_path("[advisories]\ndb-path = \"/y\"\n", Path::new("/x")).is_err());
        // The real deny.toml takes the rewrite.
        let real = std::fs::read_to_string(crate::workspace_root().join("deny.toml")).unwrap();
        assert!(with_db_path(&real, Path::new("/x")).is_ok());
    }

    #[test]
    fn a_snapshot_is_found_next_to_the_repository_or_through_the_variable() {
        let dir = std::env::temp_dir().join(format!("xtask-snap-{}", std::process::id()));
        let root = dir.join("repo");
        let snap = dir.join("shared").join("advisory-db");
        std::fs::create_dir_all(snap.join("crates")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(find_snapshot(&root, None).unwrap(), None);
        std::fs::write(snap.join("SNAPSHOT.md"), "* Snapshot date: 2026-08-21\n").unwrap();
        let found = find_snapshot(&root, None).unwrap().unwrap();
        assert_eq!(snapshot_date(&found).unwrap(), "2026-08-21");
        assert_eq!(
            find_snapshot(&root, Some(snap.clone())).unwrap(),
            Some(snap)
        );
        let e = find_snapshot(&root, Some(dir.join("nowhere"))).unwrap_err();
        assert!(e.contains(SNAPSHOT_ENV), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
