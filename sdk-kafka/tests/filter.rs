//! The filter's decision table, case by case, for every role (no broker), and the producer
//! extension on records and through rdkafka's `MockCluster`.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use prodbox_core::codec::Codec;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{FutureExt, Sandbox, SandboxKey};
use prodbox_kafka::{Filter, Role, SandboxRecordExt, Verdict};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// `fork-a` forks billing; `plain-b` forks only shipping; `off-c` (forks billing) is disabled;
/// `old-d` expired an hour ago; `later-f` expires in an hour; `ghost-e` is not registered.
fn directory() -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    let mut fork = SandboxEntry::new(key("fork-a"))
        .fork("billing", "http://fork-a".parse().expect("a fork address"));
    fork.actor = Some("alice".to_owned());
    fork.origin = Some("PR-1".to_owned());
    directory.upsert(fork);
    directory.upsert(SandboxEntry::new(key("plain-b")).fork(
        "shipping",
        "http://plain-b".parse().expect("a fork address"),
    ));
    directory.upsert(
        SandboxEntry::new(key("off-c"))
            .fork("billing", "http://off-c".parse().expect("a fork address"))
            .disabled(true),
    );
    directory.upsert(
        SandboxEntry::new(key("old-d")).expires_at(SystemTime::now() - Duration::from_secs(3600)),
    );
    directory.upsert(
        SandboxEntry::new(key("later-f")).expires_at(SystemTime::now() + Duration::from_secs(3600)),
    );
    directory
}

fn headers(pairs: &[(&str, &[u8])]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    })
}

fn baggage(value: &str) -> OwnedHeaders {
    headers(&[("baggage", value.as_bytes())])
}

/// What a verdict says, in a form that compares: `process:<sandbox or ->`, `skip:<reason>` or
/// `dead_letter:<reason>`. A sandbox's record goes to the cuts (`sdk-kafka/tests/cut.rs` tests
/// them against the broker): with a fork of the service it reads `skip:forked` (the fork's,
/// past its cut), without one `process:<sandbox>` (in its context).
fn summary(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Process(None) => "process:-".to_owned(),
        Verdict::Process(Some(cx)) => {
            format!("process:{}", cx.sandbox().map_or("-", |s| s.key().as_str()))
        }
        Verdict::Cut {
            forking: Some(_), ..
        } => "skip:forked".to_owned(),
        Verdict::Cut { context, .. } => {
            format!(
                "process:{}",
                context.sandbox().map_or("-", |s| s.key().as_str())
            )
        }
        Verdict::Skip { reason, .. } => format!("skip:{reason}"),
        Verdict::DeadLetter(error) => format!("dead_letter:{}", error.reason()),
    }
}

fn decide(role: Role, headers: Option<&OwnedHeaders>) -> String {
    summary(&Filter::new(role, directory()).decide(headers, SystemTime::now()))
}

#[test]
fn decision_table_by_role() {
    let cases: [(&str, Option<OwnedHeaders>); 12] = [
        ("no headers", None),
        (
            "headers, no baggage",
            Some(headers(&[("content-type", b"json")])),
        ),
        ("foreign baggage only", Some(baggage("userId=7"))),
        (
            "fork-a (forks billing)",
            Some(baggage("prodbox.sandbox=fork-a")),
        ),
        (
            "plain-b (does not fork billing)",
            Some(baggage("prodbox.sandbox=plain-b")),
        ),
        (
            "ghost-e (unknown)",
            Some(baggage("prodbox.sandbox=ghost-e")),
        ),
        ("off-c (disabled)", Some(baggage("prodbox.sandbox=off-c"))),
        ("old-d (expired)", Some(baggage("prodbox.sandbox=old-d"))),
        (
            "later-f (expires later)",
            Some(baggage("prodbox.sandbox=later-f")),
        ),
        ("malformed key", Some(baggage("prodbox.sandbox=PR_1"))),
        (
            "conflicting headers",
            Some(headers(&[
                ("baggage", b"prodbox.sandbox=fork-a"),
                ("baggage", b"prodbox.sandbox=plain-b"),
            ])),
        ),
        (
            "non-UTF-8",
            Some(headers(&[("baggage", b"prodbox.sandbox=\xff\xfe")])),
        ),
    ];
    // Expected verdict per case, for: baseline(billing), sandbox(fork-a), sandbox(plain-b),
    // sandbox(ghost-e), sandbox(off-c), sandbox(old-d).
    let expected: [[&str; 6]; 12] = [
        [
            "process:-",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
        ],
        [
            "process:-",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
        ],
        [
            "process:-",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
            "skip:untagged",
        ],
        [
            "skip:forked",
            "process:fork-a",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
        ],
        [
            "process:plain-b",
            "skip:other_sandbox",
            "process:plain-b",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
        ],
        [
            "process:ghost-e",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "process:ghost-e",
            "skip:other_sandbox",
            "skip:other_sandbox",
        ],
        [
            "skip:sandbox_disabled",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:sandbox_disabled",
            "skip:other_sandbox",
        ],
        [
            "skip:sandbox_expired",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:sandbox_expired",
        ],
        [
            "process:later-f",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
            "skip:other_sandbox",
        ],
        // Malformed sandbox headers: dead-lettered once, by the baseline consumer.
        left_to_baseline("dead_letter:invalid_sandbox_key"),
        left_to_baseline("dead_letter:ambiguous_sandbox"),
        left_to_baseline("dead_letter:baggage_invalid_utf8"),
    ];
    let roles = [
        Role::baseline("billing"),
        Role::sandbox(key("fork-a")),
        Role::sandbox(key("plain-b")),
        Role::sandbox(key("ghost-e")),
        Role::sandbox(key("off-c")),
        Role::sandbox(key("old-d")),
    ];
    let mut failures = Vec::new();
    for ((case, headers), expected) in cases.iter().zip(expected) {
        for (role, expected) in roles.iter().zip(expected) {
            let got = decide(role.clone(), headers.as_ref());
            if got != expected {
                failures.push(format!("{case} / {role:?}: expected {expected}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn processed_context_is_completed_from_the_directory_and_keeps_foreign_members() {
    let filter = Filter::new(Role::sandbox(key("fork-a")), directory());
    let headers = baggage("userId=7,prodbox.sandbox=fork-a,team=pay");
    let Verdict::Cut { context: cx, .. } = filter.decide(Some(&headers), SystemTime::now()) else {
        panic!("own sandbox not processed");
    };
    let sandbox = cx.sandbox().unwrap();
    assert_eq!(sandbox.key().as_str(), "fork-a");
    // Actor and origin come from the directory when the message has none.
    assert_eq!(sandbox.actor(), Some("alice"));
    assert_eq!(sandbox.origin(), Some("PR-1"));
    assert_eq!(cx.foreign().as_str(), "userId=7,team=pay");

    // The message's own labels win over the directory's.
    let headers = baggage("prodbox.sandbox=fork-a,prodbox.actor=bob");
    let Verdict::Cut { context: cx, .. } = filter.decide(Some(&headers), SystemTime::now()) else {
        panic!("own sandbox not processed");
    };
    assert_eq!(cx.sandbox().unwrap().actor(), Some("bob"));

    // A baseline message keeps its foreign members, with no sandbox.
    let baseline = Filter::new(Role::baseline("billing"), directory());
    let Verdict::Process(Some(cx)) = baseline.decide(Some(&baggage("userId=7")), SystemTime::now())
    else {
        panic!("foreign-only baggage not processed with its members");
    };
    assert!(cx.sandbox().is_none());
    assert_eq!(cx.foreign().as_str(), "userId=7");
}

#[test]
fn skips_name_the_sandbox() {
    let filter = Filter::new(Role::baseline("billing"), directory());
    // A forked sandbox's record goes to the cuts, naming its sandbox and the incarnation.
    match filter.decide(Some(&baggage("prodbox.sandbox=fork-a")), SystemTime::now()) {
        Verdict::Cut { context, forking } => {
            assert_eq!(context.sandbox().unwrap().key().as_str(), "fork-a");
            assert_eq!(forking, Some(0), "no creation time: incarnation 0");
        }
        other => panic!("{other:?}"),
    }
    for (value, reason) in [
        ("prodbox.sandbox=off-c", "sandbox_disabled"),
        ("prodbox.sandbox=old-d", "sandbox_expired"),
    ] {
        match filter.decide(Some(&baggage(value)), SystemTime::now()) {
            Verdict::Skip {
                reason: got,
                sandbox,
            } => {
                assert_eq!(got, reason, "{value}");
                assert_eq!(
                    sandbox.as_ref().map(SandboxKey::as_str),
                    value.strip_prefix("prodbox.sandbox=")
                );
            }
            other => panic!("{value}: {other:?}"),
        }
    }
}

#[test]
fn expiry_is_judged_at_the_time_given() {
    let now = SystemTime::now();
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(key("soon")).expires_at(now + Duration::from_secs(10)));
    let headers = baggage("prodbox.sandbox=soon");
    for role in [Role::baseline("billing"), Role::sandbox(key("soon"))] {
        let filter = Filter::new(role.clone(), directory.clone());
        assert_eq!(
            summary(&filter.decide(Some(&headers), now)),
            "process:soon",
            "{role:?}"
        );
        assert_eq!(
            summary(&filter.decide(Some(&headers), now + Duration::from_secs(10))),
            "skip:sandbox_expired",
            "{role:?}"
        );
    }
    // The processed context carries the directory's expiry.
    let filter = Filter::new(Role::sandbox(key("soon")), directory);
    let Verdict::Cut { context: cx, .. } = filter.decide(Some(&headers), now) else {
        panic!("not processed");
    };
    assert_eq!(
        cx.sandbox().unwrap().expires_at(),
        Some(now + Duration::from_secs(10))
    );
}

#[test]
fn directory_changes_apply_to_the_next_message() {
    let directory = directory();
    let filter = Filter::new(Role::baseline("billing"), directory.clone());
    let headers = baggage("prodbox.sandbox=fork-a");
    assert_eq!(
        summary(&filter.decide(Some(&headers), SystemTime::now())),
        "skip:forked"
    );
    // The fork goes away: its messages are processed by the baseline, sandboxed.
    directory.upsert(SandboxEntry::new(key("fork-a")));
    assert_eq!(
        summary(&filter.decide(Some(&headers), SystemTime::now())),
        "process:fork-a"
    );
    // The kill switch: skipped, never production.
    directory.set_disabled(&key("fork-a"), true);
    assert_eq!(
        summary(&filter.decide(Some(&headers), SystemTime::now())),
        "skip:sandbox_disabled"
    );
}

/// The baseline consumer's verdict, then the five sandbox consumers' (which leave malformed
/// sandbox headers to the baseline, so that each is dead-lettered once).
fn left_to_baseline(baseline: &'static str) -> [&'static str; 6] {
    let mut row = ["skip:malformed_left_to_baseline"; 6];
    row[0] = baseline;
    row
}

#[test]
fn poison_headers_are_dead_lettered_once_by_the_baseline() {
    let oversized_member = |name: &str| format!("{name}={}", "x".repeat(4100));
    let cases: Vec<(OwnedHeaders, &str)> = vec![
        (baggage("prodbox.sandbox=PR_1"), "invalid_sandbox_key"),
        (baggage("prodbox.sandbox="), "invalid_sandbox_key"),
        (baggage("prodbox.sandbox"), "baggage_malformed_member"),
        (
            baggage("Prodbox.Sandbox=fork-a"),
            "baggage_non_canonical_key",
        ),
        (
            baggage("prodbox.sandbox=fork-a\r\n"),
            "baggage_control_character",
        ),
        (
            headers(&[("baggage", b"prodbox.actor=\xc3\x28")]),
            "baggage_invalid_utf8",
        ),
        // Each header is under the 8192-byte limit; together they are over it.
        (
            headers(&[
                ("baggage", oversized_member("prodbox.sandbox").as_bytes()),
                ("baggage", oversized_member("b").as_bytes()),
            ]),
            "baggage_too_large",
        ),
        (
            baggage(
                &std::iter::once("prodbox.sandbox=fork-a".to_owned())
                    .chain((0..64).map(|i| format!("m{i}=1")))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            "baggage_too_many_members",
        ),
        (
            baggage("prodbox.sandbox=fork-a,prodbox.sandbox=plain-b"),
            "ambiguous_sandbox",
        ),
        (
            headers(&[
                ("baggage", b"prodbox.sandbox=fork-a"),
                ("baggage", b"prodbox.sandbox=plain-b"),
            ]),
            "ambiguous_sandbox",
        ),
        // A legacy carrier that disagrees with the baggage header.
        (
            headers(&[
                ("baggage", b"prodbox.sandbox=fork-a"),
                ("ot-baggage-prodbox.sandbox", b"plain-b"),
            ]),
            "ambiguous_sandbox",
        ),
    ];
    let baseline = Filter::new(Role::baseline("billing"), directory());
    let sandbox = Filter::new(Role::sandbox(key("fork-a")), directory());
    for (headers, reason) in &cases {
        let got = summary(&baseline.decide(Some(headers), SystemTime::now()));
        assert_eq!(got, format!("dead_letter:{reason}"));
        let got = summary(&sandbox.decide(Some(headers), SystemTime::now()));
        assert_eq!(got, "skip:malformed_left_to_baseline");
    }
}

/// Baggage that is not W3C but mentions nothing of prodbox (another tracer's header, say) is no
/// sandbox message: production handles it, as the HTTP and gRPC ingresses do.
#[test]
fn unreadable_baggage_without_prodbox_members_runs_as_baseline() {
    let unrelated = baggage("just-a-word");
    let filter = Filter::new(Role::baseline("billing"), directory());
    assert_eq!(
        summary(&filter.decide(Some(&unrelated), SystemTime::now())),
        "process:-"
    );
    let filter = Filter::new(Role::sandbox(key("fork-a")), directory());
    assert_eq!(
        summary(&filter.decide(Some(&unrelated), SystemTime::now())),
        "skip:untagged"
    );
}

#[test]
fn equivalent_carriers_are_not_ambiguous() {
    let filter = Filter::new(Role::sandbox(key("fork-a")), directory());
    for headers in [
        // The same value twice, in two headers.
        headers(&[
            ("baggage", b"prodbox.sandbox=fork-a"),
            ("baggage", b"prodbox.sandbox=fork-a"),
        ]),
        // Header names are case-insensitive.
        headers(&[("Baggage", b"prodbox.sandbox=fork-a")]),
        // The legacy carriers are read.
        headers(&[("ot-baggage-prodbox.sandbox", b"fork-a")]),
        headers(&[("uberctx-prodbox.sandbox", b"fork-a")]),
        // Whitespace and other members around ours.
        baggage(" a=1 , prodbox.sandbox = fork-a ;p=1, b=2"),
    ] {
        assert_eq!(
            summary(&filter.decide(Some(&headers), SystemTime::now())),
            "process:fork-a",
            "{headers:?}"
        );
    }
}

#[test]
fn a_custom_codec_is_used() {
    let filter = Filter::new(Role::sandbox(key("fork-a")), directory())
        .codec(Codec::default().alias("sd-routing-key"));
    assert_eq!(
        summary(&filter.decide(Some(&baggage("sd-routing-key=fork-a")), SystemTime::now())),
        "process:fork-a"
    );
    let filter =
        Filter::new(Role::baseline("billing"), directory()).codec(Codec::default().max_bytes(16));
    assert_eq!(
        summary(&filter.decide(Some(&baggage("prodbox.sandbox=plain-b")), SystemTime::now())),
        "dead_letter:baggage_too_large"
    );
}

fn header_values<H: Headers + ?Sized>(headers: &H) -> Vec<(String, String)> {
    (0..headers.count())
        .map(|i| headers.get(i))
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

fn sandbox() -> Sandbox {
    Sandbox::new(key("pr-42"))
}

#[tokio::test]
async fn records_keep_their_headers_and_get_one_merged_baggage() {
    let own = headers(&[
        ("content-type", b"json"),
        ("baggage", b"userId=7"),
        ("x-trace", b"1"),
    ]);
    let future = async {
        FutureRecord::<str, str>::to("t")
            .payload("p")
            .headers(own.clone())
            .with_sandbox_context()
            .unwrap()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        header_values(future.headers.as_ref().unwrap()),
        [
            ("content-type".to_owned(), "json".to_owned()),
            (
                "baggage".to_owned(),
                "prodbox.sandbox=pr-42,userId=7".to_owned()
            ),
            ("x-trace".to_owned(), "1".to_owned()),
        ]
    );

    // BaseRecord too, and twice is the same as once (no duplicate member or header).
    let base = async {
        BaseRecord::<str, str>::to("t")
            .payload("p")
            .headers(own.clone())
            .with_sandbox_context()
            .unwrap()
            .with_sandbox_context()
            .unwrap()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        header_values(base.headers.as_ref().unwrap()),
        header_values(future.headers.as_ref().unwrap())
    );

    // Outside a sandbox: the record is left as it is, except for members of ours, which a
    // baseline message never carries.
    let plain = FutureRecord::<str, str>::to("t")
        .payload("p")
        .headers(own.clone())
        .with_sandbox_context()
        .unwrap();
    assert_eq!(
        header_values(plain.headers.as_ref().unwrap()),
        header_values(&own)
    );
    let copied = FutureRecord::<str, str>::to("t")
        .payload("p")
        .headers(baggage("userId=7,prodbox.sandbox=pr-1"))
        .with_sandbox_context()
        .unwrap();
    assert_eq!(
        header_values(copied.headers.as_ref().unwrap()),
        [("baggage".to_owned(), "userId=7".to_owned())]
    );

    // No headers at all.
    let bare = async {
        FutureRecord::<str, str>::to("t")
            .payload("p")
            .with_sandbox_context()
            .unwrap()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        header_values(bare.headers.as_ref().unwrap()),
        [("baggage".to_owned(), "prodbox.sandbox=pr-42".to_owned())]
    );

    // A record copied from another sandbox's message gets the current one, not both.
    let moved = async {
        FutureRecord::<str, str>::to("t")
            .payload("p")
            .headers(baggage("prodbox.sandbox=pr-1"))
            .with_sandbox_context()
            .unwrap()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        header_values(moved.headers.as_ref().unwrap()),
        [("baggage".to_owned(), "prodbox.sandbox=pr-42".to_owned())]
    );
}

#[tokio::test]
async fn a_sandboxed_record_whose_baggage_cannot_be_written_is_refused() {
    for bad in [
        baggage("not a member"),
        headers(&[("baggage", b"a=\xff")]),
        baggage(&format!("big={}", "x".repeat(8200))),
    ] {
        let result = async {
            FutureRecord::<str, str>::to("t")
                .payload("p")
                .headers(bad.clone())
                .with_sandbox_context()
                .map(|_| ())
        }
        .in_sandbox(sandbox())
        .await;
        let error = result.expect_err("a sandboxed record with unwritable baggage must fail");
        assert_eq!(error.sandbox.as_str(), "pr-42");
    }
}

/// The producer extension end to end through librdkafka, against its in-process mock broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_round_trip_keeps_headers() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.timeout.ms", "10000");
    let producer: FutureProducer = config.create().unwrap();
    let own = headers(&[("x-trace", b"1"), ("baggage", b"userId=7")]);
    for (i, sandboxed) in [(0, true), (1, false)] {
        let payload = i.to_string();
        let send = async {
            let record = FutureRecord::<str, str>::to("orders")
                .payload(&payload)
                .headers(own.clone())
                .with_sandbox_context()
                .unwrap();
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        };
        if sandboxed {
            send.in_sandbox(sandbox()).await;
        } else {
            send.await;
        }
    }

    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "mock-reader")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("orders", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            got.push(header_values(message.headers().unwrap()));
        }
    }
    assert_eq!(
        got,
        [
            vec![
                ("x-trace".to_owned(), "1".to_owned()),
                (
                    "baggage".to_owned(),
                    "prodbox.sandbox=pr-42,userId=7".to_owned()
                ),
            ],
            vec![
                ("x-trace".to_owned(), "1".to_owned()),
                ("baggage".to_owned(), "userId=7".to_owned()),
            ],
        ]
    );
    // What the producer wrote, the filter reads back.
    let filter = Filter::new(Role::sandbox(key("pr-42")), MemoryDirectory::new());
    let written = headers(&[
        ("x-trace", b"1"),
        ("baggage", b"prodbox.sandbox=pr-42,userId=7"),
    ]);
    assert_eq!(
        summary(&filter.decide(Some(&written), SystemTime::now())),
        "process:pr-42"
    );
}

#[test]
fn a_token_without_its_key_is_never_processed_as_production() {
    let token = baggage("prodbox.token=v1.k1.e30.AAAA,a=1");
    assert_eq!(
        decide(Role::baseline("billing"), Some(&token)),
        "dead_letter:token_without_key"
    );
    assert_eq!(
        decide(Role::sandbox(key("fork-a")), Some(&token)),
        "skip:malformed_left_to_baseline"
    );
}

#[test]
fn only_messages_of_a_sandbox_concern_the_directory() {
    let filter = Filter::new(Role::baseline("billing"), directory());
    assert!(!filter.concerns_a_sandbox(None::<&OwnedHeaders>));
    assert!(!filter.concerns_a_sandbox(Some(&baggage("userid=7"))));
    assert!(filter.concerns_a_sandbox(Some(&baggage("prodbox.sandbox=fork-a"))));
    assert!(filter.concerns_a_sandbox(Some(&baggage("prodbox.token=x"))));
    assert!(filter.concerns_a_sandbox(Some(&headers(&[("uberctx-prodbox.sandbox", b"fork-a")]))));
}

/// A memory directory that counts its lookups and may hide its generation.
struct Counting {
    entries: MemoryDirectory,
    lookups: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    with_generation: bool,
}

impl prodbox_core::directory::Directory for Counting {
    fn get(&self, key: &SandboxKey) -> Option<std::sync::Arc<SandboxEntry>> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.entries.get(key)
    }
    fn entries(&self) -> Vec<std::sync::Arc<SandboxEntry>> {
        self.entries.entries()
    }
    fn generation(&self) -> Option<u64> {
        self.with_generation
            .then(|| self.entries.generation())
            .flatten()
    }
}

fn counting_directory(
    with_generation: bool,
) -> (
    Counting,
    MemoryDirectory,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let entries = directory();
    let lookups = std::sync::Arc::default();
    let counting = Counting {
        entries: entries.clone(),
        lookups: std::sync::Arc::clone(&lookups),
        with_generation,
    };
    (counting, entries, lookups)
}

#[test]
fn a_repeated_header_is_decided_from_memory_until_the_directory_or_the_clock_says_otherwise() {
    use prodbox_core::directory::Directory;
    use std::sync::atomic::Ordering::SeqCst;

    let now = SystemTime::now();
    let (counting, entries, lookups) = counting_directory(true);
    entries.upsert(
        SandboxEntry::new(key("later-f"))
            .fork("billing", "http://later-f".parse().expect("a fork address"))
            .expires_at(now + Duration::from_secs(3600)),
    );
    let filter = Filter::new(Role::baseline("billing"), counting);
    let headers = baggage("prodbox.sandbox=later-f,prodbox.actor=alice,userId=7");
    let decide = |at: SystemTime| summary(&filter.decide(Some(&headers), at));

    for _ in 0..10 {
        assert_eq!(decide(now), "skip:forked");
    }
    // Remembered after missing twice in a row: the directory was asked twice, not ten times.
    assert_eq!(lookups.load(SeqCst), 2);

    // The clock: past the entry's expiry the remembered decision no longer applies.
    assert_eq!(
        decide(now + Duration::from_secs(3600)),
        "skip:sandbox_expired"
    );
    // A skip for expiry is not remembered: asked about an earlier time, the filter decides again.
    assert_eq!(decide(now), "skip:forked");
    assert_eq!(
        decide(now + Duration::from_secs(7200)),
        "skip:sandbox_expired"
    );

    // The directory: any change forgets what was remembered.
    let generation = filter.directory().generation();
    entries.set_disabled(&key("later-f"), true);
    assert_ne!(filter.directory().generation(), generation);
    assert_eq!(decide(now), "skip:sandbox_disabled");
    entries.upsert(SandboxEntry::new(key("later-f")));
    for _ in 0..3 {
        assert_eq!(decide(now), "process:later-f");
    }
    entries.remove(&key("later-f"));
    assert_eq!(
        decide(now),
        "process:later-f",
        "unknown: still in its context"
    );
    entries.replace_all([SandboxEntry::new(key("later-f"))
        .fork("billing", "http://x".parse().expect("a fork address"))]);
    assert_eq!(decide(now), "skip:forked");
}

#[test]
fn nothing_is_remembered_without_a_directory_generation_or_a_codec_memo() {
    use std::sync::atomic::Ordering::SeqCst;

    let tagged = baggage("prodbox.sandbox=fork-a");
    let no_generation = counting_directory(false);
    let with_generation = counting_directory(true);
    for (filter, lookups) in [
        (
            Filter::new(Role::baseline("billing"), no_generation.0),
            no_generation.2,
        ),
        (
            Filter::new(Role::baseline("billing"), with_generation.0)
                .codec(Codec::default().remember_headers(false)),
            with_generation.2,
        ),
    ] {
        for _ in 0..10 {
            assert_eq!(
                summary(&filter.decide(Some(&tagged), SystemTime::now())),
                "skip:forked"
            );
        }
        assert_eq!(lookups.load(SeqCst), 10);
    }

    // Two `baggage` headers, or a legacy carrier beside one, are never answered from memory.
    let (counting, _, lookups) = counting_directory(true);
    let filter = Filter::new(Role::baseline("billing"), counting);
    let two = headers(&[
        ("baggage", b"userId=7"),
        ("baggage", b"prodbox.sandbox=fork-a"),
    ]);
    let legacy = headers(&[
        ("baggage", b"prodbox.sandbox=fork-a"),
        ("uberctx-userId", b"7"),
    ]);
    for _ in 0..5 {
        for headers in [&two, &legacy] {
            assert_eq!(
                summary(&filter.decide(Some(headers), SystemTime::now())),
                "skip:forked"
            );
        }
    }
    assert_eq!(lookups.load(SeqCst), 10);
}

#[test]
fn filters_never_answer_from_each_others_memory() {
    // Same header, same thread, same directory: roles, services and codecs decide differently.
    let directory = directory();
    let header = baggage("sd-routing-key=fork-a");
    let tagged = baggage("prodbox.sandbox=fork-a");
    let billing = Filter::new(Role::baseline("billing"), directory.clone());
    let aliased = billing
        .clone()
        .codec(Codec::default().alias("sd-routing-key"));
    let shipping = Filter::new(Role::baseline("shipping"), directory.clone());
    let own = Filter::new(Role::sandbox(key("fork-a")), directory.clone());
    let other = Filter::new(Role::sandbox(key("plain-b")), directory);
    let now = SystemTime::now();
    for _ in 0..5 {
        assert_eq!(summary(&billing.decide(Some(&header), now)), "process:-");
        assert_eq!(summary(&aliased.decide(Some(&header), now)), "skip:forked");
        assert_eq!(summary(&billing.decide(Some(&tagged), now)), "skip:forked");
        assert_eq!(
            summary(&shipping.decide(Some(&tagged), now)),
            "process:fork-a"
        );
        assert_eq!(summary(&own.decide(Some(&tagged), now)), "process:fork-a");
        assert_eq!(
            summary(&other.decide(Some(&tagged), now)),
            "skip:other_sandbox"
        );
    }
    // More filters than a thread remembers headers (64): they share slots, and each is
    // still answered only with its own decisions.
    let filters: Vec<(Filter, &str)> = (0..256)
        .map(|i| match i % 2 {
            0 => (billing.clone().codec(Codec::default()), "skip:forked"),
            _ => (shipping.clone().codec(Codec::default()), "process:fork-a"),
        })
        .collect();
    for (filter, expected) in &filters {
        for _ in 0..3 {
            assert_eq!(summary(&filter.decide(Some(&tagged), now)), *expected);
        }
    }
    for (filter, expected) in filters.iter().rev() {
        assert_eq!(summary(&filter.decide(Some(&tagged), now)), *expected);
    }
}

#[test]
fn malformed_baggage_is_decided_afresh_with_the_headers_beside_it() {
    // With legacy carriers off, the memory's key is the `baggage` header alone, but whether
    // malformed baggage is a sandbox message also depends on the other header names.
    let filter = Filter::new(Role::baseline("billing"), directory())
        .codec(Codec::default().legacy_carriers(false));
    let plain = headers(&[("baggage", b"not a member".as_slice())]);
    let mixed = headers(&[
        ("baggage", b"not a member".as_slice()),
        ("uberctx-prodbox.sandbox", b"fork-a".as_slice()),
    ]);
    let now = SystemTime::now();
    for _ in 0..3 {
        assert_eq!(summary(&filter.decide(Some(&plain), now)), "process:-");
        assert_eq!(summary(&filter.decide(Some(&plain), now)), "process:-");
        assert_eq!(
            summary(&filter.decide(Some(&mixed), now)),
            "dead_letter:baggage_malformed_member"
        );
    }
}
