//! The one path from the stream to a message to handle, shared by both loops: everything this
//! consumer does not handle (skipped, dead-lettered, given to the other role by the cuts) is
//! done with here, and a message to handle waits here for a fresh directory and for its
//! sandbox's throttle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use prodbox_core::audit::Decision;
use prodbox_core::guardrails::Permit;
use prodbox_core::plumbing::metrics::KafkaOutcome;
use prodbox_core::{Guardrails, Sandbox, SandboxContext, SandboxKey};
use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::pull::Pulling;
use super::{
    DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, Done, Rebalances, SandboxConsumer, Source, audit,
};
use crate::cut::{Cut, Recent};
use crate::filter::Role;
use crate::in_flight::Ticket;
use crate::shutdown::{Shutdown, pause};
use crate::tally::LocalSkips;
use crate::verdict::Verdict;
use crate::verdict_memory::{Clock, Latest};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the step found.
pub(super) enum Next<'a, C: ConsumerContext + 'static> {
    /// A message this consumer handles.
    Ready(Ready<'a, C>),
    /// rdkafka reported an error (it recovers from most by itself).
    Error(KafkaError),
    /// Shutdown came first; a message held is left unhandled, and comes again.
    Stopped,
    /// The stream ended.
    Ended,
}

/// What `pull_now` found.
pub(super) enum Pulled<'a, C: ConsumerContext + 'static> {
    /// A message this consumer handles.
    Ready(Ready<'a, C>),
    /// A message the step decides, by this verdict when one was made: it may wait.
    Step(Held<'a, C>, Option<Verdict>),
    /// No message is ready, or another loop is pulling one.
    Wait,
    /// rdkafka reported an error.
    Error(KafkaError),
    /// Shutdown came first.
    Stopped,
    /// The stream ended.
    Ended,
}

/// What `decide_now` made of a message.
enum Now {
    /// Skipped (by the filter, or by the cuts: the other role handles it), and tallied.
    Skipped,
    /// Handled here, in its context (`None`: production's).
    Handle(Option<SandboxContext>),
    /// Decided by the step, which may wait (the directory, the cuts, a dead letter, the
    /// guardrails), from this verdict when one was made.
    Later(Option<Verdict>),
}

/// A message to handle, in flight until it is finished.
pub(super) struct Ready<'a, C: ConsumerContext + 'static> {
    pub(super) held: Held<'a, C>,
    /// Its context (`None`: production's).
    pub(super) context: Option<SandboxContext>,
    /// Its sandbox's slot, while it is handled.
    pub(super) permit: Option<Permit>,
}

/// A message taken from the stream and not finished: dropped unfinished, it puts the consumer
/// back on the message, which comes again.
pub(super) struct Held<'a, C: ConsumerContext + 'static> {
    consumer: &'a SandboxConsumer<C>,
    message: Option<BorrowedMessage<'a>>,
    ticket: Ticket,
}

impl<'a, C: ConsumerContext + 'static> Held<'a, C> {
    pub(super) fn message(&self) -> &BorrowedMessage<'a> {
        // Only `finish` and `into_parts` take it, consuming `self`.
        self.message.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Done with: its offset may be committed.
    pub(super) fn finish(mut self) {
        if let Some(message) = self.message.take() {
            self.consumer.finish(&message, self.ticket);
        }
    }

    /// The message and its ticket, no longer put back when dropped.
    pub(super) fn into_parts(mut self) -> Option<(BorrowedMessage<'a>, Ticket)> {
        self.message.take().map(|message| (message, self.ticket))
    }
}

impl<C: ConsumerContext + 'static> Drop for Held<'_, C> {
    fn drop(&mut self) {
        if let Some(message) = &self.message {
            self.consumer.rewind_to(message, self.ticket);
        }
    }
}

/// What a loop keeps from one message to the next.
pub(super) struct Local<'a> {
    /// Its skips, not tallied to the consumer yet.
    pub(super) skips: LocalSkips<'a>,
    /// The cuts it decided by last.
    cuts: Recent,
    /// The decision it recalled last.
    verdicts: Latest,
}

/// A loop waiting for messages, counted while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: ConsumerContext + 'static> SandboxConsumer<C> {
    /// What a new loop keeps.
    pub(super) fn local(&self) -> Local<'_> {
        Local {
            skips: self.tally.local(),
            cuts: Recent::default(),
            verdicts: Latest::default(),
        }
    }

    /// Takes messages from `messages` until one this consumer handles, doing with every other
    /// one what its verdict says.
    pub(super) async fn next<'a, S: Future<Output = ()>>(
        &'a self,
        messages: &mut MessageStream<'a, Rebalances<C>>,
        shutdown: &mut Shutdown<'_, S>,
        local: &mut Local<'a>,
    ) -> Next<'a, C> {
        loop {
            let pulled = match self.pull_now(messages, shutdown, local) {
                Pulled::Wait => {
                    // Counted first: a message finished from now on is stored by `finish`.
                    let _waiting = Waiting::enter(&self.waiting);
                    // Before waiting, what is done with is given to rdkafka (see `in_flight`),
                    // and the skips tallied to the consumer.
                    self.store_due();
                    local.skips.flush();
                    let pulled = async {
                        let pulling = self.pulling.lock().await;
                        (messages.next().await, pulling)
                    };
                    let (message, pulling) = tokio::select! {
                        biased;
                        () = shutdown.future().as_mut() => return Next::Stopped,
                        pulled = pulled => pulled,
                    };
                    match self.route(message, pulling, local) {
                        Ok(pulled) => pulled,
                        Err(_skipped) => continue,
                    }
                }
                pulled => pulled,
            };
            match pulled {
                Pulled::Ready(ready) => return Next::Ready(ready),
                Pulled::Step(held, verdict) => {
                    match self.step(held, verdict, shutdown.future()).await {
                        Some(Ok(ready)) => return Next::Ready(ready),
                        Some(Err(Done::Interrupted)) => return Next::Stopped,
                        Some(Err(Done::Completed)) | None => {}
                    }
                }
                Pulled::Error(error) => return Next::Error(error),
                Pulled::Stopped => return Next::Stopped,
                Pulled::Ended => return Next::Ended,
                Pulled::Wait => {}
            }
        }
    }

    /// Takes the messages ready now, without waiting, doing with each what its verdict says,
    /// until one this consumer handles, one the step decides, or none is ready.
    pub(super) fn pull_now<'a, S: Future<Output = ()>>(
        &'a self,
        messages: &mut MessageStream<'a, Rebalances<C>>,
        shutdown: &mut Shutdown<'_, S>,
        local: &mut Local<'a>,
    ) -> Pulled<'a, C> {
        // Kept from one skip to the next message: skips in a row take it once.
        let mut kept = None;
        loop {
            if shutdown.has_come() {
                return Pulled::Stopped;
            }
            // Pulled and taken under the pull lock (see `SandboxConsumer::pulling`).
            let Some(pulling) = kept.take().or_else(|| self.pulling.try_lock()) else {
                return Pulled::Wait;
            };
            let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
            let Poll::Ready(message) = messages.poll_next_unpin(&mut noop) else {
                return Pulled::Wait;
            };
            match self.route(message, pulling, local) {
                Ok(pulled) => return pulled,
                Err(pulling) => kept = Some(pulling),
            }
        }
    }

    /// Takes `message`, pulled under `pulling`: `Err` when it was skipped (and done with),
    /// giving the lock back for the next one.
    fn route<'a>(
        &'a self,
        message: Option<KafkaResult<BorrowedMessage<'a>>>,
        pulling: Pulling<'a>,
        local: &mut Local<'a>,
    ) -> Result<Pulled<'a, C>, Pulling<'a>> {
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Ok(Pulled::Error(error)),
            None => return Ok(Pulled::Ended),
        };
        let at = (self.topic(&message), message.partition(), message.offset());
        // Most messages are decided here, as they are pulled, without a future: a skip is
        // taken and finished at once.
        let verdict = match self.decide_now(&message, at, local) {
            Now::Skipped => {
                let due = self.in_flight.pass(at.0, at.1, at.2);
                self.finished(due);
                return Err(pulling);
            }
            Now::Handle(context) => Ok(context),
            Now::Later(verdict) => Err(verdict),
        };
        let ticket = self.in_flight.take(at.0, at.1, at.2);
        drop(pulling);
        local.skips.tick();
        let held = Held {
            consumer: self,
            message: Some(message),
            ticket,
        };
        Ok(match verdict {
            Ok(context) => match self.admit_now(context.as_ref()) {
                Ok(permit) => Pulled::Ready(Ready {
                    held,
                    context,
                    permit,
                }),
                // Throttled: the step waits.
                Err(()) => Pulled::Step(held, Some(Verdict::Process(context))),
            },
            Err(verdict) => Pulled::Step(held, verdict),
        })
    }

    /// What can be decided of `message`, at `at`, at once, from the filter's memory and the
    /// cuts read so far (the loop's `local` copies first): nearly every message. A skip is
    /// tallied here, from the verdict the memory lends.
    fn decide_now<'a>(
        &'a self,
        message: &BorrowedMessage<'_>,
        at: (&str, i32, i64),
        local: &mut Local<'a>,
    ) -> Now {
        // Observing, or a stale directory (see `step`): decided by the step.
        if self.observe
            || (self.filter.directory().is_stale()
                && self.filter.concerns_a_sandbox(message.headers()))
        {
            return Now::Later(None);
        }
        let headers = message.headers();
        self.filter.decide_with(
            headers,
            &mut Clock::default(),
            &mut local.verdicts,
            |verdict| {
                let cut = match &*verdict {
                    Verdict::Skip { reason, sandbox } => {
                        self.skipped(message, reason, sandbox.as_ref(), &mut local.skips);
                        return Now::Skipped;
                    }
                    Verdict::Cut { context, forking } => {
                        let sandbox = context.sandbox().map(Sandbox::key);
                        let cut = sandbox.and_then(|sandbox| {
                            self.cuts
                                .decided_recent(&mut local.cuts, sandbox, *forking, at)
                        });
                        if cut == Some(Cut::Skip) {
                            let reason = self.cut_skip_reason();
                            self.skipped(message, reason, sandbox, &mut local.skips);
                            return Now::Skipped;
                        }
                        cut
                    }
                    Verdict::Process(_) | Verdict::DeadLetter(_) => None,
                };
                match (verdict.into_owned(), cut) {
                    (Verdict::Process(context), _) => Now::Handle(context),
                    (Verdict::Cut { context, .. }, Some(Cut::Handle)) => Now::Handle(Some(context)),
                    (verdict, _) => Now::Later(Some(verdict)),
                }
            },
        )
    }

    /// The slot of the guardrails for a message handled in `context`, when one is free now
    /// (`Err`: throttled).
    fn admit_now(&self, context: Option<&SandboxContext>) -> Result<Option<Permit>, ()> {
        match (&self.guardrails, context.and_then(SandboxContext::sandbox)) {
            (Some(guardrails), Some(sandbox)) => {
                guardrails.admit(sandbox.key()).map(Some).map_err(drop)
            }
            _ => Ok(None),
        }
    }

    /// Why this consumer skips a record the cuts give to the other role.
    fn cut_skip_reason(&self) -> &'static str {
        match self.filter.role() {
            Role::Baseline { .. } => "forked",
            Role::Sandbox { .. } => "baseline_handles",
        }
    }

    /// Decides one message, by `verdict` when `decide_now` made one: `None` when it is done
    /// with here, `Some(Ok)` when this consumer handles it, `Some(Err(Interrupted))` when
    /// shutdown came first (`held` puts it back).
    pub(super) async fn step<'a, S: Future<Output = ()>>(
        &'a self,
        held: Held<'a, C>,
        verdict: Option<Verdict>,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<Result<Ready<'a, C>, Done>> {
        let message = held.message();
        if self.observe {
            self.observe(message);
            return Some(Ok(Ready {
                held,
                context: None,
                permit: None,
            }));
        }
        let verdict = match verdict {
            Some(verdict) => verdict,
            None => {
                // A stale directory may not know a fork created meanwhile: hold a sandbox's
                // message (its offset unstored) until the directory is fresh again. Untagged
                // messages do not depend on the directory and go on.
                // (The rare waits are boxed: the future of every message stays small.)
                if self.filter.directory().is_stale()
                    && self.filter.concerns_a_sandbox(message.headers())
                    && !Box::pin(self.until_fresh(message, shutdown)).await
                {
                    return Some(Err(Done::Interrupted));
                }
                self.filter
                    .decide_by(message.headers(), &mut Clock::default())
            }
        };
        let context = match verdict {
            // Skips, half of a baseline's messages or more, are decided and done with here.
            Verdict::Skip { reason, sandbox } => {
                self.skipped(message, reason, sandbox.as_ref(), &mut self.tally.local());
                held.finish();
                return None;
            }
            Verdict::DeadLetter(error) => {
                if Box::pin(self.dead_letter(message, &error.to_string(), shutdown)).await
                    == Done::Interrupted
                {
                    return Some(Err(Done::Interrupted));
                }
                // Audited and counted once it is in the dead-letter topic: an interrupted
                // send is tried again, and reported then.
                let detail = format!("{}: {error}", Source(message));
                audit(None, Decision::DeadLettered, error.reason(), &detail);
                self.count(message, KafkaOutcome::DeadLettered);
                held.finish();
                return None;
            }
            Verdict::Process(context) => context,
            Verdict::Cut { context, forking } => {
                let Some(sandbox) = context.sandbox().map(Sandbox::key) else {
                    held.finish();
                    return None;
                };
                let at = (self.topic(message), message.partition(), message.offset());
                let cut = match self.cuts.decided(sandbox, forking, at) {
                    Some(cut) => cut,
                    None => {
                        self.store_due();
                        Box::pin(self.cuts.decide(sandbox, forking, at, shutdown)).await
                    }
                };
                match cut {
                    Cut::Handle => Some(context),
                    Cut::Skip => {
                        let skips = &mut self.tally.local();
                        self.skipped(message, self.cut_skip_reason(), Some(sandbox), skips);
                        held.finish();
                        return None;
                    }
                    Cut::Unavailable(reason) => {
                        if Box::pin(self.dead_letter(message, &reason, shutdown)).await
                            == Done::Interrupted
                        {
                            return Some(Err(Done::Interrupted));
                        }
                        let detail = format!("{}: {reason}", Source(message));
                        audit(
                            Some(sandbox),
                            Decision::DeadLettered,
                            "cut_unavailable",
                            &detail,
                        );
                        self.count(message, KafkaOutcome::DeadLettered);
                        held.finish();
                        return None;
                    }
                    Cut::Interrupted => return Some(Err(Done::Interrupted)),
                }
            }
        };
        let sandbox = context.as_ref().and_then(SandboxContext::sandbox);
        let permit = match (&self.guardrails, sandbox) {
            (Some(guardrails), Some(sandbox)) => match guardrails.admit(sandbox.key()) {
                Ok(permit) => Some(permit),
                Err(_) => match Box::pin(self.admit(guardrails, sandbox.key(), shutdown)).await {
                    Some(permit) => Some(permit),
                    None => return Some(Err(Done::Interrupted)),
                },
            },
            _ => None,
        };
        Some(Ok(Ready {
            held,
            context,
            permit,
        }))
    }

    /// Audits, as observed, what this consumer would do with `message` (see
    /// `SandboxConsumerBuilder::observe_only`). The cuts are not consulted, since deciding
    /// by them records one: a forked sandbox's record is reported as the fork's, or as a dead
    /// letter when the directory keeps no cuts.
    fn observe(&self, message: &BorrowedMessage<'_>) {
        let verdict = self
            .filter
            .decide_by(message.headers(), &mut Clock::default());
        let (sandbox, decision, reason, error) = match &verdict {
            Verdict::Process(context) => {
                // Production's (untagged, or foreign baggage only): nothing to report.
                let Some(sandbox) = context.as_ref().and_then(SandboxContext::sandbox) else {
                    return;
                };
                self.observe_admission(message, sandbox.key());
                (
                    Some(sandbox.key()),
                    Decision::Accepted,
                    "handled_in_sandbox",
                    None,
                )
            }
            Verdict::Cut { context, forking } => {
                let Some(sandbox) = context.sandbox().map(Sandbox::key) else {
                    return;
                };
                match forking {
                    None => {
                        self.observe_admission(message, sandbox);
                        (
                            Some(sandbox),
                            Decision::Accepted,
                            "handled_in_sandbox",
                            None,
                        )
                    }
                    Some(_) if !self.observe_cuts => (
                        Some(sandbox),
                        Decision::DeadLettered,
                        "cut_unavailable",
                        None,
                    ),
                    Some(_) => (Some(sandbox), Decision::Skipped, "forked", None),
                }
            }
            Verdict::Skip { reason, sandbox } => {
                (sandbox.as_ref(), Decision::Skipped, *reason, None)
            }
            Verdict::DeadLetter(error) => {
                (None, Decision::DeadLettered, error.reason(), Some(error))
            }
        };
        let detail = match error {
            Some(error) => format!("{}: {error}", Source(message)),
            None => Source(message).to_string(),
        };
        observed(sandbox, decision, reason, &detail);
    }

    /// Audits, as observed, that `sandbox`'s message would wait for its guardrails.
    fn observe_admission(&self, message: &BorrowedMessage<'_>, sandbox: &SandboxKey) {
        if let Some(guardrails) = &self.guardrails
            && let Err(throttled) = guardrails.admit(sandbox)
        {
            let detail = format!("{}: {throttled}", Source(message));
            observed(
                Some(sandbox),
                Decision::Throttled,
                throttled.reason.as_str(),
                &detail,
            );
        }
    }

    /// Waits until the directory is fresh: `false` when shutdown came first.
    async fn until_fresh<S: Future<Output = ()>>(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &mut Pin<&mut S>,
    ) -> bool {
        tracing::warn!(target: "prodbox::kafka", source = %Source(message), "directory is stale; pausing until it is fresh");
        // Before any wait, what is done with goes to rdkafka (see `in_flight`).
        self.store_due();
        let fresh = async {
            while self.filter.directory().is_stale() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            biased;
            () = shutdown.as_mut() => false,
            () = fresh => true,
        }
    }

    /// Takes `sandbox`'s slot of `guardrails`, waiting while it is throttled (its messages are
    /// delayed, never dropped); `None` when shutdown came first.
    async fn admit<S: Future<Output = ()>>(
        &self,
        guardrails: &Guardrails,
        sandbox: &SandboxKey,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<Permit> {
        self.store_due();
        loop {
            match guardrails.admit(sandbox) {
                Ok(permit) => return Some(permit),
                Err(throttled) => {
                    audit(
                        Some(sandbox),
                        Decision::Throttled,
                        throttled.reason.as_str(),
                        &throttled,
                    );
                    if !pause(throttled.retry_after, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends `message` to the dead-letter topic with `reason`; retries until the broker has it,
    /// or shutdown comes between two tries.
    pub(super) async fn dead_letter<S: Future<Output = ()>>(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &mut Pin<&mut S>,
    ) -> Done {
        self.store_due();
        let source = Source(message).to_string();
        // The original headers, when rdkafka can read them (see `filter::readable`).
        let original = message.headers().and_then(|original| {
            crate::filter::readable(|| {
                original
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, header| {
                        headers.insert(header)
                    })
            })
        });
        let headers = original
            .unwrap_or_default()
            .insert(Header {
                key: DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: DEAD_LETTER_SOURCE,
                value: Some(&source),
            });
        let mut wait = self.retry.first;
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.dead_letter_topic).headers(headers.clone());
            record.key = message.key();
            record.payload = message.payload();
            match self.producer.send(record, METADATA_TIMEOUT).await {
                Ok(_) => return Done::Completed,
                Err((error, _)) => {
                    tracing::warn!(target: "prodbox::kafka", %error, %source, "dead-letter send failed; retrying");
                    if !pause(wait, shutdown).await {
                        return Done::Interrupted;
                    }
                    wait = self.retry.after(wait);
                }
            }
        }
    }
}

/// Writes and counts an observed decision of a consumer's.
fn observed(sandbox: Option<&SandboxKey>, decision: Decision, reason: &str, detail: &str) {
    prodbox_core::plumbing::audit::observed(&super::event(
        sandbox,
        decision,
        reason,
        Some(&detail),
    ));
}
