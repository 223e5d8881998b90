//! The HSM user PIN: where it is read from, and the checks on each source.

use heliosdb_tde_core::{HSM_PIN_ENV, HsmConfig, Result, SecurityMode, TdeError};
use secrecy::SecretString;
use std::path::Path;
use zeroize::Zeroizing;

/// Where the PIN came from, for the security checklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinSource {
    /// `HELIOSDB_HSM_PIN`.
    Environment,
    /// A PIN file.
    File,
    /// The configuration file (development only).
    ConfigFile,
}

impl PinSource {
    /// How the security checklist names the source: `environment`, `file` or
    /// `configuration file`.
    pub fn name(self) -> &'static str {
        match self {
            PinSource::Environment => "environment",
            PinSource::File => "file",
            PinSource::ConfigFile => "configuration file",
        }
    }
}

impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resolves the user PIN: `HELIOSDB_HSM_PIN`, else `pin_file`, else the configured `pin`.
///
/// * A PIN written in the configuration file (`hsm_config.pin`) is refused in production mode,
///   whichever source would have been used; development mode accepts it.
/// * `HELIOSDB_HSM_PIN` is removed from the process environment once read, so that child
///   processes and later readers of the environment do not see it.
/// * `pin_file` must be a regular file (not a symbolic link: it is opened with `O_NOFOLLOW`)
///   owned by the user running HeliosDB; production mode also requires mode 0600 (no group or
///   other bits). The checks are made on the opened descriptor (`fstat`), not on the path.
pub fn resolve_pin(config: &HsmConfig, mode: SecurityMode) -> Result<(SecretString, PinSource)> {
    if !config.pin.is_empty() && mode.is_production() {
        return Err(TdeError::SecurityPolicy(format!(
            "hsm_config.pin: production mode refuses an HSM PIN written in the configuration \
             file. Remove it and set the PIN environment variable {HSM_PIN_ENV}, or \
             hsm_config.pin_file (a file of mode 0600 owned by the HeliosDB user)"
        )));
    }
    if let Some(v) = std::env::var_os(HSM_PIN_ENV) {
        let v = Zeroizing::new(v.into_string().map_err(|_| {
            TdeError::config(
                HSM_PIN_ENV,
                "the variable is not valid UTF-8; set it to the token's user PIN",
            )
        })?);
        // SAFETY: `remove_var` must not race with another thread reading or writing the
        // environment. Rust's own environment access (std::env) is synchronised with it by
        // std's lock; what remains is C code calling getenv(3) at the same moment. The PIN is
        // resolved once, while HeliosDB starts its key hierarchy (`TdeSubsystem::new`), before
        // this provider loads the PKCS#11 module and before requests are served. Leaving the
        // PIN in the environment would hand it to every child process and to anyone who can
        // read /proc/<pid>/environ.
        unsafe { std::env::remove_var(HSM_PIN_ENV) };
        if !v.is_empty() {
            return Ok((SecretString::from(v.as_str()), PinSource::Environment));
        }
    }
    if let Some(path) = &config.pin_file {
        let text = read_pin_file(path, mode)?;
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(TdeError::config(
                "hsm_config.pin_file",
                format!("{} is empty; write the user PIN into it", path.display()),
            ));
        }
        return Ok((SecretString::from(pin), PinSource::File));
    }
    if !config.pin.is_empty() {
        // Development mode only (refused above in production); the checklist reports it.
        return Ok((
            SecretString::from(config.pin.as_str()),
            PinSource::ConfigFile,
        ));
    }
    Err(TdeError::config(
        "hsm_config.pin",
        format!("no HSM user PIN: set {HSM_PIN_ENV} or hsm_config.pin_file"),
    ))
}

/// The largest PIN file read; PINs are short.
const MAX_PIN_FILE: u64 = 4096;

/// Opens the PIN file without following a symbolic link (and without blocking on a FIFO),
/// checks the opened descriptor, and reads it.
fn read_pin_file(path: &Path, mode: SecurityMode) -> Result<Zeroizing<String>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    const FIELD: &str = "hsm_config.pin_file";
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            TdeError::config(
                FIELD,
                format!(
                    "{} is a symbolic link; the PIN file is opened without following links, so \
                     point hsm_config.pin_file at the file itself",
                    path.display()
                ),
            )
        } else {
            TdeError::io(path, e.into())
        }
    })?;
    let file = std::fs::File::from(fd);
    // fstat on the descriptor just opened: what is checked is what is read.
    let meta = file.metadata().map_err(|e| TdeError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(TdeError::config(
            FIELD,
            format!(
                "{} is not a regular file; point hsm_config.pin_file at a file holding only the \
                 user PIN",
                path.display()
            ),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(TdeError::SecurityPolicy(format!(
            "{} is owned by uid {}, not by the user running HeliosDB (uid {me}); another user \
             could change the PIN file. Fix: chown {me} {} && chmod 600 {}",
            path.display(),
            meta.uid(),
            path.display(),
            path.display()
        )));
    }
    let bits = meta.mode() & 0o777;
    if bits & 0o077 != 0 {
        if mode.is_production() {
            return Err(TdeError::InsecurePermissions {
                path: path.to_path_buf(),
                mode: bits,
                expected: 0o600,
            });
        }
        tracing::warn!(
            target: "heliosdb::tde::hsm",
            "{} has mode {bits:04o}; production mode requires 0600 (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    if meta.len() > MAX_PIN_FILE {
        return Err(TdeError::config(
            FIELD,
            format!(
                "{} holds {} bytes; a PIN file holds only the PIN (at most {MAX_PIN_FILE} bytes)",
                path.display(),
                meta.len()
            ),
        ));
    }
    // Room for the whole file up front: a growing buffer would leave PIN bytes in the
    // allocations it gives up, and reading into an empty one starts with a probe through an
    // unwiped stack buffer.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PIN_FILE as usize));
    file.take(MAX_PIN_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| TdeError::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        TdeError::config(FIELD, format!("{} is not valid UTF-8 text", path.display()))
    })?;
    Ok(Zeroizing::new(text.to_string()))
}
