//! Sandboxes extracted recently, so that the next message of the same sandbox costs no
//! allocation and no validation: the same key, actor and origin give a clone of the same
//! [`Sandbox`] (one reference-count increment), its encoded members already built.
//!
//! Direct-mapped with a fixed number of slots: a flood of distinct sandboxes only evicts, and
//! memory stays bounded. A hit compares every field, so a collision can only cost a miss. A
//! slot locked by another thread counts as a miss: lookups never wait.

use std::sync::{Mutex, TryLockError};

use crate::hash::WordHash;
use crate::sandbox::Sandbox;

const SLOTS: usize = 1024;

/// One slot per cache line, so that threads working on different sandboxes do not contend.
#[repr(align(64))]
struct Slot(Mutex<Option<Sandbox>>);

static CACHE: [Slot; SLOTS] = [const { Slot(Mutex::new(None)) }; SLOTS];

/// The sandbox with exactly `key`, `actor` and `origin` (and no expiry), from the cache or from
/// `build`, which validates. Only what `build` returns is cached, so a hit is valid too.
pub(super) fn sandbox<E>(
    key: &str,
    actor: Option<&str>,
    origin: Option<&str>,
    build: impl FnOnce() -> Result<Sandbox, E>,
) -> Result<Sandbox, E> {
    let slot = &CACHE[slot_of(key, actor, origin)].0;
    let mut guard = match slot.try_lock() {
        Ok(guard) => Some(guard),
        // Nothing panics while holding a slot; were it poisoned, its value is still whole.
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    if let Some(cached) = guard.as_deref().and_then(Option::as_ref)
        && cached.is_exactly(key, actor, origin)
    {
        return Ok(cached.clone());
    }
    let sandbox = build()?;
    if let Some(guard) = guard.as_deref_mut() {
        *guard = Some(sandbox.clone());
    }
    Ok(sandbox)
}

/// Which slot holds the sandbox with these three fields. `None` is hashed apart from
/// `Some("")`.
fn slot_of(key: &str, actor: Option<&str>, origin: Option<&str>) -> usize {
    let mut hash = WordHash::new(0);
    for field in [Some(key), actor, origin] {
        hash = match field {
            Some(field) => hash.bytes(field.as_bytes()),
            None => hash.word(u64::MAX),
        };
    }
    hash.slot(SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(key: &str, actor: Option<&str>) -> Result<Sandbox, ()> {
        let mut builder = Sandbox::builder(key).map_err(drop)?;
        if let Some(actor) = actor {
            builder = builder.actor(actor).map_err(drop)?;
        }
        Ok(builder.build())
    }

    #[test]
    fn hits_share_the_sandbox_and_never_mix_fields() {
        let first = sandbox("cache-a", Some("alice"), None, || {
            build("cache-a", Some("alice"))
        });
        let again = sandbox("cache-a", Some("alice"), None, || Err(()));
        // A hit (the only other thread that could hold the slot is another test's lookup).
        if let Ok(again) = again {
            assert_eq!(again, first.unwrap());
        }
        let other = sandbox("cache-a", Some("bob"), None, || {
            build("cache-a", Some("bob"))
        })
        .unwrap();
        assert_eq!(other.actor(), Some("bob"));
        let none = sandbox("cache-a", None, None, || build("cache-a", None)).unwrap();
        assert_eq!(none.actor(), None);
    }

    #[test]
    fn errors_are_not_cached() {
        assert!(sandbox("cache-b", None, None, || Err::<Sandbox, _>(())).is_err());
        assert!(sandbox("cache-b", None, None, || Err::<Sandbox, _>(())).is_err());
    }

    #[test]
    fn a_flood_of_keys_only_evicts() {
        for n in 0..(4 * SLOTS) {
            let key = format!("flood-{n}");
            let got = sandbox(&key, None, None, || build(&key, None)).unwrap();
            assert_eq!(got.key().as_str(), key);
        }
    }
}
