//! Where key material lives in memory, and the process-wide protections around it.
//!
//! Every [`crate::KeyBytes`] stores its 32 bytes in a slot of the locked key arena: whole
//! pages obtained with an anonymous `mmap`, each locked in RAM (`mlock`, so never written to
//! swap), marked `MADV_DONTDUMP` (left out of core dumps, including `gcore`'s) and
//! `MADV_WIPEONFORK` (zero in a forked child). A released slot is overwritten with zeros before
//! reuse; pages are kept for reuse and never unmapped.
//!
//! Locking can fail, usually because of `RLIMIT_MEMLOCK`. The arena then keeps handing out
//! (dump-excluded) slots and records the failure in [`stats`]; it never panics. What a failure
//! means is the caller's decision: the `heliosdb-security` facade refuses to start in
//! production mode and warns in development mode.
//!
//! The process-level calls ([`disable_core_dumps`], [`memlock_limit`]) are here too, so that all
//! memory system calls of the workspace sit in one module. They do no file or network I/O (the
//! facade reads `/proc/self/status` for what only it says).

#[allow(unsafe_code)]
mod arena;

pub(crate) use arena::Slot;

/// Bytes of one arena slot: one 256-bit key.
pub const SLOT_LEN: usize = arena::SLOT_LEN;

/// Whether one protection is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protection {
    /// In force for every key page.
    Active,
    /// Switched off by configuration.
    Off,
    /// Asked for, but the system refused it for some pages (the reason says which call and
    /// why).
    Failed {
        /// What failed, for example `1 of 3 key page(s) could not be locked: mlock: ...`.
        reason: String,
    },
    /// Not offered by this operating system.
    Unavailable {
        /// Which call is missing.
        reason: String,
    },
}

impl Protection {
    /// Whether it is in force.
    pub fn is_active(&self) -> bool {
        matches!(self, Protection::Active)
    }

    /// A short word and, when not active, the reason: `active`, `off (by configuration)`,
    /// `FAILED: ...`, `unavailable: ...`.
    pub fn describe(&self) -> String {
        match self {
            Protection::Active => "active".into(),
            Protection::Off => "off (by configuration)".into(),
            Protection::Failed { reason } => format!("FAILED: {reason}"),
            Protection::Unavailable { reason } => format!("unavailable: {reason}"),
        }
    }
}

/// What the key arena holds and which protections are in force.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArenaStats {
    /// The system page size.
    pub page_size: usize,
    /// Pages mapped (kept for reuse once empty).
    pub pages: usize,
    /// Slots holding a live key.
    pub slots_in_use: usize,
    /// Slots ready for reuse (all zero).
    pub slots_free: usize,
    /// Bytes mapped for keys.
    pub bytes_mapped: usize,
    /// Bytes of those locked in RAM.
    pub bytes_locked: usize,
    /// `mlock`: the pages never go to swap.
    pub locking: Protection,
    /// `MADV_DONTDUMP`: the pages are left out of core dumps.
    pub dump_exclusion: Protection,
    /// `MADV_WIPEONFORK`: a forked child sees the pages as zeros.
    pub wipe_on_fork: Protection,
}

/// Sets what the arena applies to its pages: the existing ones at once and every page mapped
/// later. Both default to on, so a program that never calls this gets locked, dump-excluded
/// keys. Returns the resulting state.
pub fn configure(lock: bool, exclude_from_core_dumps: bool) -> ArenaStats {
    arena::ARENA.configure(arena::Settings {
        lock,
        exclude_from_dumps: exclude_from_core_dumps,
    });
    stats()
}

/// Maps (and locks) pages up front for at least `slots` keys in total, so that a later key
/// never needs a new lock. Returns the resulting state; a locking failure shows in
/// [`ArenaStats::locking`].
pub fn reserve(slots: usize) -> ArenaStats {
    arena::ARENA.reserve(slots);
    stats()
}

/// The arena's current state.
pub fn stats() -> ArenaStats {
    arena::ARENA.stats()
}

/// Bytes of whole pages that `slots` keys occupy.
pub fn bytes_for_slots(slots: usize) -> usize {
    let page = arena::page_size();
    let per_page = page / SLOT_LEN;
    slots.div_ceil(per_page) * page
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited or unknown.
pub fn memlock_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Memlock).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Core dumps of this process, as the kernel sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreDumpState {
    /// `prctl(PR_GET_DUMPABLE)`: `Some(false)` means no core dump and no `ptrace` attach by
    /// processes of the same user; `None` when the call is not available.
    pub dumpable: Option<bool>,
    /// The soft `RLIMIT_CORE` in bytes; `None` when unlimited or unknown.
    pub core_limit: Option<u64>,
}

impl CoreDumpState {
    /// Whether the process can write a core dump at all.
    pub fn disabled(&self) -> bool {
        self.dumpable == Some(false) || self.core_limit == Some(0)
    }
}

/// The current [`CoreDumpState`].
pub fn core_dump_state() -> CoreDumpState {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let dumpable = rustix::process::dumpable_behavior()
        .ok()
        .map(|d| d != rustix::process::DumpableBehavior::NotDumpable);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let dumpable = None;
    #[cfg(unix)]
    let core_limit = rustix::process::getrlimit(rustix::process::Resource::Core).current;
    #[cfg(not(unix))]
    let core_limit = None;
    CoreDumpState {
        dumpable,
        core_limit,
    }
}

/// Makes the whole process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`, which also stops
/// processes of the same user from attaching with `ptrace`) and sets `RLIMIT_CORE` to 0 (soft
/// and hard). This changes the process, not only its keys: its `/proc/<pid>` files become
/// owned by root and a crash handler gets no core dump. The error names the call that failed.
pub fn disable_core_dumps() -> Result<CoreDumpState, String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"))?;
    #[cfg(unix)]
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"))?;
    #[cfg(not(unix))]
    return Err("core dumps cannot be disabled on this platform".into());
    #[allow(unreachable_code)]
    Ok(core_dump_state())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_counted_whole() {
        let page = stats().page_size;
        let per_page = page / SLOT_LEN;
        assert_eq!(bytes_for_slots(0), 0);
        assert_eq!(bytes_for_slots(1), page);
        assert_eq!(bytes_for_slots(per_page), page);
        assert_eq!(bytes_for_slots(per_page + 1), 2 * page);
    }

    #[test]
    fn protection_descriptions_say_why() {
        assert_eq!(Protection::Active.describe(), "active");
        assert!(Protection::Off.describe().contains("configuration"));
        let failed = Protection::Failed {
            reason: "mlock: Cannot allocate memory".into(),
        };
        assert!(failed.describe().starts_with("FAILED: mlock"));
        assert!(!failed.is_active());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_view_is_readable() {
        // This test process has not disabled core dumps.
        let state = core_dump_state();
        assert_eq!(state.dumpable, Some(true));
    }
}
