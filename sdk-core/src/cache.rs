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

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::{RwLock, TryLockError};

/// `N` slots of `T`, shared by threads. Made in a `static` with [`Slots::new`].
pub struct Slots<T, const N: usize>([Slot<RwLock<Held<T>>>; N]);

/// The same for one thread: made in a `thread_local!` with [`LocalSlots::new`], they take no
/// atomic operation (two per lookup in [`Slots`], as much as the rest of a lookup).
pub struct LocalSlots<T, const N: usize>([Slot<RefCell<Held<T>>>; N]);

/// One slot per cache line, so that threads working on different keys do not contend.
#[repr(align(64))]
struct Slot<L>(L);

struct Held<T> {
    value: Option<T>,
    /// The hash of the last key that missed here (for [`Keep::OnSecondMiss`]).
    candidate: u64,
}

impl<T> Held<T> {
    const EMPTY: Self = Self {
        value: None,
        candidate: 0,
    };
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

/// How a slot is read and written: never waiting (`None` when it is busy).
trait Lock {
    type Value;
    fn read(&self) -> Option<impl Deref<Target = Held<Self::Value>>>;
    fn write(&self) -> Option<impl DerefMut<Target = Held<Self::Value>>>;
}

impl<T> Lock for RwLock<Held<T>> {
    type Value = T;

    fn read(&self) -> Option<impl Deref<Target = Held<T>>> {
        match self.try_read() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn write(&self) -> Option<impl DerefMut<Target = Held<T>>> {
        match self.try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// Busy only while the same thread uses it further up its stack.
impl<T> Lock for RefCell<Held<T>> {
    type Value = T;

    fn read(&self) -> Option<impl Deref<Target = Held<T>>> {
        self.try_borrow().ok()
    }

    fn write(&self) -> Option<impl DerefMut<Target = Held<T>>> {
        self.try_borrow_mut().ok()
    }
}

impl<T, const N: usize> Slots<T, N> {
    /// Empty slots.
    #[allow(clippy::new_without_default)] // made in statics, where only a const fn will do
    pub const fn new() -> Self {
        Self([const { Slot(RwLock::new(Held::EMPTY)) }; N])
    }

    /// What `read` makes of the value in `hash`'s slot (`None` when it is not the caller's
    /// key); otherwise where to keep the caller's value.
    pub fn get<R>(&self, hash: u64, read: impl FnOnce(&T) -> Option<R>) -> Result<R, Miss> {
        get(&self.0, hash, read)
    }

    /// Keeps `value` where the key missed, as `keep` says; `value` is made only when it is kept.
    pub fn put(&self, miss: Miss, keep: Keep, value: impl FnOnce() -> T) {
        put(&self.0, miss, keep, value);
    }
}

impl<T, const N: usize> LocalSlots<T, N> {
    /// Empty slots.
    #[allow(clippy::new_without_default)] // made in thread locals, where only a const fn will do
    pub const fn new() -> Self {
        Self([const { Slot(RefCell::new(Held::EMPTY)) }; N])
    }

    /// As [`Slots::get`].
    pub fn get<R>(&self, hash: u64, read: impl FnOnce(&T) -> Option<R>) -> Result<R, Miss> {
        get(&self.0, hash, read)
    }

    /// As [`Slots::put`].
    pub fn put(&self, miss: Miss, keep: Keep, value: impl FnOnce() -> T) {
        put(&self.0, miss, keep, value);
    }
}

fn get<L: Lock, R>(
    slots: &[Slot<L>],
    hash: u64,
    read: impl FnOnce(&L::Value) -> Option<R>,
) -> Result<R, Miss> {
    // The high bits are the best mixed.
    let miss = Miss {
        slot: (hash >> 32) as usize % slots.len().max(1),
        hash,
    };
    slots
        .get(miss.slot)
        .and_then(|slot| slot.0.read())
        .and_then(|held| held.value.as_ref().and_then(read))
        .ok_or(miss)
}

fn put<L: Lock>(slots: &[Slot<L>], miss: Miss, keep: Keep, value: impl FnOnce() -> L::Value) {
    let Some(mut held) = slots.get(miss.slot).and_then(|slot| slot.0.write()) else {
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
        let held = slots.0[0].0.write().unwrap();
        assert!(slots.get(1, same(1)).is_err());
        slots.put(miss, Keep::Now, || unreachable!("the slot is busy"));
        drop(held);
        assert_eq!(slots.get(1, same(1)).ok().as_deref(), Some("one"));
    }

    /// Local slots behave as shared ones, and a slot the thread is reading further up its
    /// stack is read again but not written.
    #[test]
    fn local_slots_keep_find_and_never_write_a_slot_in_use() {
        let slots: LocalSlots<(u64, String), 4> = LocalSlots::new();
        let miss = slots.get(3 << 32, same(3)).unwrap_err();
        slots.put(miss, Keep::OnSecondMiss, || {
            unreachable!("kept on the first miss")
        });
        let miss = slots.get(3 << 32, same(3)).unwrap_err();
        slots.put(miss, Keep::OnSecondMiss, || (3, "three".to_owned()));
        let nested = slots.get(3 << 32, |(k, v)| {
            assert_eq!(slots.get(3 << 32, same(3)).ok().as_deref(), Some("three"));
            slots.put(miss, Keep::Now, || unreachable!("the slot is being read"));
            (*k == 3).then(|| v.clone())
        });
        assert_eq!(nested.ok().as_deref(), Some("three"));
        // 7 << 32 shares the slot: a miss, then it evicts.
        let miss = slots.get(7 << 32, same(7)).unwrap_err();
        slots.put(miss, Keep::Now, || (7, "seven".to_owned()));
        assert!(slots.get(3 << 32, same(3)).is_err(), "evicted");
    }

    #[test]
    fn a_poisoned_slot_still_serves_its_value() {
        let slots: std::sync::Arc<Slots<(u64, String), 1>> = std::sync::Arc::new(Slots::new());
        let miss = slots.get(1, same(1)).unwrap_err();
        slots.put(miss, Keep::Now, || (1, "one".to_owned()));
        let poisoner = std::sync::Arc::clone(&slots);
        let _ = std::thread::spawn(move || {
            let _held = poisoner.0[0].0.write();
            panic!("poison the slot");
        })
        .join();
        assert_eq!(slots.get(1, same(1)).ok().as_deref(), Some("one"));
    }
}
