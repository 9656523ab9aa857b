//! Where a forked sandbox's records of one partition pass from the baseline consumer to the
//! fork's, and back: the **cuts**, which a directory keeps beside its entries.
//!
//! The baseline consumer of a service is the only judge, one partition at a time, in offset
//! order. When it decides a record of sandbox `S` and its view of `S` has changed since the
//! last one (an incarnation of `S` now forks the service, or no longer does), it records the
//! change at that record's offset: a [`Range`] of the partition opens for the incarnation that
//! forks, and any other open one closes. The records of `S` inside an incarnation's range are
//! its fork's; all others of `S` are the baseline's, handled in `S`'s context. Changes are
//! only ever recorded past every offset recorded before (a record decided again after a
//! restart changes nothing), and the first to record wins, so two baseline processes that
//! race over a partition agree.
//!
//! A fork handles a record only once the baseline's committed offset on its partition is past
//! it, and then by the ranges: so neither consumer's timing, nor any clock or timestamp,
//! decides who handles a record.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::DirectoryError;
use crate::sandbox::SandboxKey;

/// One partition of a topic, as the baseline consumer `group` reads it: where cuts are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CutPlace {
    /// The baseline consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// What a baseline consumer saw deciding one record, for [`Directory::settle_cut`]: at `offset`
/// of `place`, incarnation `forking` of `sandbox` forks the service (`None`: none does).
///
/// [`Directory::settle_cut`]: super::Directory::settle_cut
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    /// The partition.
    pub place: &'a CutPlace,
    /// The record's sandbox.
    pub sandbox: &'a SandboxKey,
    /// The incarnation of the sandbox that forks the service, if any.
    pub forking: Option<i64>,
    /// The record's offset.
    pub offset: i64,
}

/// The ranges recorded in one partition, by sandbox (sandboxes without any are absent).
pub type PartitionCuts = HashMap<SandboxKey, Vec<Range>>;

/// The offsets of a partition whose records of a sandbox belong to one incarnation's fork:
/// `start` included, `end` excluded (`None`: still open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The incarnation (its creation in Unix microseconds; 0 when the directory does not know
    /// it).
    pub incarnation: i64,
    /// The first offset.
    pub start: i64,
    /// The first offset past it, once it has closed.
    pub end: Option<i64>,
}

/// The fork that handles the record at `offset`, by `ranges`: the incarnation whose range holds
/// it, or `None` (the baseline's).
pub fn owner(ranges: &[Range], offset: i64) -> Option<i64> {
    ranges
        .iter()
        .find(|r| r.start <= offset && r.end.is_none_or(|end| offset < end))
        .map(|r| r.incarnation)
}

/// The offset past every change recorded in `ranges`: changes are recorded only beyond it.
pub fn frontier(ranges: &[Range]) -> Option<i64> {
    ranges
        .iter()
        .map(|r| r.end.unwrap_or(r.start).max(r.start))
        .max()
}

/// Whether [`settled`] would change `ranges` (without building the result: the baseline asks
/// this for every record of a sandbox).
pub fn changes(ranges: &[Range], forking: Option<i64>, offset: i64) -> bool {
    if frontier(ranges).is_some_and(|f| offset <= f) {
        return false;
    }
    let open_other = ranges
        .iter()
        .any(|r| r.end.is_none() && Some(r.incarnation) != forking);
    let opens = forking.is_some_and(|incarnation| {
        !ranges
            .iter()
            .any(|r| r.incarnation == incarnation && r.end.is_none())
    });
    open_other || opens
}

/// `ranges` after the baseline, deciding the record at `offset`, saw incarnation `forking`
/// fork the service (`None`: none does): open ranges of any other incarnation close at
/// `offset`, and `forking` opens one there unless one is open. Nothing changes at or before
/// the [`frontier`].
pub fn settled(ranges: &[Range], forking: Option<i64>, offset: i64) -> Vec<Range> {
    let mut ranges = ranges.to_vec();
    if !changes(&ranges, forking, offset) {
        return ranges;
    }
    for range in &mut ranges {
        if range.end.is_none() && Some(range.incarnation) != forking {
            range.end = Some(offset);
        }
    }
    if let Some(incarnation) = forking
        && !ranges
            .iter()
            .any(|r| r.incarnation == incarnation && r.end.is_none())
    {
        ranges.push(Range {
            incarnation,
            start: offset,
            end: None,
        });
    }
    ranges
}

/// A future of a cut store.
pub type CutFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// Cuts kept in memory: shared by clones (a [`MemoryDirectory`](super::MemoryDirectory)'s).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryCuts {
    ranges: Arc<Mutex<HashMap<CutPlace, PartitionCuts>>>,
}

impl MemoryCuts {
    pub(crate) fn ranges(&self, place: &CutPlace) -> PartitionCuts {
        self.lock().get(place).cloned().unwrap_or_default()
    }

    pub(crate) fn settle(&self, seen: Sighting<'_>) -> Vec<Range> {
        let mut all = self.lock();
        let partition = all.entry(seen.place.clone()).or_default();
        let ranges = settled(
            partition.get(seen.sandbox).map_or(&[][..], Vec::as_slice),
            seen.forking,
            seen.offset,
        );
        if !ranges.is_empty() {
            partition.insert(seen.sandbox.clone(), ranges.clone());
        }
        ranges
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CutPlace, PartitionCuts>> {
        self.ranges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(incarnation: i64, start: i64, end: Option<i64>) -> Range {
        Range {
            incarnation,
            start,
            end,
        }
    }

    #[test]
    fn the_baseline_records_changes_in_offset_order_only() {
        // Nothing forks: nothing to record.
        assert_eq!(settled(&[], None, 5), []);
        // Incarnation 1 forks from offset 10; records before are the baseline's.
        let opened = settled(&[], Some(1), 10);
        assert_eq!(opened, [r(1, 10, None)]);
        assert_eq!(owner(&opened, 9), None);
        assert_eq!(owner(&opened, 10), Some(1));
        // Seen again, by the same or another baseline process: nothing changes.
        assert_eq!(settled(&opened, Some(1), 12), opened);
        assert_eq!(settled(&opened, None, 7), opened, "a record decided again");
        // Deleted: closes at 20; made again as incarnation 2: opens at 30.
        let closed = settled(&opened, None, 20);
        assert_eq!(closed, [r(1, 10, Some(20))]);
        let again = settled(&closed, Some(2), 30);
        assert_eq!(again, [r(1, 10, Some(20)), r(2, 30, None)]);
        assert_eq!(owner(&again, 25), None);
        assert_eq!(owner(&again, 19), Some(1));
        assert_eq!(owner(&again, 31), Some(2));
        // Deleted and made again between two records: one closes where the other opens.
        let swapped = settled(&opened, Some(2), 40);
        assert_eq!(swapped, [r(1, 10, Some(40)), r(2, 40, None)]);
        // A decision behind the frontier changes nothing.
        assert_eq!(settled(&swapped, None, 39), swapped);
        assert_eq!(frontier(&swapped), Some(40));
    }

    #[test]
    fn changes_says_whether_settled_would_change() {
        let cases = [
            vec![],
            vec![r(1, 10, None)],
            vec![r(1, 10, Some(20))],
            vec![r(1, 10, Some(20)), r(2, 30, None)],
        ];
        for ranges in &cases {
            for forking in [None, Some(1), Some(2), Some(3)] {
                for offset in [5, 10, 15, 20, 25, 30, 35] {
                    assert_eq!(
                        changes(ranges, forking, offset),
                        settled(ranges, forking, offset) != *ranges,
                        "{ranges:?} {forking:?} {offset}"
                    );
                }
            }
        }
    }
}
