//! A consumer that hands each message to exactly the consumer that should handle it, inside the
//! message's context, and loses nothing.
//!
//! ```no_run
//! use prodbox_core::directory::MemoryDirectory;
//! use prodbox_kafka::{Role, SandboxConsumer};
//! use rdkafka::ClientConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "127.0.0.1:9092");
//! let consumer = SandboxConsumer::builder(config, "billing", Role::baseline("billing"))
//!     .directory(MemoryDirectory::new())
//!     .dead_letter_topic("billing.dead-letter")
//!     .start(&["order-created"])
//!     .await?;
//! consumer
//!     .run(|message| async move {
//!         // `prodbox_core::current()` is the message's sandbox here.
//!         Ok::<_, std::convert::Infallible>(())
//!     }, std::future::pending::<()>())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! At least once. An offset is stored only after the handler succeeded, or after the message
//! was skipped or dead-lettered; rdkafka commits stored offsets in the background and once more
//! when [`run`](SandboxConsumer::run) ends. A handler error is retried with exponential backoff
//! and never committed past (unless `max_attempts` is set: then the message is dead-lettered
//! with the error, and only then committed past). Handlers must be idempotent.
//!
//! Shutdown is honoured between attempts: a message whose handler keeps failing, whose sandbox
//! is throttled or whose dead-letter send keeps failing does not keep `run` from returning. An
//! attempt under way is never cancelled; the message is left unhandled, the consumer's position
//! put back on it, and the next `run` starts with it.
//!
//! # Sandbox consumers, and who handles a forked sandbox's records
//!
//! A sandbox consumer (a fork) uses its own consumer group, `<group>.sandbox.<key>.<incarnation>`
//! (`<group>.sandbox.<key>` when the directory does not know the sandbox's creation), so it
//! sees every message. Which of a sandbox's records the fork handles, and which the baseline
//! does, is decided by the baseline alone, in offset order, and recorded in the directory as
//! **cuts** ([`prodbox_core::directory::cuts`]): when the baseline decides a record of a sandbox
//! and sees that an incarnation of it forks the service (or no longer does) since the last
//! change recorded, it records the change at that record's offset, first writer wins. Records
//! of the sandbox inside a fork's ranges are the fork's; every other one the baseline handles,
//! in the sandbox's context. The fork handles a record of its sandbox only once the
//! baseline's committed offset is past it, then by the ranges. Neither clocks, nor
//! timestamps, nor which consumer starts first decide anything, so every record is handled
//! by exactly one role: a record produced before the sandbox's entry existed, one stamped
//! before its creation, records of a sandbox deleted and made again, a fork added later.
//!
//! A new fork starts each partition at the baseline's committed offset there, or earlier
//! where its incarnation's range starts (the baseline passed records that are the fork's
//! before the fork was deployed), or at the beginning. It waits while the baseline is behind
//! (its records come once the baseline has committed past them: `auto.commit.interval.ms`
//! later), so it needs the baseline running. A partition added to the topic later is decided
//! like any other: the fork reads it from its beginning (`auto.offset.reset` is `earliest`
//! for forks, whatever the configuration says) and the baseline's first record of the sandbox
//! there opens the range. Only baseline consumers write cuts: a fork's directory needs to read
//! them only (for the PostgreSQL directory, `SELECT` on `prodbox.kafka_cuts`), so unreviewed
//! fork code needs no rights to change who handles what.
//!
//! The baseline never waits on a fork, and asks the directory little: what it read and
//! recorded for a partition since the partition was assigned to it stays true until a
//! rebalance (it alone records cuts there meanwhile), so it asks again only where a fork
//! starts or stops. When the directory cannot be read or written then (its database is away,
//! while the directory itself is not [stale](prodbox_core::directory::Directory::is_stale)),
//! the baseline retries for 10 s, then sends the record to the dead-letter topic rather than
//! guess (audited as `cut_unavailable`; the reason header says why); later records that need
//! the directory are dead-lettered at once, without a try, until a probe in the background
//! sees it answer, so a production partition is held up once, by 10 s. Records whose cut is
//! known go on. A directory that keeps no cuts (a file directory) cannot run forks: a fork
//! refuses to start, and the baseline dead-letters the records of sandboxes that fork it and
//! handles the others.
//!
//! A sandbox that is disabled or has expired when a consumer reads its record is over: both
//! roles skip the record (`sandbox_disabled`, `sandbox_expired`), each judging by its own clock
//! when it reads. A fork reads after the baseline (once the baseline has committed past), so
//! records the baseline gave the fork shortly before the end may be among them.
//!
//! One window remains where both roles handle a record: a baseline process loses a partition
//! (it crashed, or its handler ran past `max.poll.interval.ms`, or its session to the broker
//! was lost) after handling a record of a sandbox it did not see forked, before committing it,
//! while the process that takes the partition over already sees the fork. Closing it would
//! take a write per record.
//!
//! Neither kind consumes before its directory has synced once. While the directory reports
//! itself [stale](prodbox_core::directory::Directory::is_stale), a message that carries a
//! sandbox is held (its partition pauses there, nothing is committed past it) until the
//! directory is fresh; untagged messages go on. A pause longer than `max.poll.interval.ms`
//! makes the consumer leave its group and rejoin: the held message comes again.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use opentelemetry::Context;
use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::directory::{Directory, MemoryDirectory};
use prodbox_core::plumbing::metrics::{self, KafkaOutcome};
use prodbox_core::{FutureExt, Guardrails, SandboxContext, SandboxKey};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset};

pub use crate::cut::Rebalances;
use crate::cut::{Cut, Cuts};
pub use crate::error::ConsumerError;
use crate::filter::{Filter, Role};
use crate::shutdown::pause;
use crate::verdict::Verdict;

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "prodbox-dead-letter-reason";
/// Header naming where a dead-lettered message came from: `topic/partition/offset`.
pub const DEAD_LETTER_SOURCE: &str = "prodbox-dead-letter-source";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long rewinding to a message at shutdown may block.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`SandboxConsumer`].
pub struct SandboxConsumerBuilder {
    config: ClientConfig,
    group: String,
    role: Role,
    directory: Arc<dyn Directory>,
    dead_letter_topic: Option<String>,
    guardrails: Option<Guardrails>,
    retry: Retry,
}

impl std::fmt::Debug for SandboxConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConsumerBuilder")
            .field("group", &self.group)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl SandboxConsumerBuilder {
    prodbox_core::plumbing::setters! {
        /// Decides by `directory` (which forks which service; disabled and expired sandboxes).
        directory(directory: impl Directory) => directory = Arc::new(directory);

        /// Where malformed messages go, with the reason (default `<group>.dead-letter`).
        dead_letter_topic(topic: &str) => dead_letter_topic = Some(topic.to_owned());

        /// Throttles each sandbox's messages with `guardrails`' rate limit.
        guardrails(guardrails: Guardrails) => guardrails = Some(guardrails);
    }

    /// Backoff between handler retries: from `first`, doubling, up to `max` (default 100 ms
    /// to 10 s).
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry.first = first;
        self.retry.max = max.max(first);
        self
    }

    /// Dead-letters a message after this many failed handler attempts (default: retry
    /// forever, never committing past a failing message).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry.attempts = Some(attempts.max(1));
        self
    }

    /// Waits for the directory's first sync, then subscribes to `topics`.
    pub async fn start(self, topics: &[&str]) -> Result<SandboxConsumer, ConsumerError> {
        while !self.directory.is_synced() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let incarnation = match &self.role {
            Role::Baseline { .. } => 0,
            Role::Sandbox { key } => self
                .directory
                .get(key)
                .ok_or_else(|| ConsumerError::UnknownSandbox(key.clone()))?
                .incarnation(),
        };
        let group = match &self.role {
            Role::Baseline { .. } => self.group.clone(),
            Role::Sandbox { key } if incarnation == 0 => format!("{}.sandbox.{key}", self.group),
            Role::Sandbox { key } => format!("{}.sandbox.{key}.{incarnation}", self.group),
        };
        let mut config = self.config.clone();
        config
            .set("group.id", &group)
            // Offsets are stored only once a message is done with; rdkafka commits them.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        // A fork must see every record of a partition it has no offset for (one added to the
        // topic later): the cuts decide which are its own.
        if config.get("auto.offset.reset").is_none() || matches!(self.role, Role::Sandbox { .. }) {
            config.set("auto.offset.reset", "earliest");
        }
        let cuts = match &self.role {
            Role::Baseline { .. } => Cuts::baseline(Arc::clone(&self.directory), &self.group),
            Role::Sandbox { key } => {
                let place = prodbox_core::directory::CutPlace {
                    group: self.group.clone(),
                    topic: topics.first().copied().unwrap_or_default().to_owned(),
                    partition: 0,
                };
                // Refused now, not by waiting for ever: only the cuts say what is the fork's.
                if let Err(error @ prodbox_core::directory::DirectoryError::CutsUnsupported) =
                    self.directory.cut_ranges(&place).await
                {
                    return Err(error.into());
                }
                let progress = crate::cut::progress_reader(&self.config, &self.group)?;
                Cuts::fork(
                    Arc::clone(&self.directory),
                    &self.group,
                    (key.clone(), incarnation),
                    Arc::new(progress),
                )
            }
        };
        let consumer: StreamConsumer<Rebalances> = config.create_with_context(cuts.context())?;
        cuts.start_fork(&consumer, topics).await?;
        consumer.subscribe(topics)?;
        // Created now, not on the first dead letter: settings rdkafka refuses fail here, at
        // start, rather than mid-stream, where the message could not be dead-lettered.
        let producer: FutureProducer = self.config.create()?;
        Ok(SandboxConsumer {
            consumer,
            group,
            cuts,
            filter: Filter::with_shared_directory(self.role, self.directory),
            dead_letter_topic: self
                .dead_letter_topic
                .unwrap_or_else(|| format!("{}.dead-letter", self.group)),
            producer,
            held_at_shutdown: std::sync::Mutex::new(None),
            guardrails: self.guardrails,
            retry: self.retry,
        })
    }
}

/// The consumer; see the [module docs](self).
pub struct SandboxConsumer {
    consumer: StreamConsumer<Rebalances>,
    /// Its consumer group.
    group: String,
    cuts: Cuts,
    filter: Filter,
    dead_letter_topic: String,
    producer: FutureProducer,
    /// Where an earlier `run` stopped holding a message it had not handled.
    held_at_shutdown: std::sync::Mutex<Option<String>>,
    guardrails: Option<Guardrails>,
    retry: Retry,
}

impl std::fmt::Debug for SandboxConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConsumer")
            .field("filter", &self.filter)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

impl SandboxConsumer {
    /// Starts configuring a consumer of baseline group `group` (a sandbox consumer derives its
    /// own group from it) with rdkafka settings `config` (`bootstrap.servers` and so on).
    pub fn builder(config: ClientConfig, group: &str, role: Role) -> SandboxConsumerBuilder {
        SandboxConsumerBuilder {
            config,
            group: group.to_owned(),
            role,
            directory: Arc::new(MemoryDirectory::new()),
            dead_letter_topic: None,
            guardrails: None,
            retry: Retry::default(),
        }
    }

    /// The rdkafka consumer (for lag, assignment, and so on).
    pub fn consumer(&self) -> &StreamConsumer<Rebalances> {
        &self.consumer
    }

    /// Its consumer group: the baseline's as given, a fork's derived from it (see the
    /// [module docs](self)).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Handles messages with `handler` until `shutdown` completes, then commits what is done.
    ///
    /// Fails when the final commit fails, or when an earlier `run` of this consumer stopped
    /// while holding a message it had not handled and could not rewind to it
    /// ([`StoppedHoldingMessage`](ConsumerError::StoppedHoldingMessage)). A message held at
    /// shutdown otherwise comes first in the next `run`.
    pub async fn run<F, Fut, E>(
        &self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let held = self
            .held_at_shutdown
            .lock()
            .map(|held| held.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        if let Some(source) = held {
            return Err(ConsumerError::StoppedHoldingMessage(source));
        }
        let consumed = self.consume(handler, shutdown).await;
        let committed = match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        };
        consumed.and(committed)
    }

    /// The loop of [`run`](Self::run), without its final commit.
    async fn consume<F, Fut, E>(
        &self,
        mut handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        // One stream for the whole run: `recv` registers a waker slot, and removes it, per
        // message (a lock each time).
        let mut messages = self.consumer.stream();
        loop {
            let message = tokio::select! {
                biased;
                () = &mut shutdown => break,
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                // rdkafka recovers from these by itself (a rejoin after a long handler, a
                // topic not created yet, a broker away): keep polling; uncommitted messages
                // come again, as at-least-once allows.
                Some(Err(error)) => {
                    tracing::warn!(target: "prodbox::kafka", %error, "consumer error; polling on");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // rdkafka's streams never end; should one, there is nothing more to handle.
                None => break,
            };
            // A stale directory may not know a fork created meanwhile: hold a sandbox's message
            // (its offset unstored) until the directory is fresh again. Untagged messages do
            // not depend on the directory and go on.
            if self.filter.directory().is_stale()
                && self.filter.concerns_a_sandbox(message.headers())
            {
                tracing::warn!(target: "prodbox::kafka", source = %Source(&message), "directory is stale; pausing until it is fresh");
                let fresh = async {
                    while self.filter.directory().is_stale() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        self.rewind_to(&message);
                        break;
                    }
                    () = fresh => {}
                }
            }
            match self.filter.decide(message.headers(), SystemTime::now()) {
                // Skips, half of a baseline's messages or more, are decided and done with
                // here, without the handler's machinery.
                Verdict::Skip { reason, sandbox } => {
                    audit(
                        sandbox.as_ref(),
                        Decision::Skipped,
                        reason,
                        &Source(&message),
                    );
                    self.count(&message, KafkaOutcome::Skipped);
                }
                Verdict::DeadLetter(error) => {
                    let sent = self
                        .dead_letter(&message, &error.to_string(), &mut shutdown)
                        .await?;
                    if sent == Done::Interrupted {
                        self.rewind_to(&message);
                        break;
                    }
                    // Audited and counted once it is in the dead-letter topic: an interrupted
                    // send is tried again, and reported then.
                    let detail = format!("{}: {error}", Source(&message));
                    audit(None, Decision::DeadLettered, error.reason(), &detail);
                    self.count(&message, KafkaOutcome::DeadLettered);
                }
                Verdict::Process(context) => {
                    let handled = self
                        .handle(&message, context, &mut handler, &mut shutdown)
                        .await?;
                    if handled == Done::Interrupted {
                        self.rewind_to(&message);
                        break;
                    }
                }
                Verdict::Cut { context, forking } => {
                    let Some(sandbox) = context.sandbox().map(|s| s.key().clone()) else {
                        continue;
                    };
                    let at = (message.topic(), message.partition(), message.offset());
                    let done = match self.cuts.decide(&sandbox, forking, at, &mut shutdown).await {
                        Cut::Handle => {
                            self.handle(&message, Some(context), &mut handler, &mut shutdown)
                                .await?
                        }
                        Cut::Skip => {
                            let reason = match self.filter.role() {
                                Role::Baseline { .. } => "forked",
                                Role::Sandbox { .. } => "baseline_handles",
                            };
                            audit(Some(&sandbox), Decision::Skipped, reason, &Source(&message));
                            self.count(&message, KafkaOutcome::Skipped);
                            Done::Completed
                        }
                        Cut::Unavailable(reason) => {
                            let sent = self.dead_letter(&message, &reason, &mut shutdown).await?;
                            if sent == Done::Completed {
                                let detail = format!("{}: {reason}", Source(&message));
                                audit(
                                    Some(&sandbox),
                                    Decision::DeadLettered,
                                    "cut_unavailable",
                                    &detail,
                                );
                                self.count(&message, KafkaOutcome::DeadLettered);
                            }
                            sent
                        }
                        Cut::Interrupted => Done::Interrupted,
                    };
                    if done == Done::Interrupted {
                        self.rewind_to(&message);
                        break;
                    }
                }
            }
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                // The partition moved to another member meanwhile: it re-delivers the message.
                tracing::warn!(target: "prodbox::kafka", %error, source = %Source(&message), "offset not stored");
            }
        }
        Ok(())
    }

    /// Puts this consumer's position on `message`'s partition back to `message`, which it
    /// leaves unhandled (and unstored, so never committed past): the next `run` starts with
    /// it. Should rdkafka refuse, this consumer refuses to run again instead, as its position
    /// is past the message.
    fn rewind_to(&self, message: &BorrowedMessage<'_>) {
        let offset = Offset::Offset(message.offset());
        let Err(error) =
            self.consumer
                .seek(message.topic(), message.partition(), offset, SEEK_TIMEOUT)
        else {
            return;
        };
        tracing::warn!(target: "prodbox::kafka", %error, source = %Source(message), "could not rewind to an unhandled message; this consumer will not run again");
        let mut held = self
            .held_at_shutdown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *held = Some(Source(message).to_string());
    }

    fn count(&self, message: &BorrowedMessage<'_>, outcome: KafkaOutcome) {
        let role = match self.filter.role() {
            Role::Baseline { .. } => "baseline",
            Role::Sandbox { .. } => "sandbox",
        };
        metrics::kafka_message(message.topic(), role, outcome);
    }

    /// Runs `handler` on a message to process, in `context`, until it succeeds (or, with
    /// `max_attempts`, the message is dead-lettered). Shutdown ends the waits between
    /// attempts (never an attempt under way): the message is then left unhandled.
    async fn handle<F, Fut, E, S>(
        &self,
        message: &BorrowedMessage<'_>,
        context: Option<SandboxContext>,
        handler: &mut F,
        shutdown: &mut Pin<&mut S>,
    ) -> Result<Done, ConsumerError>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
        S: Future<Output = ()>,
    {
        let sandbox = context.as_ref().and_then(SandboxContext::sandbox).cloned();
        // Hold the sandbox's slot while its handler runs; a throttled sandbox waits, its
        // messages are delayed, never dropped.
        let _permit = match (&self.guardrails, &sandbox) {
            (Some(guardrails), Some(sandbox)) => loop {
                match guardrails.admit(sandbox.key()) {
                    Ok(permit) => break Some(permit),
                    Err(throttled) => {
                        audit(
                            Some(sandbox.key()),
                            Decision::Throttled,
                            throttled.reason.as_str(),
                            &throttled,
                        );
                        if !pause(throttled.retry_after, shutdown).await {
                            return Ok(Done::Interrupted);
                        }
                    }
                }
            },
            _ => None,
        };
        let cx = match &context {
            Some(context) => context.attach_to(&Context::new()),
            // Production work, in a scope prodbox recognises.
            None => prodbox_core::context::production(),
        };
        let mut wait = self.retry.first;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // The closure itself runs in the message's context too: a handler that builds its
            // follow-up records before its `async` block must tag them with the sandbox.
            let future = {
                let _attached = cx.clone().attach();
                handler(message.detach())
            };
            match future.in_context(cx.clone()).await {
                Ok(()) => {
                    self.count(message, KafkaOutcome::Processed);
                    return Ok(Done::Completed);
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
                        let sent = self.dead_letter(message, &reason, shutdown).await?;
                        if sent == Done::Completed {
                            audit(
                                sandbox.as_ref().map(|s| s.key()),
                                Decision::DeadLettered,
                                "handler_failed",
                                &reason,
                            );
                            self.count(message, KafkaOutcome::DeadLettered);
                        }
                        return Ok(sent);
                    }
                    if !pause(wait, shutdown).await {
                        return Ok(Done::Interrupted);
                    }
                    wait = self.retry.after(wait);
                }
            }
        }
    }

    /// Sends `message` to the dead-letter topic with `reason`; retries until the broker has it,
    /// or shutdown comes between two tries.
    async fn dead_letter<S: Future<Output = ()>>(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &mut Pin<&mut S>,
    ) -> Result<Done, ConsumerError> {
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
        let headers = original.unwrap_or_default();
        let headers = headers
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
                Ok(_) => return Ok(Done::Completed),
                Err((error, _)) => {
                    tracing::warn!(target: "prodbox::kafka", %error, %source, "dead-letter send failed; retrying");
                    if !pause(wait, shutdown).await {
                        return Ok(Done::Interrupted);
                    }
                    wait = self.retry.after(wait);
                }
            }
        }
    }
}

/// How a failed handler, or a dead letter the broker refused, is tried again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// The first wait, doubling up to `max`.
    first: Duration,
    max: Duration,
    /// Handler attempts before the message is dead-lettered (`None`: retried forever).
    attempts: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempts: None,
        }
    }
}

impl Retry {
    /// The wait after one of `wait`.
    fn after(&self, wait: Duration) -> Duration {
        wait.saturating_mul(2).min(self.max)
    }
}

/// How handling a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Handled (or dead-lettered): its offset may be stored.
    Completed,
    /// Shutdown came first: the message is left unhandled.
    Interrupted,
}

/// `topic/partition/offset` of a message, formatted only when shown.
struct Source<'a, 'm>(&'a BorrowedMessage<'m>);

impl Display for Source<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.0;
        write!(
            f,
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
    }
}

fn audit(sandbox: Option<&SandboxKey>, decision: Decision, reason: &str, detail: &dyn Display) {
    AuditEvent {
        sandbox: sandbox.map(SandboxKey::as_str),
        actor: None,
        origin: None,
        protocol: Protocol::Kafka,
        direction: Direction::Inbound,
        decision,
        reason,
        detail: Some(detail),
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: T) {}

    /// Services spawn these: a future that holds an rdkafka list across an await is not `Send`.
    #[test]
    fn starting_is_send() {
        let builder = SandboxConsumer::builder(
            ClientConfig::new(),
            "group",
            Role::sandbox("send-check".parse().expect("a key")),
        );
        send(builder.start(&["topic"]));
    }
}
