//! A directory whose freshness a test switches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prodbox_core::SandboxKey;
use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};

/// A [`MemoryDirectory`] that says it is stale while the test wants it to (a directory that
/// lost its source for longer than its staleness bound). Clones share entries and switch.
#[derive(Debug, Clone, Default)]
pub struct Switchable {
    /// The entries, changed through `MemoryDirectory`'s methods.
    pub entries: MemoryDirectory,
    stale: Arc<AtomicBool>,
}

impl Switchable {
    /// `entries`, stale from the start.
    pub fn stale(entries: MemoryDirectory) -> Self {
        let directory = Self {
            entries,
            stale: Arc::default(),
        };
        directory.set_stale(true);
        directory
    }

    /// Makes the directory stale, or fresh again.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::SeqCst);
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
}
