//! A tour of the two bottom layers: create an MEK and a TEK, wrap the TEK bound to its table,
//! seal and open a page, and watch tampering, a moved page and a moved key all fail.
//!
//! Run: `cargo run -p heliosdb-tde-cipher --example demo`

#![allow(clippy::print_stdout)]

use heliosdb_tde_cipher::wrap::{unwrap_tek, wrap_tek};
use heliosdb_tde_cipher::{Backend, TableCipher, UsageLimits};
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyBytes, MasterKey, ProviderKind, TableKey, TekId, WrapContext,
    WrappedTek,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::default();
    println!(
        "cipher backends compiled in: {:?} (using {backend})",
        Backend::available()
    );

    // The MEK: here in process, as the in-memory and secure-file providers hold it.
    let mek = MasterKey::new(
        "master_key_001@v1".parse()?,
        EncryptionAlgorithm::Aes256Gcm,
        KeyBytes::generate()?,
    );
    println!("MEK:  {mek:?}");

    // A TEK for table public.users, version 1, wrapped under the MEK.
    let tek_id: TekId = "public.users@v1".parse()?;
    let tek = TableKey::generate(tek_id.clone(), EncryptionAlgorithm::Aes256Gcm)?;
    let ctx = WrapContext::table_key(&tek_id);
    let wrapped = wrap_tek(backend, &mek, ProviderKind::InMemory, &tek, &ctx)?;
    let stored = wrapped.encode();
    println!("TEK:  {tek:?}");
    println!(
        "wrapped envelope: {} bytes, MEK {}",
        stored.len(),
        wrapped.mek
    );

    // Later: read the envelope back, unwrap, and seal a page.
    let tek = unwrap_tek(backend, &mek, &WrappedTek::decode(&stored)?, &ctx)?;
    let cipher = TableCipher::new(&tek, backend, UsageLimits::default())?;
    let page = b"id=1 name=alice email=alice@example.com";
    let aad = b"public.users/page/1";
    let sealed = cipher.seal(aad, page)?;
    println!(
        "sealed page: {} bytes (17 header + {} ciphertext + 16 tag)",
        sealed.len(),
        page.len()
    );
    let opened = cipher.open(aad, &sealed)?;
    assert_eq!(opened, page);
    println!("opened page: {}", String::from_utf8_lossy(&opened));

    // What must fail does fail.
    let mut tampered = sealed.clone();
    tampered[20] ^= 1;
    println!(
        "tampered page:    {}",
        refused(cipher.open(aad, &tampered))?
    );
    println!(
        "page moved:       {}",
        refused(cipher.open(b"public.users/page/2", &sealed))?
    );
    let other = WrapContext::table_key(&"public.orders@v1".parse()?);
    println!(
        "TEK moved tables: {}",
        refused(unwrap_tek(backend, &mek, &wrapped, &other))?
    );
    println!("usage: {:?}", cipher.usage());
    Ok(())
}

/// The error text of an operation that must fail; an error of its own if it succeeded.
fn refused<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<String, String> {
    match r {
        Ok(_) => Err("an operation that must fail succeeded".into()),
        Err(e) => Ok(e.to_string()),
    }
}
