//! OpenTelemetry metrics for everything prodbox decides, through the `opentelemetry` API: a
//! no-op unless the application installs an SDK meter provider (install it before the first
//! request; instruments are created once, on first use).
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | `prodbox.sandbox.decisions` | counter, `{decision}` | `prodbox.protocol`, `prodbox.direction`, `prodbox.decision`, `prodbox.reason`, `prodbox.sandbox` |
//! | `prodbox.kafka.messages` | counter, `{message}` | `messaging.system` (`kafka`), `messaging.destination.name`, `prodbox.kafka.role` (`baseline`, `sandbox`), `prodbox.kafka.outcome` (`processed`, `skipped`, `dead_lettered`) |
//! | `prodbox.db.schemas` | counter, `{schema}` | `db.system.name` (`postgresql`), `prodbox.db.operation` (`provisioned`, `dropped`) |
//! | `prodbox.db.provisioning.duration` | histogram, `s` | `db.system.name` |
//! | `prodbox.shadow.copies` | counter, `{copy}` | `prodbox.shadow.outcome` (`sent`, `differing`, `dropped`), `prodbox.shadow.reason` (drops only: `queue_full`, `fork_slow`, `body_too_large`, `fork_error`, ...), `prodbox.sandbox` |
//!
//! `prodbox.sandbox.decisions` counts every audit event ([`crate::audit`]): sandbox contexts
//! accepted, stripped and rejected per protocol and reason, throttled and circuit-broken calls
//! (`throttled`), routing (`routed`, `fallback`), Kafka skips and dead letters. The standard
//! attribute names (`messaging.*`, `db.system.name`) follow OpenTelemetry's semantic
//! conventions; the rest are prodbox's own, under `prodbox.`.
//!
//! **Bounded cardinality.** `prodbox.sandbox` carries the sandbox key for the first
//! [`MAX_SANDBOX_LABELS`] distinct keys a process sees, and [`OTHER_SANDBOXES`] for any key
//! after that, so a flood of distinct keys cannot grow the SDK's memory without limit. Events
//! without a sandbox get `-`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::{KeyValue, StringValue};

use crate::audit::AuditEvent;

/// The instrumentation scope name.
pub const SCOPE: &str = "prodbox";

/// How many distinct sandbox keys become attribute values; later ones share [`OTHER_SANDBOXES`].
pub const MAX_SANDBOX_LABELS: usize = 100;

/// The `prodbox.sandbox` value of keys past [`MAX_SANDBOX_LABELS`].
pub const OTHER_SANDBOXES: &str = "_other";

struct Instruments {
    decisions: Counter<u64>,
    kafka_messages: Counter<u64>,
    schemas: Counter<u64>,
    provisioning: Histogram<f64>,
    shadow_copies: Counter<u64>,
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
        }
    })
}

/// Attribute values seen so far, shared as `Arc<str>` so that recording allocates nothing.
struct Labels {
    sandboxes: HashSet<Arc<str>>,
    reasons: HashSet<Arc<str>>,
    none: Arc<str>,
    other: Arc<str>,
}

/// Reasons are short names from a fixed set; the bound only guards against a caller passing
/// free text.
const MAX_REASONS: usize = 256;

fn labels() -> std::sync::MutexGuard<'static, Labels> {
    static LABELS: OnceLock<Mutex<Labels>> = OnceLock::new();
    LABELS
        .get_or_init(|| {
            Mutex::new(Labels {
                sandboxes: HashSet::new(),
                reasons: HashSet::new(),
                none: "-".into(),
                other: OTHER_SANDBOXES.into(),
            })
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn intern(set: &mut HashSet<Arc<str>>, other: &Arc<str>, value: &str, bound: usize) -> Arc<str> {
    if let Some(seen) = set.get(value) {
        return Arc::clone(seen);
    }
    if set.len() < bound {
        let value: Arc<str> = value.into();
        set.insert(Arc::clone(&value));
        return value;
    }
    Arc::clone(other)
}

/// The attribute value for `key`: itself while fewer than [`MAX_SANDBOX_LABELS`] distinct keys
/// have been seen, else [`OTHER_SANDBOXES`].
pub fn sandbox_label(key: Option<&str>) -> Arc<str> {
    let labels = &mut *labels();
    match key {
        Some(key) => intern(
            &mut labels.sandboxes,
            &labels.other,
            key,
            MAX_SANDBOX_LABELS,
        ),
        None => Arc::clone(&labels.none),
    }
}

pub(crate) fn decision(event: &AuditEvent<'_>) {
    let (sandbox, reason) = {
        let labels = &mut *labels();
        let sandbox = match event.sandbox {
            Some(key) => intern(
                &mut labels.sandboxes,
                &labels.other,
                key,
                MAX_SANDBOX_LABELS,
            ),
            None => Arc::clone(&labels.none),
        };
        let reason = intern(
            &mut labels.reasons,
            &labels.other,
            event.reason,
            MAX_REASONS,
        );
        (sandbox, reason)
    };
    instruments().decisions.add(
        1,
        &[
            KeyValue::new("prodbox.protocol", event.protocol.as_str()),
            KeyValue::new("prodbox.direction", event.direction.as_str()),
            KeyValue::new("prodbox.decision", event.decision.as_str()),
            KeyValue::new("prodbox.reason", StringValue::from(reason)),
            KeyValue::new("prodbox.sandbox", StringValue::from(sandbox)),
        ],
    );
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
    instruments().kafka_messages.add(
        1,
        &[
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("prodbox.kafka.role", role),
            KeyValue::new("prodbox.kafka.outcome", outcome.as_str()),
        ],
    );
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
    let (sandbox, reason) = {
        let labels = &mut *labels();
        let sandbox = match sandbox {
            Some(key) => intern(
                &mut labels.sandboxes,
                &labels.other,
                key,
                MAX_SANDBOX_LABELS,
            ),
            None => Arc::clone(&labels.none),
        };
        let reason = reason.map(|r| intern(&mut labels.reasons, &labels.other, r, MAX_REASONS));
        (sandbox, reason)
    };
    let outcome = KeyValue::new("prodbox.shadow.outcome", outcome.as_str());
    let sandbox = KeyValue::new("prodbox.sandbox", StringValue::from(sandbox));
    match reason {
        Some(reason) => instruments().shadow_copies.add(
            1,
            &[
                outcome,
                KeyValue::new("prodbox.shadow.reason", StringValue::from(reason)),
                sandbox,
            ],
        ),
        None => instruments().shadow_copies.add(1, &[outcome, sandbox]),
    }
}
