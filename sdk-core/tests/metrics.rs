//! Every audit decision is counted in `prodbox.sandbox.decisions`, with bounded sandbox labels.

use prodbox_core::metrics::{MAX_SANDBOX_LABELS, OTHER_SANDBOXES};
use prodbox_core::{Guardrails, Ingress, TrustPolicy};
use prodbox_testkit::metrics::Metrics;

const DECISIONS: &str = "prodbox.sandbox.decisions";

fn baggage(value: &str) -> Vec<(String, Vec<u8>)> {
    vec![("baggage".to_owned(), value.as_bytes().to_vec())]
}

#[test]
fn decisions_are_counted_per_protocol_decision_and_reason_with_bounded_labels() {
    let metrics = Metrics::global();
    let internal = Ingress::new(TrustPolicy::accept())
        .guardrails(Guardrails::builder().rate(0.001, 2).build());
    let edge = Ingress::new(TrustPolicy::strip());

    for _ in 0..3 {
        // Permits are dropped at once: only the rate limit applies.
        let _ = internal.admit(&baggage("prodbox.sandbox=met-a"), None);
    }
    for _ in 0..2 {
        edge.admit(&baggage("prodbox.sandbox=met-b"), None);
    }
    internal.admit(&baggage("prodbox.sandbox=MET_C"), None);

    let count = |decision: &str, reason: &str, sandbox: &str| {
        metrics.sum(
            DECISIONS,
            &[
                ("prodbox.protocol", "http"),
                ("prodbox.direction", "inbound"),
                ("prodbox.decision", decision),
                ("prodbox.reason", reason),
                ("prodbox.sandbox", sandbox),
            ],
        )
    };
    // Burst 2: two accepted, the third throttled.
    assert_eq!(count("accepted", "trusted", "met-a"), 2);
    assert_eq!(count("throttled", "rate_limited", "met-a"), 1);
    assert_eq!(count("stripped", "untrusted_ingress", "met-b"), 2);
    assert_eq!(count("rejected", "invalid_sandbox_key", "-"), 1);

    // A flood of distinct keys shares one label past the bound.
    for n in 0..(2 * MAX_SANDBOX_LABELS) {
        edge.admit(&baggage(&format!("prodbox.sandbox=flood-{n}")), None);
    }
    let labels = metrics.attribute_values(DECISIONS, "prodbox.sandbox");
    assert!(
        labels.len() <= MAX_SANDBOX_LABELS + 2,
        "{} labels",
        labels.len()
    );
    assert!(labels.contains(OTHER_SANDBOXES));
    let flooded = metrics.sum(
        DECISIONS,
        &[
            ("prodbox.reason", "untrusted_ingress"),
            ("prodbox.sandbox", OTHER_SANDBOXES),
        ],
    );
    assert!(flooded > 0 && flooded <= 2 * MAX_SANDBOX_LABELS as u64);
}

#[test]
fn kafka_topics_are_named_up_to_a_bound() {
    use prodbox_core::metrics::MAX_TOPIC_LABELS;
    use prodbox_core::plumbing::metrics::{KafkaOutcome, kafka_message};
    const MESSAGES: &str = "prodbox.kafka.messages";
    let metrics = Metrics::global();
    kafka_message("orders", "baseline", KafkaOutcome::Processed);
    kafka_message("orders", "baseline", KafkaOutcome::Skipped);
    for n in 0..(2 * MAX_TOPIC_LABELS) {
        kafka_message(&format!("topic-{n}"), "sandbox", KafkaOutcome::Processed);
    }
    let count = |topic: &str, role: &str, outcome: &str| {
        metrics.sum(
            MESSAGES,
            &[
                ("messaging.system", "kafka"),
                ("messaging.destination.name", topic),
                ("prodbox.kafka.role", role),
                ("prodbox.kafka.outcome", outcome),
            ],
        )
    };
    assert_eq!(count("orders", "baseline", "processed"), 1);
    assert_eq!(count("orders", "baseline", "skipped"), 1);
    assert_eq!(count("topic-0", "sandbox", "processed"), 1);
    let topics = metrics.attribute_values(MESSAGES, "messaging.destination.name");
    assert!(
        topics.len() <= MAX_TOPIC_LABELS + 1,
        "{} topics",
        topics.len()
    );
    assert!(topics.contains("_other"));
    // Every message is counted, named or not.
    let flooded = count("_other", "sandbox", "processed");
    assert_eq!(
        flooded
            + (0..2 * MAX_TOPIC_LABELS)
                .filter(|n| topics.contains(format!("topic-{n}").as_str()))
                .count() as u64,
        2 * MAX_TOPIC_LABELS as u64
    );
}
