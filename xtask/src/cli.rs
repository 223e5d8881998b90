//! The command line of `cargo xtask`, declared once: `--help`, the dispatch in [`crate::run`]
//! and the checks of the documentation below all come from these types.

use clap::{Args, Parser, Subcommand, builder::PossibleValuesParser};

/// Build, test and CI automation for the heliosdb-security workspace.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `cargo xtask`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The README's test command: provision what the tests need (packages, servers on
    /// loopback), run `cargo test` with HELIOSDB_REQUIRE_SERVICES=1, stop the servers.
    Test {
        /// Passed to `cargo test` (default: the whole workspace), e.g. `-p CRATE`; only the
        /// services the selected crates need are started.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Everything CI runs (`.ci/run`): `test`, then `lint`, then `fuzz --smoke`.
    Ci,
    /// Formatting, clippy -D warnings, rustdoc -D warnings, each cipher backend and facade
    /// feature set alone, the workspace rules (`tidy`), packaging (`package`) and cargo-deny
    /// (`deny`).
    Lint,
    /// Check the workspace rules: layering, release metadata, `#[non_exhaustive]` public types,
    /// unsafe code (also run by `cargo test -p xtask`).
    Tidy,
    /// Package every publishable crate and build each from what would be uploaded, with a
    /// private CARGO_HOME under target/ (the shared ~/.cargo is never written to).
    Package,
    /// cargo-deny: advisories (from a fetched RustSec database, or else from the offline
    /// snapshot in ../shared/advisory-db or $HELIOSDB_ADVISORY_DB_SNAPSHOT), licenses, bans
    /// and sources.
    Deny,
    /// Run the cargo-fuzz targets from the committed seeds (installs cargo-fuzz if missing).
    Fuzz(FuzzArgs),
    /// Run the criterion benchmarks (provisioning SoftHSM2 and OpenBao) and write
    /// docs/benchmarks.md.
    Bench {
        /// Only rewrite docs/benchmarks.md from the last results.
        #[arg(long)]
        report: bool,
        /// Run only the benchmarks matching these filters.
        filter: Vec<String>,
    },
}

/// The arguments of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Run each target for 15 s (what CI runs).
    #[arg(long, conflicts_with = "seconds")]
    pub smoke: bool,
    /// Run each target for this many seconds.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub seconds: u64,
    /// The targets to run (default: all).
    #[arg(value_parser = PossibleValuesParser::new(crate::fuzz::FUZZ_TARGETS))]
    pub targets: Vec<String>,
}

impl FuzzArgs {
    /// How long each target runs.
    pub fn seconds(&self) -> u64 {
        if self.smoke { 15 } else { self.seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_declaration_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every `cargo xtask ...` command line in `text` (in code, after `$ ` or at the start of a
    /// line or of an inline code span), as its arguments.
    fn xtask_lines(text: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for line in text.lines() {
            for (i, _) in line.match_indices("cargo xtask") {
                let rest = &line[i + "cargo xtask".len()..];
                // An inline code span ends at the next backquote; a command line at a comment.
                let rest = rest.split(['`', '#']).next().unwrap_or("");
                let args: Vec<String> = rest
                    .split_whitespace()
                    .take_while(|w| !w.starts_with('(') && *w != "&&" && *w != "||")
                    .map(|w| w.trim_end_matches([',', ';', ':', ')']).to_string())
                    .filter(|w| !w.is_empty())
                    .collect();
                out.push(args);
            }
        }
        out
    }

    #[test]
    fn every_documented_command_line_parses() {
        let root = crate::workspace_root();
        let mut seen = 0;
        for doc in ["README.md", "RELEASING.md", "fuzz/README.md", ".ci/run"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for args in xtask_lines(&text) {
                // "`cargo xtask`" alone names the tool, not a command line.
                if args.is_empty() || args[0].chars().any(|c| c.is_uppercase()) {
                    continue;
                }
                let argv = std::iter::once("cargo xtask".to_string()).chain(args.clone());
                if let Err(e) = Cli::try_parse_from(argv)
                    && e.kind() != clap::error::ErrorKind::DisplayHelp
                {
                    panic!(
                        "{doc}: `cargo xtask {}` does not parse: {e}",
                        args.join(" ")
                    );
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 5,
            "expected documented xtask command lines, saw {seen}"
        );
    }

    #[test]
    fn ci_runs_what_ci_runs() {
        let root = crate::workspace_root();
        let script = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        let steps: Vec<Vec<String>> = script
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("cargo xtask"))
            .map(|l| l.split_whitespace().skip(2).map(str::to_string).collect())
            .collect();
        let expected: Vec<Vec<String>> = crate::ci::CI_STEPS
            .iter()
            .map(|s| s.iter().map(|a| a.to_string()).collect())
            .collect();
        assert_eq!(
            steps, expected,
            ".ci/run and `cargo xtask ci` (ci::CI_STEPS) must run the same steps"
        );
        let other_commands: Vec<&str> = script
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with('#')
                    && !l.starts_with("cargo xtask")
                    && !l.starts_with("set ")
                    && !l.starts_with("cd ")
            })
            .collect();
        assert!(
            other_commands.is_empty(),
            ".ci/run runs more than `cargo xtask ci` does: {other_commands:?}"
        );
    }

    #[test]
    fn fuzz_arguments() {
        let parse = |a: &[&str]| {
            Cli::try_parse_from(std::iter::once("cargo xtask").chain(a.iter().copied()))
        };
        let Command::Fuzz(f) = parse(&["fuzz", "--smoke"]).unwrap().command else {
            panic!("not fuzz");
        };
        assert_eq!((f.seconds(), f.targets.len()), (15, 0));
        let Command::Fuzz(f) = parse(&["fuzz", "--seconds", "60", "mek_file"])
            .unwrap()
            .command
        else {
            panic!("not fuzz");
        };
        assert_eq!((f.seconds(), f.targets), (60, vec!["mek_file".to_string()]));
        assert!(parse(&["fuzz", "no_such_target"]).is_err());
        let Command::Test { args } = parse(&["test", "-p", "xtask", "--", "--nocapture"])
            .unwrap()
            .command
        else {
            panic!("not test");
        };
        assert_eq!(args, ["-p", "xtask", "--", "--nocapture"]);
    }
}
