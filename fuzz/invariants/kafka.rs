//! Invariants of the Kafka header path (`prodbox_kafka::Filter::decide` over rdkafka headers,
//! and the producer's `inject_headers`), over one fuzz input, shared by the cargo-fuzz target
//! `kafka_headers` and its stable proptest twin (`sdk-kafka/tests/fuzz_twins.rs` includes this
//! file and `lines.rs`).
//!
//! An input is a header set in the format of `lines.rs` (a line without `:` is a header with a
//! null value), made into rdkafka `OwnedHeaders`. The consumers of service `billing` decide it:
//! the baseline and the forks of `fork-a`, `off-c` (disabled), `old-d` (expired) and `later-f`
//! (expires later); `plain-b` forks only `shipping`; other keys are not registered. Each input
//! goes through the default codec and one with the `sd-routing-key` alias, and for each:
//!
//! * never a panic, whatever the headers;
//! * rdkafka gives back what was inserted (a name is cut at its first NUL byte: rdkafka reads
//!   names as C strings);
//! * every verdict is one of the documented ones, and follows the decision table of
//!   `Filter` given what the codec reads from the same headers: malformed input that mentions
//!   something of ours is dead-lettered by the baseline only, never processed; a message with a
//!   sandbox (or a token alone, which no consumer can verify) is never processed as production;
//! * exactly one consumer processes or dead-letters each message, unless its sandbox is
//!   disabled or expired (then none does);
//! * a processed message, relayed by its handler through `inject_headers` (into fresh headers,
//!   or into a copy of its own), is decided the same way again: the same sandbox, or baseline
//!   stays baseline.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::Context;
use prodbox_core::codec::{BaggageError, Carrier, Codec, Extracted};
use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};
use prodbox_core::{SandboxContext, SandboxKey};
use prodbox_kafka::{Filter, HeaderReader, Role, Verdict, inject_headers};
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::lines::Line;

/// The fixed "now" of every decision (Unix seconds).
pub(crate) const NOW_SECS: u64 = 1_800_000_000;
/// The service whose consumers decide.
const SERVICE: &str = "billing";
/// Every reason a `Skip` may give (the `Filter` docs).
const SKIP_REASONS: [&str; 6] = [
    "untagged",
    "other_sandbox",
    "sandbox_disabled",
    "sandbox_expired",
    "forked",
    "malformed_left_to_baseline",
];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn key(s: &str) -> SandboxKey {
    s.parse().expect("a valid sandbox key")
}

/// The directory every filter decides by.
pub(crate) fn directory() -> &'static MemoryDirectory {
    static DIRECTORY: OnceLock<MemoryDirectory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let hour = Duration::from_secs(3600);
        let directory = MemoryDirectory::new();
        let mut fork = SandboxEntry::new(key("fork-a"))
            .fork(SERVICE, "http://fork-a".parse().expect("a fork address"));
        fork.actor = Some("alice".to_owned());
        fork.origin = Some("PR-1".to_owned());
        directory.upsert(fork);
        directory.upsert(SandboxEntry::new(key("plain-b")).fork(
            "shipping",
            "http://plain-b".parse().expect("a fork address"),
        ));
        directory.upsert(
            SandboxEntry::new(key("off-c"))
                .fork(SERVICE, "http://off-c".parse().expect("a fork address"))
                .disabled(true),
        );
        directory.upsert(
            SandboxEntry::new(key("old-d"))
                .fork(SERVICE, "http://old-d".parse().expect("a fork address"))
                .expires_at(now() - hour),
        );
        directory.upsert(
            SandboxEntry::new(key("later-f"))
                .fork(SERVICE, "http://later-f".parse().expect("a fork address"))
                .expires_at(now() + hour),
        );
        directory
    })
}

/// The consumers of `billing`: the baseline, then one per sandbox that forks it.
fn roles() -> Vec<Role> {
    let mut roles = vec![Role::baseline(SERVICE)];
    roles.extend(
        ["fork-a", "off-c", "old-d", "later-f"]
            .into_iter()
            .map(|k| Role::sandbox(key(k))),
    );
    roles
}

/// The codecs every input goes through.
fn codecs() -> [Codec; 2] {
    [Codec::default(), Codec::default().alias("sd-routing-key")]
}

/// Kafka headers as rdkafka reads them back: names and optional values.
struct Reference(Vec<Line>);

impl Carrier for Reference {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        let name = name.to_owned();
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .filter_map(|(_, v)| v.as_deref())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

/// `headers` as rdkafka `OwnedHeaders`.
pub(crate) fn owned_headers(headers: &[Line]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new(), |out, (name, value)| {
            out.insert(Header {
                key: name,
                value: value.as_deref(),
            })
        })
}

/// Runs every check for one input.
pub(crate) fn check(data: &[u8]) {
    let lines = crate::lines::parse(data);
    let headers = owned_headers(&lines);
    // rdkafka gives back what was inserted; a name ends at its first NUL (a C string).
    let read: Vec<Line> = (0..headers.count())
        .map(|i| {
            let header = headers
                .try_get(i)
                .expect("rdkafka reads back every header it holds");
            (header.key.to_owned(), header.value.map(<[u8]>::to_vec))
        })
        .collect();
    let expected: Vec<Line> = lines
        .iter()
        .map(|(name, value)| {
            let name = name.split('\0').next().unwrap_or_default().to_owned();
            (name, value.clone())
        })
        .collect();
    assert_eq!(read, expected, "rdkafka changed the headers");
    let reference = Reference(read);

    for codec in codecs() {
        check_codec(&codec, &headers, &reference);
    }
    // No headers at all: the baseline takes it, every fork skips it.
    for role in roles() {
        let verdict =
            Filter::new(role.clone(), directory().clone()).decide(None::<&OwnedHeaders>, now());
        let want = match role {
            Role::Baseline { .. } => "process:-",
            Role::Sandbox { .. } => "skip:untagged",
        };
        assert_eq!(summary(&verdict), want);
    }
}

/// A verdict in a form that compares: `process:<sandbox or ->`, `cut:<sandbox>:<forking
/// incarnation or ->`, `skip:<reason>` or `dead_letter:<reason>`.
pub(crate) fn summary(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Process(None) => "process:-".to_owned(),
        Verdict::Process(Some(cx)) => {
            format!("process:{}", cx.sandbox().map_or("-", |s| s.key().as_str()))
        }
        Verdict::Cut { context, forking } => format!(
            "cut:{}:{}",
            context.sandbox().map_or("-", |s| s.key().as_str()),
            forking.map_or("-".to_owned(), |i| i.to_string())
        ),
        Verdict::Skip { reason, .. } => format!("skip:{reason}"),
        Verdict::DeadLetter(error) => format!("dead_letter:{}", error.reason()),
    }
}

fn check_codec(codec: &Codec, headers: &OwnedHeaders, reference: &Reference) {
    let result = codec.extract(reference);
    // The public carrier over rdkafka headers reads what the reference reads.
    match (&result, &codec.extract(&HeaderReader(headers))) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason()),
        (a, b) => panic!("HeaderReader disagrees: {a:?} / {b:?}"),
    }
    let mentions = prodbox_core::plumbing::codec::mentions_ours(codec, reference);
    let directory = directory();
    let mut handled = 0;
    for role in roles() {
        let filter = Filter::new(role.clone(), directory.clone()).codec(codec.clone());
        let verdict = filter.decide(Some(headers), now());
        check_documented(&verdict);
        check_table(&role, &verdict, &result, mentions);
        // A sandbox's record goes to the cuts, which give it to exactly one of the baseline
        // and the fork of the incarnation that forks the service (tested against the broker):
        // here it counts once, for the baseline.
        match &verdict {
            Verdict::Process(_) | Verdict::DeadLetter(_) => handled += 1,
            Verdict::Cut { .. } if matches!(role, Role::Baseline { .. }) => handled += 1,
            _ => {}
        }
        match &verdict {
            Verdict::Process(context) => check_relay(&filter, &verdict, context.as_ref(), headers),
            Verdict::Cut { context, .. } => check_relay(&filter, &verdict, Some(context), headers),
            _ => {}
        }
    }
    let sandbox_over = result
        .as_ref()
        .ok()
        .and_then(Extracted::key)
        .and_then(|k| directory.get(k))
        .is_some_and(|entry| entry.disabled || entry.is_expired_at(now()));
    let want = if sandbox_over { 0 } else { 1 };
    assert_eq!(
        handled, want,
        "{handled} consumers handle a message meant for {want} ({result:?})"
    );
}

/// Every verdict is one of the documented ones.
fn check_documented(verdict: &Verdict) {
    match verdict {
        Verdict::Process(_) | Verdict::Cut { .. } => {}
        Verdict::Skip { reason, .. } => {
            assert!(
                SKIP_REASONS.contains(reason),
                "undocumented skip {reason:?}"
            );
        }
        Verdict::DeadLetter(error) => assert!(!error.reason().is_empty()),
    }
}

/// The `Filter` decision table, given what the codec reads.
fn check_table(
    role: &Role,
    verdict: &Verdict,
    result: &Result<Extracted, BaggageError>,
    mentions: bool,
) {
    let got = summary(verdict);
    let x = match result {
        Err(error) => {
            let want = match (role, mentions) {
                (Role::Baseline { .. }, true) => format!("dead_letter:{}", error.reason()),
                (Role::Baseline { .. }, false) => "process:-".to_owned(),
                (Role::Sandbox { .. }, true) => "skip:malformed_left_to_baseline".to_owned(),
                (Role::Sandbox { .. }, false) => "skip:untagged".to_owned(),
            };
            assert_eq!(got, want, "malformed headers ({error}) by {role:?}");
            if let Verdict::Process(context) = verdict {
                assert!(context.is_none(), "unreadable baggage was carried on");
            }
            return;
        }
        Ok(x) => x,
    };
    let Some(k) = x.key() else {
        if x.token().is_some() {
            // A token alone meant a sandbox, and no consumer can verify it: never production.
            let want = match role {
                Role::Baseline { .. } => "dead_letter:token_without_key",
                Role::Sandbox { .. } => "skip:malformed_left_to_baseline",
            };
            assert_eq!(got, want, "a token without a key, by {role:?}");
            return;
        }
        match role {
            Role::Baseline { .. } => {
                assert_eq!(got, "process:-", "no sandbox, by the baseline");
                if let Verdict::Process(context) = verdict {
                    let foreign = context.as_ref().map(SandboxContext::foreign);
                    assert_eq!(foreign.cloned().unwrap_or_default(), *x.foreign());
                }
            }
            Role::Sandbox { .. } => assert_eq!(got, "skip:untagged"),
        }
        return;
    };
    let entry = directory().get(k);
    let over = entry.as_ref().and_then(|e| {
        if e.disabled {
            Some("skip:sandbox_disabled")
        } else if e.is_expired_at(now()) {
            Some("skip:sandbox_expired")
        } else {
            None
        }
    });
    let want = match role {
        Role::Sandbox { key: own } if own != k => "skip:other_sandbox".to_owned(),
        Role::Sandbox { .. } => over.map_or(format!("cut:{k}:-"), str::to_owned),
        Role::Baseline { service } => match over {
            Some(over) => over.to_owned(),
            None => match entry.filter(|e| e.fork_of(service).is_some()) {
                Some(e) => format!("cut:{k}:{}", e.incarnation()),
                None => format!("cut:{k}:-"),
            },
        },
    };
    assert_eq!(got, want, "sandbox {k} by {role:?}");
    match verdict {
        Verdict::Process(Some(context)) | Verdict::Cut { context, .. } => {
            let sandbox = context
                .sandbox()
                .expect("a sandboxed message keeps its sandbox");
            assert_eq!(sandbox.key(), k);
            assert_eq!(context.foreign(), x.foreign());
            assert_eq!(context.token(), x.token());
        }
        Verdict::Skip { sandbox, .. } => assert_eq!(sandbox.as_ref(), Some(k)),
        _ => {}
    }
}

/// The handler of a processed message produces a record in its context: with fresh headers, and
/// with a copy of the message's own. The same filter decides that record the same way.
fn check_relay(
    filter: &Filter,
    verdict: &Verdict,
    context: Option<&SandboxContext>,
    headers: &OwnedHeaders,
) {
    let cx = match context {
        Some(context) => context.attach_to(&Context::new()),
        None => Context::new(),
    };
    let _guard = cx.attach();
    let sandbox = context.and_then(SandboxContext::sandbox);
    for own in [None, Some(headers)] {
        let relayed = match inject_headers(own) {
            Ok(relayed) => relayed,
            Err(error) => {
                assert!(sandbox.is_some(), "a baseline record failed to send");
                assert!(
                    matches!(
                        *error.source,
                        BaggageError::TooLarge { .. } | BaggageError::TooManyMembers { .. }
                    ),
                    "relaying a processed message failed: {error}"
                );
                continue;
            }
        };
        let again = filter.decide(Some(&relayed), now());
        match (sandbox, &again) {
            (Some(sandbox), Verdict::Process(Some(next)) | Verdict::Cut { context: next, .. }) => {
                assert_eq!(next.sandbox(), Some(sandbox), "relay changed the sandbox");
                assert_eq!(summary(&again), summary(verdict));
            }
            (Some(sandbox), other) => {
                panic!("relayed message of {sandbox:?} decided {}", summary(other))
            }
            (None, Verdict::Process(next)) => assert!(
                next.as_ref().and_then(SandboxContext::sandbox).is_none(),
                "a baseline message became sandboxed when relayed"
            ),
            (None, other) => panic!("relayed baseline message decided {}", summary(other)),
        }
    }
}
