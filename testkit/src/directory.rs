//! A directory whose freshness a test switches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prodbox_core::SandboxKey;
use prodbox_core::directory::{
    CutFuture, CutPlace, Directory, DirectoryError, MemoryDirectory, PartitionCuts, Range,
    SandboxEntry, Sighting,
};

/// A [`MemoryDirectory`] that says it is stale while the test wants it to (a directory that
/// lost its source for longer than its staleness bound). Clones share entries and switch.
#[derive(Debug, Clone, Default)]
pub struct Switchable {
    /// The entries, changed through `MemoryDirectory`'s methods.
    pub entries: MemoryDirectory,
    stale: Arc<AtomicBool>,
    cuts_down: Arc<AtomicBool>,
    cut_calls: Arc<AtomicU64>,
}

impl Switchable {
    /// `entries`, stale from the start.
    pub fn stale(entries: MemoryDirectory) -> Self {
        let directory = Self {
            entries,
            ..Self::default()
        };
        directory.set_stale(true);
        directory
    }

    /// Makes the directory stale, or fresh again.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::SeqCst);
    }

    /// Makes every read and write of the Kafka cuts fail (their store is away), or work again.
    pub fn set_cuts_down(&self, down: bool) {
        self.cuts_down.store(down, Ordering::SeqCst);
    }

    /// How many times the cuts were read or written (including refused tries).
    pub fn cut_calls(&self) -> u64 {
        self.cut_calls.load(Ordering::SeqCst)
    }

    fn cuts_away<T: Send + 'static>(&self) -> Option<CutFuture<'static, T>> {
        self.cut_calls.fetch_add(1, Ordering::SeqCst);
        self.cuts_down.load(Ordering::SeqCst).then(|| {
            Box::pin(async { Err(DirectoryError::Cuts("switched off by the test".to_owned())) })
                as CutFuture<'static, T>
        })
    }
}

impl Directory for Switchable {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        self.entries.get(key)
    }
    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        self.entries.entries()
    }
    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }
    fn generation(&self) -> Option<u64> {
        self.entries.generation()
    }
    fn cut_ranges<'a>(&'a self, place: &'a CutPlace) -> CutFuture<'a, PartitionCuts> {
        self.cuts_away()
            .unwrap_or_else(|| self.entries.cut_ranges(place))
    }
    fn settle_cut<'a>(&'a self, seen: Sighting<'a>) -> CutFuture<'a, Vec<Range>> {
        self.cuts_away()
            .unwrap_or_else(|| self.entries.settle_cut(seen))
    }
}
