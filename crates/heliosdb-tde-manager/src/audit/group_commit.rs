//! The group commit of [`AuditFsync::Batched`](super::AuditFsync::Batched): a thread that
//! fsyncs the log at most [`GROUP_COMMIT_DELAY`] after a `tek.unwrapped` line was written
//! without fsync. The sink stops it when dropped.

use super::GROUP_COMMIT_DELAY;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The group commit's flags (batched fsync).
#[derive(Default)]
struct SyncFlags {
    dirty_since: Option<Instant>,
    stop: bool,
}

#[derive(Default)]
pub(super) struct Syncer {
    flags: Mutex<SyncFlags>,
    wake: Condvar,
}

impl Syncer {
    fn flags(&self) -> MutexGuard<'_, SyncFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn mark_dirty(&self) {
        let mut f = self.flags();
        if f.dirty_since.is_none() {
            f.dirty_since = Some(Instant::now());
            self.wake.notify_all();
        }
    }

    pub(super) fn stop(&self) {
        self.flags().stop = true;
        self.wake.notify_all();
    }

    /// The group-commit thread: calls `sync` at most [`GROUP_COMMIT_DELAY`] after a line was
    /// left unsynced; ends when stopped or when `sync` returns false (the sink is gone).
    pub(super) fn run(self: Arc<Self>, sync: impl Fn() -> bool) {
        let mut f = self.flags();
        loop {
            if f.stop {
                return;
            }
            let Some(since) = f.dirty_since else {
                f = self.wake.wait(f).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let deadline = since + GROUP_COMMIT_DELAY;
            let now = Instant::now();
            if now < deadline {
                f = self
                    .wake
                    .wait_timeout(f, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            f.dirty_since = None;
            drop(f);
            if !sync() {
                return;
            }
            f = self.flags();
        }
    }
}
