//! The locked key arena: fixed-size slots carved out of whole pages that are obtained with an
//! anonymous `mmap`, locked in RAM (`mlock`), left out of core dumps (`MADV_DONTDUMP`) and
//! zero in a forked child (`MADV_WIPEONFORK`).
//!
//! This is the only module of the crate that allows `unsafe_code` (see ARCHITECTURE.md,
//! "Unsafe code"). Every block carries a `SAFETY:` comment. The invariants they rely on:
//!
//! * a page, once mapped, is never unmapped or moved, so a slot pointer stays valid for the
//!   life of the process;
//! * a slot is owned by exactly one [`Slot`] value between [`Arena::alloc`] and its drop, and
//!   the free list holds only slots that no [`Slot`] owns;
//! * a slot is overwritten with zeros before it goes back on the free list, and a fresh page is
//!   zero, so every slot handed out reads as zeros.

use super::{ArenaStats, Protection};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroize;

/// Bytes per slot.
pub(crate) const SLOT_LEN: usize = 32;

/// The process-wide arena every [`crate::KeyBytes`] lives in.
pub(crate) static ARENA: Arena = Arena::new();

/// What the arena applies to each page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) lock: bool,
    pub(crate) exclude_from_dumps: bool,
}

struct Page {
    base: NonNull<u8>,
    len: usize,
    locked: bool,
    excluded: bool,
    wipe_on_fork: bool,
}

struct Inner {
    settings: Settings,
    pages: Vec<Page>,
    free: Vec<NonNull<[u8; SLOT_LEN]>>,
    in_use: usize,
    lock_error: Option<String>,
    exclude_error: Option<String>,
    fork_error: Option<String>,
}

// SAFETY: `Inner` holds addresses of pages that live for the whole process and are never
// unmapped; it is only reached through the arena's mutex, and the memory behind a free-list
// entry is owned by no one until `alloc` hands it out.
unsafe impl Send for Inner {}

/// A set of locked, dump-excluded pages cut into [`SLOT_LEN`]-byte slots.
pub(crate) struct Arena {
    inner: Mutex<Inner>,
    #[cfg(test)]
    fail_lock: std::sync::atomic::AtomicBool,
}

/// One slot, owned. Dropping it zeroes the bytes and returns the slot to its arena.
pub(crate) struct Slot {
    ptr: NonNull<[u8; SLOT_LEN]>,
    arena: &'static Arena,
}

// SAFETY: a `Slot` is the only owner of its 32 bytes (like a `Box<[u8; 32]>`); shared access
// hands out `&[u8; 32]` only, and mutation needs `&mut Slot`.
unsafe impl Send for Slot {}
// SAFETY: as above; `&Slot` gives read-only access to plain bytes.
unsafe impl Sync for Slot {}

impl Slot {
    /// A zeroed slot from the process-wide arena.
    pub(crate) fn new() -> Self {
        ARENA.alloc()
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8; SLOT_LEN] {
        // SAFETY: the pointer is valid for the life of the process (pages are never unmapped),
        // aligned (slots start at multiples of 32 from a page boundary) and owned by `self`,
        // so no `&mut` to it exists while `&self` is borrowed.
        unsafe { self.ptr.as_ref() }
    }

    /// The bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; SLOT_LEN] {
        // SAFETY: as in `bytes`; `&mut self` guarantees exclusive access.
        unsafe { self.ptr.as_mut() }
    }

    #[cfg(test)]
    fn addr(&self) -> NonNull<[u8; SLOT_LEN]> {
        self.ptr
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.bytes_mut().zeroize();
        self.arena.release(self.ptr);
    }
}

fn lock_inner(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Nothing panics while holding the lock, but a poisoned lock must not take key handling
    // down with it: the data it guards stays consistent between statements.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Arena {
    pub(crate) const fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings: Settings {
                    lock: true,
                    exclude_from_dumps: true,
                },
                pages: Vec::new(),
                free: Vec::new(),
                in_use: 0,
                lock_error: None,
                exclude_error: None,
                fork_error: None,
            }),
            #[cfg(test)]
            fail_lock: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A zeroed slot, from the free list or a new page.
    pub(crate) fn alloc(&'static self) -> Slot {
        let mut inner = lock_inner(&self.inner);
        let ptr = match inner.free.pop() {
            Some(p) => p,
            None => self.grow(&mut inner),
        };
        inner.in_use += 1;
        Slot { ptr, arena: self }
    }

    fn release(&self, ptr: NonNull<[u8; SLOT_LEN]>) {
        let mut inner = lock_inner(&self.inner);
        inner.in_use -= 1;
        inner.free.push(ptr);
    }

    /// Makes sure at least `slots` slots exist in total (in use or free), mapping pages as
    /// needed.
    pub(crate) fn reserve(&'static self, slots: usize) {
        let mut inner = lock_inner(&self.inner);
        while inner.in_use + inner.free.len() < slots {
            let first = self.grow(&mut inner);
            inner.free.push(first);
        }
    }

    /// Applies `settings` to every page now and to every page mapped later.
    pub(crate) fn configure(&self, settings: Settings) {
        let mut inner = lock_inner(&self.inner);
        inner.settings = settings;
        inner.lock_error = None;
        inner.exclude_error = None;
        let mut pages = std::mem::take(&mut inner.pages);
        for page in &mut pages {
            self.apply(&mut inner, page);
        }
        inner.pages = pages;
    }

    /// Maps one more page, puts all its slots but the first on the free list and returns the
    /// first.
    fn grow(&self, inner: &mut Inner) -> NonNull<[u8; SLOT_LEN]> {
        let (base, len) = map_page(page_size());
        let mut page = Page {
            base,
            len,
            locked: false,
            excluded: false,
            wipe_on_fork: false,
        };
        match advise(&page, Advice::WipeOnFork) {
            Ok(()) => page.wipe_on_fork = true,
            Err(e) => inner.fork_error = Some(e),
        }
        self.apply(inner, &mut page);
        inner.pages.push(page);
        // Hand out slots from the start of the page: push them in reverse.
        for i in (1..len / SLOT_LEN).rev() {
            // SAFETY: `i * SLOT_LEN + SLOT_LEN <= len`, so the offset stays inside the page
            // just mapped (hence non-null), and a page base is page-aligned, so the result is
            // 32-byte aligned.
            let p = unsafe { base.add(i * SLOT_LEN) };
            inner.free.push(p.cast());
        }
        base.cast()
    }

    /// Brings one page to the current settings, recording failures.
    fn apply(&self, inner: &mut Inner, page: &mut Page) {
        let want = inner.settings;
        if want.lock != page.locked {
            let r = if want.lock {
                self.lock_page(page)
            } else {
                unlock_page(page)
            };
            match r {
                Ok(()) => page.locked = want.lock,
                Err(e) => inner.lock_error = Some(e),
            }
        }
        if want.exclude_from_dumps != page.excluded {
            let advice = if want.exclude_from_dumps {
                Advice::DontDump
            } else {
                Advice::DoDump
            };
            match advise(page, advice) {
                Ok(()) => page.excluded = want.exclude_from_dumps,
                Err(e) => inner.exclude_error = Some(e),
            }
        }
    }

    fn lock_page(&self, page: &Page) -> Result<(), String> {
        #[cfg(test)]
        if self.fail_lock.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("mlock: Cannot allocate memory (injected by a test)".into());
        }
        lock_page(page)
    }

    /// What the arena holds and which protections are in force.
    pub(crate) fn stats(&self) -> ArenaStats {
        let inner = lock_inner(&self.inner);
        let size = page_size();
        let pages = inner.pages.len();
        let locked = inner.pages.iter().filter(|p| p.locked).count();
        let excluded = inner.pages.iter().filter(|p| p.excluded).count();
        let wiped = inner.pages.iter().filter(|p| p.wipe_on_fork).count();
        let status = |enabled: bool, done: usize, error: &Option<String>, what: &str| {
            if !enabled {
                return Protection::Off;
            }
            match error {
                Some(e) if is_unsupported(e) => Protection::Unavailable { reason: e.clone() },
                Some(e) if done < pages => Protection::Failed {
                    reason: format!("{} of {pages} key page(s) {what}: {e}", pages - done),
                },
                _ if done < pages => Protection::Failed {
                    reason: format!("{} of {pages} key page(s) {what}", pages - done),
                },
                _ => Protection::Active,
            }
        };
        ArenaStats {
            page_size: size,
            pages,
            slots_in_use: inner.in_use,
            slots_free: inner.free.len(),
            bytes_mapped: pages * size,
            bytes_locked: locked * size,
            locking: status(
                inner.settings.lock,
                locked,
                &inner.lock_error,
                "could not be locked",
            ),
            dump_exclusion: status(
                inner.settings.exclude_from_dumps,
                excluded,
                &inner.exclude_error,
                "could not be excluded from core dumps",
            ),
            wipe_on_fork: status(
                true,
                wiped,
                &inner.fork_error,
                "could not be marked wipe-on-fork",
            ),
        }
    }
}

fn is_unsupported(e: &str) -> bool {
    e.contains("not available on this platform") || e.contains("Invalid argument")
}

enum Advice {
    DontDump,
    DoDump,
    WipeOnFork,
}

pub(crate) fn page_size() -> usize {
    #[cfg(unix)]
    {
        rustix::param::page_size()
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

/// The page of the fallback below.
#[repr(C, align(4096))]
struct FallbackPage([u8; 4096]);

/// A fresh zeroed page and its length. It is never unmapped.
fn map_page(len: usize) -> (NonNull<u8>, usize) {
    #[cfg(unix)]
    {
        use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous};
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // existing memory; the result is checked before use.
        let mapped = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        };
        if let Ok(p) = mapped
            && let Some(p) = NonNull::new(p.cast::<u8>())
        {
            return (p, len);
        }
    }
    #[cfg(not(unix))]
    let _ = len;
    // No `mmap` (or it failed): a page-aligned 4 KiB block from the allocator, which the
    // advice and locking calls can still act on, since the whole page is ours.
    let layout = std::alloc::Layout::new::<FallbackPage>();
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    match NonNull::new(p) {
        Some(p) => (p, layout.size()),
        None => std::alloc::handle_alloc_error(layout),
    }
}

fn lock_page(page: &Page) -> Result<(), String> {
    #[cfg(unix)]
    {
        // SAFETY: the range is one whole page this arena mapped and never unmaps; `mlock`
        // changes no contents.
        unsafe { rustix::mm::mlock(page.base.as_ptr().cast(), page.len) }
            .map_err(|e| format!("mlock: {e}"))
    }
    #[cfg(not(unix))]
    {
        let _ = page;
        Err("mlock is not available on this platform".into())
    }
}

fn unlock_page(page: &Page) -> Result<(), String> {
    #[cfg(unix)]
    {
        // SAFETY: as in `lock_page`; `munlock` changes no contents.
        unsafe { rustix::mm::munlock(page.base.as_ptr().cast(), page.len) }
            .map_err(|e| format!("munlock: {e}"))
    }
    #[cfg(not(unix))]
    {
        let _ = page;
        Ok(())
    }
}

fn advise(page: &Page, advice: Advice) -> Result<(), String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::mm::{Advice as A, madvise};
        let (a, name) = match advice {
            Advice::DontDump => (A::LinuxDontDump, "MADV_DONTDUMP"),
            Advice::DoDump => (A::LinuxDoDump, "MADV_DODUMP"),
            Advice::WipeOnFork => (A::LinuxWipeOnFork, "MADV_WIPEONFORK"),
        };
        // SAFETY: the range is one whole page this arena owns. These three advice values
        // change how the kernel dumps or forks the page, never its contents in this process.
        unsafe { madvise(page.base.as_ptr().cast(), page.len, a) }
            .map_err(|e| format!("madvise({name}): {e}"))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = page;
        let name = match advice {
            Advice::DontDump | Advice::DoDump => "MADV_DONTDUMP",
            Advice::WipeOnFork => "MADV_WIPEONFORK",
        };
        Err(format!("{name} is not available on this platform"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn private_arena() -> &'static Arena {
        Box::leak(Box::new(Arena::new()))
    }

    #[test]
    fn a_released_slot_reads_back_as_zeros() {
        let arena = private_arena();
        let mut slot = arena.alloc();
        slot.bytes_mut().copy_from_slice(&[0xA5; SLOT_LEN]);
        let addr = slot.addr();
        drop(slot);
        // SAFETY: the page stays mapped for the life of the process; the slot is on the free
        // list and nothing else writes to it in this private arena.
        let after = unsafe { *addr.as_ref() };
        assert_eq!(after, [0u8; SLOT_LEN]);
        // The same slot comes back next, still zero.
        let again = arena.alloc();
        assert_eq!(again.addr(), addr);
        assert_eq!(again.bytes(), &[0u8; SLOT_LEN]);
    }

    #[test]
    fn pages_grow_on_demand_and_are_reused() {
        let arena = private_arena();
        let per_page = page_size() / SLOT_LEN;
        let slots: Vec<Slot> = (0..per_page + 1).map(|_| arena.alloc()).collect();
        let stats = arena.stats();
        assert_eq!(stats.pages, 2);
        assert_eq!(stats.slots_in_use, per_page + 1);
        assert_eq!(stats.bytes_mapped, 2 * page_size());
        drop(slots);
        let stats = arena.stats();
        assert_eq!((stats.pages, stats.slots_in_use), (2, 0));
        assert_eq!(stats.slots_free, 2 * per_page);
        // Reuse: allocating a page's worth again maps nothing new.
        let again: Vec<Slot> = (0..per_page).map(|_| arena.alloc()).collect();
        assert_eq!(arena.stats().pages, 2);
        drop(again);
        arena.reserve(3 * per_page);
        assert_eq!(arena.stats().pages, 3);
    }

    #[test]
    fn slots_are_distinct_and_hold_their_bytes_across_8_threads() {
        let arena = private_arena();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..100_000u32 {
                        let mut slot = arena.alloc();
                        assert_eq!(slot.bytes(), &[0u8; SLOT_LEN], "a handed-out slot is zero");
                        let fill = t ^ (i as u8);
                        slot.bytes_mut().fill(fill);
                        held.push((fill, slot));
                        if held.len() > 16 {
                            let (fill, slot) = held.remove(i as usize % 16);
                            assert!(
                                slot.bytes().iter().all(|b| *b == fill),
                                "thread {t} lost its bytes"
                            );
                        }
                    }
                    for (fill, slot) in held {
                        assert!(slot.bytes().iter().all(|b| *b == fill));
                    }
                });
            }
        });
        let stats = arena.stats();
        assert_eq!(stats.slots_in_use, 0);
        assert!(stats.pages >= 1);
    }

    #[test]
    fn a_locking_failure_is_reported_not_panicked_on() {
        let arena = private_arena();
        arena.fail_lock.store(true, Ordering::SeqCst);
        let mut slot = arena.alloc();
        slot.bytes_mut().fill(7);
        assert_eq!(slot.bytes(), &[7u8; SLOT_LEN], "the slot works unlocked");
        let stats = arena.stats();
        assert_eq!(stats.bytes_locked, 0);
        match &stats.locking {
            Protection::Failed { reason } => {
                assert!(
                    reason.contains("1 of 1 key page(s) could not be locked"),
                    "{reason}"
                );
                assert!(reason.contains("mlock"), "{reason}");
            }
            other => panic!("expected a reported failure, got {other:?}"),
        }
        #[cfg(target_os = "linux")]
        assert_eq!(
            stats.dump_exclusion,
            Protection::Active,
            "dump exclusion does not depend on locking"
        );
        // Once locking works again, configuring re-applies it to the existing page.
        arena.fail_lock.store(false, Ordering::SeqCst);
        arena.configure(Settings {
            lock: true,
            exclude_from_dumps: true,
        });
        let stats = arena.stats();
        assert_eq!(stats.locking, Protection::Active);
        assert_eq!(stats.bytes_locked, page_size());
    }

    #[test]
    fn switching_protections_off_and_on_applies_to_existing_pages() {
        let arena = private_arena();
        let _slot = arena.alloc();
        arena.configure(Settings {
            lock: false,
            exclude_from_dumps: false,
        });
        let stats = arena.stats();
        assert_eq!(
            (stats.locking.clone(), stats.dump_exclusion.clone()),
            (Protection::Off, Protection::Off)
        );
        assert_eq!(stats.bytes_locked, 0);
        arena.configure(Settings {
            lock: true,
            exclude_from_dumps: true,
        });
        let stats = arena.stats();
        assert_eq!(stats.locking, Protection::Active);
        #[cfg(target_os = "linux")]
        {
            assert_eq!(stats.dump_exclusion, Protection::Active);
            assert_eq!(stats.wipe_on_fork, Protection::Active);
        }
    }

    /// The kernel's own view: the page is locked and marked "dd" (do not dump) and "wf" (wipe on
    /// fork) in `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_reports_the_page_as_locked_and_excluded() {
        let arena = private_arena();
        let slot = arena.alloc();
        let addr = slot.addr().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_range = false;
        let mut flags = None;
        let mut locked_kb = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                in_range = (lo..hi).contains(&addr);
                continue;
            }
            if in_range {
                if let Some(v) = line.strip_prefix("VmFlags:") {
                    flags = Some(v.split_whitespace().map(String::from).collect::<Vec<_>>());
                }
                if let Some(v) = line.strip_prefix("Locked:") {
                    locked_kb = v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok();
                }
            }
        }
        let flags = flags.expect("the slot's mapping is in /proc/self/smaps");
        for f in ["dd", "wf"] {
            assert!(flags.iter().any(|x| x == f), "missing {f} in {flags:?}");
        }
        if arena.stats().locking == Protection::Active {
            assert!(flags.iter().any(|x| x == "lo"), "missing lo in {flags:?}");
            assert!(locked_kb.unwrap_or(0) > 0);
        }
    }
}
