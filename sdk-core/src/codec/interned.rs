//! Sandboxes made recently, so that the next message of the same sandbox costs no allocation
//! and no validation: the same key, actor, origin, expiry and creation give a clone of the same
//! [`Sandbox`] (one reference-count increment), its encoded members already built. The codec
//! takes its sandboxes from here, and so does completing one from its directory entry.
//!
//! Bounded, and never waited for ([`Slots`]); a hit compares every field, so a collision can
//! only cost a miss.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::{Keep, Slots};
use crate::hash::WordHash;
use crate::sandbox::Sandbox;

/// Every field of a sandbox, as text and times.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub(crate) key: &'a str,
    pub(crate) actor: Option<&'a str>,
    pub(crate) origin: Option<&'a str>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) created_at: Option<SystemTime>,
}

const SLOTS: usize = 1024;

static CACHE: Slots<Sandbox, SLOTS> = Slots::new();

/// The sandbox with exactly these `fields`, from the cache or from `build`, which validates.
/// Only what `build` returns is cached, so a hit is valid too.
pub(crate) fn sandbox<E>(
    fields: Fields<'_>,
    build: impl FnOnce() -> Result<Sandbox, E>,
) -> Result<Sandbox, E> {
    let found = CACHE.get(hash_of(fields), |cached| {
        is_exactly(cached, fields).then(|| cached.clone())
    });
    let miss = match found {
        Ok(cached) => return Ok(cached),
        Err(miss) => miss,
    };
    let sandbox = build()?;
    CACHE.put(miss, Keep::Now, || sandbox.clone());
    Ok(sandbox)
}

/// Whether `sandbox` has exactly these fields.
fn is_exactly(sandbox: &Sandbox, fields: Fields<'_>) -> bool {
    sandbox.key().as_str() == fields.key
        && sandbox.actor() == fields.actor
        && sandbox.origin() == fields.origin
        && sandbox.expires_at() == fields.expires_at
        && sandbox.created_at() == fields.created_at
}

/// The hash of these fields. `None` is hashed apart from `Some("")`.
fn hash_of(fields: Fields<'_>) -> u64 {
    let mut hash = WordHash::new(0);
    for field in [Some(fields.key), fields.actor, fields.origin] {
        hash = match field {
            Some(field) => hash.bytes(field.as_bytes()),
            None => hash.word(u64::MAX),
        };
    }
    for time in [fields.expires_at, fields.created_at] {
        let word = time
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs() ^ u64::from(d.subsec_nanos()));
        hash = hash.word(word);
    }
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(key: &'a str, actor: Option<&'a str>) -> Fields<'a> {
        Fields {
            key,
            actor,
            origin: None,
            expires_at: None,
            created_at: None,
        }
    }

    fn build(key: &str, actor: Option<&str>) -> Result<Sandbox, ()> {
        let mut builder = Sandbox::builder(key).map_err(drop)?;
        if let Some(actor) = actor {
            builder = builder.actor(actor).map_err(drop)?;
        }
        Ok(builder.build())
    }

    #[test]
    fn hits_share_the_sandbox_and_never_mix_fields() {
        let first = sandbox(fields("cache-a", Some("alice")), || {
            build("cache-a", Some("alice"))
        });
        let again = sandbox(fields("cache-a", Some("alice")), || Err(()));
        // A hit (the only other thread that could hold the slot is another test's lookup).
        if let Ok(again) = again {
            assert_eq!(again, first.unwrap());
        }
        let other = sandbox(fields("cache-a", Some("bob")), || {
            build("cache-a", Some("bob"))
        })
        .unwrap();
        assert_eq!(other.actor(), Some("bob"));
        let none = sandbox(fields("cache-a", None), || build("cache-a", None)).unwrap();
        assert_eq!(none.actor(), None);
        // Another creation is another sandbox.
        let created = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7);
        let dated = sandbox(
            Fields {
                created_at: Some(created),
                ..fields("cache-a", None)
            },
            || {
                Ok::<_, ()>(
                    Sandbox::builder("cache-a")
                        .unwrap()
                        .created_at(created)
                        .build(),
                )
            },
        )
        .unwrap();
        assert_eq!(dated.created_at(), Some(created));
        let undated = sandbox(fields("cache-a", None), || build("cache-a", None)).unwrap();
        assert_eq!(undated.created_at(), None);
    }

    #[test]
    fn errors_are_not_cached() {
        assert!(sandbox(fields("cache-b", None), || Err::<Sandbox, _>(())).is_err());
        assert!(sandbox(fields("cache-b", None), || Err::<Sandbox, _>(())).is_err());
    }

    #[test]
    fn a_flood_of_keys_only_evicts() {
        for n in 0..(4 * SLOTS) {
            let key = format!("flood-{n}");
            let got = sandbox(fields(&key, None), || build(&key, None)).unwrap();
            assert_eq!(got.key().as_str(), key);
        }
    }
}
