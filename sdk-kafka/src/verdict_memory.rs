//! What a filter decided for recent `baggage` headers, so that the next message carrying the
//! same header (every message of one test run does) is decided by one hash and one comparison
//! instead of the codec and the directory.
//!
//! A decision is remembered only when it can be made again from what it is keyed by:
//!
//! * the filter that made it (its role, codec and directory; [`FilterId`]);
//! * the message's only `baggage` header, with no legacy carrier beside it
//!   (the codec's `memo_key`), byte for byte;
//! * the directory's [`generation`](prodbox_core::directory::Directory::generation), read before
//!   the lookup: any change of any entry (a kill switch, a new fork) forgets every decision;
//! * the clock: a decision is used only before the earliest expiry it depended on.
//!
//! Dead letters and skips for expiry are never remembered; nor is anything when the directory
//! has no generation. The memory is per thread, direct-mapped and bounded ([`SLOTS`] headers of
//! at most 512 bytes per thread), and a header is copied in only after it missed twice in a
//! row in its slot, so a stream of one-off headers costs no allocation.
//!
//! A consumer loop also keeps the decision it recalled last ([`Latest`]), on the same terms:
//! a run of messages with one header is then decided by comparing it, without hashing it or
//! reaching the thread's memory (about 250 instructions fewer for each such message).

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prodbox_core::plumbing::{Keep, LocalSlots, Miss};

use crate::verdict::Verdict;

/// Headers remembered per thread.
pub(crate) const SLOTS: usize = 64;

/// Identifies one filter configuration; clones of a filter share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilterId(u64);

impl FilterId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a decision depended on besides its header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Basis {
    pub(crate) filter: FilterId,
    pub(crate) generation: u64,
    /// The earliest expiry the decision depended on.
    pub(crate) valid_until: Option<SystemTime>,
}

#[derive(Clone)]
struct Entry {
    basis: Basis,
    header: Box<[u8]>,
    /// Never a dead letter.
    verdict: Verdict,
}

impl Entry {
    /// Whether this is the decision of `filter` at directory `generation` for `header`, still
    /// valid at the `clock`'s time.
    fn is_for(&self, filter: FilterId, generation: u64, header: &[u8], clock: &mut Clock) -> bool {
        let basis = &self.basis;
        basis.filter == filter
            && basis.generation == generation
            && basis.valid_until.is_none_or(|until| clock.now() < until)
            && *self.header == *header
    }
}

/// A consumer loop's copy of the decision it recalled last (see the [module docs](self)).
#[derive(Default)]
pub(crate) struct Latest {
    entry: Option<Entry>,
    /// The hash of the header recalled from the thread's memory last.
    hit: Option<u64>,
}

thread_local! {
    // Per thread: a consumer's thread never contends for it with another's.
    static MEMORY: LocalSlots<Entry, SLOTS> = const { LocalSlots::new() };
}

/// Header hashes; a fixed seed is enough, since colliding headers only evict each other.
const HASHER: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x0070_726f_6462_6f78);

fn hash(filter: FilterId, header: &[u8]) -> u64 {
    HASHER.hash_one((filter.0, header))
}

/// The time a decision is made at, read from the system clock once, and only when a decision
/// depends on it (a clock read costs tens of nanoseconds on some virtual machines: more than
/// the rest of a remembered decision).
#[derive(Debug, Default)]
pub(crate) struct Clock(pub(crate) Option<SystemTime>);

impl Clock {
    pub(crate) fn now(&mut self) -> SystemTime {
        *self.0.get_or_insert_with(SystemTime::now)
    }
}

/// What `read` makes of the decision remembered for `header` by `filter` at directory
/// `generation`, still valid at the `clock`'s time (read only for a decision that expires). The
/// decision is lent, not copied: a copy of its context and its drop cost two atomic operations.
/// Otherwise `read` back, to be given the decision made afresh, and where to remember that
/// (`None`: nowhere, the thread is being torn down).
///
/// `latest` is tried first; a decision recalled from the thread's memory for the same header
/// twice in a row is copied into it (alternating headers never are, so they cost no copies).
pub(crate) fn recall<R, F: FnOnce(Cow<'_, Verdict>) -> R>(
    filter: FilterId,
    generation: u64,
    header: &[u8],
    clock: &mut Clock,
    latest: &mut Latest,
    read: F,
) -> Result<R, (Option<Miss>, F)> {
    if let Some(entry) = &latest.entry
        && entry.is_for(filter, generation, header, clock)
    {
        return Ok(read(Cow::Borrowed(&entry.verdict)));
    }
    let hash = hash(filter, header);
    let mut read = Some(read);
    let found = MEMORY.try_with(|memory| {
        memory.get(hash, |entry| {
            entry
                .is_for(filter, generation, header, clock)
                .then(|| {
                    let read = read.take()?;
                    if latest.hit == Some(hash) {
                        latest.entry = Some(entry.clone());
                    }
                    latest.hit = Some(hash);
                    Some(read(Cow::Borrowed(&entry.verdict)))
                })
                .flatten()
        })
    });
    match (found, read) {
        (Ok(Ok(read)), _) => Ok(read),
        (Ok(Err(miss)), Some(read)) => Err((Some(miss), read)),
        (Err(_), Some(read)) => Err((None, read)),
        // `read` is taken only to make what is found.
        (Ok(Err(_)) | Err(_), None) => unreachable!("a miss that read the decision"),
    }
}

/// Remembers `verdict` for `header` (which missed at `miss`) on `basis`, if it missed there
/// before. Dead letters are never remembered.
pub(crate) fn remember(miss: Miss, basis: Basis, header: &[u8], verdict: &Verdict) {
    if matches!(verdict, Verdict::DeadLetter(_)) {
        return;
    }
    let _ = MEMORY.try_with(|memory| {
        memory.put(miss, Keep::OnSecondMiss, || Entry {
            basis,
            header: header.into(),
            verdict: verdict.clone(),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(filter: FilterId, generation: u64) -> Basis {
        Basis {
            filter,
            generation,
            valid_until: None,
        }
    }

    fn owned(verdict: Cow<'_, Verdict>) -> Verdict {
        verdict.into_owned()
    }

    /// The decision remembered for `header` by `filter` at `generation`, now.
    fn recalled(filter: FilterId, generation: u64, header: &[u8]) -> Option<Verdict> {
        let (clock, latest) = (&mut Clock::default(), &mut Latest::default());
        recall(filter, generation, header, clock, latest, owned).ok()
    }

    fn skip() -> Verdict {
        Verdict::Skip {
            reason: "forked",
            sandbox: None,
        }
    }

    /// Looks `header` up on `basis` at the `clock`'s time and, where it misses, remembers
    /// `verdict` there; returns whether it missed.
    fn remember_if_missed(
        basis: Basis,
        header: &[u8],
        clock: &mut Clock,
        verdict: &Verdict,
    ) -> bool {
        let latest = &mut Latest::default();
        match recall(basis.filter, basis.generation, header, clock, latest, owned) {
            Ok(_) => false,
            Err((miss, _)) => {
                remember(miss.expect("a slot"), basis, header, verdict);
                true
            }
        }
    }

    /// Misses, then remembers a skip where it missed; returns whether it missed.
    fn miss_and_remember(filter: FilterId, generation: u64, header: &[u8]) -> bool {
        remember_if_missed(
            basis(filter, generation),
            header,
            &mut Clock::default(),
            &skip(),
        )
    }

    #[test]
    fn a_header_is_remembered_on_its_second_miss_and_only_for_its_filter_and_generation() {
        let filter = FilterId::next();
        let header = b"prodbox.sandbox=pr-memo";
        assert!(miss_and_remember(filter, 1, header), "first miss");
        assert!(
            miss_and_remember(filter, 1, header),
            "second miss: now kept"
        );
        assert!(!miss_and_remember(filter, 1, header), "then recalled");
        let found = recalled(filter, 1, header);
        assert!(matches!(
            found,
            Some(Verdict::Skip {
                reason: "forked",
                ..
            })
        ));
        // Another generation or filter never sees it.
        assert!(recalled(filter, 2, header).is_none());
        assert!(recalled(FilterId::next(), 1, header).is_none());
    }

    /// Recalls `header` into `latest`; returns whether it was decided.
    fn recall_into(latest: &mut Latest, filter: FilterId, generation: u64, header: &[u8]) -> bool {
        recall(
            filter,
            generation,
            header,
            &mut Clock::default(),
            latest,
            owned,
        )
        .is_ok()
    }

    /// A loop's copy is used only before the expiry its decision depended on, and only for
    /// the exact header (one differing in its last byte, longer or shorter, is not served).
    #[test]
    fn a_loops_copy_expires_and_serves_only_its_exact_header() {
        let filter = FilterId::next();
        let header = b"prodbox.sandbox=pr-latest-expiring-copy";
        let now = SystemTime::now();
        let until = now + std::time::Duration::from_secs(60);
        let expiring = Basis {
            valid_until: Some(until),
            ..basis(filter, 1)
        };
        let at = |time| Clock(Some(time));
        for _ in 0..3 {
            remember_if_missed(expiring, header, &mut at(now), &skip());
        }
        let mut latest = Latest::default();
        for _ in 0..2 {
            assert!(recall(filter, 1, header, &mut at(now), &mut latest, owned).is_ok());
        }
        assert!(latest.entry.is_some(), "copied");
        assert!(recall(filter, 1, header, &mut at(now), &mut latest, owned).is_ok());
        // At and past the expiry: neither the copy nor the memory.
        let past = until + std::time::Duration::from_secs(1);
        for time in [until, past] {
            assert!(recall(filter, 1, header, &mut at(time), &mut latest, owned).is_err());
        }
        // Only the exact header.
        let mut other = header.to_vec();
        if let Some(last) = other.last_mut() {
            *last ^= 1;
        }
        let mut longer = header.to_vec();
        longer.push(b'x');
        let shorter = &header[..header.len() - 1];
        for header in [&other[..], &longer[..], shorter] {
            assert!(recall(filter, 1, header, &mut at(now), &mut latest, owned).is_err());
        }
    }

    #[test]
    fn a_loop_copies_a_header_recalled_twice_in_a_row_and_never_one_that_alternates() {
        let filter = FilterId::next();
        let (a, b) = (
            b"prodbox.sandbox=pr-latest-a",
            b"prodbox.sandbox=pr-latest-b",
        );
        for header in [a, b] {
            while miss_and_remember(filter, 1, header) {}
        }
        let mut latest = Latest::default();
        for header in [a, b, a, b, a] {
            assert!(recall_into(&mut latest, filter, 1, header));
        }
        assert!(
            latest.entry.is_none(),
            "alternating headers are never copied"
        );
        assert!(recall_into(&mut latest, filter, 1, a));
        assert_eq!(latest.entry.as_ref().map(|e| &*e.header), Some(&a[..]));

        // The copy serves its own header, filter and generation only: anything else goes to
        // the thread's memory, which has no decision of another filter or generation.
        assert!(recall_into(&mut latest, filter, 1, b));
        assert!(!recall_into(&mut latest, filter, 2, a));
        assert!(!recall_into(&mut latest, FilterId::next(), 1, a));
        assert_eq!(latest.entry.as_ref().map(|e| &*e.header), Some(&a[..]));
    }

    #[test]
    fn an_expired_decision_and_a_dead_letter_are_never_recalled() {
        let filter = FilterId::next();
        let header = b"prodbox.sandbox=pr-expiring";
        let past = SystemTime::now() - std::time::Duration::from_secs(1);
        let expired = Basis {
            valid_until: Some(past),
            ..basis(filter, 1)
        };
        for _ in 0..2 {
            remember_if_missed(expired, header, &mut Clock::default(), &skip());
        }
        assert!(recalled(filter, 1, header).is_none());

        let poison = b"prodbox.sandbox=NOT_A_KEY";
        let error = prodbox_core::codec::BaggageError::InvalidUtf8 {
            carrier: "baggage".to_owned(),
        };
        let dead_letter = Verdict::DeadLetter(error);
        for _ in 0..3 {
            remember_if_missed(
                basis(filter, 1),
                poison,
                &mut Clock::default(),
                &dead_letter,
            );
        }
        assert!(recalled(filter, 1, poison).is_none());
    }
}
