//! The sandbox directory: which sandboxes exist, what each forks, when each expires, and the
//! kill switch.
//!
//! Ingress layers ask it whether a sandbox may run (unknown, disabled and expired sandboxes are
//! refused as configured); routing layers ask it where a sandbox's fork of a service listens.
//! Lookups read an in-memory snapshot and never block on I/O.
//!
//! # Example
//!
//! ```
//! use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};
//!
//! let directory = MemoryDirectory::new();
//! let fork = "http://127.0.0.1:9001".parse()?;
//! directory.upsert(SandboxEntry::new("pr-42".parse()?).fork("billing", fork));
//!
//! let entry = directory.get(&"pr-42".parse()?).expect("registered");
//! assert_eq!(entry.fork_of("billing").map(|a| a.to_string()).as_deref(), Some("http://127.0.0.1:9001"));
//! assert!(directory.get(&"pr-7".parse()?).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cuts;
mod file;
mod fork;
mod standing;

pub use cuts::{CutFuture, CutPlace, PartitionCuts, Range, Sighting};
pub use file::FileDirectory;
pub use fork::{Fallback, ForkAddress, ForkRoute, InvalidForkAddress, fork_route};
pub use standing::Standing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::sandbox::{Sandbox, SandboxBuilder, SandboxKey};

/// Where sandboxes are registered. Implementations keep a snapshot in memory; lookups are cheap
/// and never wait on I/O.
pub trait Directory: Send + Sync + 'static {
    /// The entry for `key`, expired and disabled ones included (so callers can say why they
    /// refuse).
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>>;

    /// Every entry.
    fn entries(&self) -> Vec<Arc<SandboxEntry>>;

    /// Whether the directory has loaded its source at least once. Consumers that must not act
    /// on a partial view (the Kafka consumer filter) wait for this.
    fn is_synced(&self) -> bool {
        true
    }

    /// Whether the snapshot may be out of date: the directory lost its source for longer than
    /// its documented staleness bound. Lookups still answer from the last snapshot (expiry is
    /// checked against the clock either way); routing layers then fall back to baseline code
    /// and the Kafka consumer pauses, while sandboxed requests keep their context, so data
    /// isolation never depends on freshness.
    fn is_stale(&self) -> bool {
        false
    }

    /// A number that changes whenever any entry changes, so that a caller may remember what it
    /// decided from the entries for as long as it stays the same (the Kafka filter does).
    /// `None`, the default, when the directory cannot tell: then nothing is remembered. Read it
    /// *before* the lookups it is to cover.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// The [`cuts`] recorded in the partition `place`, for every sandbox that has any.
    /// The default keeps none: forks cannot be run from such a directory.
    fn cut_ranges<'a>(&'a self, place: &'a CutPlace) -> CutFuture<'a, PartitionCuts> {
        let _ = place;
        Box::pin(async { Err(DirectoryError::CutsUnsupported) })
    }

    /// Records what the baseline consumer saw deciding one record. Returns the sandbox's
    /// ranges as they are then; see [`cuts::settled`]. Only baseline consumers call it.
    fn settle_cut<'a>(&'a self, seen: Sighting<'a>) -> CutFuture<'a, Vec<Range>> {
        let _ = seen;
        Box::pin(async { Err(DirectoryError::CutsUnsupported) })
    }
}

// A directory holds a whole table of sandboxes: shown by name only, so that the layers and
// consumers holding a `dyn Directory` can derive `Debug`.
impl fmt::Debug for dyn Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Directory")
    }
}

impl<D: Directory + ?Sized> Directory for Arc<D> {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        (**self).get(key)
    }
    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        (**self).entries()
    }
    fn is_synced(&self) -> bool {
        (**self).is_synced()
    }
    fn is_stale(&self) -> bool {
        (**self).is_stale()
    }
    fn generation(&self) -> Option<u64> {
        (**self).generation()
    }
    fn cut_ranges<'a>(&'a self, place: &'a CutPlace) -> CutFuture<'a, PartitionCuts> {
        (**self).cut_ranges(place)
    }
    fn settle_cut<'a>(&'a self, seen: Sighting<'a>) -> CutFuture<'a, Vec<Range>> {
        (**self).settle_cut(seen)
    }
}

/// Why a directory source could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// Reading the file failed.
    #[error("cannot read directory file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's contents are invalid.
    #[error("invalid directory file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// This directory keeps no cuts (a file directory): forks of Kafka consumers need one that
    /// does (PostgreSQL's, or a memory directory in one process).
    #[error("this directory keeps no Kafka cuts; use the PostgreSQL directory")]
    CutsUnsupported,
    /// The cuts could not be read or written.
    #[error("Kafka cuts: {0}")]
    Cuts(String),
}

/// One registered sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxEntry {
    /// The routing key.
    pub key: SandboxKey,
    /// Who started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The PR or dev session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The services this sandbox forks, by service name, with the fork's base address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forks: BTreeMap<String, ForkAddress>,
    /// The services this sandbox *shadows*: its fork of each (listed in `forks`) receives a
    /// sample of that service's baseline traffic as copies in this sandbox (a dark launch).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub shadows: BTreeSet<String>,
    /// The sandbox's own stubs of third parties the egress policy declares, by destination
    /// name: its calls to them go to the stub service at that address instead
    /// ([`crate::egress::EgressPolicy`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stubs: BTreeMap<String, ForkAddress>,
    /// When it was created (RFC 3339 or Unix seconds in files).
    #[serde(default, with = "time_serde", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<SystemTime>,
    /// When it expires (RFC 3339 or Unix seconds in files).
    #[serde(default, with = "time_serde", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<SystemTime>,
    /// The kill switch: a disabled sandbox is refused everywhere.
    #[serde(default)]
    pub disabled: bool,
}

impl SandboxEntry {
    /// An entry with only a key.
    pub fn new(key: SandboxKey) -> Self {
        Self {
            key,
            actor: None,
            origin: None,
            forks: BTreeMap::new(),
            shadows: BTreeSet::new(),
            stubs: BTreeMap::new(),
            created_at: None,
            expires_at: None,
            disabled: false,
        }
    }

    /// Stubs the egress policy's destination `name` with the service at `address`, for this
    /// sandbox's calls.
    pub fn stub(mut self, name: &str, address: ForkAddress) -> Self {
        self.stubs.insert(name.to_owned(), address);
        self
    }

    /// Registers a fork of `service` listening at `address`.
    pub fn fork(mut self, service: &str, address: ForkAddress) -> Self {
        self.forks.insert(service.to_owned(), address);
        self
    }

    /// Marks this sandbox's fork of `service` (registered with [`fork`](Self::fork)) as a
    /// shadow of the baseline: it receives copies of sampled baseline requests.
    pub fn shadow(mut self, service: &str) -> Self {
        self.shadows.insert(service.to_owned());
        self
    }

    /// Where this sandbox's shadow of `service` listens, if it shadows it.
    pub fn shadow_of(&self, service: &str) -> Option<&ForkAddress> {
        if self.shadows.contains(service) {
            self.fork_of(service)
        } else {
            None
        }
    }

    /// Sets the expiry.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the kill switch.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// Where this sandbox's fork of `service` listens, if it forks it.
    pub fn fork_of(&self, service: &str) -> Option<&ForkAddress> {
        self.forks.get(service)
    }

    /// Whether the entry has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// This entry as a sandbox: key, actor, origin, expiry and creation (a label that does not
    /// validate is left out). Tokens minted for it admit only this incarnation.
    pub fn sandbox(&self) -> Sandbox {
        let mut builder = SandboxBuilder::from_key(self.key.clone());
        // Entries come from the operator; a label that does not validate is left out.
        if let Some(actor) = self.actor.as_deref() {
            builder = builder.clone().actor(actor).unwrap_or(builder);
        }
        if let Some(origin) = self.origin.as_deref() {
            builder = builder.clone().origin(origin).unwrap_or(builder);
        }
        if let Some(at) = self.expires_at {
            builder = builder.expires_at(at);
        }
        if let Some(at) = self.created_at {
            builder = builder.created_at(at);
        }
        builder.build()
    }

    /// This entry's incarnation: its creation in Unix microseconds, or 0 when it has none.
    pub fn incarnation(&self) -> i64 {
        self.created_at.map_or(0, |t| {
            i64::try_from(crate::token::micros(t)).unwrap_or(i64::MAX)
        })
    }

    /// Whether `sandbox` (from a token) names this entry's incarnation: the same creation time,
    /// to the microsecond, or none on either side. A sandbox deleted and made again under the
    /// same key is a new incarnation, which tokens minted for the old one must not admit.
    pub fn is_incarnation_of(&self, sandbox: &Sandbox) -> bool {
        self.created_at.map(crate::token::micros) == sandbox.created_at().map(crate::token::micros)
    }

    /// `sandbox` completed from this entry: actor and origin filled in where the message had
    /// none, the entry's creation (the sandbox's incarnation) where it had none, and the earlier
    /// of both expiries.
    pub fn complete(&self, sandbox: &Sandbox) -> Sandbox {
        let actor = sandbox.actor().or(self.actor.as_deref());
        let origin = sandbox.origin().or(self.origin.as_deref());
        let expires_at = match (sandbox.expires_at(), self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let created_at = sandbox.created_at().or(self.created_at);
        if actor == sandbox.actor()
            && origin == sandbox.origin()
            && expires_at == sandbox.expires_at()
            && created_at == sandbox.created_at()
        {
            return sandbox.clone();
        }
        // Every request of the sandbox completes to the same sandbox: shared from the cache of
        // recent ones, its encoded members built once.
        let fields = crate::codec::interned::Fields {
            key: sandbox.key().as_str(),
            actor,
            origin,
            expires_at,
            created_at,
        };
        crate::codec::interned::sandbox(fields, || {
            let mut builder = SandboxBuilder::from_key(sandbox.key().clone());
            // Entries come from the operator; a label that does not validate is left out.
            if let Some(actor) = actor {
                builder = builder.clone().actor(actor).unwrap_or(builder);
            }
            if let Some(origin) = origin {
                builder = builder.clone().origin(origin).unwrap_or(builder);
            }
            if let Some(at) = expires_at {
                builder = builder.expires_at(at);
            }
            if let Some(at) = created_at {
                builder = builder.created_at(at);
            }
            Ok::<_, std::convert::Infallible>(builder.build())
        })
        .unwrap_or_else(|never| match never {})
    }
}

mod time_serde {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Secs(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Secs(secs)) => UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("timestamp out of range")),
            Some(Repr::Text(text)) => humantime::parse_rfc3339_weak(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Entries by key. Looked up for every sandboxed request and message, so hashed with foldhash
/// rather than SipHash: keys are inserted by operators, never by request input, so there is no
/// flood of colliding keys to resist.
type EntryMap = HashMap<SandboxKey, Arc<SandboxEntry>, foldhash::fast::RandomState>;

/// An immutable snapshot of entries; writers swap whole snapshots.
type Snapshot = Arc<EntryMap>;

/// A directory held in memory, changed through its methods. Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryDirectory {
    entries: Arc<RwLock<Snapshot>>,
    /// Counts the changes; moved under the write lock, as each change begins.
    generation: Arc<AtomicU64>,
    cuts: cuts::MemoryCuts,
}

impl fmt::Debug for MemoryDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDirectory")
            .field("entries", &self.snapshot().len())
            .finish()
    }
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock still holds a consistent map: writers swap or copy whole snapshots.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot(&self) -> Snapshot {
        Arc::clone(&self.read())
    }

    fn update(&self, f: impl FnOnce(&mut EntryMap)) {
        let mut entries = self.write();
        // Moved first, under the lock: whoever reads the new number reads the new entries (the
        // lookup waits for the lock), and a panic in `f` cannot leave a change uncounted.
        self.generation.fetch_add(1, Ordering::AcqRel);
        f(Arc::make_mut(&mut entries));
    }

    /// Adds or replaces an entry.
    pub fn upsert(&self, entry: SandboxEntry) {
        self.update(|map| {
            map.insert(entry.key.clone(), Arc::new(entry));
        });
    }

    /// Removes an entry; returns whether it existed.
    pub fn remove(&self, key: &SandboxKey) -> bool {
        let mut existed = false;
        self.update(|map| existed = map.remove(key).is_some());
        existed
    }

    /// Flips the kill switch; returns whether the sandbox exists.
    pub fn set_disabled(&self, key: &SandboxKey, disabled: bool) -> bool {
        let mut found = false;
        self.update(|map| {
            if let Some(entry) = map.get_mut(key) {
                Arc::make_mut(entry).disabled = disabled;
                found = true;
            }
        });
        found
    }

    /// Replaces every entry at once.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = SandboxEntry>) {
        let map: EntryMap = entries
            .into_iter()
            .map(|e| (e.key.clone(), Arc::new(e)))
            .collect();
        let mut entries = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        *entries = Arc::new(map);
    }
}

impl Directory for MemoryDirectory {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        self.read().get(key).cloned()
    }

    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        self.snapshot().values().cloned().collect()
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    fn cut_ranges<'a>(&'a self, place: &'a CutPlace) -> CutFuture<'a, PartitionCuts> {
        let ranges = self.cuts.ranges(place);
        Box::pin(async move { Ok(ranges) })
    }

    fn settle_cut<'a>(&'a self, seen: Sighting<'a>) -> CutFuture<'a, Vec<Range>> {
        let ranges = self.cuts.settle(seen);
        Box::pin(async move { Ok(ranges) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_and_only_a_change_moves_the_generation() {
        let directory = MemoryDirectory::new();
        let key: SandboxKey = "gen-a".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut seen = vec![directory.generation()];
        let mut changed = |directory: &MemoryDirectory| {
            let now = directory.generation();
            assert!(!seen.contains(&now), "{now:?} seen before: {seen:?}");
            seen.push(now);
        };
        directory.upsert(SandboxEntry::new(key.clone()));
        changed(&directory);
        directory.set_disabled(&key, true);
        changed(&directory);
        directory.remove(&key);
        changed(&directory);
        directory.replace_all([SandboxEntry::new(key.clone())]);
        changed(&directory);
        // Reads change nothing.
        let now = directory.generation();
        let _ = (directory.get(&key), directory.entries());
        assert_eq!(directory.generation(), now);
        assert!(now.is_some());
        // Clones share the count: a change through one moves the other's.
        directory.clone().upsert(SandboxEntry::new(key));
        changed(&directory);
    }
}
