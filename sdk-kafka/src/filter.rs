//! Which consumer handles which message: the pure decision, kept apart from the consumer loop
//! so that it can be tested and measured on its own.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use prodbox_core::codec::{BaggageError, Codec};
use prodbox_core::directory::{Directory, Standing};
use prodbox_core::plumbing::codec::{self, Reads};
use prodbox_core::{SandboxContext, SandboxKey};
use rdkafka::message::Headers;

use crate::headers::HeaderSnapshot;
use crate::verdict::Verdict;
use crate::verdict_memory::{self, Basis, Clock, FilterId, Latest};

/// What a consumer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The production consumer of `service` (its name in the directory's fork lists).
    Baseline {
        /// The service.
        service: String,
    },
    /// A sandbox's fork of a service: processes only its own sandbox's messages.
    Sandbox {
        /// The sandbox.
        key: SandboxKey,
    },
}

impl Role {
    /// The production consumer of `service`.
    pub fn baseline(service: &str) -> Self {
        Self::Baseline {
            service: service.to_owned(),
        }
    }

    /// The consumer of sandbox `key`'s fork.
    pub fn sandbox(key: SandboxKey) -> Self {
        Self::Sandbox { key }
    }
}

/// The decision of one consumer. The rules, by role:
///
/// | message | `Baseline { service }` | `Sandbox { key }` |
/// |---|---|---|
/// | no sandbox | process | skip (`untagged`) |
/// | sandbox `key` | see the other rows | by the cuts: process inside its incarnation's ranges, once the baseline has committed past it; otherwise skip (`baseline_handles`). Disabled or expired: skip |
/// | another sandbox | see below | skip (`other_sandbox`) |
/// | a sandbox that forks `service` | by the cuts: the baseline records the cut where it first sees the fork; records from there are the fork's (skip, `forked`), earlier ones its own (process with the context attached) | |
/// | a sandbox that does not fork `service` | process **with its context attached**, so its effects stay isolated (a cut closes where it stopped forking) | |
/// | a sandbox the directory does not know | process with its context attached (never as production) | |
/// | a disabled or expired sandbox | skip (`sandbox_disabled`, `sandbox_expired`): it is over, and never production | skip |
/// | malformed or ambiguous sandbox headers | dead-letter | skip: the baseline dead-letters it, once |
/// | a signed token without the sandbox key (nothing here can verify it) | dead-letter (`token_without_key`) | skip |
/// | malformed baggage that mentions nothing of ours | process (it is no sandbox message) | skip (`untagged`) |
///
/// A message whose only `baggage` header repeats one decided recently (every message of a test
/// run carries the same) is decided from memory: the same verdict, as long as the directory has
/// not changed since (its [`generation`](Directory::generation)) and no expiry the verdict
/// depended on has passed. Dead letters and skips for expiry are always decided afresh. The
/// memory is per thread and bounded (64 headers of at most 512 bytes).
#[derive(Clone, Debug)]
pub struct Filter {
    role: Role,
    directory: Arc<dyn Directory>,
    codec: Codec,
    /// Keys the decisions this filter remembers (see [`verdict_memory`](crate::verdict_memory)).
    id: FilterId,
}

impl Filter {
    /// A filter for `role`, deciding by `directory`.
    pub fn new(role: Role, directory: impl Directory) -> Self {
        Self::with_shared_directory(role, Arc::new(directory))
    }

    pub(crate) fn with_shared_directory(role: Role, directory: Arc<dyn Directory>) -> Self {
        Self {
            role,
            directory,
            codec: Codec::default(),
            id: FilterId::next(),
        }
    }

    /// Uses `codec` (limits, aliases, legacy carriers). The filter remembers its decisions for
    /// recent headers when the codec remembers headers
    /// ([`Codec::remember_headers`], the default) and the directory has a
    /// [`generation`](Directory::generation).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self.id = FilterId::next();
        self
    }

    /// The role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The directory.
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    /// Whether `headers` carry anything of a sandbox (so deciding on them needs a fresh
    /// directory); untagged messages do not.
    pub fn concerns_a_sandbox<H: Headers + ?Sized>(&self, headers: Option<&H>) -> bool {
        let Some(headers) = headers else {
            return false;
        };
        let mut snapshot = HeaderSnapshot::new();
        // Unreadable headers are dead-lettered whatever the directory says.
        readable(|| snapshot.read(headers)).is_some()
            && codec::mentions_ours(&self.codec, &snapshot)
    }

    /// Decides what happens to a message with `headers` at `now`.
    pub fn decide<H: Headers + ?Sized>(&self, headers: Option<&H>, now: SystemTime) -> Verdict {
        self.decide_by(headers, &mut Clock(Some(now)))
    }

    /// [`decide`](Self::decide) by `clock`: read only when the verdict depends on the time.
    pub(crate) fn decide_by<H: Headers + ?Sized>(
        &self,
        headers: Option<&H>,
        clock: &mut Clock,
    ) -> Verdict {
        self.decide_with(headers, clock, &mut Latest::default(), |verdict| {
            verdict.into_owned()
        })
    }

    /// What `decide` makes of the verdict, lent when it is remembered: a consumer takes what
    /// it needs of it, and most of a verdict it skips by is never copied.
    pub(crate) fn decide_with<H: Headers + ?Sized, R>(
        &self,
        headers: Option<&H>,
        clock: &mut Clock,
        latest: &mut Latest,
        decide: impl FnOnce(Cow<'_, Verdict>) -> R,
    ) -> R {
        let Some(headers) = headers else {
            return decide(Cow::Owned(self.untagged()));
        };
        // One pass over the headers as rdkafka lists them, copying nothing: nearly every
        // message is decided from it (no baggage, or baggage remembered).
        let Some(reads) = readable(|| {
            let entries = (0..headers.count())
                .filter_map(|i| headers.try_get(i))
                .map(|h| (h.key, h.value));
            codec::reads_entries(&self.codec, entries)
        }) else {
            return decide(Cow::Owned(self.unreadable()));
        };
        let header = match reads {
            // No context of anybody's: decided without the codec or the memory.
            Reads::Nothing => return decide(Cow::Owned(self.untagged())),
            Reads::Remembered(header) => Some(header),
            Reads::Other { .. } => None,
        };
        // Read before the lookups it covers: a change in between only makes the remembered
        // decision unusable, never wrong.
        let remembering = header.zip(self.directory.generation());
        let (miss, decide) = match remembering {
            Some((header, generation)) => {
                match verdict_memory::recall(self.id, generation, header, clock, latest, decide) {
                    Ok(decided) => return decided,
                    Err(missed) => missed,
                }
            }
            None => (None, decide),
        };
        // The codec reads the headers more than once: read into a snapshot first.
        let mut snapshot = HeaderSnapshot::new();
        if readable(|| snapshot.read(headers)).is_none() {
            return decide(Cow::Owned(self.unreadable()));
        }
        let mut validity = Validity::default();
        let verdict = self.decide_afresh(&snapshot, clock.now(), &mut validity);
        if let (Some(miss), Some((header, generation)), Some(valid_until)) =
            (miss, remembering, validity.until())
        {
            let basis = Basis {
                filter: self.id,
                generation,
                valid_until,
            };
            verdict_memory::remember(miss, basis, header, &verdict);
        }
        decide(Cow::Owned(verdict))
    }

    /// A message with no context of anybody's.
    fn untagged(&self) -> Verdict {
        match &self.role {
            Role::Baseline { .. } => Verdict::Process(None),
            Role::Sandbox { .. } => skip("untagged", None),
        }
    }

    /// A message with a header name that is not UTF-8: rdkafka cannot even list its headers.
    fn unreadable(&self) -> Verdict {
        let error = BaggageError::InvalidUtf8 {
            carrier: "a header name".to_owned(),
        };
        match &self.role {
            Role::Baseline { .. } => Verdict::DeadLetter(error),
            Role::Sandbox { .. } => skip("malformed_left_to_baseline", None),
        }
    }

    /// Decides from the codec and the directory, noting in `validity` the expiries the verdict
    /// depends on.
    fn decide_afresh(
        &self,
        snapshot: &HeaderSnapshot<'_>,
        now: SystemTime,
        validity: &mut Validity,
    ) -> Verdict {
        let extracted = match self.codec.extract(snapshot) {
            Ok(extracted) => extracted,
            Err(error) => {
                // What happens to malformed baggage also depends on the other headers
                // (`mentions_ours`), which the memory's key does not cover.
                validity.forget();
                return self.malformed(snapshot, error);
            }
        };
        let foreign = extracted.foreign().clone();
        let Some(sandbox) = extracted.sandbox() else {
            // A token alone meant a sandbox, and no consumer holds keys to verify it: the
            // baseline must not process it as production.
            if extracted.token().is_some() {
                return match &self.role {
                    Role::Baseline { .. } => Verdict::DeadLetter(BaggageError::TokenWithoutKey),
                    Role::Sandbox { .. } => skip("malformed_left_to_baseline", None),
                };
            }
            return match &self.role {
                Role::Baseline { .. } => Verdict::Process(
                    (!foreign.is_empty()).then(|| SandboxContext::baseline(foreign)),
                ),
                Role::Sandbox { .. } => skip("untagged", None),
            };
        };
        let key = sandbox.key();
        if let Role::Sandbox { key: own } = &self.role
            && own != key
        {
            return skip("other_sandbox", Some(key));
        }
        let (sandbox, entry) = match Standing::of(self.directory.as_ref(), sandbox.clone(), now) {
            Standing::Active { sandbox, entry } => (sandbox, entry),
            Standing::Disabled => return skip("sandbox_disabled", Some(key)),
            Standing::Expired => {
                validity.forget();
                return skip("sandbox_expired", Some(key));
            }
        };
        let forking = match (&self.role, entry) {
            (Role::Baseline { service }, Some(entry)) if entry.fork_of(service).is_some() => {
                Some(entry.incarnation())
            }
            _ => None,
        };
        // Completion kept the earlier of the entry's and the message's expiry.
        validity.ends_at(sandbox.expires_at());
        Verdict::Cut {
            context: SandboxContext::new(sandbox)
                .with_foreign(foreign)
                .with_token(extracted.token()),
            forking,
        }
    }
}

impl Filter {
    /// Baggage that does not parse. When it mentions nothing of ours it is no sandbox message:
    /// production handles it (as HTTP and gRPC ingresses do). Otherwise the baseline consumer
    /// dead-letters it, and sandbox consumers leave it to the baseline, so that it is
    /// dead-lettered once, not once per consumer group.
    fn malformed(&self, headers: &HeaderSnapshot<'_>, error: BaggageError) -> Verdict {
        match (&self.role, codec::mentions_ours(&self.codec, headers)) {
            (_, false) => self.untagged(),
            (Role::Baseline { .. }, true) => Verdict::DeadLetter(error),
            (Role::Sandbox { .. }, true) => skip("malformed_left_to_baseline", None),
        }
    }
}

/// How long a verdict stays what the same message would get: until the earliest expiry it
/// depended on. A skip for expiry is never remembered: `decide` may be asked about an earlier
/// `now` later.
#[derive(Debug, Default)]
struct Validity {
    until: Option<SystemTime>,
    never: bool,
}

impl Validity {
    fn ends_at(&mut self, expiry: Option<SystemTime>) {
        if let Some(expiry) = expiry {
            self.until = Some(self.until.map_or(expiry, |until| until.min(expiry)));
        }
    }

    fn forget(&mut self) {
        self.never = true;
    }

    /// `None` when the verdict must not be remembered; `Some(None)` when it stays valid.
    fn until(&self) -> Option<Option<SystemTime>> {
        (!self.never).then_some(self.until)
    }
}

/// Runs `read` over a message's headers. rdkafka 0.39 panics on a header name that is not
/// UTF-8 (`Headers::try_get` unwraps it), and unsafe code is not allowed here to read names as
/// bytes: the panic is caught and the headers reported unreadable (`None`), so that one bad
/// producer cannot stop a partition.
pub(crate) fn readable<T>(read: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).ok()
}

fn skip(reason: &'static str, sandbox: Option<&SandboxKey>) -> Verdict {
    Verdict::Skip {
        reason,
        sandbox: sandbox.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    fn headers(entries: &[(&str, &str)]) -> OwnedHeaders {
        entries
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            })
    }

    fn key(s: &str) -> SandboxKey {
        s.parse().expect("a key")
    }

    fn decide(
        filter: &Filter,
        headers: &OwnedHeaders,
        at: SystemTime,
        latest: &mut Latest,
    ) -> Verdict {
        filter.decide_with(Some(headers), &mut Clock(Some(at)), latest, |verdict| {
            verdict.into_owned()
        })
    }

    fn sandbox_of(verdict: &Verdict) -> Option<String> {
        match verdict {
            Verdict::Cut { context, .. } | Verdict::Process(Some(context)) => {
                context.sandbox().map(|s| s.key().as_str().to_owned())
            }
            _ => None,
        }
    }

    /// One loop's copy of a decision against a kill switch, a re-enable, an expiry, another
    /// filter given the same copy, and a legacy carrier beside the remembered header.
    #[test]
    fn a_loops_copy_never_outlives_what_it_was_decided_on() {
        let now = SystemTime::now();
        let directory = MemoryDirectory::new();
        let mut entry = SandboxEntry::new(key("pr-copy-a"));
        entry.expires_at = Some(now + Duration::from_secs(60));
        directory.upsert(entry);
        let baseline = Filter::new(Role::baseline("billing"), directory.clone());
        let tagged = headers(&[("baggage", "prodbox.sandbox=pr-copy-a")]);
        let mut latest = Latest::default();
        for _ in 0..6 {
            let verdict = decide(&baseline, &tagged, now, &mut latest);
            assert_eq!(
                sandbox_of(&verdict).as_deref(),
                Some("pr-copy-a"),
                "{verdict:?}"
            );
        }
        // Disabled: skipped from the next message on.
        assert!(directory.set_disabled(&key("pr-copy-a"), true));
        for _ in 0..4 {
            let verdict = decide(&baseline, &tagged, now, &mut latest);
            assert!(
                matches!(
                    verdict,
                    Verdict::Skip {
                        reason: "sandbox_disabled",
                        ..
                    }
                ),
                "{verdict:?}"
            );
        }
        assert!(directory.set_disabled(&key("pr-copy-a"), false));
        for _ in 0..4 {
            let verdict = decide(&baseline, &tagged, now, &mut latest);
            assert_eq!(
                sandbox_of(&verdict).as_deref(),
                Some("pr-copy-a"),
                "{verdict:?}"
            );
        }
        // Expired: skipped.
        let later = now + Duration::from_secs(61);
        let verdict = decide(&baseline, &tagged, later, &mut latest);
        assert!(
            matches!(
                verdict,
                Verdict::Skip {
                    reason: "sandbox_expired",
                    ..
                }
            ),
            "{verdict:?}"
        );
        // Another filter (another role) with the same loop's copy decides by its own role.
        let other = Filter::new(Role::sandbox(key("pr-copy-b")), directory.clone());
        let verdict = decide(&other, &tagged, now, &mut latest);
        assert!(
            matches!(
                verdict,
                Verdict::Skip {
                    reason: "other_sandbox",
                    ..
                }
            ),
            "{verdict:?}"
        );

        // Untagged baggage, remembered and copied; then the same header with a legacy carrier
        // naming a sandbox beside it: never production.
        let plain = headers(&[("baggage", "tenant=acme")]);
        let mut latest = Latest::default();
        for _ in 0..6 {
            let verdict = decide(&baseline, &plain, now, &mut latest);
            assert!(matches!(verdict, Verdict::Process(_)), "{verdict:?}");
            assert_eq!(sandbox_of(&verdict), None);
        }
        for legacy in ["ot-baggage-prodbox.sandbox", "Uberctx-prodbox.sandbox"] {
            let with_legacy = headers(&[("baggage", "tenant=acme"), (legacy, "pr-copy-a")]);
            let verdict = decide(&baseline, &with_legacy, now, &mut latest);
            assert_eq!(
                sandbox_of(&verdict).as_deref(),
                Some("pr-copy-a"),
                "{legacy}: {verdict:?}"
            );
        }
    }
}
