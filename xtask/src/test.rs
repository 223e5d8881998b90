//! `cargo xtask test`: provision the services the selected crates need, run `cargo test`, tear
//! down.

use crate::{Result, cargo, run_cmd, services, workspace_root};

/// Runs `cargo test` with `args` (default: the whole workspace) against provisioned services.
pub fn run(args: &[String]) -> Result {
    let selects_packages = args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a == "--workspace");
    let mut cargo_args: Vec<String> = vec!["test".into()];
    if !selects_packages {
        cargo_args.push("--workspace".into());
    }
    cargo_args.extend(args.iter().cloned());

    let env = services::provision(&workspace_root(), args)?;
    let mut cmd = cargo();
    // The tests choose their security mode explicitly; an operator's override must not leak in.
    cmd.args(&cargo_args)
        .env("HELIOSDB_REQUIRE_SERVICES", "1")
        .env_remove("HELIOSDB_SECURITY_MODE");
    env.apply(&mut cmd);
    let result = run_cmd(&mut cmd);
    // `env` stops every server it started when dropped, pass or fail.
    drop(env);
    result
}
