//! `[memory_protection]`: locked, dump-excluded key memory and process hardening, applied by
//! [`super::TdeSubsystem::new`] before the first key is created.

use super::Result;
use heliosdb_tde_core::memory::{self, ArenaStats, CoreDumpState, Protection};
use heliosdb_tde_core::{SecurityMode, TdeError};
use serde::{Deserialize, Serialize};

/// Arena slots reserved beyond `cache_limit`: MEK versions, the passphrase-derived key and the
/// keys a rotation or a batch holds at once.
pub const RESERVED_KEY_SLOTS: usize = 256;

/// How key memory and the process are protected (`[memory_protection]` in TOML).
///
/// These settings act on the whole process, not only on HeliosDB's keys: see
/// `docs/threat-model.md`. An application that manages core dumps or locked memory itself
/// switches the matching setting off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryProtectionConfig {
    /// Lock key pages in RAM (`mlock`) so they never reach swap (default `true`;
    /// `HELIOSDB_TDE_LOCK_KEYS`). In production a locking failure, or a `cache_limit` whose
    /// keys do not fit under `RLIMIT_MEMLOCK`, stops start-up; in development it is a warning.
    pub lock_keys: bool,
    /// Mark key pages `MADV_DONTDUMP`, so that core dumps (the kernel's and `gcore`'s) leave
    /// them out (default `true`).
    pub exclude_from_core_dumps: bool,
    /// Make the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`, which also stops debuggers
    /// of the same user from attaching) and set `RLIMIT_CORE` to 0. `None` (the default): on in
    /// production, off in development. `HELIOSDB_TDE_DISABLE_CORE_DUMPS` overrides it.
    pub disable_core_dumps: Option<bool>,
}

impl Default for MemoryProtectionConfig {
    fn default() -> Self {
        Self {
            lock_keys: true,
            exclude_from_core_dumps: true,
            disable_core_dumps: None,
        }
    }
}

impl MemoryProtectionConfig {
    /// Sets [`MemoryProtectionConfig::lock_keys`].
    pub fn with_lock_keys(mut self, on: bool) -> Self {
        self.lock_keys = on;
        self
    }

    /// Sets [`MemoryProtectionConfig::exclude_from_core_dumps`].
    pub fn with_exclude_from_core_dumps(mut self, on: bool) -> Self {
        self.exclude_from_core_dumps = on;
        self
    }

    /// Sets [`MemoryProtectionConfig::disable_core_dumps`] (`None`: by security mode).
    pub fn with_disable_core_dumps(mut self, on: Option<bool>) -> Self {
        self.disable_core_dumps = on;
        self
    }

    /// Whether core dumps are disabled in `mode`.
    pub fn disables_core_dumps(&self, mode: SecurityMode) -> bool {
        self.disable_core_dumps.unwrap_or(mode.is_production())
    }

    /// Every protection off: for an application that handles them itself, and for tests that
    /// need a key in an ordinary core dump.
    pub fn off() -> Self {
        Self {
            lock_keys: false,
            exclude_from_core_dumps: false,
            disable_core_dumps: Some(false),
        }
    }
}

/// What is in force in this process ([`super::TdeSubsystem::memory_protection`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryProtection {
    /// Key pages locked in RAM.
    pub locking: Protection,
    /// Key pages left out of core dumps.
    pub dump_exclusion: Protection,
    /// Key pages zero in a forked child.
    pub wipe_on_fork: Protection,
    /// The process is non-dumpable and its core limit is 0 (no core dump, no attach by a
    /// debugger of the same user).
    pub core_dumps_disabled: Protection,
    /// The process as the kernel sees it now: dumpable or not, and its core limit (which the
    /// environment may have set to 0 even when start-up did not disable core dumps).
    pub core_dumps: CoreDumpState,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_limit: Option<u64>,
    /// Whether the process may lock beyond that limit (`CAP_IPC_LOCK`).
    pub lock_beyond_limit: bool,
    /// Bytes the key pages need locked for `cache_limit` keys plus the reserve.
    pub bytes_needed: usize,
    /// The key arena now.
    pub arena: ArenaStats,
}

/// What start-up asked for and what it could not get; kept by the subsystem for its report.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    config: MemoryProtectionConfig,
    disable_core_dumps: bool,
    core_error: Option<String>,
    bytes_needed: usize,
}

impl Applied {
    /// The report, read now.
    pub(crate) fn report(&self) -> MemoryProtection {
        let arena = memory::stats();
        let core = memory::core_dump_state();
        let core_dumps_disabled = if !self.disable_core_dumps {
            // Not HeliosDB's doing either way; `core_dumps` says what the process is like.
            Protection::Off
        } else if let Some(e) = &self.core_error {
            Protection::Failed { reason: e.clone() }
        } else if core.dumpable == Some(false) && core.core_limit == Some(0) {
            Protection::Active
        } else {
            Protection::Failed {
                reason: "the process became dumpable again, or its core limit was raised, after \
                         start-up"
                    .into(),
            }
        };
        MemoryProtection {
            locking: arena.locking.clone(),
            dump_exclusion: arena.dump_exclusion.clone(),
            wipe_on_fork: arena.wipe_on_fork.clone(),
            core_dumps_disabled,
            core_dumps: core,
            memlock_limit: memory::memlock_limit(),
            lock_beyond_limit: can_lock_beyond_limit(),
            bytes_needed: self.bytes_needed,
            arena,
        }
    }

    /// The configuration that was applied.
    pub(crate) fn config(&self) -> &MemoryProtectionConfig {
        &self.config
    }
}

/// Whether this process may lock memory beyond `RLIMIT_MEMLOCK` (`CAP_IPC_LOCK` in its
/// effective set, as root usually has). Read from `/proc/self/status`; `false` when unknown.
fn can_lock_beyond_limit() -> bool {
    proc_status_field("CapEff:")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// Bytes this process has locked in total (`VmLck`), ours and anybody else's; `None` when
/// unknown.
fn process_locked_bytes() -> Option<u64> {
    proc_status_field("VmLck:")
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn proc_status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::to_string))
}

fn bytes_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{n} bytes ({} MiB)", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{n} bytes ({} KiB)", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// How to raise the limit, for error messages.
fn raise_hint(needed: u64) -> String {
    let kib = needed.div_ceil(1024);
    format!(
        "raise RLIMIT_MEMLOCK for the database process to at least {kib} KiB: `ulimit -l {kib}` in \
         the shell that starts it, `LimitMEMLOCK={needed}` in its systemd unit, or `--ulimit \
         memlock={needed}:{needed}` for its container; or lower cache_limit, or set \
         memory_protection.lock_keys = false (HELIOSDB_TDE_LOCK_KEYS=false) where swap is \
         encrypted or off"
    )
}

/// Applies `config` to the process (idempotent). In production a failure to lock is an error
/// (unless `read_only`: a read-only start reports it, so that `security status` can show it);
/// otherwise failures become warnings.
pub(crate) fn apply(
    config: &MemoryProtectionConfig,
    cache_limit: usize,
    mode: SecurityMode,
    read_only: bool,
    warnings: &mut Vec<String>,
) -> Result<Applied> {
    let strict = mode.is_production() && !read_only;
    let disable_core_dumps = config.disables_core_dumps(mode);
    let mut core_error = None;
    if disable_core_dumps && let Err(e) = memory::disable_core_dumps() {
        let text = format!("core dumps could not be disabled: {e}");
        if strict {
            return Err(TdeError::MemoryProtection {
                reason: format!(
                    "{text}; set memory_protection.disable_core_dumps = false \
                     (HELIOSDB_TDE_DISABLE_CORE_DUMPS=false) if the platform does not allow it"
                ),
            });
        }
        warnings.push(text);
        core_error = Some(e);
    }
    let configured = memory::configure(config.lock_keys, config.exclude_from_core_dumps);
    let slots = cache_limit.saturating_add(RESERVED_KEY_SLOTS);
    let bytes_needed = memory::bytes_for_slots(slots);
    if config.lock_keys
        && !can_lock_beyond_limit()
        && let Some(limit) = memory::memlock_limit()
    {
        let ours = configured.bytes_locked as u64;
        let others = process_locked_bytes().unwrap_or(0).saturating_sub(ours);
        let needed = bytes_needed as u64 + others;
        if needed > limit {
            let others_text = match others {
                0 => String::new(),
                n => format!(", plus {} the process has locked already", bytes_text(n)),
            };
            let reason = format!(
                "the key pages need {} locked in RAM ({slots} keys: cache_limit {cache_limit} + \
                 {RESERVED_KEY_SLOTS} reserved, in {}-byte pages){others_text}, but RLIMIT_MEMLOCK \
                 is {}; {}",
                bytes_text(bytes_needed as u64),
                configured.page_size,
                bytes_text(limit),
                raise_hint(needed),
            );
            if strict {
                return Err(TdeError::MemoryProtection { reason });
            }
            warnings.push(format!("key memory is not fully locked: {reason}"));
        }
    }
    let stats = memory::reserve(slots);
    if let Protection::Failed { reason } = &stats.locking {
        let limit = match memory::memlock_limit() {
            Some(l) => bytes_text(l),
            None => "unlimited".into(),
        };
        let reason = format!(
            "{reason} (RLIMIT_MEMLOCK is {limit}; {} locked, {} needed); {}",
            bytes_text(stats.bytes_locked as u64),
            bytes_text(bytes_needed as u64),
            raise_hint(bytes_needed as u64),
        );
        if strict {
            return Err(TdeError::MemoryProtection { reason });
        }
        if !warnings
            .iter()
            .any(|w| w.starts_with("key memory is not fully locked"))
        {
            warnings.push(format!("key memory is not fully locked: {reason}"));
        }
    }
    for (what, p) in [
        ("left out of core dumps", &stats.dump_exclusion),
        ("wiped in forked children", &stats.wipe_on_fork),
    ] {
        match p {
            Protection::Failed { reason } | Protection::Unavailable { reason } => {
                warnings.push(format!("key pages are not {what}: {reason}"))
            }
            _ => {}
        }
    }
    if !config.lock_keys && mode.is_production() {
        warnings
            .push("memory_protection.lock_keys = false: key pages may be written to swap".into());
    }
    Ok(Applied {
        config: config.clone(),
        disable_core_dumps,
        core_error,
        bytes_needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_follow_the_mode_unless_set() {
        let c = MemoryProtectionConfig::default();
        assert!(c.disables_core_dumps(SecurityMode::Production));
        assert!(!c.disables_core_dumps(SecurityMode::Development));
        let c = c.with_disable_core_dumps(Some(false));
        assert!(!c.disables_core_dumps(SecurityMode::Production));
        let c = MemoryProtectionConfig::off();
        assert!(!c.lock_keys && !c.exclude_from_core_dumps);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_view_is_readable() {
        // The kernel counts the arena's locked pages in the process's VmLck.
        let stats = memory::reserve(1);
        let locked = process_locked_bytes().expect("VmLck in /proc/self/status");
        if stats.locking.is_active() {
            assert!(locked >= stats.bytes_locked as u64, "{locked} < {stats:?}");
            assert!(locked > 0);
        }
        assert!(proc_status_field("CapEff:").is_some());
    }

    #[test]
    fn the_hint_names_every_way_to_raise_the_limit() {
        let h = raise_hint(300_000);
        for s in [
            "ulimit -l 293",
            "LimitMEMLOCK=300000",
            "--ulimit memlock=",
            "lock_keys = false",
        ] {
            assert!(h.contains(s), "{s} missing in {h}");
        }
        assert_eq!(bytes_text(8 << 20), "8388608 bytes (8 MiB)");
        assert_eq!(bytes_text(65536), "65536 bytes (64 KiB)");
    }
}
