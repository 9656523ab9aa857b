//! Every record of a forked sandbox is handled by exactly one role, the baseline or the fork,
//! whatever the clocks, the timestamps and the order in which the consumers start: a record
//! produced before the sandbox's entry existed, one stamped before the sandbox's creation, a
//! sandbox deleted and made again, a fork added to a running sandbox (and deployed after the
//! baseline passed its first records), a consumer killed between handling and committing, and
//! a partition first written later. Lag is zero for every group at the end. A baseline whose
//! directory cannot record cuts dead-letters rather than guess.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Log, Loop, Out, Running, assert_zero_lag, consumer_config, ends, eventually, produce,
    read_topic,
};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_kafka::consumer::DEAD_LETTER_REASON;
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::directory::Switchable;
use prodbox_testkit::kafka::{create_topic, unique_topic};
use rdkafka::producer::FutureProducer;

const PARTITIONS: i32 = 2;
const SERVICE: &str = "billing";

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// `n` records per partition: of sandbox `sandbox`, or untagged.
fn records(label: &str, sandbox: Option<&str>, n: u32) -> Vec<Out> {
    records_in(0..PARTITIONS, label, sandbox, n)
}

/// `n` records in each of `partitions`.
fn records_in(
    partitions: std::ops::Range<i32>,
    label: &str,
    sandbox: Option<&str>,
    n: u32,
) -> Vec<Out> {
    partitions
        .flat_map(|p| {
            (0..n).map(move |i| {
                Out::new(format!("{label}-{}-{p}-{i}", sandbox.unwrap_or("none")))
                    .partition(p)
                    .sandbox(sandbox.map(|k| Sandbox::new(key(k))))
            })
        })
        .collect()
}

/// A directory entry for `sandbox` created now (or at `created`), forking the service when
/// `forks`.
fn entry(sandbox: &str, forks: bool, created: SystemTime) -> SandboxEntry {
    let mut entry = SandboxEntry::new(key(sandbox));
    if forks {
        entry = entry.fork(SERVICE, "http://fork".parse().expect("a fork address"));
    }
    entry.created_at = Some(created);
    entry
}

/// The baseline and the fork consumers of one test, started in either order.
struct Roles {
    topic: String,
    group: String,
    directory: MemoryDirectory,
    partitions: i32,
    log: Log,
    landed: Vec<(i32, i64)>,
    producer: FutureProducer,
    groups: Vec<String>,
    runs: Vec<(&'static str, Running)>,
}

impl Roles {
    async fn new(label: &str) -> Roles {
        let topic = unique_topic(label);
        create_topic(&topic, PARTITIONS).await;
        Roles {
            group: format!("{topic}-{SERVICE}"),
            topic,
            directory: MemoryDirectory::new(),
            partitions: PARTITIONS,
            log: Arc::default(),
            landed: Vec::new(),
            producer: common::unbatched_producer(),
            groups: Vec::new(),
            runs: Vec::new(),
        }
    }

    async fn produce(&mut self, records: &[Out]) {
        let landed = produce(&self.producer, &self.topic, records).await;
        self.landed.extend(landed);
    }

    async fn start(&mut self, name: &'static str, role: Role) -> Arc<SandboxConsumer> {
        let mut config = consumer_config();
        // Partitions added to the topic are seen within a second.
        config.set("topic.metadata.refresh.interval.ms", "500");
        let consumer = SandboxConsumer::builder(config, &self.group, role)
            .directory(self.directory.clone())
            .start(&[&self.topic])
            .await
            .unwrap();
        self.groups.push(consumer.group().to_owned());
        let consumer = Arc::new(consumer);
        self.runs.push((
            name,
            Running::spawn_in(
                LOOP.try_with(|kind| *kind).unwrap_or(Loop::Run),
                Arc::clone(&consumer),
                common::recorder(&self.log, name),
            ),
        ));
        consumer
    }

    async fn baseline(&mut self) {
        self.start("baseline", Role::baseline(SERVICE)).await;
    }

    async fn fork(&mut self, sandbox: &str) {
        self.start("fork", Role::sandbox(key(sandbox))).await;
    }

    /// Waits until every running consumer's group has committed everything produced.
    async fn all_committed(&self) {
        let ends = ends(&self.landed);
        assert_zero_lag(&self.groups, &self.topic, self.partitions, &ends).await;
    }

    /// Deploys the fork once the running consumers have committed everything produced.
    async fn fork_once_the_baseline_passed(&mut self, sandbox: &str) {
        self.all_committed().await;
        self.fork(sandbox).await;
    }

    /// Who handled each payload: its roles, in order.
    fn handlers(&self) -> BTreeMap<String, Vec<&'static str>> {
        let mut by_payload: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for (role, payload, _) in self.log.lock().unwrap().iter() {
            by_payload.entry(payload.clone()).or_default().push(role);
        }
        by_payload
    }

    /// Waits until every record was handled, then checks each by exactly one role (any
    /// number of times), untagged ones by the baseline, and lag zero for every group.
    async fn check(mut self, payloads: &[Out]) {
        let expected: Vec<String> = payloads.iter().map(|o| o.payload.clone()).collect();
        let missing = || {
            let handled = self.handlers();
            expected
                .iter()
                .filter(|p| !handled.contains_key(*p))
                .cloned()
                .collect::<Vec<_>>()
        };
        if !eventually(Duration::from_secs(60), || missing().is_empty()).await {
            panic!("handled by nobody: {:?}", missing());
        }
        self.all_committed().await;
        for (_, run) in std::mem::take(&mut self.runs) {
            run.stop().await;
        }
        let handled = self.handlers();
        let mut wrong = Vec::new();
        for out in payloads {
            let roles = handled.get(&out.payload).cloned().unwrap_or_default();
            let mut distinct = roles.clone();
            distinct.dedup();
            if distinct.len() != 1 {
                wrong.push(format!("{}: handled by {roles:?}", out.payload));
            } else if out.sandbox.is_none() && distinct != ["baseline"] {
                wrong.push(format!("{} (untagged): handled by {roles:?}", out.payload));
            }
        }
        // Every handler ran in its record's sandbox, never as production.
        for (role, payload, sandbox) in self.log.lock().unwrap().iter() {
            let tagged = payload.split('-').nth(1) != Some("none");
            if tagged && sandbox.is_none() {
                wrong.push(format!("{payload} ran as production in the {role}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

tokio::task_local! {
    /// The loop `Roles` runs its consumers in.
    static LOOP: Loop;
}

/// Runs `scenario` four times: with the baseline started first and with the fork started
/// first, in prodbox's loop and in a service's own.
macro_rules! both_orders {
    ($name:ident, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for kind in [Loop::Run, Loop::Own] {
                LOOP.scope(kind, async {
                    $scenario(true).await;
                    $scenario(false).await;
                })
                .await;
            }
        }
    };
}

async fn start_both(roles: &mut Roles, sandbox: &str, baseline_first: bool) {
    if baseline_first {
        roles.baseline().await;
        roles.fork(sandbox).await;
    } else {
        roles.fork(sandbox).await;
        roles.baseline().await;
    }
}

/// Records produced before the sandbox's entry existed (traffic that starts while `prodbox
/// sandbox create` is still running).
async fn produced_before_the_entry(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-a1" } else { "cut-a2" };
    let mut roles = Roles::new("cut-before").await;
    let early = [
        records("early", Some(sandbox), 3),
        records("early", None, 2),
    ]
    .concat();
    roles.produce(&early).await;
    roles
        .directory
        .upsert(entry(sandbox, true, SystemTime::now()));
    start_both(&mut roles, sandbox, baseline_first).await;
    let late = [records("late", Some(sandbox), 3), records("late", None, 2)].concat();
    roles.produce(&late).await;
    roles.check(&[early, late].concat()).await;
}
both_orders!(records_produced_before_the_entry, produced_before_the_entry);

/// A record stamped five seconds before the sandbox's creation (a producer clock behind, a
/// mirrored topic), produced after it.
async fn stamped_before_creation(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-b1" } else { "cut-b2" };
    let mut roles = Roles::new("cut-stamped").await;
    let created = SystemTime::now();
    roles.directory.upsert(entry(sandbox, true, created));
    start_both(&mut roles, sandbox, baseline_first).await;
    let stamp = created - Duration::from_secs(5);
    let millis = i64::try_from(stamp.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let producer = common::unbatched_producer();
    let mut landed = Vec::new();
    let stamped: Vec<Out> = records("stamped", Some(sandbox), 3);
    for out in &stamped {
        let record = rdkafka::producer::FutureRecord::<str, str>::to(&roles.topic)
            .key(&out.payload)
            .payload(&out.payload)
            .partition(out.partition.unwrap())
            .timestamp(millis);
        let record = prodbox_core::FutureExt::in_sandbox(
            async { prodbox_kafka::SandboxRecordExt::with_sandbox_context(record).unwrap() },
            Sandbox::new(key(sandbox)),
        )
        .await;
        let delivered = producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
        landed.push((delivered.partition, delivered.offset));
    }
    roles.landed.extend(landed);
    roles.check(&stamped).await;
}
both_orders!(
    a_record_stamped_before_the_creation,
    stamped_before_creation
);

/// A sandbox deleted and made again under the same key, with records of both incarnations.
async fn deleted_and_made_again(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-c1" } else { "cut-c2" };
    let mut roles = Roles::new("cut-again").await;
    let first = SystemTime::now();
    roles.directory.upsert(entry(sandbox, true, first));
    start_both(&mut roles, sandbox, baseline_first).await;
    let old = records("old", Some(sandbox), 3);
    roles.produce(&old).await;
    // The first incarnation's fork is torn down with it.
    assert!(
        eventually(Duration::from_secs(30), || {
            let handled = roles.handlers();
            old.iter().all(|o| handled.contains_key(&o.payload))
        })
        .await,
        "not everything was handled in time"
    );
    let at = roles
        .runs
        .iter()
        .position(|(name, _)| *name == "fork")
        .unwrap();
    let (_, fork) = roles.runs.remove(at);
    fork.stop().await;
    // Its group is gone with it: only the running consumers must reach the end.
    roles.groups.retain(|group| !group.contains(".sandbox."));
    assert!(roles.directory.remove(&key(sandbox)));
    let between = records("between", Some(sandbox), 2);
    roles.produce(&between).await;
    roles
        .directory
        .upsert(entry(sandbox, true, first + Duration::from_secs(60)));
    let waiting = records("waiting", Some(sandbox), 2);
    roles.produce(&waiting).await;
    // The new incarnation's fork is deployed after the baseline passed its first records.
    roles.fork_once_the_baseline_passed(sandbox).await;
    let new = records("new", Some(sandbox), 3);
    roles.produce(&new).await;
    roles.check(&[old, between, waiting, new].concat()).await;
}
both_orders!(a_sandbox_deleted_and_made_again, deleted_and_made_again);

/// A fork added to a sandbox that was running without one.
async fn fork_added_to_a_running_sandbox(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-d1" } else { "cut-d2" };
    let mut roles = Roles::new("cut-added").await;
    let created = SystemTime::now();
    roles.directory.upsert(entry(sandbox, false, created));
    if baseline_first {
        roles.baseline().await;
    }
    let unforked = records("unforked", Some(sandbox), 3);
    roles.produce(&unforked).await;
    roles.directory.upsert(entry(sandbox, true, created));
    // Records of the fork before its consumer is deployed, which the baseline skips and
    // commits past meanwhile.
    let waiting = records("waiting", Some(sandbox), 3);
    roles.produce(&waiting).await;
    if baseline_first {
        roles.fork_once_the_baseline_passed(sandbox).await;
    } else {
        start_both(&mut roles, sandbox, false).await;
    }
    let forked = records("forked", Some(sandbox), 3);
    roles.produce(&forked).await;
    roles.check(&[unforked, waiting, forked].concat()).await;
}
both_orders!(
    a_fork_added_to_a_running_sandbox,
    fork_added_to_a_running_sandbox
);

/// Each consumer killed between handling a record and committing it, then started again.
async fn killed_between_handling_and_committing(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-e1" } else { "cut-e2" };
    let mut roles = Roles::new("cut-killed").await;
    roles
        .directory
        .upsert(entry(sandbox, true, SystemTime::now()));
    start_both(&mut roles, sandbox, baseline_first).await;
    let first = [
        records("first", Some(sandbox), 3),
        records("first", None, 2),
    ]
    .concat();
    roles.produce(&first).await;
    assert!(
        eventually(Duration::from_secs(30), || {
            let handled = roles.handlers();
            first.iter().all(|o| handled.contains_key(&o.payload))
        })
        .await,
        "not everything was handled in time"
    );
    // Killed as a crash would (no final commit), then started again in the same order.
    for (_, run) in roles.runs.drain(..).collect::<Vec<_>>() {
        run.kill().await;
    }
    roles.groups.clear();
    start_both(&mut roles, sandbox, baseline_first).await;
    let second = [
        records("second", Some(sandbox), 3),
        records("second", None, 2),
    ]
    .concat();
    roles.produce(&second).await;
    roles.check(&[first, second].concat()).await;
}
both_orders!(
    a_consumer_killed_between_handling_and_committing,
    killed_between_handling_and_committing
);

/// A partition first written after both started: its records are decided like any other's
/// (the first one of the sandbox there opens the fork's range). Growing a topic itself cannot be
/// tried here: tansu 0.6 answers `CreatePartitions` with `UnsupportedFeature`. A partition
/// added later differs only in that the fork has no start committed for it, and a fork always
/// reads such a partition from its beginning (`auto.offset.reset=earliest`, forced).
async fn partition_added_later(baseline_first: bool) {
    let sandbox = if baseline_first { "cut-f1" } else { "cut-f2" };
    let mut roles = Roles::new("cut-grown").await;
    roles
        .directory
        .upsert(entry(sandbox, true, SystemTime::now()));
    start_both(&mut roles, sandbox, baseline_first).await;
    let before = records_in(0..1, "before", Some(sandbox), 2);
    roles.produce(&before).await;
    let after = [
        records_in(1..2, "after", Some(sandbox), 2),
        records_in(1..2, "after", None, 2),
    ]
    .concat();
    roles.produce(&after).await;
    roles.check(&[before, after].concat()).await;
}
both_orders!(a_partition_first_written_later, partition_added_later);

async fn run_baseline(group: &str, topic: &str, directory: &Switchable, log: &Log) -> Running {
    let baseline = SandboxConsumer::builder(consumer_config(), group, Role::baseline(SERVICE))
        .directory(directory.clone())
        .start(&[topic])
        .await
        .unwrap();
    Running::spawn(baseline, common::recorder(log, "baseline"))
}

/// A baseline whose directory cannot record cuts: a forked sandbox's record goes to the
/// dead-letter topic (`cut_unavailable`) after the retries, never guessed, and only the first
/// such record waits; production records are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cuts_the_baseline_dead_letters_rather_than_guess() {
    let topic = unique_topic("cut-down");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-{SERVICE}");
    let dead_letters = format!("{group}.dead-letter");
    create_topic(&dead_letters, 1).await;
    let audit = prodbox_testkit::AuditLog::global();
    let directory = Switchable::default();
    directory
        .entries
        .upsert(entry("cut-g", true, SystemTime::now()));
    directory.set_cuts_down(true);
    let log: Log = Arc::default();
    let run = run_baseline(&group, &topic, &directory, &log).await;
    let out = [
        records_in(0..1, "down", Some("cut-g"), 3),
        records_in(0..1, "down", None, 2),
    ]
    .concat();
    let landed = produce(&common::unbatched_producer(), &topic, &out).await;
    let dead = read_topic(&dead_letters, 1, 3, Duration::from_secs(40)).await;
    assert_eq!(dead.len(), 3, "each forked record dead-lettered once");
    for record in &dead {
        let reason = record.header(DEAD_LETTER_REASON).unwrap_or_default();
        assert!(
            reason.starts_with("cannot learn who handles this record of sandbox cut-g"),
            "{reason}"
        );
    }
    let audited = audit.matching("reason", "cut_unavailable");
    let audited = audited
        .iter()
        .filter(|r| r.get("sandbox").map(String::as_str) == Some("cut-g"))
        .count();
    assert_eq!(audited, 3, "audited once each");
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
    run.stop().await;
    let handled: Vec<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
    assert_eq!(
        handled,
        ["down-none-0-0", "down-none-0-1"],
        "only production records handled"
    );
    // The retries of one wait (10 s, a try every 0.5 s at most), then none per record (a probe
    // tries once a second): not one wait per record, which would be at least 60 tries.
    let tries = directory.cut_calls();
    assert!(tries < 40, "{tries} tries");

    // Back: a forked record is recorded and skipped as the fork's.
    directory.set_cuts_down(false);
    let log: Log = Arc::default();
    let run = run_baseline(&group, &topic, &directory, &log).await;
    let later = records_in(0..1, "up", Some("cut-g"), 1);
    let landed = [
        landed,
        produce(&common::unbatched_producer(), &topic, &later).await,
    ]
    .concat();
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
    run.stop().await;
    assert!(log.lock().unwrap().is_empty(), "the fork's record skipped");
    assert_eq!(
        read_topic(&dead_letters, 1, 4, Duration::from_secs(2))
            .await
            .len(),
        3
    );
}

/// The directory stops answering after the baseline read a partition's cuts: what the
/// baseline knows since the partition was assigned to it still decides (a record inside the
/// fork's open range is the fork's alone; one of a sandbox that forks nothing is its own), and
/// only a record that needs a new cut is dead-lettered: after the retries for the first, at
/// once for the next, without a try, until the directory answers again. (Found by a review:
/// the baseline trusted what it read for a second only, and tried each record again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_leaves_what_the_baseline_knows_decided() {
    let topic = unique_topic("cut-outage");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-{SERVICE}");
    let dead_letters = format!("{group}.dead-letter");
    create_topic(&dead_letters, 1).await;
    let directory = Switchable::default();
    let now = SystemTime::now();
    directory.entries.upsert(entry("cut-h", true, now));
    directory.entries.upsert(entry("cut-n", false, now));
    let log: Log = Arc::default();
    let baseline = run_baseline(&group, &topic, &directory, &log).await;
    // The fork's directory shares the entries and the cuts, not the switch.
    let fork = SandboxConsumer::builder(consumer_config(), &group, Role::sandbox(key("cut-h")))
        .directory(directory.entries.clone())
        .start(&[&topic])
        .await
        .unwrap();
    let fork = Running::spawn(fork, common::recorder(&log, "fork"));
    let producer = common::unbatched_producer();
    let mut landed = produce(
        &producer,
        &topic,
        &records_in(0..1, "before", Some("cut-h"), 1),
    )
    .await;
    landed.extend(
        produce(
            &producer,
            &topic,
            &records_in(0..1, "before", Some("cut-n"), 1),
        )
        .await,
    );
    let handled = |payload: &str| -> Vec<&'static str> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|e| e.1 == payload)
            .map(|e| e.0)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(30), || handled("before-cut-h-0-0")
            == ["fork"]
            && handled("before-cut-n-0-0") == ["baseline"])
        .await
    );
    directory.set_cuts_down(true);
    // Longer than the baseline used to trust what it read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Known: the fork's range, a sandbox with none. New: a sandbox that starts forking now.
    directory.entries.upsert(entry("cut-j", true, now));
    let during = [
        records_in(0..1, "during", Some("cut-h"), 1),
        records_in(0..1, "during", Some("cut-n"), 1),
        records_in(0..1, "during", Some("cut-j"), 2),
        records_in(0..1, "during", None, 1),
    ]
    .concat();
    landed.extend(produce(&producer, &topic, &during).await);
    let dead = read_topic(&dead_letters, 1, 2, Duration::from_secs(40)).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.payload).into_owned(),
                r.header(DEAD_LETTER_REASON).unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || handled("during-cut-h-0-0")
            == ["fork"]
            && handled("during-cut-n-0-0") == ["baseline"]
            && handled("during-none-0-0") == ["baseline"])
        .await,
        "{:?}",
        log.lock().unwrap()
    );
    baseline.stop().await;
    fork.stop().await;
    let payloads: Vec<&str> = reasons.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        payloads,
        ["during-cut-j-0-0", "during-cut-j-0-1"],
        "{reasons:?}"
    );
    assert!(handled("during-cut-j-0-0").is_empty() && handled("during-cut-j-0-1").is_empty());
    // The first waited out the retries; the second got no try.
    assert!(!reasons[0].1.contains("probe"), "{}", reasons[0].1);
    assert!(reasons[1].1.contains("probe"), "{}", reasons[1].1);
}
