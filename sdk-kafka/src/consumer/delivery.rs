//! The service's own loop: [`SandboxConsumer::recv`] and [`SandboxConsumer::stream`] yield
//! each message this consumer handles as a [`Delivery`], which runs work in the message's
//! context and says when the message is done with.

use std::future::IntoFuture;
use std::ops::Deref;

use std::pin::Pin;
use std::task::Poll;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use opentelemetry::Context as OtelContext;
use prodbox_core::audit::Decision;
use prodbox_core::context::WithSandbox;
use prodbox_core::guardrails::Permit;
use prodbox_core::plumbing::metrics::KafkaOutcome;
use prodbox_core::{FutureExt, Sandbox, SandboxContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::message::BorrowedMessage;

use super::Rebalances;
use super::step::{Local, Next, Pulled, Ready};
use super::{ConsumerError, Done, SandboxConsumer, Source, audit};
use crate::in_flight::Ticket;
use crate::shutdown::Shutdown;

impl<C: ConsumerContext + 'static> SandboxConsumer<C> {
    /// The next message this consumer handles (see [Your own loop](super#your-own-loop)).
    /// rdkafka's errors are passed on as they come, as rdkafka's `recv` does; most are
    /// transient.
    ///
    /// Cancel safe: dropped part way, it puts the consumer back on the message it held, which
    /// comes again.
    pub async fn recv(&self) -> Result<Delivery<'_, C>, ConsumerError> {
        let mut messages = self.consumer.stream();
        self.deliver(&mut messages).await
    }

    /// The messages this consumer handles, as [`recv`](Self::recv) yields them, from one
    /// rdkafka stream.
    pub fn stream(&self) -> BoxStream<'_, Result<Delivery<'_, C>, ConsumerError>> {
        Box::pin(Deliveries {
            consumer: self,
            messages: Some(self.consumer.stream()),
            local: self.local(),
            waiting: None,
        })
    }

    async fn deliver<'a>(
        &'a self,
        messages: &mut Messages<'a, C>,
    ) -> Result<Delivery<'a, C>, ConsumerError> {
        self.may_consume()?;
        let mut never = Shutdown::never();
        let mut local = self.local();
        loop {
            match self.next(messages, &mut never, &mut local).await {
                Next::Ready(ready) => return Ok(Delivery::new(self, ready)),
                Next::Error(error) => return Err(error.into()),
                // Never stopped; rdkafka's streams never end, and waiting is what `recv` does.
                Next::Stopped | Next::Ended => std::future::pending::<()>().await,
            }
        }
    }
}

type Item<'a, C> = Result<Delivery<'a, C>, ConsumerError>;

/// rdkafka's stream of a consumer's messages.
type Messages<'a, C> = MessageStream<'a, Rebalances<C>>;

/// A wait for the next delivery, holding the stream until it ends.
type Waiting<'a, C> = BoxFuture<'a, (Item<'a, C>, Messages<'a, C>)>;

/// [`SandboxConsumer::stream`]: a message ready is delivered within the stream's poll, with no
/// future of its own; one is made (and boxed) only to wait, for a message, the directory, the
/// cuts or the guardrails.
struct Deliveries<'a, C: ConsumerContext + 'static> {
    consumer: &'a SandboxConsumer<C>,
    /// rdkafka's stream, unless `waiting` holds it.
    messages: Option<Messages<'a, C>>,
    /// What `poll_next` keeps from one message to the next (`waiting` keeps its own).
    local: Local<'a>,
    waiting: Option<Waiting<'a, C>>,
}

impl<'a, C: ConsumerContext + 'static> Stream for Deliveries<'a, C> {
    type Item = Item<'a, C>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let consumer = this.consumer;
        if let Some(mut messages) = this.messages.take() {
            let pulled = match consumer.may_consume() {
                Ok(()) => consumer.pull_now(&mut messages, &mut Shutdown::never(), &mut this.local),
                Err(error) => {
                    this.messages = Some(messages);
                    return Poll::Ready(Some(Err(error)));
                }
            };
            let step = match pulled {
                Pulled::Ready(ready) => {
                    this.messages = Some(messages);
                    return Poll::Ready(Some(Ok(Delivery::new(consumer, ready))));
                }
                Pulled::Error(error) => {
                    this.messages = Some(messages);
                    return Poll::Ready(Some(Err(error.into())));
                }
                Pulled::Step(held, verdict) => Some((held, verdict)),
                Pulled::Wait | Pulled::Stopped | Pulled::Ended => None,
            };
            // Tallied to the consumer before any wait.
            this.local.skips.flush();
            this.waiting = Some(Box::pin(async move {
                if let Some((held, verdict)) = step {
                    let mut never = Shutdown::never();
                    if let Some(Ok(ready)) = consumer.step(held, verdict, never.future()).await {
                        return (Ok(Delivery::new(consumer, ready)), messages);
                    }
                }
                (consumer.deliver(&mut messages).await, messages)
            }));
        }
        let Some(waiting) = this.waiting.as_mut() else {
            // Every path above leaves the stream or a future waiting with it.
            return Poll::Pending;
        };
        let (item, messages) = std::task::ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        this.messages = Some(messages);
        Poll::Ready(Some(item))
    }
}

/// A message this consumer handles: run its handling with [`in_context`](Self::in_context),
/// then call [`done`](Self::done). It dereferences to rdkafka's message.
#[must_use = "a delivery that is not done holds its partition's commits at its offset"]
pub struct Delivery<'a, C: ConsumerContext + 'static = rdkafka::consumer::DefaultConsumerContext> {
    consumer: &'a SandboxConsumer<C>,
    /// `None` once done with.
    message: Option<(BorrowedMessage<'a>, Ticket)>,
    context: Option<SandboxContext>,
    /// The OpenTelemetry context of a sandbox's message (`None`: production's, the consumer's).
    cx: Option<OtelContext>,
    /// Its sandbox's slot, while it is handled.
    _permit: Option<Permit>,
}

impl<C: ConsumerContext + 'static> std::fmt::Debug for Delivery<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Delivery");
        if let Some((message, _)) = &self.message {
            debug.field("source", &Source(message).to_string());
        }
        debug
            .field("sandbox", &self.sandbox())
            .finish_non_exhaustive()
    }
}

impl<'a, C: ConsumerContext + 'static> Delivery<'a, C> {
    fn new(consumer: &'a SandboxConsumer<C>, ready: Ready<'a, C>) -> Self {
        let Ready {
            held,
            context,
            permit,
        } = ready;
        // Production's is the consumer's, not copied per message.
        let cx = context.as_ref().map(super::handled_in);
        Self {
            consumer,
            message: held.into_parts(),
            context,
            cx,
            _permit: permit,
        }
    }

    /// rdkafka's message.
    pub fn message(&self) -> &BorrowedMessage<'a> {
        match &self.message {
            Some((message, _)) => message,
            // Only `done` and `dead_letter` take it, consuming `self`.
            None => unreachable!(),
        }
    }

    /// The message's sandbox (`None`: production's message).
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.context.as_ref().and_then(SandboxContext::sandbox)
    }

    /// The OpenTelemetry context the message's work runs in: its sandbox's, or production's.
    pub fn context(&self) -> &OtelContext {
        self.cx.as_ref().unwrap_or(&self.consumer.production)
    }

    /// `work` run in the message's context: inside it, `prodbox_core::current()` is the
    /// message's sandbox, and prodbox's clients, pools and producers act for it. Only what
    /// runs when the returned future is polled is inside: build follow-up work in an `async`
    /// block, not before the call.
    pub fn in_context<F: IntoFuture>(&self, work: F) -> WithSandbox<F::IntoFuture> {
        work.into_future().in_context(self.context().clone())
    }

    /// Done with: the message may be committed past (once every earlier message of its
    /// partition is done with too). Positions reach rdkafka, which commits them in the
    /// background, in batches: when the consumer waits for a message (at once, if a loop is
    /// waiting now), every 1,024 messages, at least once a second, before a rebalance, on
    /// [`commit`](SandboxConsumer::commit), and when the consumer is dropped.
    pub fn done(mut self) {
        if let Some((message, ticket)) = self.message.take() {
            self.consumer.count(&message, KafkaOutcome::Processed);
            self.consumer.finish(&message, ticket);
        }
    }

    /// Gives up on the message: sends it to the dead-letter topic with `reason` (retrying
    /// until the broker has it), audits it, and marks it done with.
    pub async fn dead_letter(mut self, reason: &str) {
        let Some((message, ticket)) = self.message.take() else {
            return;
        };
        let mut never = std::pin::pin!(std::future::pending::<()>());
        // Never interrupted: only dropping this future stops it, and the message then stays
        // in flight, as a delivery dropped unfinished does.
        if self
            .consumer
            .dead_letter(&message, reason, &mut never)
            .await
            == Done::Completed
        {
            let detail = format!("{}: {reason}", Source(&message));
            audit(
                self.sandbox().map(Sandbox::key),
                Decision::DeadLettered,
                "abandoned",
                &detail,
            );
            self.consumer.count(&message, KafkaOutcome::DeadLettered);
            self.consumer.finish(&message, ticket);
        }
    }
}

impl<'a, C: ConsumerContext + 'static> Deref for Delivery<'a, C> {
    type Target = BorrowedMessage<'a>;

    fn deref(&self) -> &Self::Target {
        self.message()
    }
}

impl<C: ConsumerContext + 'static> Drop for Delivery<'_, C> {
    fn drop(&mut self) {
        if let Some((message, _)) = &self.message {
            tracing::warn!(target: "prodbox::kafka", source = %Source(message), "a delivery was dropped before it was done with; its partition is not committed past it until it is delivered again");
        }
    }
}
