//! The sandbox context in process, carried by [`opentelemetry::Context`].
//!
//! The context is stored twice: as a typed [`SandboxContext`], which prodbox trusts, and as
//! ordinary OpenTelemetry baggage (`prodbox.sandbox`, `prodbox.actor`, `prodbox.origin` and the
//! foreign members), so that other OpenTelemetry instrumentation sees and propagates it. It needs
//! no OpenTelemetry SDK or exporter.
//!
//! <div class="warning">
//!
//! `tokio::spawn` starts a task with **no** context: a sandboxed request that spawns work with
//! it loses its sandbox, and the work runs as production. So do `spawn_blocking`, threads and
//! library workers. Use [`prodbox_core::spawn`](crate::spawn) and the other helpers of the `task` module (or [`FutureExt::in_current_sandbox`]
//! with another executor).
//!
//! </div>
//!
//! prodbox never reads the sandbox back from OpenTelemetry baggage: baggage that another
//! propagator extracted did not pass prodbox's trust policy.
//!
//! # Example
//!
//! ```
//! use prodbox_core::{Sandbox, context::{self, FutureExt}, task};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::new("pr-42".parse()?);
//! let seen = async {
//!     tokio::task::yield_now().await;
//!     // Spawned with the helper, the task keeps the sandbox.
//!     task::spawn(async { context::current() }).await
//! }
//! .in_sandbox(sandbox.clone())
//! .await?;
//! assert_eq!(seen, Some(sandbox));
//! assert_eq!(context::current(), None);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::{Context, StringValue};

use crate::codec::{self, ForeignMembers};
use crate::limits;
use crate::sandbox::Sandbox;

/// Everything prodbox propagates for one request: the sandbox (if any), the token it arrived
/// with, and the baggage members that are not ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxContext {
    sandbox: Option<Sandbox>,
    token: Option<Arc<str>>,
    foreign: ForeignMembers,
}

impl SandboxContext {
    /// A context for `sandbox` with no other baggage.
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox: Some(sandbox),
            ..Self::default()
        }
    }

    /// A baseline context that only carries other members onward.
    pub fn baseline(foreign: ForeignMembers) -> Self {
        Self {
            foreign,
            ..Self::default()
        }
    }

    /// Adds the members that are not ours.
    pub fn with_foreign(mut self, foreign: ForeignMembers) -> Self {
        self.foreign = foreign;
        self
    }

    /// Keeps the signed token the sandbox arrived with.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    /// The sandbox, if this is a sandboxed request.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The signed token the sandbox arrived with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Members that are not ours, in arrival order.
    pub fn foreign(&self) -> &ForeignMembers {
        &self.foreign
    }

    /// The context of the current task, if prodbox attached one.
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| cx.sandbox_context().cloned())
    }

    /// `cx` with this sandbox context attached, typed and mirrored into its OTel baggage.
    pub fn attach_to(&self, cx: &Context) -> Context {
        let inherited = cx.baggage();
        // `cx` already carries this very context, its mirror untouched (a sandboxed request
        // handled inside the same sandbox's context): attaching it again changes nothing.
        if let Some(attached) = cx.get::<Attached>()
            && attached.mirrors(inherited)
            && attached.context == *self
        {
            return cx.clone();
        }
        // OpenTelemetry validates every key it is given and cannot copy a baggage, so building
        // the mirror is most of the cost of attaching. When `cx` already holds exactly this
        // mirror (a sandboxed request nested in the same sandbox), it is kept as it is. When
        // `cx` is empty (an ingress), a context holding only the mirror is the same for every
        // request of the sandbox, and is shared from a cache.
        let mut context = std::borrow::Cow::Borrowed(self);
        let (cx, baggage) = if self.is_mirrored_by(inherited) {
            (cx.clone(), address(inherited))
        } else if let Some(sandbox) = self.sandbox.as_ref().filter(|_| self.foreign.is_empty())
            && inherited.is_empty()
            && empty::is_empty(cx)
        {
            mirrors::of(sandbox, || {
                Context::new().with_baggage(self.mirror(&Baggage::new()))
            })
        } else {
            let cx = cx.with_baggage(self.mirror(inherited));
            let baggage = address(cx.baggage());
            // Members the parent already carried in its OpenTelemetry baggage are part of
            // this context too: egress sends them onward, as `ContextExt::with_sandbox` does.
            if let std::borrow::Cow::Owned(foreign) =
                Self::merged_foreign(Some(&self.foreign), inherited)
            {
                context = std::borrow::Cow::Owned(self.clone().with_foreign(foreign));
            }
            (cx, baggage)
        };
        // Remember which baggage we wrote, so that egress can tell whether the application
        // changed it since (and only then pays for merging it). Holding the context keeps that
        // baggage alive, so its address cannot be reused by other baggage meanwhile.
        cx.with_value(Attached {
            context: context.into_owned(),
            baggage,
            mirror: cx.clone(),
        })
    }

    /// The OpenTelemetry baggage for this context: the members of `inherited` that are not ours,
    /// then ours, then the foreign members.
    fn mirror(&self, inherited: &Baggage) -> Baggage {
        let mut baggage = Baggage::new();
        for (key, (value, meta)) in inherited {
            // Routing keys, ours or another tool's, come only from this context (which the
            // trust policy filtered), never from whatever the parent carried.
            if !codec::in_namespace(key.as_str()) && !codec::is_known_alias(key.as_str()) {
                let _ = baggage.insert_with_metadata(key.clone(), value.clone(), meta.clone());
            }
        }
        if let Some(sandbox) = &self.sandbox {
            // Shared strings: the mirror costs no copies.
            let _ = baggage.insert(codec::SANDBOX, StringValue::from(sandbox.key().shared()));
            let (actor, origin) = sandbox.shared_labels();
            if let Some(actor) = actor {
                let _ = baggage.insert(codec::ACTOR, StringValue::from(actor));
            }
            if let Some(origin) = origin {
                let _ = baggage.insert(codec::ORIGIN, StringValue::from(origin));
            }
        }
        for member in self.foreign.iter() {
            let _ = baggage.insert_with_metadata(
                member.key.to_owned(),
                member.decoded_value().into_owned(),
                member.properties.unwrap_or_default().to_owned(),
            );
        }
        baggage
    }

    /// Whether `baggage` holds exactly what [`mirror`](Self::mirror) would build from it: our
    /// members with these values and nothing else (only checked when there are no foreign
    /// members, the common case).
    fn is_mirrored_by(&self, baggage: &Baggage) -> bool {
        let Some(sandbox) = &self.sandbox else {
            return false;
        };
        if !self.foreign.is_empty() {
            return false;
        }
        let expected =
            1 + usize::from(sandbox.actor().is_some()) + usize::from(sandbox.origin().is_some());
        // Keys are unique, so the right count of matching entries is an exact match. A walk
        // over a few entries costs less than hashing each key for a lookup.
        baggage.len() == expected
            && baggage.iter().all(|(key, (value, meta))| {
                let ours = match key.as_str() {
                    codec::SANDBOX => Some(sandbox.key().as_str()),
                    codec::ACTOR => sandbox.actor(),
                    codec::ORIGIN => sandbox.origin(),
                    _ => None,
                };
                ours == Some(value.as_str()) && meta.as_str().is_empty()
            })
    }

    /// The foreign members to send onward from `cx`: ours, plus any member the application
    /// added through the OpenTelemetry baggage API since (sorted by key, as OTel keeps no order).
    pub fn outbound_foreign(cx: &Context) -> std::borrow::Cow<'_, ForeignMembers> {
        Self::outbound(cx).1
    }

    /// The context attached to `cx` and [`outbound_foreign`](Self::outbound_foreign), with one
    /// lookup.
    pub(crate) fn outbound(
        cx: &Context,
    ) -> (
        Option<&SandboxContext>,
        std::borrow::Cow<'_, ForeignMembers>,
    ) {
        let attached = cx.get::<Attached>();
        (
            attached.map(|a| &a.context),
            Self::foreign_beside(cx, attached),
        )
    }

    fn foreign_beside<'a>(
        cx: &'a Context,
        attached: Option<&'a Attached>,
    ) -> std::borrow::Cow<'a, ForeignMembers> {
        use std::borrow::Cow;
        if let Some(attached) = attached
            && attached.mirrors(cx.baggage())
        {
            return Cow::Borrowed(&attached.context.foreign);
        }
        Self::merged_foreign(attached.map(|a| &a.context.foreign), cx.baggage())
    }

    /// `base`, then the members of `baggage` that are neither ours nor in `base` (sorted by key,
    /// as OpenTelemetry keeps no order). Members under another tool's routing key
    /// ([`KNOWN_ALIASES`](codec::KNOWN_ALIASES)) are never taken from OpenTelemetry baggage: it
    /// may hold what an outer layer read from an untrusted request, which the trust policy
    /// stripped from this context. They are also capped, so that `base` always fits in the
    /// outbound header: the last of them (by key) are dropped beyond the W3C minimum limits
    /// (not a codec's own, smaller ones: such a codec refuses the header instead), with room
    /// kept for our members.
    fn merged_foreign<'a>(
        base: Option<&'a ForeignMembers>,
        baggage: &Baggage,
    ) -> std::borrow::Cow<'a, ForeignMembers> {
        use std::borrow::Cow;
        let unchanged =
            || base.map_or_else(|| Cow::Owned(ForeignMembers::default()), Cow::Borrowed);
        if baggage.is_empty() {
            return unchanged();
        }
        let known: Vec<&str> = base.map_or_else(Vec::new, |f| f.iter().map(|m| m.key).collect());
        let mut extra: Vec<(String, String)> = baggage
            .iter()
            .filter(|(key, _)| {
                let key = key.as_str();
                !codec::in_namespace(key) && !codec::is_known_alias(key) && !known.contains(&key)
            })
            .filter_map(|(key, (value, meta))| {
                let mut raw = format!("{}={}", key.as_str(), codec::encode_value(value.as_str()));
                if !meta.as_str().is_empty() {
                    raw.push(';');
                    raw.push_str(meta.as_str());
                }
                // OpenTelemetry does not validate metadata: keep only what re-reads as exactly
                // this one member, so that nothing an application set can break (or smuggle
                // members into) the outbound header.
                codec::is_single_member(&raw).then(|| (key.as_str().to_owned(), raw))
            })
            .collect();
        extra.sort();
        let mut members: Vec<&str> = base.map_or_else(Vec::new, |f| f.iter_raw().collect());
        // Room for our own members (key, actor, origin, token) in either limit.
        let mut room_members =
            limits::DEFAULT_MAX_BAGGAGE_MEMBERS.saturating_sub(members.len() + 4);
        let mut room_bytes = limits::DEFAULT_MAX_BAGGAGE_BYTES
            .saturating_sub(base.map_or(0, |f| f.as_str().len()) + OURS_BYTES);
        let before = members.len();
        for (_, raw) in &extra {
            if room_members == 0 || raw.len() + 1 > room_bytes {
                break;
            }
            room_members -= 1;
            room_bytes -= raw.len() + 1;
            members.push(raw);
        }
        // Nothing new (or nothing that fits): the members stay as they were.
        if members.len() == before {
            return unchanged();
        }
        Cow::Owned(ForeignMembers::from_raw_members(members))
    }
}

/// Whether a context holds nothing at all. OpenTelemetry offers no such test; its `Debug`
/// output tells an empty context from any other (it counts entries and the span, and shows
/// suppression), so a context is empty when it formats exactly as `Context::new()` does. That
/// is checked once against contexts that are not empty: should a future version format them
/// alike, no context counts as empty and nothing is shared.
mod empty {
    use std::fmt::{self, Write as _};
    use std::sync::OnceLock;

    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    struct Probe;

    fn debug(cx: &Context) -> String {
        let mut out = String::new();
        let _ = write!(out, "{cx:?}");
        out
    }

    /// A sampled remote span context, `n` for its ids.
    pub(super) fn span(n: u64) -> SpanContext {
        let (trace, span) = (TraceId::from(u128::from(n)), SpanId::from(n));
        SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE)
    }

    /// Contexts that are not empty, one of each kind: a value, a span, suppression.
    pub(super) fn others() -> [Context; 3] {
        let span = span(1);
        [
            Context::new().with_value(Probe),
            Context::new().with_remote_span_context(span),
            Context::new().with_telemetry_suppressed(),
        ]
    }

    /// The `Debug` text of an empty context, if it differs from every non-empty one tried.
    fn reference() -> Option<&'static str> {
        static REFERENCE: OnceLock<Option<Box<str>>> = OnceLock::new();
        REFERENCE
            .get_or_init(|| {
                let empty = debug(&Context::new());
                others()
                    .iter()
                    .all(|cx| debug(cx) != empty)
                    .then(|| empty.into_boxed_str())
            })
            .as_deref()
    }

    /// Compares what is written with the expected text, stopping at the first difference.
    /// The pieces are a few bytes each: a byte loop beats calling `memcmp` for each.
    struct Matches<'a>(&'a [u8]);

    impl Matches<'_> {
        fn eat(&mut self, piece: &[u8]) -> fmt::Result {
            match self.0.split_at_checked(piece.len()) {
                Some((head, rest)) if head.iter().zip(piece).all(|(a, b)| a == b) => {
                    self.0 = rest;
                    Ok(())
                }
                _ => Err(fmt::Error),
            }
        }
    }

    impl fmt::Write for Matches<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.eat(s.as_bytes())
        }

        fn write_char(&mut self, c: char) -> fmt::Result {
            self.eat(c.encode_utf8(&mut [0; 4]).as_bytes())
        }
    }

    /// Whether `cx` holds no value, no span and no suppression.
    pub(super) fn is_empty(cx: &Context) -> bool {
        let Some(reference) = reference() else {
            return false;
        };
        let mut matches = Matches(reference.as_bytes());
        write!(matches, "{cx:?}").is_ok() && matches.0.is_empty()
    }
}

/// Contexts holding only the baggage mirror of one sandbox, built once per sandbox: attaching
/// a sandbox to an empty context then costs no baggage. Bounded and never waited for
/// ([`Slots`](crate::cache::Slots)).
mod mirrors {
    use opentelemetry::Context;
    use opentelemetry::baggage::BaggageExt;

    use crate::cache::{Keep, Slots};
    use crate::sandbox::Sandbox;

    const SLOTS: usize = 256;

    /// A sandbox, its mirror context, and the address of that context's baggage.
    type Entry = (Sandbox, Context, usize);

    static CACHE: Slots<Entry, SLOTS> = Slots::new();

    /// The mirror context of `sandbox` and the address of its baggage, from the cache or from
    /// `build`.
    pub(super) fn of(sandbox: &Sandbox, build: impl FnOnce() -> Context) -> (Context, usize) {
        let hash = crate::hash::WordHash::new(0)
            .bytes(sandbox.key().as_str().as_bytes())
            .finish();
        // Equal sandboxes (key, actor, origin, expiry) have equal mirrors.
        let found = CACHE.get(hash, |(cached, cx, baggage)| {
            (cached == sandbox).then(|| (cx.clone(), *baggage))
        });
        let miss = match found {
            Ok(found) => return found,
            Err(miss) => miss,
        };
        let cx = build();
        let baggage = super::address(cx.baggage());
        CACHE.put(miss, Keep::Now, || (sandbox.clone(), cx.clone(), baggage));
        (cx, baggage)
    }
}

/// Bytes kept free for our own members when members from OpenTelemetry baggage are added: a
/// key, an actor and an origin (each at most 256 bytes, up to three times that encoded) and a
/// token, with their names.
const OURS_BYTES: usize = 3 * 3 * limits::MAX_LABEL_LEN + limits::MAX_TOKEN_LEN;

/// The context as prodbox attached it, and the context holding the baggage it mirrored into.
#[derive(Debug)]
struct Attached {
    context: SandboxContext,
    /// The address of `mirror`'s baggage (looking it up each time costs a map lookup).
    baggage: usize,
    /// Holds that baggage alive, so that its address cannot be reused by other baggage.
    #[expect(dead_code, reason = "held only to keep the baggage alive")]
    mirror: Context,
}

impl Attached {
    /// Whether `baggage` is the very baggage this context was mirrored into.
    fn mirrors(&self, baggage: &Baggage) -> bool {
        self.baggage == address(baggage)
    }
}

fn address(baggage: &Baggage) -> usize {
    std::ptr::from_ref(baggage) as usize
}

/// Adds sandbox access to [`opentelemetry::Context`].
pub trait ContextExt {
    /// A copy of this context running in `sandbox` (keeping other baggage).
    fn with_sandbox(&self, sandbox: Sandbox) -> Context;
    /// A copy of this context with no sandbox (keeping other baggage): for work that must run
    /// as production, such as a cleanup job started from a sandboxed request.
    fn without_sandbox(&self) -> Context;
    /// The sandbox of this context.
    fn sandbox(&self) -> Option<&Sandbox>;
    /// Everything prodbox propagates from this context.
    fn sandbox_context(&self) -> Option<&SandboxContext>;
}

impl ContextExt for Context {
    fn with_sandbox(&self, sandbox: Sandbox) -> Context {
        let foreign = SandboxContext::outbound_foreign(self).into_owned();
        SandboxContext::new(sandbox)
            .with_foreign(foreign)
            .attach_to(self)
    }

    fn without_sandbox(&self) -> Context {
        let foreign = SandboxContext::outbound_foreign(self).into_owned();
        crate::plumbing::observe::forget(SandboxContext::baseline(foreign).attach_to(self))
    }

    fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox_context()?.sandbox.as_ref()
    }

    fn sandbox_context(&self) -> Option<&SandboxContext> {
        self.get::<Attached>().map(|attached| &attached.context)
    }
}

/// The sandbox of the current task, or `None` for a production request.
pub fn current() -> Option<Sandbox> {
    Context::map_current(|cx| cx.sandbox().cloned())
}

/// Calls `f` with the sandbox of the current task, without cloning it: for checks on hot paths.
pub fn with_current<R>(f: impl FnOnce(Option<&Sandbox>) -> R) -> R {
    Context::map_current(|cx| f(cx.sandbox()))
}

/// Runs futures inside a sandbox context.
pub trait FutureExt: Future + Sized {
    /// Runs this future (every poll of it) inside `sandbox`.
    fn in_sandbox(self, sandbox: Sandbox) -> WithSandbox<Self> {
        let cx = Context::map_current(|cx| cx.with_sandbox(sandbox));
        WithSandbox::new(self, cx, false)
    }

    /// Runs this future inside the current context (and [scope](in_scope)), wherever it is
    /// polled later.
    fn in_current_sandbox(self) -> WithSandbox<Self> {
        WithSandbox::new(self, Context::current(), crate::scope::entered())
    }

    /// Runs this future inside `cx`.
    fn in_context(self, cx: Context) -> WithSandbox<Self> {
        WithSandbox::new(self, cx, false)
    }

    /// Runs this future as production work on purpose: with no sandbox (removed if the current
    /// context has one), in a [scope](in_scope) prodbox recognises. Background jobs and start-up
    /// work of a service whose pools require a scope run this way.
    fn in_production(self) -> WithSandbox<Self> {
        WithSandbox::new(self, production(), true)
    }
}

/// The current context as production work: no sandbox, in a [scope](in_scope). Shared while
/// the current context is empty.
pub fn production() -> Context {
    Context::map_current(|cx| {
        if cx.sandbox_context().is_some_and(|c| c.sandbox().is_none()) {
            return crate::plumbing::observe::forget(cx.clone());
        }
        if cx.sandbox().is_none() && empty::is_empty(cx) {
            static EMPTY: std::sync::OnceLock<Context> = std::sync::OnceLock::new();
            return EMPTY
                .get_or_init(|| {
                    SandboxContext::baseline(ForeignMembers::default()).attach_to(&Context::new())
                })
                .clone();
        }
        cx.without_sandbox()
    })
}

/// Whether the current task runs in a scope prodbox recognises: a request or message one of its
/// layers admitted (sandboxed or production), or work started with
/// [`in_production`](FutureExt::in_production) or the `task` module's helpers from such a
/// scope. Work that lost its context (`tokio::spawn`, a thread) runs in none; pools that
/// require a scope refuse it.
pub fn in_scope() -> bool {
    crate::scope::entered() || Context::map_current(|cx| cx.get::<Attached>().is_some())
}

impl<F: Future> FutureExt for F {}

/// A future running inside a sandbox context; see [`FutureExt`].
#[pin_project::pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct WithSandbox<F> {
    #[pin]
    inner: F,
    cx: Context,
    /// Whether it runs in a production scope (see [`in_scope`]).
    scoped: bool,
}

impl<F> WithSandbox<F> {
    /// `inner`, polled inside `cx` and, if `scoped`, a production scope.
    pub(crate) fn new(inner: F, cx: Context, scoped: bool) -> Self {
        Self { inner, cx, scoped }
    }
}

impl<F: Future> Future for WithSandbox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        // A copy attached each poll, never the context read back from the thread: a future
        // holding a guard of its own across an await would otherwise pass its context on to
        // every later poll.
        let _guard = this.cx.clone().attach();
        let _scope = this.scoped.then(crate::scope::enter);
        this.inner.poll(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(cx: &Context) -> Vec<(String, String, String)> {
        let mut members: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
            .collect();
        members.sort();
        members
    }

    #[test]
    fn a_mirror_already_in_place_is_kept_and_any_other_is_rebuilt() {
        let pr42 = || {
            Sandbox::builder("pr-42")
                .unwrap()
                .actor("alice")
                .unwrap()
                .build()
        };
        let outer = SandboxContext::new(pr42()).attach_to(&Context::new());
        let fresh = SandboxContext::new(pr42()).attach_to(&Context::new());

        // The same sandbox nested in its own context: the very same baggage.
        let nested = SandboxContext::new(pr42()).attach_to(&outer);
        assert!(std::ptr::eq(nested.baggage(), outer.baggage()));
        assert_eq!(members(&nested), members(&fresh));
        assert!(matches!(
            SandboxContext::outbound_foreign(&nested),
            std::borrow::Cow::Borrowed(_)
        ));

        // Another actor, a missing actor, or foreign members: built anew.
        let bob = Sandbox::builder("pr-42")
            .unwrap()
            .actor("bob")
            .unwrap()
            .build();
        let keyed = Sandbox::new("pr-42".parse().unwrap());
        let foreign = ForeignMembers::from_raw_members(["userId=7"]);
        for context in [
            SandboxContext::new(bob),
            SandboxContext::new(keyed),
            SandboxContext::new(pr42()).with_foreign(foreign),
        ] {
            let cx = context.attach_to(&outer);
            assert!(!std::ptr::eq(cx.baggage(), outer.baggage()));
            assert_eq!(
                members(&cx),
                members(&context.attach_to(&Context::new())),
                "{context:?}"
            );
        }
    }

    /// The sandbox each poll of `future` saw, polled until done (at most `polls` times), each
    /// poll from a thread whose context is production's.
    fn sandboxes_seen<F: Future<Output = ()>>(future: F, polls: usize) -> Vec<Option<String>> {
        let seen = std::sync::Mutex::new(Vec::new());
        let mut future = std::pin::pin!(future);
        let mut task = TaskContext::from_waker(std::task::Waker::noop());
        let _production = production().attach();
        for _ in 0..polls {
            let poll = future.as_mut().poll(&mut task);
            seen.lock()
                .unwrap()
                .push(current().map(|s| s.key().to_string()));
            if poll.is_ready() {
                break;
            }
        }
        seen.into_inner().unwrap()
    }

    /// A future sees its sandbox in every poll; the thread is production's again between
    /// polls.
    #[test]
    fn every_poll_runs_in_the_sandbox() {
        let inside = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&inside);
        let mut left = 3;
        let future = std::future::poll_fn(move |_| {
            log.lock()
                .unwrap()
                .push(current().map(|s| s.key().to_string()));
            left -= 1;
            if left == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .in_sandbox(Sandbox::new("pr-42".parse().unwrap()));
        let between = sandboxes_seen(future, 10);
        assert_eq!(between, [None, None, None], "production's between polls");
        assert_eq!(*inside.lock().unwrap(), vec![Some("pr-42".to_owned()); 3]);
    }

    /// A future that holds a guard of its own across an await does not pass its context on:
    /// after it, the outer future is back in its own context, at once and in later polls.
    #[test]
    fn a_guard_held_across_an_await_stays_inside() {
        let inside = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&inside);
        let future = async move {
            async {
                let _held = Context::current().attach();
                yield_once().await;
            }
            .in_sandbox(Sandbox::new("pr-42".parse().unwrap()))
            .await;
            log.lock()
                .unwrap()
                .push(current().map(|s| s.key().to_string()));
            yield_once().await;
            log.lock()
                .unwrap()
                .push(current().map(|s| s.key().to_string()));
        }
        .in_context(production());
        sandboxes_seen(future, 10);
        assert_eq!(*inside.lock().unwrap(), [None, None]);
    }

    /// Pending once, then ready.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|task| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            task.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    #[test]
    fn only_an_empty_context_counts_as_empty() {
        struct Other;
        // Fails if OpenTelemetry's `Debug` stops telling contexts apart: sharing is then off.
        assert!(empty::is_empty(&Context::new()));
        assert!(empty::is_empty(&Context::current()));
        for cx in empty::others().into_iter().chain([
            Context::new().with_value(Other),
            Context::new().with_baggage([opentelemetry::KeyValue::new("k", "v")]),
            SandboxContext::baseline(ForeignMembers::default()).attach_to(&Context::new()),
        ]) {
            assert!(!empty::is_empty(&cx), "{cx:?}");
        }
    }

    #[test]
    fn attaching_to_an_empty_context_shares_the_mirror_and_to_any_other_keeps_it_whole() {
        use opentelemetry::trace::TraceContextExt;
        #[derive(Debug, PartialEq)]
        struct Other(u8);
        let sandbox = || {
            Sandbox::builder("pr-shared")
                .unwrap()
                .actor("alice")
                .unwrap()
                .origin("pr-1")
                .unwrap()
                .build()
        };
        let first = SandboxContext::new(sandbox()).attach_to(&Context::new());
        let second = SandboxContext::new(sandbox())
            .with_token(Some("t"))
            .attach_to(&Context::new());
        assert!(std::ptr::eq(first.baggage(), second.baggage()));
        assert_eq!(
            members(&first),
            [
                ("prodbox.actor".into(), "alice".into(), String::new()),
                ("prodbox.origin".into(), "pr-1".into(), String::new()),
                ("prodbox.sandbox".into(), "pr-shared".into(), String::new()),
            ]
        );
        assert_eq!(
            second.sandbox_context().and_then(SandboxContext::token),
            Some("t")
        );
        assert_eq!(
            first.sandbox_context().and_then(SandboxContext::token),
            None
        );
        assert!(matches!(
            SandboxContext::outbound_foreign(&second),
            std::borrow::Cow::Borrowed(_)
        ));

        // A parent with a value, a span or suppression keeps them, with a mirror of its own.
        let span = empty::span(9);
        let parent = Context::new()
            .with_value(Other(1))
            .with_remote_span_context(span.clone())
            .with_telemetry_suppressed();
        let cx = SandboxContext::new(sandbox()).attach_to(&parent);
        assert_eq!(cx.get::<Other>(), Some(&Other(1)));
        assert_eq!(cx.span().span_context(), &span);
        assert!(cx.is_telemetry_suppressed());
        assert!(!std::ptr::eq(cx.baggage(), first.baggage()));
        assert_eq!(members(&cx), members(&first));
        assert_eq!(cx.sandbox(), Some(&sandbox()));
    }

    #[test]
    fn attaching_the_context_already_attached_changes_nothing() {
        let context = SandboxContext::new(Sandbox::new("pr-again".parse().unwrap()));
        let outer = context.attach_to(&Context::new());
        let again = context.clone().attach_to(&outer);
        assert!(std::ptr::eq(
            again.get::<Attached>().unwrap(),
            outer.get::<Attached>().unwrap()
        ));
        // Another token is another context.
        let tokened = context.clone().with_token(Some("t")).attach_to(&outer);
        assert_eq!(
            tokened.sandbox_context().and_then(SandboxContext::token),
            Some("t")
        );
        assert!(std::ptr::eq(tokened.baggage(), outer.baggage()));
        // Baggage changed through the OTel API since: attached anew, the change kept.
        let changed = outer.with_baggage([opentelemetry::KeyValue::new("userId", "7")]);
        let cx = context.attach_to(&changed);
        assert!(!std::ptr::eq(
            cx.get::<Attached>().unwrap(),
            outer.get::<Attached>().unwrap()
        ));
        assert_eq!(
            members(&cx),
            [
                ("prodbox.sandbox".into(), "pr-again".into(), String::new()),
                ("userId".into(), "7".into(), String::new()),
            ]
        );
    }
}
