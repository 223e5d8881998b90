//! The OpenBao server (Vault Transit API) that `cargo xtask test` provisions, for the tests of
//! the facade and the CLI over the Vault provider.

use crate::services;

/// The variable holding the server's address, `http://127.0.0.1:<port>`.
pub const ADDR_ENV: &str = "HELIOSDB_TEST_VAULT_ADDR";
/// The variable holding a token with only the documented policy.
pub const TOKEN_ENV: &str = "HELIOSDB_TEST_VAULT_TOKEN";

/// The shared OpenBao server: its address and a token with only the documented policy
/// (`docs/providers/vault-policy.hcl`).
#[derive(Clone)]
pub struct Bao {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// The test token (never printed by `Debug`).
    pub token: String,
}

impl std::fmt::Debug for Bao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bao")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The OpenBao server, or `None` after a loud skip (a panic when services are required).
pub fn bao() -> Option<Bao> {
    let probe = match (std::env::var(ADDR_ENV), std::env::var(TOKEN_ENV)) {
        (Ok(addr), Ok(token)) => Ok(Bao { addr, token }),
        _ => Err(format!("{ADDR_ENV} is not set (run `cargo xtask test`)")),
    };
    services::require("OpenBao server", probe)
}
