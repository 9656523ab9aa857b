//! The one bounded cache: a fixed number of slots, one value each, found by hash. prodbox's
//! hot paths remember recent work with it (sandboxes made, headers extracted, baggage mirrors,
//! the Kafka filter's verdicts), so memory stays bounded whatever the traffic.
//!
//! - **Bounded.** A flood of distinct keys only evicts; a collision only costs a miss, because
//!   a hit is confirmed by the caller comparing the whole key.
//! - **Never waits.** A slot another thread is writing counts as a miss, and a slot being read
//!   is not written: the work is then done afresh. Readers share a slot.
//! - **Never poisoned.** Nothing panics while holding a slot; were one poisoned, its value is
//!   still whole and is used.
//! - **Kept on the second miss**, where asked: a value is stored only when the same hash missed
//!   in its slot just before, so a stream of one-off keys (a request id among the members)
//!   costs no copy and no allocation.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// `N` slots of `T`. Made in a `static` (or a `thread_local!`) with [`Slots::new`].
pub struct Slots<T, const N: usize>([Slot<T>; N]);

/// One slot per cache line, so that threads working on different keys do not contend.
#[repr(align(64))]
struct Slot<T>(RwLock<Held<T>>);

struct Held<T> {
    value: Option<T>,
    /// The hash of the last key that missed here (for [`Keep::OnSecondMiss`]).
    candidate: u64,
}

/// Where a key that missed would be kept.
#[derive(Debug, Clone, Copy)]
pub struct Miss {
    slot: usize,
    hash: u64,
}

/// When a value that missed is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// At once.
    Now,
    /// Only when the same hash missed in its slot just before.
    OnSecondMiss,
}

impl<T, const N: usize> Slots<T, N> {
    /// Empty slots.
    #[allow(clippy::new_without_default)] // made in statics, where only a const fn will do
    pub const fn new() -> Self {
        Self(
            [const {
                Slot(RwLock::new(Held {
                    value: None,
                    candidate: 0,
                }))
            }; N],
        )
    }

    /// What `read` makes of the value in `hash`'s slot (`None` when it is not the caller's
    /// key); otherwise where to keep the caller's value.
    pub fn get<R>(&self, hash: u64, read: impl FnOnce(&T) -> Option<R>) -> Result<R, Miss> {
        // The high bits are the best mixed.
        let miss = Miss {
            slot: (hash >> 32) as usize % N.max(1),
            hash,
        };
        self.read(miss.slot)
            .and_then(|held| held.value.as_ref().and_then(read))
            .ok_or(miss)
    }

    /// Keeps `value` where the key missed, as `keep` says; `value` is made only when it is kept.
    pub fn put(&self, miss: Miss, keep: Keep, value: impl FnOnce() -> T) {
        let Some(mut held) = self.write(miss.slot) else {
            return;
        };
        if keep == Keep::OnSecondMiss && held.candidate != miss.hash {
            held.candidate = miss.hash;
            return;
        }
        let evicted = held.value.replace(value());
        // The evicted value is dropped after the slot is free again.
        drop(held);
        drop(evicted);
    }

    fn read(&self, slot: usize) -> Option<RwLockReadGuard<'_, Held<T>>> {
        match self.0.get(slot)?.0.try_read() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn write(&self, slot: usize) -> Option<RwLockWriteGuard<'_, Held<T>>> {
        match self.0.get(slot)?.0.try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(key: u64) -> impl FnOnce(&(u64, String)) -> Option<String> {
        move |(k, v)| (*k == key).then(|| v.clone())
    }

    #[test]
    fn a_value_kept_now_is_found_and_a_collision_only_misses() {
        let slots: Slots<(u64, String), 4> = Slots::new();
        let miss = slots.get(7 << 32, same(7)).unwrap_err();
        slots.put(miss, Keep::Now, || (7, "seven".to_owned()));
        assert_eq!(slots.get(7 << 32, same(7)).ok().as_deref(), Some("seven"));
        // 11 << 32 lands in the same slot (11 % 4 == 7 % 4): the caller's check makes it a miss.
        let miss = slots.get(11 << 32, same(11)).unwrap_err();
        slots.put(miss, Keep::Now, || (11, "eleven".to_owned()));
        assert!(slots.get(7 << 32, same(7)).is_err(), "evicted");
        assert_eq!(
            slots.get(11 << 32, same(11)).ok().as_deref(),
            Some("eleven")
        );
    }

    #[test]
    fn on_second_miss_a_key_seen_once_is_never_made() {
        let slots: Slots<(u64, String), 4> = Slots::new();
        let miss = slots.get(5 << 32, same(5)).unwrap_err();
        slots.put(miss, Keep::OnSecondMiss, || {
            unreachable!("kept on the first miss")
        });
        assert!(slots.get(5 << 32, same(5)).is_err());
        // Another key in between resets the candidate.
        let other = slots.get(9 << 32, same(9)).unwrap_err();
        slots.put(other, Keep::OnSecondMiss, || {
            unreachable!("kept on the first miss")
        });
        let miss = slots.get(5 << 32, same(5)).unwrap_err();
        slots.put(miss, Keep::OnSecondMiss, || {
            unreachable!("its last miss was not here")
        });
        let miss = slots.get(5 << 32, same(5)).unwrap_err();
        slots.put(miss, Keep::OnSecondMiss, || (5, "five".to_owned()));
        assert_eq!(slots.get(5 << 32, same(5)).ok().as_deref(), Some("five"));
    }

    #[test]
    fn a_slot_being_written_is_a_miss_and_is_not_waited_for() {
        let slots: Slots<(u64, String), 1> = Slots::new();
        let miss = slots.get(1, same(1)).unwrap_err();
        slots.put(miss, Keep::Now, || (1, "one".to_owned()));
        let held = slots.write(0).unwrap();
        assert!(slots.get(1, same(1)).is_err());
        slots.put(miss, Keep::Now, || unreachable!("the slot is busy"));
        drop(held);
        assert_eq!(slots.get(1, same(1)).ok().as_deref(), Some("one"));
    }

    #[test]
    fn a_poisoned_slot_still_serves_its_value() {
        let slots: std::sync::Arc<Slots<(u64, String), 1>> = std::sync::Arc::new(Slots::new());
        let miss = slots.get(1, same(1)).unwrap_err();
        slots.put(miss, Keep::Now, || (1, "one".to_owned()));
        let poisoner = std::sync::Arc::clone(&slots);
        let _ = std::thread::spawn(move || {
            let _held = poisoner.write(0);
            panic!("poison the slot");
        })
        .join();
        assert_eq!(slots.get(1, same(1)).ok().as_deref(), Some("one"));
    }
}
