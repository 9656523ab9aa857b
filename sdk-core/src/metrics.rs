//! OpenTelemetry metrics for everything prodbox decides, through the `opentelemetry` API: a
//! no-op unless the application installs an SDK meter provider (install it before the first
//! request; instruments are created once, on first use).
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | `prodbox.sandbox.decisions` | counter, `{decision}` | `prodbox.protocol`, `prodbox.direction`, `prodbox.decision`, `prodbox.reason`, `prodbox.sandbox` |
//! | `prodbox.sandbox.observed` | counter, `{decision}` | the same: decisions an observe-only `Ingress` would have made |
//! | `prodbox.kafka.messages` | counter, `{message}` | `messaging.system` (`kafka`), `messaging.destination.name`, `prodbox.kafka.role` (`baseline`, `sandbox`), `prodbox.kafka.outcome` (`processed`, `skipped`, `dead_lettered`) |
//! | `prodbox.db.schemas` | counter, `{schema}` | `db.system.name` (`postgresql`), `prodbox.db.operation` (`provisioned`, `dropped`) |
//! | `prodbox.db.provisioning.duration` | histogram, `s` | `db.system.name` |
//! | `prodbox.redis.cleanup` | counter, `{item}` | `db.system.name` (`redis`), `prodbox.redis.item` (`key`, `user`) |
//! | `prodbox.shadow.copies` | counter, `{copy}` | `prodbox.shadow.outcome` (`sent`, `differing`, `dropped`), `prodbox.shadow.reason` (drops only: `queue_full`, `fork_slow`, `body_too_large`, `fork_error`, ...), `prodbox.sandbox` |
//!
//! `prodbox.sandbox.decisions` counts every audit event (the `audit` module calls it): sandbox contexts
//! accepted, stripped and rejected per protocol and reason, throttled and circuit-broken calls
//! (`throttled`), routing (`routed`, `fallback`), Kafka skips and dead letters. The standard
//! attribute names (`messaging.*`, `db.system.name`) follow OpenTelemetry's semantic
//! conventions; the rest are prodbox's own, under `prodbox.`.
//!
//! **Bounded cardinality.** `prodbox.sandbox` carries the sandbox key for the first
//! [`MAX_SANDBOX_LABELS`] distinct keys a process sees, and [`OTHER_SANDBOXES`] for any key
//! after that, so a flood of distinct keys cannot grow the SDK's memory without limit. Events
//! without a sandbox get `-`. Likewise `messaging.destination.name` names the first
//! [`MAX_TOPIC_LABELS`] topics and counts later ones as `_other`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::LocalKey;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::hash::WordHash;

/// The instrumentation scope name.
pub const SCOPE: &str = "prodbox";

/// How many distinct sandbox keys become attribute values; later ones share [`OTHER_SANDBOXES`].
pub const MAX_SANDBOX_LABELS: usize = 100;

/// The `prodbox.sandbox` value of keys past [`MAX_SANDBOX_LABELS`].
pub const OTHER_SANDBOXES: &str = "_other";

struct Instruments {
    decisions: Counter<u64>,
    observed: Counter<u64>,
    kafka_messages: Counter<u64>,
    schemas: Counter<u64>,
    provisioning: Histogram<f64>,
    shadow_copies: Counter<u64>,
    redis_cleanup: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter(SCOPE);
        Instruments {
            decisions: meter
                .u64_counter("prodbox.sandbox.decisions")
                .with_unit("{decision}")
                .with_description(
                    "Decisions prodbox made about sandbox contexts (one per audit event)",
                )
                .build(),
            observed: meter
                .u64_counter("prodbox.sandbox.observed")
                .with_unit("{decision}")
                .with_description(
                    "Decisions prodbox would have made in observe-only mode, where it changes nothing",
                )
                .build(),
            kafka_messages: meter
                .u64_counter("prodbox.kafka.messages")
                .with_unit("{message}")
                .with_description(
                    "Kafka messages a prodbox consumer processed, skipped or dead-lettered",
                )
                .build(),
            schemas: meter
                .u64_counter("prodbox.db.schemas")
                .with_unit("{schema}")
                .with_description("Sandbox schemas provisioned and dropped")
                .build(),
            provisioning: meter
                .f64_histogram("prodbox.db.provisioning.duration")
                .with_unit("s")
                .with_description(
                    "Time to provision a sandbox schema (role, schema, migrations, seed)",
                )
                .build(),
            shadow_copies: meter
                .u64_counter("prodbox.shadow.copies")
                .with_unit("{copy}")
                .with_description(
                    "Sampled copies of baseline requests sent to a shadow fork, or dropped",
                )
                .build(),
            redis_cleanup: meter
                .u64_counter("prodbox.redis.cleanup")
                .with_unit("{item}")
                .with_description("Sandbox keys and ACL users deleted from Redis")
                .build(),
        }
    })
}

/// The attribute values seen so far: an insert-only open-addressing table of strings, read
/// without a lock (a label already seen costs one hash and one comparison), written under a
/// mutex. Values are leaked into `&'static str` so that attributes cost no allocation and no
/// reference count: at most `bound` of them per table, the same memory the labels would hold
/// for the life of the process anyway.
struct Interner<const SLOTS: usize> {
    slots: [OnceLock<&'static str>; SLOTS],
    /// How many slots are filled; only changed with the lock held.
    filled: Mutex<usize>,
    /// Set once `bound` values are in: a miss is then final, with no lock taken.
    full: AtomicBool,
}

impl<const SLOTS: usize> Interner<SLOTS> {
    const fn new() -> Self {
        Self {
            slots: [const { OnceLock::new() }; SLOTS],
            filled: Mutex::new(0),
            full: AtomicBool::new(false),
        }
    }

    /// Where `value` is, or the empty slot that ends its probe sequence (`Err`); `None` when
    /// the table has no empty slot on the way (never, as `bound < SLOTS`).
    fn find(&self, value: &str) -> Option<Result<&'static str, usize>> {
        let mut at = slot_of(value) % SLOTS;
        for _ in 0..SLOTS {
            match self.slots[at].get() {
                Some(seen) if *seen == value => return Some(Ok(seen)),
                Some(_) => at = (at + 1) % SLOTS,
                None => return Some(Err(at)),
            }
        }
        None
    }

    /// `value` as a label while fewer than `bound` distinct values have been seen, else `None`.
    fn intern(&self, value: &str, bound: usize) -> Option<&'static str> {
        match self.find(value) {
            Some(Ok(seen)) => return Some(seen),
            _ if self.full.load(Ordering::Acquire) => return None,
            _ => {}
        }
        let mut filled = self
            .filled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another thread may have inserted it (or filled the table) meanwhile.
        let at = match self.find(value)? {
            Ok(seen) => return Some(seen),
            Err(at) => at,
        };
        if *filled >= bound.min(SLOTS - 1) {
            self.full.store(true, Ordering::Release);
            return None;
        }
        let label: &'static str = Box::leak(Box::from(value));
        // Slots are only written with the lock held: this one is still empty.
        let label = *self.slots[at].get_or_init(|| label);
        *filled += 1;
        Some(label)
    }
}

/// An FxHash-style hash, eight bytes at a time, seeded per process so that colliding keys
/// cannot be prepared offline (and a collision only costs a longer probe, bounded by the
/// table's few entries).
fn slot_of(value: &str) -> usize {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x70_72_6f_64_u64) | 1
    });
    // The high bits are the best mixed.
    (WordHash::new(seed).bytes(value.as_bytes()).finish() >> 32) as usize
}

/// Reasons are short names from a fixed set; the bound only guards against a caller passing
/// free text.
const MAX_REASONS: usize = 256;

static SANDBOXES: Interner<256> = Interner::new();
static REASONS: Interner<512> = Interner::new();
static TOPICS: Interner<256> = Interner::new();

/// Distinct Kafka topics named in metrics per process; later ones count as `_other`.
pub const MAX_TOPIC_LABELS: usize = 128;

thread_local! {
    /// The last label of its own each table gave on this thread: events come in runs of one
    /// sandbox and one reason, and a value equal to it needs no hash. Labels never change once
    /// given, so a label cached here stays right.
    static LAST_SANDBOX: Cell<&'static str> = const { Cell::new("") };
    static LAST_REASON: Cell<&'static str> = const { Cell::new("") };
    static LAST_TOPIC: Cell<&'static str> = const { Cell::new("") };
}

/// `value`'s label from `table`, through the thread's `last` label; `other` past `bound`.
fn label<const SLOTS: usize>(
    last: &'static LocalKey<Cell<&'static str>>,
    table: &Interner<SLOTS>,
    value: &str,
    bound: usize,
    other: &'static str,
) -> &'static str {
    let cached = last.get();
    if !cached.is_empty() && cached == value {
        return cached;
    }
    match table.intern(value, bound) {
        Some(label) => {
            last.set(label);
            label
        }
        None => other,
    }
}

/// The `prodbox.sandbox` value of `key`.
fn sandbox_value(key: Option<&str>) -> &'static str {
    match key {
        Some(key) => label(
            &LAST_SANDBOX,
            &SANDBOXES,
            key,
            MAX_SANDBOX_LABELS,
            OTHER_SANDBOXES,
        ),
        None => "-",
    }
}

/// The `prodbox.reason` value of `reason`.
fn reason_value(reason: &str) -> &'static str {
    label(&LAST_REASON, &REASONS, reason, MAX_REASONS, "_other")
}

/// The `messaging.destination.name` value of `topic`: itself for the first
/// [`MAX_TOPIC_LABELS`] topics, then `_other` (a pattern subscription may reach many).
fn topic_value(topic: &str) -> &'static str {
    label(&LAST_TOPIC, &TOPICS, topic, MAX_TOPIC_LABELS, "_other")
}

pub(crate) fn decisions(labels: [&'static str; 3], reason: &str, sandbox: Option<&str>, n: u64) {
    add(&instruments().decisions, labels, reason, sandbox, n);
}

/// Counts a decision an observe-only ingress would have made (`prodbox.sandbox.observed`).
pub(crate) fn observed(labels: [&'static str; 3], reason: &str, sandbox: Option<&str>) {
    add(&instruments().observed, labels, reason, sandbox, 1);
}

fn add(
    counter: &Counter<u64>,
    [protocol, direction, decision]: [&'static str; 3],
    reason: &str,
    sandbox: Option<&str>,
    n: u64,
) {
    let sandbox = sandbox_value(sandbox);
    let reason = reason_value(reason);
    // Every name and value is a `&'static str`: dropping the attributes would free nothing, so
    // their drop glue (a third of the cost of counting, with no meter provider) is skipped.
    let attributes = std::mem::ManuallyDrop::new([
        KeyValue::new("prodbox.protocol", protocol),
        KeyValue::new("prodbox.direction", direction),
        KeyValue::new("prodbox.decision", decision),
        KeyValue::new("prodbox.reason", reason),
        KeyValue::new("prodbox.sandbox", sandbox),
    ]);
    counter.add(n, &*attributes);
}

/// What prodbox's own crates record (Kafka messages, schemas, shadow copies), reached through
/// `prodbox_core::plumbing::metrics`; services read the instruments, never call these.
pub(crate) mod record {
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry::KeyValue;

    use super::{instruments, reason_value, sandbox_value, topic_value};

    /// The attribute value for `key`: itself while fewer than [`MAX_SANDBOX_LABELS`](super::MAX_SANDBOX_LABELS) distinct keys
    /// have been seen, else [`OTHER_SANDBOXES`](super::OTHER_SANDBOXES).
    pub fn sandbox_label(key: Option<&str>) -> Arc<str> {
        Arc::from(sandbox_value(key))
    }

    /// What a Kafka consumer did with one message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum KafkaOutcome {
        /// The handler succeeded.
        Processed,
        /// Left to another consumer.
        Skipped,
        /// Sent to the dead-letter topic.
        DeadLettered,
    }

    impl KafkaOutcome {
        fn as_str(self) -> &'static str {
            match self {
                Self::Processed => "processed",
                Self::Skipped => "skipped",
                Self::DeadLettered => "dead_lettered",
            }
        }
    }

    /// Counts one Kafka message of `topic` handled by a consumer in `role` (`baseline` or `sandbox`).
    pub fn kafka_message(topic: &str, role: &'static str, outcome: KafkaOutcome) {
        kafka_messages(topic, role, outcome, 1);
    }

    /// Counts `n` Kafka messages at once (a consumer that tallies its own counts).
    pub fn kafka_messages(topic: &str, role: &'static str, outcome: KafkaOutcome, n: u64) {
        // All `&'static str`, as in `decision`: counted per message, so no allocation and no drop.
        let attributes = std::mem::ManuallyDrop::new([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", topic_value(topic)),
            KeyValue::new("prodbox.kafka.role", role),
            KeyValue::new("prodbox.kafka.outcome", outcome.as_str()),
        ]);
        instruments().kafka_messages.add(n, &*attributes);
    }

    /// Counts a sandbox schema provisioned, with how long it took.
    pub fn schema_provisioned(took: Duration) {
        let system = [KeyValue::new("db.system.name", "postgresql")];
        instruments()
            .provisioning
            .record(took.as_secs_f64(), &system);
        instruments().schemas.add(
            1,
            &[
                system[0].clone(),
                KeyValue::new("prodbox.db.operation", "provisioned"),
            ],
        );
    }

    /// Counts a sandbox schema dropped.
    pub fn schema_dropped() {
        instruments().schemas.add(
            1,
            &[
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("prodbox.db.operation", "dropped"),
            ],
        );
    }

    /// Counts `n` sandbox keys (`item` `key`) or ACL users (`user`) deleted from Redis.
    pub fn redis_deleted(item: &'static str, n: u64) {
        instruments().redis_cleanup.add(
            n,
            &[
                KeyValue::new("db.system.name", "redis"),
                KeyValue::new("prodbox.redis.item", item),
            ],
        );
    }

    /// What became of one sampled copy of a baseline request (shadowing).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum ShadowOutcome {
        /// The fork answered (and the compare hook, if any, found no difference).
        Sent,
        /// The fork answered and the compare hook reported a difference.
        Differing,
        /// The copy was not sent, or not answered in time; the reason says why.
        Dropped,
    }

    impl ShadowOutcome {
        fn as_str(self) -> &'static str {
            match self {
                Self::Sent => "sent",
                Self::Differing => "differing",
                Self::Dropped => "dropped",
            }
        }
    }

    /// Counts one shadow copy for the shadow sandbox `sandbox` (if one was chosen), with the drop
    /// `reason` for [`ShadowOutcome::Dropped`] (a short name; bounded like audit reasons).
    pub fn shadow_copy(sandbox: Option<&str>, outcome: ShadowOutcome, reason: Option<&str>) {
        let sandbox = sandbox_value(sandbox);
        let reason = reason.map(reason_value);
        let outcome = KeyValue::new("prodbox.shadow.outcome", outcome.as_str());
        let sandbox = KeyValue::new("prodbox.sandbox", sandbox);
        match reason {
            Some(reason) => instruments().shadow_copies.add(
                1,
                &[
                    outcome,
                    KeyValue::new("prodbox.shadow.reason", reason),
                    sandbox,
                ],
            ),
            None => instruments().shadow_copies.add(1, &[outcome, sandbox]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_values_up_to_the_bound_are_labels_and_later_ones_are_not() {
        static TABLE: Interner<16> = Interner::new();
        let first: Vec<_> = (0..5).map(|i| TABLE.intern(&format!("v{i}"), 5)).collect();
        for (i, label) in first.iter().enumerate() {
            let value = format!("v{i}");
            assert_eq!(*label, Some(value.as_str()));
            // The same value gives the same string, without allocating again.
            assert!(std::ptr::eq(
                TABLE.intern(&value, 5).unwrap_or_default(),
                label.unwrap_or_default()
            ));
        }
        assert_eq!(TABLE.intern("v5", 5), None);
        assert_eq!(TABLE.intern("v6", 5), None);
        assert_eq!(TABLE.intern("v3", 5), Some("v3"));
    }

    #[test]
    fn a_table_never_fills_its_last_slot() {
        static TABLE: Interner<4> = Interner::new();
        let labels: Vec<_> = (0..10).map(|i| TABLE.intern(&i.to_string(), 100)).collect();
        assert_eq!(labels.iter().flatten().count(), 3);
        assert_eq!(TABLE.intern("never", 100), None);
    }

    #[test]
    fn threads_agree_on_labels() {
        static TABLE: Interner<256> = Interner::new();
        let seen: Vec<Vec<Option<&'static str>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..150)
                            .map(|i| TABLE.intern(&format!("k{i}"), 100))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_default())
                .collect()
        });
        let labelled = |labels: &Vec<Option<&str>>| labels.iter().flatten().count();
        for labels in &seen {
            assert_eq!(labels.len(), 150);
            assert_eq!(labelled(labels), 100);
            // Exactly the labels the table holds, whichever thread saw a value first.
            for (i, label) in labels.iter().enumerate() {
                assert_eq!(*label, TABLE.intern(&format!("k{i}"), 100));
            }
        }
    }
}
