//! prodbox's own loop: each message to handle goes to the service's handler, in its context,
//! and is retried until it succeeds (or dead-lettered after `max_attempts`).

use std::fmt::Display;
use std::future::Future;

use prodbox_core::audit::Decision;
use prodbox_core::plumbing::metrics::KafkaOutcome;
use prodbox_core::{FutureExt, SandboxContext};
use rdkafka::consumer::{CommitMode, ConsumerContext};
use rdkafka::message::BorrowedMessage;

use super::step::{Next, Ready};
use super::{ConsumerError, Done, SandboxConsumer, Source, audit};
use crate::shutdown::{Shutdown, pause};

impl<C: ConsumerContext + 'static> SandboxConsumer<C> {
    /// Handles messages with `handler` until `shutdown` completes, then commits what is done.
    /// `shutdown` is polled before each message only once it has woken its waker (as every
    /// future does before it completes); one that completes without waking anybody is still
    /// seen within 64 messages.
    ///
    /// The handler is lent each message for the call, and returns the future that handles
    /// it, which may not hold the loan: read what the work needs (the payload decoded, say)
    /// before the `async` block, or [`detach`](BorrowedMessage::detach) the message to own a
    /// copy (a copy of every message costs; see docs/BENCHMARKS.md). Both the call and its future run in the message's context. A failed message is
    /// given to the handler again for each retry.
    ///
    /// Fails when the final commit fails, or when an earlier loop of this consumer stopped
    /// while holding a message it had not handled and could not rewind to it
    /// ([`StoppedHoldingMessage`](ConsumerError::StoppedHoldingMessage)). A message held at
    /// shutdown otherwise comes first in the next `run`.
    pub async fn run<F, Fut, E>(
        &self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError>
    where
        F: FnMut(&BorrowedMessage<'_>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        self.may_consume()?;
        // The loop runs in production's context, attached once per poll however many messages
        // the poll handles: production's messages need no attaching of their own, and a
        // sandbox's context is attached on top of it.
        self.handle_all(handler, shutdown)
            .in_context(self.production.clone())
            .await;
        self.commit(CommitMode::Sync)
    }

    /// Whether the thread's context is this consumer's production context itself, not merely
    /// one without a sandbox (one a handler left behind may carry another message's baggage).
    fn production_is_current(&self) -> bool {
        let ours = self.production_marker;
        ours.is_some()
            && opentelemetry::Context::map_current(|cx| super::sandbox_context_address(cx) == ours)
    }

    /// Handles messages until shutdown.
    async fn handle_all<F, Fut, E>(&self, mut handler: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(&BorrowedMessage<'_>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = Shutdown::new(shutdown);
        // One stream for the whole run: `recv` registers a waker slot, and removes it, per
        // message (a lock each time).
        let mut messages = self.consumer.stream();
        let mut local = self.local();
        loop {
            match self.next(&mut messages, &mut shutdown, &mut local).await {
                Next::Ready(ready) => {
                    if self.handle(ready, &mut handler, &mut shutdown).await == Done::Interrupted {
                        break;
                    }
                }
                // rdkafka recovers from these by itself (a rejoin after a long handler, a
                // topic not created yet, a broker away): keep polling; uncommitted messages
                // come again, as at-least-once allows.
                Next::Error(error) => {
                    tracing::warn!(target: "prodbox::kafka", %error, "consumer error; polling on");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                // rdkafka's streams never end; should one, there is nothing more to handle.
                Next::Stopped | Next::Ended => break,
            }
        }
    }

    /// Runs `handler` on a message to process, in its context, until it succeeds (or, with
    /// `max_attempts`, the message is dead-lettered). Shutdown ends the waits between
    /// attempts (never an attempt under way): the message is then left unhandled.
    async fn handle<F, Fut, E, S>(
        &self,
        ready: Ready<'_, C>,
        handler: &mut F,
        shutdown: &mut Shutdown<'_, S>,
    ) -> Done
    where
        F: FnMut(&BorrowedMessage<'_>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
        S: Future<Output = ()>,
    {
        let Ready {
            held,
            context,
            permit: _permit,
        } = ready;
        let message = held.message();
        let mut wait = self.retry.first;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // The closure itself is called in the message's context too (at the first poll): a
            // handler that builds its follow-up records before its `async` block must tag them
            // with the sandbox.
            let attempt = async { handler(message).await };
            // Production's context is the loop's own (see `run`), unless a handler left another
            // attached on the thread (a guard forgotten, or held across an await): then
            // production's is attached for this message.
            let result = match &context {
                Some(context) => attempt.in_context(super::handled_in(context)).await,
                None if self.production_is_current() => attempt.await,
                None => attempt.in_context(self.production.clone()).await,
            };
            match result {
                Ok(()) => {
                    self.count(message, KafkaOutcome::Processed);
                    held.finish();
                    return Done::Completed;
                }
                Err(error) => {
                    tracing::warn!(
                        target: "prodbox::kafka",
                        source = %Source(message),
                        attempts,
                        %error,
                        "handler failed; retrying"
                    );
                    if self.retry.attempts.is_some_and(|max| attempts >= max) {
                        let reason = format!("handler failed {attempts} times: {error}");
                        if Box::pin(self.dead_letter(message, &reason, shutdown.future())).await
                            == Done::Interrupted
                        {
                            return Done::Interrupted;
                        }
                        let sandbox = context.as_ref().and_then(SandboxContext::sandbox);
                        audit(
                            sandbox.map(|s| s.key()),
                            Decision::DeadLettered,
                            "handler_failed",
                            &reason,
                        );
                        self.count(message, KafkaOutcome::DeadLettered);
                        held.finish();
                        return Done::Completed;
                    }
                    // Before the wait, what is done with goes to rdkafka (see `in_flight`).
                    self.store_due();
                    if !pause(wait, shutdown.future()).await {
                        return Done::Interrupted;
                    }
                    wait = self.retry.after(wait);
                }
            }
        }
    }
}
