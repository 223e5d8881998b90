//! Test hooks (feature `failpoints`): no-ops in a normal build.

use heliosdb_tde_core::MekRef;

/// Inside the session pool, right after an operation took its session: a `pause` here is
/// an HSM call that hangs while holding a session.
pub(crate) fn holding_session() {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("pkcs11-holding-session");
}

/// Before `C_Encrypt`: with `return(<mek id>)`, overwrites the IV in the parameter buffer
/// with `0xA5` bytes, as a token that generates its own IV does.
pub(crate) fn token_writes_iv(mek: &MekRef, iv: &mut [u8]) {
    if matches(mek, "pkcs11-token-writes-iv") {
        iv.fill(0xA5);
    }
}

/// After `C_Encrypt`: with `return(<mek id>)`, flips a bit of the new wrap before it is
/// checked.
pub(crate) fn corrupt_wrap(mek: &MekRef, ct: &mut [u8]) {
    if matches(mek, "pkcs11-corrupt-wrap")
        && let Some(b) = ct.first_mut()
    {
        *b ^= 1;
    }
}

/// Whether the fail point `name` is set to `return(<this MEK's id>)`.
#[cfg(feature = "failpoints")]
fn matches(mek: &MekRef, name: &str) -> bool {
    fail::fail_point!(name, |arg| arg.as_deref() == Some(mek.id.as_str()));
    false
}

#[cfg(not(feature = "failpoints"))]
fn matches(_: &MekRef, _: &str) -> bool {
    false
}
