//! Observe-only rollout for a baseline consumer (`SandboxConsumerBuilder::observe_only`),
//! against the broker, in both loops: every message is decided and audited as it would be, and
//! every one is then handled as production's, as before prodbox. Nothing is skipped,
//! dead-lettered or handled in a sandbox, and no cut is recorded. (The same records through an
//! acting consumer, skipped, dead-lettered and sandboxed, are `tests/metrics.rs`'s and
//! `tests/routing.rs`'s.)
//!
//! Audit records are process-global: each loop's records are told apart by their topic.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Log, Loop, Out, Running, consumer_config, ends, eventually, produce, producer, recorder,
};
use prodbox_core::directory::{CutPlace, Directory, MemoryDirectory, SandboxEntry};
use prodbox_core::{Guardrails, Sandbox, SandboxKey};
use prodbox_kafka::{ConsumerError, Role, SandboxConsumer};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{assert_zero_lag, create_topic, read_all, unique_topic};
use rdkafka::message::{Header, OwnedHeaders};
use std::sync::Arc as Shared;

fn directory() -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    let mut fork = SandboxEntry::new("ob-fork".parse().unwrap()).fork(
        "billing",
        "http://127.0.0.1:1".parse().expect("a fork address"),
    );
    fork.created_at = Some(std::time::SystemTime::now() - Duration::from_secs(60));
    directory.upsert(fork);
    directory.upsert(SandboxEntry::new("ob-inside".parse().unwrap()));
    let mut off = SandboxEntry::new("ob-off".parse().unwrap());
    off.disabled = true;
    directory.upsert(off);
    directory
}

/// The observed audit records of `topic`'s messages: (sandbox, decision, reason).
fn observed(audit: &AuditLog, topic: &str) -> Vec<(String, String, String)> {
    audit
        .matching("observed", "true")
        .into_iter()
        .filter(|r| r.get("detail").is_some_and(|d| d.contains(topic)))
        .map(|r| {
            let field = |name: &str| r.get(name).cloned().unwrap_or_default();
            (field("sandbox"), field("decision"), field("reason"))
        })
        .collect()
}

fn would(sandbox: &str, decision: &str, reason: &str) -> (String, String, String) {
    (sandbox.to_owned(), decision.to_owned(), reason.to_owned())
}

async fn observe_in(kind: Loop) {
    let audit = AuditLog::global();
    let topic = unique_topic("observe");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let dead_letters = format!("{group}.dead-letter");
    create_topic(&dead_letters, 1).await;
    let directory = directory();

    let sandbox = |key: &str| Some(Sandbox::new(key.parse().unwrap()));
    let records = vec![
        Out::new("plain-0"),
        Out::new("forked-0").sandbox(sandbox("ob-fork")),
        Out::new("forked-1").sandbox(sandbox("ob-fork")),
        Out::new("inside-0").sandbox(sandbox("ob-inside")),
        // The guardrails let one a second through: this one would wait.
        Out::new("inside-1").sandbox(sandbox("ob-inside")),
        // Baggage of no sandbox (a member of somebody else's): production's, not reported.
        Out::new("foreign")
            .headers(OwnedHeaders::new().insert(Header {
                key: "baggage",
                value: Some("userId=7"),
            }))
            .raw(),
        Out::new("off-0").sandbox(sandbox("ob-off")),
        Out::new("poison")
            .headers(OwnedHeaders::new().insert(Header {
                key: "baggage",
                value: Some("prodbox.sandbox=NOT_A_KEY"),
            }))
            .raw(),
        Out::new("plain-1"),
    ];
    let landed = produce(&producer(), &topic, &records).await;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory.clone())
        .guardrails(Guardrails::builder().rate(0.001, 1).build())
        .observe_only(true)
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let running = Running::spawn_in(kind, consumer, recorder(&log, "observer"));
    assert!(
        eventually(Duration::from_secs(30), || log.lock().unwrap().len()
            == records.len())
        .await,
        "{kind:?}: every record handled: {:?}",
        log.lock().unwrap()
    );
    running.stop().await;
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;

    // Each as production's, as before prodbox (the own loop handles 8 at once: any order).
    let mut handled = log.lock().unwrap().clone();
    handled.sort();
    let mut expected: Vec<_> = records
        .iter()
        .map(|out| ("observer", out.payload.clone(), None))
        .collect();
    expected.sort();
    assert_eq!(handled, expected, "{kind:?}");
    // Nothing dead-lettered, no cut recorded.
    let dead = read_all(
        &dead_letters,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    assert!(dead.is_empty(), "{kind:?}: {dead:?}");
    let place = CutPlace {
        group: group.clone(),
        topic: topic.clone(),
        partition: 0,
    };
    let cuts = directory.cut_ranges(&place).await.unwrap();
    assert!(cuts.is_empty(), "{kind:?}: {cuts:?}");

    // What it would have done, audited as observed.
    let mut observed = observed(&audit, &topic);
    observed.sort();
    let mut expected = vec![
        would("ob-fork", "skipped", "forked"),
        would("ob-fork", "skipped", "forked"),
        would("ob-inside", "accepted", "handled_in_sandbox"),
        would("ob-inside", "accepted", "handled_in_sandbox"),
        would("ob-inside", "throttled", "rate_limited"),
        would("ob-off", "skipped", "sandbox_disabled"),
        would("-", "dead_lettered", "invalid_sandbox_key"),
    ];
    expected.sort();
    assert_eq!(observed, expected, "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observing_runner_handles_everything_as_production_and_audits_what_it_would_do() {
    observe_in(Loop::Run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observing_own_loop_handles_everything_as_production_and_audits_what_it_would_do() {
    observe_in(Loop::Own).await;
}

#[tokio::test]
async fn a_fork_cannot_observe_only() {
    let directory = directory();
    let started = SandboxConsumer::builder(
        consumer_config(),
        "observe-fork",
        Role::sandbox("ob-fork".parse().unwrap()),
    )
    .directory(directory)
    .observe_only(true)
    .start(&["observe-fork-topic"])
    .await;
    assert!(
        matches!(started, Err(ConsumerError::ObserveOnlyFork)),
        "{started:?}"
    );
}

/// A directory that keeps no cuts (as a file directory): an acting baseline dead-letters the
/// records of a sandbox that forks it, and an observing one says it would.
#[derive(Clone)]
struct NoCuts(MemoryDirectory);

impl Directory for NoCuts {
    fn get(&self, key: &SandboxKey) -> Option<Shared<SandboxEntry>> {
        self.0.get(key)
    }
    fn entries(&self) -> Vec<Shared<SandboxEntry>> {
        self.0.entries()
    }
    fn generation(&self) -> Option<u64> {
        self.0.generation()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cuts_an_observer_says_a_forked_record_would_be_dead_lettered() {
    let audit = AuditLog::global();
    let topic = unique_topic("observe-nocuts");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let records = vec![
        Out::new("forked-0").sandbox(Some(Sandbox::new("ob-fork".parse().unwrap()))),
        Out::new("plain-0"),
    ];
    produce(&producer(), &topic, &records).await;
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(NoCuts(directory()))
        .observe_only(true)
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let running = Running::spawn(consumer, recorder(&log, "observer"));
    assert!(
        eventually(Duration::from_secs(30), || log.lock().unwrap().len() == 2).await,
        "both handled: {:?}",
        log.lock().unwrap()
    );
    running.stop().await;
    assert_eq!(
        observed(&audit, &topic),
        [would("ob-fork", "dead_lettered", "cut_unavailable")]
    );
}
