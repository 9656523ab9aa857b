//! The consumers' side of the cuts ([`prodbox_core::directory::cuts`]): the baseline records,
//! in the directory, where each forked sandbox's records of a partition pass to its fork and
//! back; a fork handles a record of its sandbox only once the baseline has committed past it,
//! and only inside its incarnation's ranges.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prodbox_core::SandboxKey;
use prodbox_core::directory::cuts::{changes, owner};
use prodbox_core::directory::{
    CutPlace, Directory, DirectoryError, PartitionCuts, Range, Sighting,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::ConsumerError;
use crate::shutdown::pause;

/// How long the baseline retries reading or recording a cut before it gives the record to the
/// dead-letter topic rather than guess. Once it has given up, records that need the directory
/// are dead-lettered at once, without a try, until a probe in the background finds it
/// answering again: a directory that is away delays a partition by this much once.
pub(crate) const CUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often that probe tries.
const PROBE: Duration = Duration::from_secs(1);
/// How often a fork waiting for the baseline looks again.
const WAIT: Duration = Duration::from_millis(100);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a consumer does with a forked sandbox's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Handle it (in its sandbox's context).
    Handle,
    /// The other role handles it.
    Skip,
    /// The baseline could not learn or record who handles it in time: dead-letter it.
    Unavailable(String),
    /// Shutdown came first: leave it unhandled.
    Interrupted,
}

pub(crate) struct Cuts {
    directory: Arc<dyn Directory>,
    /// The baseline's consumer group: cuts are recorded by its position.
    group: String,
    role: Side,
    /// Cuts read, by topic and partition; forgotten at every rebalance ([`Rebalances`]).
    cache: Cache,
}

/// Looked up for every record of a forked sandbox: hashed with foldhash, not SipHash.
type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

type Cache = Arc<Shared>;

/// A consumer's cuts read, shared with what forgets them.
#[derive(Default)]
struct Shared {
    by_topic: Mutex<ByTopic>,
    /// Moves at every change of `by_topic`, under its lock: a loop's copy of a partition's cuts
    /// ([`Recent`]) holds while it has not moved.
    version: AtomicU64,
}

/// Cuts read, by topic, then partition. A consumer reads a few topics: a short list compared
/// in order costs less than hashing a topic name for every record. Past [`FEW_TOPICS`], the
/// others are hashed.
#[derive(Default)]
struct ByTopic {
    few: Vec<(Box<str>, Fast<i32, Known>)>,
    many: Fast<Box<str>, Fast<i32, Known>>,
}

const FEW_TOPICS: usize = 8;

impl ByTopic {
    fn get(&self, topic: &str) -> Option<&Fast<i32, Known>> {
        match self.few.iter().find(|(name, _)| **name == *topic) {
            Some((_, partitions)) => Some(partitions),
            None => self.many.get(topic),
        }
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut Fast<i32, Known>> {
        match self.few.iter_mut().find(|(name, _)| **name == *topic) {
            Some((_, partitions)) => Some(partitions),
            None => self.many.get_mut(topic),
        }
    }

    fn entry(&mut self, topic: &str) -> &mut Fast<i32, Known> {
        if let Some(at) = self.few.iter().position(|(name, _)| **name == *topic) {
            return &mut self.few[at].1;
        }
        if self.few.len() < FEW_TOPICS && !self.many.contains_key(topic) {
            let at = self.few.len();
            self.few.push((topic.into(), Fast::default()));
            return &mut self.few[at].1;
        }
        self.many.entry(topic.into()).or_default()
    }

    /// Partitions known, of every topic.
    fn len(&self) -> usize {
        let few: usize = self
            .few
            .iter()
            .map(|(_, partitions)| partitions.len())
            .sum();
        few + self.many.values().map(HashMap::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.few.clear();
        self.many.clear();
    }
}

/// A partition's cuts as read at one moment.
struct Known {
    cuts: Fast<SandboxKey, Vec<Range>>,
    /// The baseline's committed offset, read just before them (a fork trusts them below it).
    behind: i64,
}

/// Forgets a consumer's cuts, at every rebalance ([`Rebalances`](crate::Rebalances)). A
/// baseline consumer holding a partition is the only one that records cuts there, so what it
/// read and recorded since the partition was assigned to it stays true until it loses the
/// partition: it decides from memory, without asking the directory, until then.
pub(crate) struct Forget(Cache);

impl Forget {
    pub(crate) fn all(&self) {
        change(&self.0).clear();
    }
}

fn lock(cache: &Cache) -> std::sync::MutexGuard<'_, ByTopic> {
    cache
        .by_topic
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lock, to change what it guards: every copy made before is out of date.
fn change(cache: &Cache) -> std::sync::MutexGuard<'_, ByTopic> {
    let by_topic = lock(cache);
    cache.version.fetch_add(1, Ordering::Release);
    by_topic
}

/// Copies of the cuts a loop decided by last, a few partitions' and sandboxes' worth: the next
/// record of the same sandbox and partition is decided from its copy, without the cache's lock,
/// while the cache has not changed since. That is nearly every record of a busy partition.
///
/// A loop that decides by the cuts only once (a `recv`) makes no copy: the first lookup of a
/// `Recent` copies nothing.
#[derive(Default)]
pub(crate) struct Recent {
    copies: [Option<Copied>; RECENT],
    /// Whether it was looked up before.
    used: bool,
}

const RECENT: usize = 4;

/// One partition's ranges of one sandbox, as the cache held them at `version`.
struct Copied {
    /// The cache's address: a loop's copies are of its own consumer's cuts only.
    cache: usize,
    version: u64,
    topic: Box<str>,
    partition: i32,
    sandbox: SandboxKey,
    ranges: Vec<Range>,
    behind: i64,
}

impl Recent {
    /// Where the copy for `partition` and `sandbox` is kept. Only how often copies evict each
    /// other depends on it: a copy is used only for the very topic, partition and sandbox. A
    /// sandbox's key, recalled from the filter's memory, is one allocation, so its address
    /// tells sandboxes apart at no cost.
    fn slot(&mut self, partition: i32, sandbox: &SandboxKey) -> &mut Option<Copied> {
        let address = sandbox.as_str().as_ptr() as usize >> 4;
        &mut self.copies[(address ^ partition as u32 as usize) % RECENT]
    }
}

impl Known {
    fn of(&self, sandbox: &SandboxKey) -> &[Range] {
        self.cuts.get(sandbox).map_or(&[], Vec::as_slice)
    }
}

enum Side {
    Baseline {
        /// The directory failed past [`CUT_TIMEOUT`] and the probe has not seen it answer
        /// since.
        away: Arc<AtomicBool>,
    },
    Fork {
        sandbox: SandboxKey,
        incarnation: i64,
        /// Reads the baseline group's committed offsets (it never joins the group).
        progress: Arc<BaseConsumer>,
    },
}

impl Cuts {
    pub(crate) fn baseline(directory: Arc<dyn Directory>, group: &str) -> Self {
        Self {
            directory,
            group: group.to_owned(),
            role: Side::Baseline {
                away: Arc::default(),
            },
            cache: Cache::default(),
        }
    }

    /// What forgets these cuts at every rebalance.
    pub(crate) fn forget(&self) -> Forget {
        Forget(Arc::clone(&self.cache))
    }

    pub(crate) fn fork(
        directory: Arc<dyn Directory>,
        group: &str,
        (sandbox, incarnation): (SandboxKey, i64),
        progress: Arc<BaseConsumer>,
    ) -> Self {
        Self {
            directory,
            group: group.to_owned(),
            role: Side::Fork {
                sandbox,
                incarnation,
                progress,
            },
            cache: Cache::default(),
        }
    }

    fn place(&self, topic: &str, partition: i32) -> CutPlace {
        CutPlace {
            group: self.group.clone(),
            topic: topic.to_owned(),
            partition,
        }
    }

    /// What `known` cuts of `topic`/`partition`, if any, say about the record at `offset`.
    fn with_cached<T>(
        &self,
        (topic, partition): (&str, i32),
        known: impl FnOnce(&Known) -> Option<T>,
    ) -> Option<T> {
        lock(&self.cache)
            .get(topic)?
            .get(&partition)
            .and_then(known)
    }

    fn store(&self, (topic, partition): (&str, i32), cuts: PartitionCuts, behind: i64) {
        let mut cache = change(&self.cache);
        // Bounded by the partitions in use; forgotten wholesale past that.
        if cache.len() >= 16_384 {
            cache.clear();
        }
        cache.entry(topic).insert(
            partition,
            Known {
                cuts: cuts.into_iter().collect(),
                behind,
            },
        );
    }

    /// Notes a sandbox's ranges as just recorded, keeping the rest of the partition's cuts.
    fn note(&self, (topic, partition): (&str, i32), sandbox: &SandboxKey, ranges: Vec<Range>) {
        if let Some(known) = change(&self.cache)
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
        {
            known.cuts.insert(sandbox.clone(), ranges);
        }
    }

    /// What the cuts read so far say of the record at `offset` of `sandbox`'s, when they say
    /// it with nothing to read or record: nearly every record, decided under one lock, without
    /// a future.
    pub(crate) fn decided(
        &self,
        sandbox: &SandboxKey,
        forking: Option<i64>,
        (topic, partition, offset): (&str, i32, i64),
    ) -> Option<Cut> {
        self.with_cached((topic, partition), |known| {
            self.by(known.of(sandbox), known.behind, forking, offset)
        })
    }

    /// The same, from the copy in `recent` while the cache has not changed since it was made,
    /// and otherwise under the lock, copying what it read into `recent` for the next record.
    pub(crate) fn decided_recent(
        &self,
        recent: &mut Recent,
        sandbox: &SandboxKey,
        forking: Option<i64>,
        (topic, partition, offset): (&str, i32, i64),
    ) -> Option<Cut> {
        let version = self.cache.version.load(Ordering::Acquire);
        let cache = Arc::as_ptr(&self.cache) as usize;
        let used = std::mem::replace(&mut recent.used, true);
        let slot = recent.slot(partition, sandbox);
        if let Some(copy) = slot.as_ref().filter(|copy| {
            copy.version == version
                && copy.cache == cache
                && copy.partition == partition
                && copy.sandbox == *sandbox
                && *copy.topic == *topic
        }) {
            return self.by(&copy.ranges, copy.behind, forking, offset);
        }
        self.with_cached((topic, partition), |known| {
            let ranges = known.of(sandbox);
            if used {
                // Under the lock: the version of what is copied.
                let version = self.cache.version.load(Ordering::Relaxed);
                match slot {
                    Some(copy) => {
                        copy.cache = cache;
                        copy.version = version;
                        if *copy.topic != *topic {
                            copy.topic = topic.into();
                        }
                        copy.partition = partition;
                        if copy.sandbox != *sandbox {
                            copy.sandbox = sandbox.clone();
                        }
                        copy.ranges.clear();
                        copy.ranges.extend_from_slice(ranges);
                        copy.behind = known.behind;
                    }
                    None => {
                        *slot = Some(Copied {
                            cache,
                            version,
                            topic: topic.into(),
                            partition,
                            sandbox: sandbox.clone(),
                            ranges: ranges.to_vec(),
                            behind: known.behind,
                        });
                    }
                }
            }
            self.by(ranges, known.behind, forking, offset)
        })
    }

    /// What a partition's `ranges` of a sandbox, read when the baseline had committed up to
    /// `behind`, say of its record at `offset`, when they say it with nothing to record.
    fn by(&self, ranges: &[Range], behind: i64, forking: Option<i64>, offset: i64) -> Option<Cut> {
        match &self.role {
            Side::Baseline { .. } => {
                (!changes(ranges, forking, offset)).then(|| Self::baseline_by(ranges, offset))
            }
            Side::Fork { incarnation, .. } => (offset < behind).then(|| {
                if owner(ranges, offset) == Some(*incarnation) {
                    Cut::Handle
                } else {
                    Cut::Skip
                }
            }),
        }
    }

    /// Whether this consumer handles the record at `offset` of `sandbox`'s, whose incarnation
    /// `forking` forks the service now (`None`: none does), as the baseline sees it.
    pub(crate) async fn decide<S: Future<Output = ()>>(
        &self,
        sandbox: &SandboxKey,
        forking: Option<i64>,
        at: (&str, i32, i64),
        shutdown: &mut Pin<&mut S>,
    ) -> Cut {
        match &self.role {
            Side::Baseline { away } => self.as_baseline(sandbox, forking, at, away, shutdown).await,
            Side::Fork { progress, .. } => self.as_fork(sandbox, progress, at, shutdown).await,
        }
    }

    async fn as_baseline<S: Future<Output = ()>>(
        &self,
        sandbox: &SandboxKey,
        forking: Option<i64>,
        (topic, partition, offset): (&str, i32, i64),
        away: &Arc<AtomicBool>,
        shutdown: &mut Pin<&mut S>,
    ) -> Cut {
        let here = (topic, partition);
        // What this consumer read and recorded since the partition was assigned to it says
        // it already, with nothing to record: nearly every record, decided under one lock.
        if let Some(cut) = self.decided(sandbox, forking, (topic, partition, offset)) {
            return cut;
        }
        let unavailable = |error: &dyn std::fmt::Display| {
            Cut::Unavailable(format!(
                "cannot learn who handles this record of sandbox {sandbox}: {error}"
            ))
        };
        if away.load(Ordering::Relaxed) {
            return unavailable(&"the directory keeps failing; a probe will notice it back");
        }
        let started = Instant::now();
        loop {
            let attempt = async {
                let known = self.with_cached(here, |known| Some(known.of(sandbox).to_vec()));
                let ranges = match known {
                    Some(ranges) => ranges,
                    None => {
                        let cuts = self
                            .directory
                            .cut_ranges(&self.place(topic, partition))
                            .await?;
                        let ranges = cuts.get(sandbox).cloned().unwrap_or_default();
                        self.store(here, cuts, 0);
                        ranges
                    }
                };
                if !changes(&ranges, forking, offset) {
                    return Ok(Self::baseline_by(&ranges, offset));
                }
                let place = self.place(topic, partition);
                let seen = Sighting {
                    place: &place,
                    sandbox,
                    forking,
                    offset,
                };
                let ranges = self.directory.settle_cut(seen).await?;
                let cut = Self::baseline_by(&ranges, offset);
                self.note(here, sandbox, ranges);
                Ok::<_, DirectoryError>(cut)
            };
            match attempt.await {
                Ok(cut) => return cut,
                // No fork can run from such a directory (a fork refuses to start): a sandbox
                // that forks nothing here is the baseline's, one that does cannot be decided.
                Err(DirectoryError::CutsUnsupported) if forking.is_none() => return Cut::Handle,
                Err(error @ DirectoryError::CutsUnsupported) => return unavailable(&error),
                Err(error) if started.elapsed() >= CUT_TIMEOUT => {
                    self.probe(here, away);
                    return unavailable(&error);
                }
                Err(error) => {
                    tracing::warn!(target: "prodbox::kafka", %error, %sandbox, "cannot read or record a Kafka cut; retrying");
                    if !pause(WAIT * 5, shutdown).await {
                        return Cut::Interrupted;
                    }
                }
            }
        }
    }

    /// Marks the directory away and starts a probe that clears the mark once it answers.
    fn probe(&self, (topic, partition): (&str, i32), away: &Arc<AtomicBool>) {
        if away.swap(true, Ordering::Relaxed) {
            return;
        }
        let (directory, away, place) = (
            Arc::clone(&self.directory),
            Arc::clone(away),
            self.place(topic, partition),
        );
        // Production work of prodbox's own, outside any request.
        prodbox_core::spawn(async move {
            loop {
                tokio::time::sleep(PROBE).await;
                if directory.cut_ranges(&place).await.is_ok() {
                    away.store(false, Ordering::Relaxed);
                    tracing::info!(target: "prodbox::kafka", "the directory answers again; Kafka cuts are recorded again");
                    return;
                }
            }
        });
    }

    fn baseline_by(ranges: &[Range], offset: i64) -> Cut {
        match owner(ranges, offset) {
            Some(_) => Cut::Skip,
            None => Cut::Handle,
        }
    }

    /// A fork: waits until the baseline has committed past `offset` (so it has decided it, and
    /// recorded any cut at or before it), then reads the ranges.
    async fn as_fork<S: Future<Output = ()>>(
        &self,
        sandbox: &SandboxKey,
        progress: &Arc<BaseConsumer>,
        (topic, partition, offset): (&str, i32, i64),
        shutdown: &mut Pin<&mut S>,
    ) -> Cut {
        loop {
            if let Some(cut) = self.decided(sandbox, None, (topic, partition, offset)) {
                return cut;
            }
            // The baseline's committed offset first, then the ranges: any cut at or before a
            // record it committed past was recorded before it decided that record.
            if let Some(behind) = committed(progress, topic, partition).await
                && offset < behind
            {
                match self
                    .directory
                    .cut_ranges(&self.place(topic, partition))
                    .await
                {
                    Ok(cuts) => {
                        self.store((topic, partition), cuts, behind);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(target: "prodbox::kafka", %error, %sandbox, "cannot read the Kafka cuts; waiting");
                    }
                }
            }
            if !pause(WAIT, shutdown).await {
                return Cut::Interrupted;
            }
        }
    }
}

/// The committed offset of `progress`'s group on one partition, if it has one.
async fn committed(progress: &Arc<BaseConsumer>, topic: &str, partition: i32) -> Option<i64> {
    let (progress, topic) = (Arc::clone(progress), topic.to_owned());
    // rdkafka's OffsetFetch blocks: off the async threads.
    prodbox_core::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        list.add_partition(&topic, partition);
        let committed = progress.committed_offsets(list, FETCH_TIMEOUT).ok()?;
        committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
    })
    .await
    .ok()
    .flatten()
}

/// A consumer of `group` that never joins it, to read its committed offsets.
pub(crate) fn progress_reader(
    config: &ClientConfig,
    group: &str,
) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    let mut config = config.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config.create()
}

impl Cuts {
    /// For a fork: commits, for each partition of `topics` its group has no offset for yet,
    /// where it starts. That is the baseline's committed offset there (read first: any range
    /// recorded after it starts past it), or the start of this incarnation's earliest range
    /// (recorded while the fork was not running yet) when that is earlier, or the partition's
    /// beginning.
    pub(crate) async fn start_fork<X: ConsumerContext>(
        &self,
        consumer: &impl Consumer<X>,
        topics: &[&str],
    ) -> Result<(), ConsumerError> {
        let Side::Fork {
            sandbox,
            incarnation,
            progress,
        } = &self.role
        else {
            return Ok(());
        };
        let mut all = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), FETCH_TIMEOUT)?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                all.add_partition(topic, partition.id());
            }
        }
        let own = consumer.committed_offsets(all.clone(), FETCH_TIMEOUT)?;
        let baseline = progress.committed_offsets(all, FETCH_TIMEOUT)?;
        // Collected first: rdkafka's lists are not `Send`, and the directory is awaited.
        let missing: Vec<(String, i32, Option<i64>)> = own
            .elements()
            .iter()
            .filter(|element| !matches!(element.offset(), Offset::Offset(_)))
            .map(|element| {
                let (topic, partition) = (element.topic(), element.partition());
                let behind = match baseline
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                };
                (topic.to_owned(), partition, behind)
            })
            .collect();
        drop((own, baseline));
        let mut starts = Vec::with_capacity(missing.len());
        for (topic, partition, behind) in missing {
            let cuts = self
                .directory
                .cut_ranges(&self.place(&topic, partition))
                .await?;
            let earliest = cuts
                .get(sandbox)
                .into_iter()
                .flatten()
                .filter(|r| r.incarnation == *incarnation)
                .map(|r| r.start)
                .min();
            let at = match (behind, earliest) {
                (Some(behind), Some(earliest)) => behind.min(earliest),
                (Some(offset), None) | (None, Some(offset)) => offset,
                // `Beginning` cannot be committed: the partition's first offset.
                (None, None) => {
                    consumer
                        .fetch_watermarks(&topic, partition, FETCH_TIMEOUT)?
                        .0
                }
            };
            starts.push((topic, partition, at));
        }
        let mut start = TopicPartitionList::new();
        for (topic, partition, at) in &starts {
            start.add_partition_offset(topic, *partition, Offset::Offset(*at))?;
        }
        if start.count() > 0 {
            consumer.commit(&start, rdkafka::consumer::CommitMode::Sync)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(behind: i64) -> Known {
        Known {
            cuts: Fast::default(),
            behind,
        }
    }

    /// Topics past the few listed are hashed, and every one is found again, by name alone.
    #[test]
    fn every_topic_is_found_few_or_many() {
        let mut by_topic = ByTopic::default();
        let topics: Vec<String> = (0..20).map(|n| format!("topic-{n}")).collect();
        for (n, topic) in topics.iter().enumerate() {
            by_topic.entry(topic).insert(0, known(n as i64));
            by_topic.entry(topic).insert(1, known(-(n as i64)));
        }
        assert_eq!(by_topic.few.len(), FEW_TOPICS);
        assert_eq!(by_topic.len(), 40);
        for (n, topic) in topics.iter().enumerate() {
            let partitions = by_topic.get(topic).expect("known");
            assert_eq!(partitions[&0].behind, n as i64);
            assert_eq!(partitions[&1].behind, -(n as i64));
        }
        by_topic.get_mut("topic-15").expect("known").remove(&0);
        assert!(!by_topic.get("topic-15").expect("known").contains_key(&0));
        assert!(by_topic.get("topic-").is_none());
        by_topic.clear();
        assert_eq!(by_topic.len(), 0);
        assert!(by_topic.get("topic-0").is_none());
    }

    mod recent {
        use prodbox_core::directory::MemoryDirectory;
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Cuts read for a partition (as `store` keeps them).
            Store(u8, i32, Vec<(u8, Vec<Range>)>, i64),
            /// A sandbox's ranges just recorded (as `note` keeps them).
            Note(u8, i32, u8, Vec<Range>),
            /// A rebalance.
            Forget,
            /// One loop decides a record; `fresh`: with a key of its own, not the shared one.
            Decide {
                on: usize,
                topic: u8,
                partition: i32,
                sandbox: u8,
                fresh: bool,
                forking: Option<i64>,
                offset: i64,
            },
        }

        fn range() -> impl Strategy<Value = Range> + Clone {
            (0..3i64, 0..20i64, proptest::option::of(0..10i64)).prop_map(
                |(incarnation, start, length)| Range {
                    incarnation,
                    start,
                    end: length.map(|length| start + length),
                },
            )
        }

        fn op() -> impl Strategy<Value = Op> {
            let ranges = proptest::collection::vec(range(), 0..3);
            // Mostly decisions: a copy is used only until the cache changes.
            prop_oneof![
                2 => (
                    0..2u8,
                    0..3i32,
                    proptest::collection::vec((0..SANDBOXES, ranges.clone()), 0..4),
                    0..25i64
                )
                    .prop_map(|(t, p, cuts, behind)| Op::Store(t, p, cuts, behind)),
                2 => (0..2u8, 0..3i32, 0..SANDBOXES, ranges).prop_map(|(t, p, s, r)| Op::Note(t, p, s, r)),
                1 => Just(Op::Forget),
                12 => (
                    0..2usize,
                    0..2u8,
                    0..3i32,
                    0..SANDBOXES,
                    any::<bool>(),
                    proptest::option::of(0..3i64),
                    0..30i64
                )
                    .prop_map(|(on, topic, partition, sandbox, fresh, forking, offset)| {
                        Op::Decide {
                            on,
                            topic,
                            partition,
                            sandbox,
                            fresh,
                            forking,
                            offset,
                        }
                    }),
            ]
        }

        /// More than a loop keeps copies of: some share a place.
        const SANDBOXES: u8 = 2 * RECENT as u8;

        fn key(n: u8) -> SandboxKey {
            SandboxKey::new(&format!("pr-{n}")).expect("a key")
        }

        fn topic(n: u8) -> String {
            format!("orders-{n}")
        }

        fn cuts_of(role: u8) -> Cuts {
            let directory: Arc<dyn Directory> = Arc::new(MemoryDirectory::new());
            if role == 0 {
                return Cuts::baseline(directory, "billing");
            }
            // One for every case: it is never asked anything here.
            static PROGRESS: std::sync::OnceLock<Arc<BaseConsumer>> = std::sync::OnceLock::new();
            let progress = PROGRESS.get_or_init(|| {
                let consumer = ClientConfig::new()
                    .set("group.id", "billing")
                    .create::<BaseConsumer>()
                    .expect("a consumer that never connects");
                Arc::new(consumer)
            });
            Cuts::fork(directory, "billing", (key(1), 1), Arc::clone(progress))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Two loops deciding from their copies agree with the cache at every step,
            /// whatever it stores, notes or forgets in between, for either role; and copies of
            /// one consumer's cuts are never used for another's (`of` picks the consumer of each
            /// step, the loops being shared).
            #[test]
            fn a_loops_copies_always_agree_with_the_cache(
                role in 0..2u8,
                ops in proptest::collection::vec((0..2usize, op()), 1..120),
            ) {
                let consumers = [cuts_of(role), cuts_of(role)];
                let keys: Vec<SandboxKey> = (0..SANDBOXES).map(key).collect();
                let mut loops = [Recent::default(), Recent::default()];
                for (of, op) in ops {
                    let cuts = &consumers[of];
                    match op {
                        Op::Store(t, partition, by_sandbox, behind) => {
                            let cuts_read = by_sandbox
                                .into_iter()
                                .map(|(s, ranges)| (key(s), ranges))
                                .collect();
                            cuts.store((&topic(t), partition), cuts_read, behind);
                        }
                        Op::Note(t, partition, s, ranges) => {
                            cuts.note((&topic(t), partition), &keys[s as usize], ranges);
                        }
                        Op::Forget => cuts.forget().all(),
                        Op::Decide { on, topic: t, partition, sandbox, fresh, forking, offset } => {
                            let sandbox = if fresh { key(sandbox) } else { keys[sandbox as usize].clone() };
                            let at = (topic(t), partition, offset);
                            let at = (at.0.as_str(), at.1, at.2);
                            let copied = cuts.decided_recent(&mut loops[on], &sandbox, forking, at);
                            prop_assert_eq!(copied, cuts.decided(&sandbox, forking, at));
                        }
                    }
                }
            }
        }
    }
}
