//! What a filter decided for recent `baggage` headers, so that the next message carrying the
//! same header (every message of one test run does) is decided by one hash and one comparison
//! instead of the codec and the directory.
//!
//! A decision is remembered only when it can be made again from what it is keyed by:
//!
//! * the filter that made it (its role, codec and directory; [`FilterId`]);
//! * the message's only `baggage` header, with no legacy carrier beside it
//!   ([`Codec::memo_key`](prodbox_core::codec::Codec::memo_key)), byte for byte;
//! * the directory's [`generation`](prodbox_core::directory::Directory::generation), read before
//!   the lookup: any change of any entry (a kill switch, a new fork) forgets every decision;
//! * the clock: a decision is used only before the earliest expiry it depended on.
//!
//! Dead letters and skips for expiry are never remembered; nor is anything when the directory
//! has no generation. The memory is per thread, direct-mapped and bounded ([`SLOTS`] headers of
//! at most 512 bytes per thread), and a header is copied in only after it missed twice in a
//! row in its slot, so a stream of one-off headers costs no allocation.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prodbox_core::{SandboxContext, SandboxKey};

use crate::filter::Verdict;

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

/// A verdict that can be remembered (never a dead letter).
#[derive(Debug, Clone)]
pub(crate) enum Remembered {
    Process(Option<SandboxContext>),
    Cut {
        context: SandboxContext,
        forking: Option<i64>,
    },
    Skip {
        reason: &'static str,
        sandbox: Option<SandboxKey>,
    },
}

impl Remembered {
    pub(crate) fn of(verdict: &Verdict) -> Option<Self> {
        match verdict {
            Verdict::Process(context) => Some(Self::Process(context.clone())),
            Verdict::Cut { context, forking } => Some(Self::Cut {
                context: context.clone(),
                forking: *forking,
            }),
            Verdict::Skip { reason, sandbox } => Some(Self::Skip {
                reason,
                sandbox: sandbox.clone(),
            }),
            Verdict::DeadLetter(_) => None,
        }
    }

    fn verdict(&self) -> Verdict {
        match self {
            Self::Process(context) => Verdict::Process(context.clone()),
            Self::Cut { context, forking } => Verdict::Cut {
                context: context.clone(),
                forking: *forking,
            },
            Self::Skip { reason, sandbox } => Verdict::Skip {
                reason,
                sandbox: sandbox.clone(),
            },
        }
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

struct Entry {
    basis: Basis,
    header: Box<[u8]>,
    remembered: Remembered,
}

#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
    /// The hash of the last header that missed here.
    candidate: u64,
}

struct Memory {
    hasher: foldhash::fast::RandomState,
    slots: Vec<Slot>,
}

thread_local! {
    static MEMORY: RefCell<Memory> = RefCell::new(Memory {
        hasher: foldhash::fast::RandomState::default(),
        slots: std::iter::repeat_with(Slot::default).take(SLOTS).collect(),
    });
}

/// Where a header that missed would be remembered.
pub(crate) struct Miss {
    slot: usize,
    hash: u64,
}

fn locate(memory: &Memory, filter: FilterId, header: &[u8]) -> Miss {
    let hash = memory.hasher.hash_one((filter.0, header));
    Miss {
        slot: (hash >> 32) as usize % SLOTS,
        hash,
    }
}

/// The decision remembered for `header` by `filter` at directory `generation`, still valid at
/// `now`; otherwise where to remember it.
pub(crate) fn recall(
    filter: FilterId,
    generation: u64,
    header: &[u8],
    now: SystemTime,
) -> Result<Verdict, Miss> {
    let nowhere = || Miss {
        slot: usize::MAX,
        hash: 0,
    };
    // A thread being torn down has no memory, and nothing here calls back into this module
    // while it is borrowed; either way the decision is simply made afresh.
    MEMORY
        .try_with(|memory| {
            let Ok(memory) = memory.try_borrow() else {
                return Err(nowhere());
            };
            let miss = locate(&memory, filter, header);
            match memory
                .slots
                .get(miss.slot)
                .and_then(|slot| slot.entry.as_ref())
            {
                Some(entry)
                    if entry.basis.filter == filter
                        && entry.basis.generation == generation
                        && entry.basis.valid_until.is_none_or(|until| now < until)
                        && *entry.header == *header =>
                {
                    Ok(entry.remembered.verdict())
                }
                _ => Err(miss),
            }
        })
        .unwrap_or_else(|_| Err(nowhere()))
}

/// Remembers `remembered` for `header` (which missed at `miss`) on `basis`, if it missed there
/// before.
pub(crate) fn remember(miss: Miss, basis: Basis, header: &[u8], remembered: Remembered) {
    let _ = MEMORY.try_with(|memory| {
        let Ok(mut memory) = memory.try_borrow_mut() else {
            return;
        };
        let Some(slot) = memory.slots.get_mut(miss.slot) else {
            return;
        };
        if slot.candidate != miss.hash {
            slot.candidate = miss.hash;
            return;
        }
        slot.entry = Some(Entry {
            basis,
            header: header.into(),
            remembered,
        });
    });
}
