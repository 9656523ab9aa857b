//! A consumer that hands each message to exactly the consumer that should handle it, inside the
//! message's context, and loses nothing: in the service's own loop, or in prodbox's.
//!
//! In the service's own loop ([`recv`](SandboxConsumer::recv) or
//! [`stream`](SandboxConsumer::stream)), built from its own rdkafka settings and context:
//!
//! ```no_run
//! use prodbox_core::directory::MemoryDirectory;
//! use prodbox_kafka::{Role, SandboxConsumer};
//! use rdkafka::ClientConfig;
//! use rdkafka::consumer::DefaultConsumerContext;
//! use rdkafka::message::Message;
//!
//! # async fn handle(payload: Option<&[u8]>) {}
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "127.0.0.1:9092");
//! let consumer = SandboxConsumer::builder(config, "billing", Role::baseline("billing"))
//!     .context(DefaultConsumerContext) // the service's own `ConsumerContext`
//!     .directory(MemoryDirectory::new())
//!     .start(&["order-created"])
//!     .await?;
//! loop {
//!     // Only the messages this consumer handles; the others are skipped, stored and audited.
//!     let message = consumer.recv().await?;
//!     // `prodbox_core::current()` is the message's sandbox inside `in_context`.
//!     message.in_context(handle(message.payload())).await;
//!     message.done(); // its offset may now be committed
//! }
//! # }
//! ```
//!
//! Or in prodbox's loop, which adds retries, and dead letters for messages whose handler
//! keeps failing:
//!
//! ```no_run
//! # use prodbox_core::directory::MemoryDirectory;
//! # use prodbox_kafka::{Role, SandboxConsumer};
//! # use rdkafka::ClientConfig;
//! # use rdkafka::message::Message;
//! # async fn run(config: ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let consumer = SandboxConsumer::builder(config, "billing", Role::baseline("billing"))
//!     .directory(MemoryDirectory::new())
//!     .dead_letter_topic("billing.dead-letter")
//!     .start(&["order-created"])
//!     .await?;
//! consumer
//!     .run(|message| {
//!         // Borrowed: what the work needs is read before the `async` block.
//!         let order = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
//!         async move {
//!             // `prodbox_core::current()` is the message's sandbox here.
//!             println!("billing {order}");
//!             Ok::<_, std::convert::Infallible>(())
//!         }
//!     }, std::future::pending::<()>())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Settings prodbox owns
//!
//! Everything else in the `ClientConfig` is the service's. prodbox sets:
//!
//! * `group.id`: the group given to the builder for the baseline, a derived one for a fork
//!   (below);
//! * `enable.auto.offset.store=false` and `enable.auto.commit=true`: an offset is stored only
//!   once its message is done with, and rdkafka commits what is stored;
//! * `auto.offset.reset=earliest`, for forks always, for the baseline when it is not set;
//! * `topic.metadata.refresh.interval.ms=5000` when it is not set (librdkafka's default is
//!   5 minutes): a subscribed topic created after the consumer started is read within seconds.
//!
//! # Your own loop
//!
//! [`recv`](SandboxConsumer::recv) and [`stream`](SandboxConsumer::stream) yield a
//! [`Delivery`] for each message this consumer handles. Skipped messages are stored, and
//! malformed ones dead-lettered, before them; a throttled sandbox's message waits there. Run
//! the handling in the message's context with [`Delivery::in_context`], then call
//! [`Delivery::done`] (or [`Delivery::dead_letter`] to give up on it). Deliveries may be
//! handled concurrently and finish in any order, and several tasks may call `recv`: a
//! partition's committed offset never passes a delivery that is not done. A delivery dropped
//! without either holds its partition's commits at its offset (and is delivered again when
//! the partition is next assigned); it is logged. Dropping the future of `recv` part way puts
//! the consumer back on the message it held, which comes again. What is done reaches rdkafka
//! (which commits in the background) within a second; call [`SandboxConsumer::commit`] when
//! the loop stops.
//!
//! # Delivery
//!
//! At least once, in both loops; what follows is prodbox's loop. An offset is stored only after the handler succeeded, or after the message
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::context::ContextExt as _;
use prodbox_core::directory::{Directory, MemoryDirectory};
use prodbox_core::plumbing::metrics::KafkaOutcome;
use prodbox_core::{Guardrails, SandboxKey};
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset};

use crate::context::OnRebalance;
pub use crate::context::Rebalances;
use crate::cut::Cuts;
pub use crate::error::ConsumerError;
use crate::filter::{Filter, Role};
use crate::in_flight::{InFlight, Ticket};
use crate::tally::{LocalSkips, Tally};
pub use delivery::Delivery;

mod delivery;
mod pull;
mod run;
mod step;

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "prodbox-dead-letter-reason";
/// Header naming where a dead-lettered message came from: `topic/partition/offset`.
pub const DEAD_LETTER_SOURCE: &str = "prodbox-dead-letter-source";

/// How long rewinding to a message at shutdown may block.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for the directory's first sync, unless told otherwise.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How often librdkafka refreshes topic metadata, unless the configuration says: a topic
/// created after the consumer subscribed is seen within this.
const METADATA_REFRESH_MS: &str = "5000";

/// Configures a [`SandboxConsumer`]; `C` is the service's rdkafka [`ConsumerContext`].
pub struct SandboxConsumerBuilder<C = DefaultConsumerContext> {
    config: ClientConfig,
    group: String,
    role: Role,
    directory: Arc<dyn Directory>,
    dead_letter_topic: Option<String>,
    guardrails: Option<Guardrails>,
    retry: Retry,
    context: C,
    sync_timeout: Duration,
    on_rebalance: Option<Arc<OnRebalance>>,
    observe: bool,
}

impl<C> std::fmt::Debug for SandboxConsumerBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConsumerBuilder")
            .field("group", &self.group)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<C> SandboxConsumerBuilder<C> {
    prodbox_core::plumbing::setters! {
        /// Decides by `directory` (which forks which service; disabled and expired sandboxes).
        directory(directory: impl Directory) => directory = Arc::new(directory);

        /// Where malformed messages go, with the reason (default `<group>.dead-letter`).
        dead_letter_topic(topic: &str) => dead_letter_topic = Some(topic.to_owned());

        /// Throttles each sandbox's messages with `guardrails`' rate limit.
        guardrails(guardrails: Guardrails) => guardrails = Some(guardrails);

        /// How long [`start`](Self::start) waits for the directory's first sync before it
        /// fails with [`DirectoryNotSynced`](ConsumerError::DirectoryNotSynced) (default 30 s).
        sync_timeout(timeout: Duration) => sync_timeout = timeout;

        /// Observe-only rollout, for a baseline consumer: every message is decided and what
        /// would happen to it is audited (`observed = true` on target `prodbox::audit`,
        /// counted in `prodbox.sandbox.observed`): skipped for a fork, dead-lettered for its
        /// sandbox headers, handled in a sandbox, delayed by the guardrails. Every message is
        /// then handled as production's, as before prodbox: none is skipped, dead-lettered
        /// for its headers, delayed or handled in a sandbox, and no cut is recorded. Messages
        /// of no sandbox are not audited. (`run`'s retries and `max_attempts` are the
        /// service's handling, not a sandbox's: they still apply.)
        ///
        /// Deploy a sandbox's fork only once its baseline acts: the fork takes the records
        /// the baseline's cuts give it, and an observing baseline records none (it handles
        /// them itself, as production's). A sandbox's consumer refuses observe-only
        /// ([`ObserveOnlyFork`](ConsumerError::ObserveOnlyFork)).
        observe_only(observe: bool) => observe = observe;
    }

    /// The service's own rdkafka context: every callback of it is called, except the three
    /// rebalance ones (see [`Rebalances`]); use [`on_rebalance`](Self::on_rebalance) for those.
    pub fn context<D: ConsumerContext>(self, context: D) -> SandboxConsumerBuilder<D> {
        SandboxConsumerBuilder {
            config: self.config,
            group: self.group,
            role: self.role,
            directory: self.directory,
            dead_letter_topic: self.dead_letter_topic,
            guardrails: self.guardrails,
            retry: self.retry,
            context,
            sync_timeout: self.sync_timeout,
            on_rebalance: self.on_rebalance,
            observe: self.observe,
        }
    }

    /// Calls `callback` before each rebalance, as rdkafka's `pre_rebalance` would be.
    pub fn on_rebalance(
        mut self,
        callback: impl Fn(&Rebalance<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_rebalance = Some(Arc::new(callback));
        self
    }

    /// Backoff between handler retries of [`run`](SandboxConsumer::run) and between
    /// dead-letter sends: from `first`, doubling, up to `max` (default 100 ms to 10 s).
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry.first = first;
        self.retry.max = max.max(first);
        self
    }

    /// [`run`](SandboxConsumer::run) dead-letters a message after this many failed handler
    /// attempts (default: retry forever, never committing past a failing message).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry.attempts = Some(attempts.max(1));
        self
    }
}

impl<C: ConsumerContext + 'static> SandboxConsumerBuilder<C> {
    /// Waits for the directory's first sync (at most the
    /// [`sync_timeout`](Self::sync_timeout)), then subscribes to `topics`.
    pub async fn start(self, topics: &[&str]) -> Result<SandboxConsumer<C>, ConsumerError> {
        if self.observe && matches!(self.role, Role::Sandbox { .. }) {
            return Err(ConsumerError::ObserveOnlyFork);
        }
        let waited = std::time::Instant::now();
        while !self.directory.is_synced() {
            if waited.elapsed() >= self.sync_timeout {
                return Err(ConsumerError::DirectoryNotSynced {
                    waited: self.sync_timeout,
                });
            }
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
        if config.get("topic.metadata.refresh.interval.ms").is_none() {
            config.set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
        }
        let role = self.role.clone();
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
        let observe_cuts = self.observe && {
            let place = prodbox_core::directory::CutPlace {
                group: self.group.clone(),
                topic: topics.first().copied().unwrap_or_default().to_owned(),
                partition: 0,
            };
            !matches!(
                self.directory.cut_ranges(&place).await,
                Err(prodbox_core::directory::DirectoryError::CutsUnsupported)
            )
        };
        // One topic named (no pattern): every message is of it, and asking rdkafka for a
        // message's topic (a `strlen` and a UTF-8 check) is saved.
        let only_topic = match topics {
            [topic] if !topic.starts_with('^') => Some(*topic),
            _ => None,
        };
        let in_flight = Arc::new(match only_topic {
            Some(_) => InFlight::of_one_topic(),
            None => InFlight::default(),
        });
        let context = Rebalances::new(
            self.context,
            cuts.forget(),
            Arc::clone(&in_flight),
            self.on_rebalance,
        );
        let consumer: Arc<StreamConsumer<Rebalances<C>>> =
            Arc::new(config.create_with_context(context)?);
        cuts.start_fork(&*consumer, topics).await?;
        consumer.subscribe(topics)?;
        // Created now, not on the first dead letter: settings rdkafka refuses fail here, at
        // start, rather than mid-stream, where the message could not be dead-lettered.
        let producer: FutureProducer = self.config.create()?;
        let keeper = keep(Arc::downgrade(&consumer), Arc::clone(&in_flight));
        let production = {
            // Messages are handled in contexts of their own, not the consumer task's.
            let _empty = opentelemetry::Context::new().attach();
            prodbox_core::context::production()
        };
        Ok(SandboxConsumer {
            consumer,
            pulling: pull::PullLock::default(),
            keeper,
            group,
            cuts,
            filter: Filter::with_shared_directory(role.clone(), self.directory),
            dead_letter_topic: self
                .dead_letter_topic
                .unwrap_or_else(|| format!("{}.dead-letter", self.group)),
            producer,
            stopped_holding: OnceLock::new(),
            guardrails: self.guardrails,
            retry: self.retry,
            observe: self.observe,
            observe_cuts,
            in_flight,
            tally: Tally::new(only_topic, role_name(&role)),
            only_topic: only_topic.map(Into::into),
            waiting: AtomicUsize::new(0),
            production_marker: sandbox_context_address(&production),
            production,
        })
    }
}

/// The consumer; see the [module docs](self). `C` is the service's rdkafka
/// [`ConsumerContext`].
pub struct SandboxConsumer<C: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: Arc<StreamConsumer<Rebalances<C>>>,
    /// Held while a loop pulls a message from rdkafka and takes it in flight: with several
    /// loops (`recv` from several tasks), messages are taken in the order rdkafka gives them,
    /// so no position is decided past a message pulled but not yet taken.
    pulling: pull::PullLock,
    /// Gives rdkafka what is done with once a second, whatever the loops do (a handler that
    /// runs long, a loop of the service's own that is not in `recv`).
    keeper: tokio::task::JoinHandle<()>,
    /// Its consumer group.
    group: String,
    cuts: Cuts,
    filter: Filter,
    dead_letter_topic: String,
    producer: FutureProducer,
    /// Where this consumer stopped holding a message it had not handled and could not rewind
    /// to: it must not consume again.
    stopped_holding: OnceLock<String>,
    guardrails: Option<Guardrails>,
    retry: Retry,
    /// Observe-only: decide and audit, then handle every message as production's.
    observe: bool,
    /// Observe-only: whether the directory keeps cuts (without, the baseline dead-letters
    /// the records of a sandbox that forks it).
    observe_cuts: bool,
    in_flight: Arc<InFlight>,
    /// The topic of every message, when the consumer subscribed to one by name.
    only_topic: Option<Box<str>>,
    /// The context production's messages are handled in.
    production: opentelemetry::Context,
    /// Where its sandbox context is (see `sandbox_context_address`).
    production_marker: Option<usize>,
    tally: Tally,
    /// Loops waiting for a message now (see `finish`).
    waiting: AtomicUsize,
}

/// What is done with reaches rdkafka before the consumer closes (and commits).
impl<C: ConsumerContext + 'static> Drop for SandboxConsumer<C> {
    fn drop(&mut self) {
        self.keeper.abort();
        self.store_due();
    }
}

/// How often the keeper gives rdkafka what is done with.
const KEEP: Duration = Duration::from_secs(1);

/// Starts the keeper of `consumer` (see `SandboxConsumer::keeper`).
fn keep<C: ConsumerContext + 'static>(
    consumer: std::sync::Weak<StreamConsumer<Rebalances<C>>>,
    in_flight: Arc<InFlight>,
) -> tokio::task::JoinHandle<()> {
    prodbox_core::spawn(async move {
        let mut every = tokio::time::interval(KEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            in_flight.store_due(&*consumer);
        }
    })
}

impl<C: ConsumerContext + 'static> std::fmt::Debug for SandboxConsumer<C> {
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
            context: DefaultConsumerContext,
            sync_timeout: SYNC_TIMEOUT,
            on_rebalance: None,
            observe: false,
        }
    }
}

impl<C: ConsumerContext + 'static> SandboxConsumer<C> {
    /// The rdkafka consumer (for lag, assignment, and so on). Messages read from it directly
    /// bypass prodbox: they are neither filtered nor run in their context.
    pub fn consumer(&self) -> &StreamConsumer<Rebalances<C>> {
        &self.consumer
    }

    /// The service's own rdkafka context.
    pub fn context(&self) -> &C {
        self.consumer.context().inner()
    }

    /// Its consumer group: the baseline's as given, a fork's derived from it (see the
    /// [module docs](self)).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// `message`'s topic.
    fn topic<'m>(&'m self, message: &'m BorrowedMessage<'_>) -> &'m str {
        match &self.only_topic {
            Some(topic) => topic,
            None => message.topic(),
        }
    }

    /// Fails when an earlier loop stopped holding a message it could not rewind to.
    fn may_consume(&self) -> Result<(), ConsumerError> {
        match self.stopped_holding.get() {
            Some(source) => Err(ConsumerError::StoppedHoldingMessage(source.clone())),
            None => Ok(()),
        }
    }

    /// Marks `message`, taken with `ticket`, done with: its partition may be committed past it
    /// once every earlier message is done with too.
    fn finish(&self, message: &BorrowedMessage<'_>, ticket: Ticket) {
        let (topic, partition) = (self.topic(message), message.partition());
        let due = self
            .in_flight
            .finish(topic, partition, message.offset(), ticket);
        self.finished(due);
    }

    /// After a message was finished: gives rdkafka the positions when a batch is `due`.
    fn finished(&self, due: bool) {
        // While a loop waits for messages, nothing else would give this one to rdkafka.
        if due || self.waiting.load(Ordering::SeqCst) > 0 {
            self.store_due();
        }
    }

    /// Gives rdkafka the positions decided since the last time, for its next commit.
    fn store_due(&self) {
        self.in_flight.store_due(&*self.consumer);
    }

    /// Commits every message done with (and every one skipped or dead-lettered), in `mode`.
    /// Call it when a loop of your own stops; rdkafka commits in the background meanwhile
    /// (`auto.commit.interval.ms`), and once more when the consumer is dropped.
    pub fn commit(&self, mode: CommitMode) -> Result<(), ConsumerError> {
        self.store_due();
        match self.consumer.commit_consumer_state(mode) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Leaves `message`, taken with `ticket`, unhandled: it stays in flight (never committed
    /// past) and the consumer's position on its partition goes back to it, or to an earlier
    /// message left the same way, so that it comes again. Should rdkafka refuse while the
    /// partition is still this consumer's, this consumer refuses to consume again instead, as
    /// its position is past the message. A partition revoked since needs nothing: its next
    /// owner starts from the committed offset, which is not past the message.
    fn rewind_to(&self, message: &BorrowedMessage<'_>, ticket: Ticket) {
        let (topic, partition) = (self.topic(message), message.partition());
        let Some(back_to) = self
            .in_flight
            .abandon(topic, partition, message.offset(), ticket)
        else {
            return;
        };
        let Err(error) =
            self.consumer
                .seek(topic, partition, Offset::Offset(back_to), SEEK_TIMEOUT)
        else {
            return;
        };
        if !self.in_flight.holds(topic, partition, ticket) {
            tracing::debug!(target: "prodbox::kafka", %error, source = %Source(message), "no rewind: the partition was revoked meanwhile");
            return;
        }
        tracing::warn!(target: "prodbox::kafka", %error, source = %Source(message), "could not rewind to an unhandled message; this consumer will not consume again");
        let _ = self.stopped_holding.set(Source(message).to_string());
    }

    fn count(&self, message: &BorrowedMessage<'_>, outcome: KafkaOutcome) {
        self.tally.count(outcome, || self.topic(message));
    }

    /// Audits and counts `message`, skipped for `reason`, of `sandbox`'s, in a loop's `skips`.
    fn skipped(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &'static str,
        sandbox: Option<&SandboxKey>,
        skips: &mut LocalSkips<'_>,
    ) {
        skips.skip(reason, sandbox, &Source(message), || self.topic(message));
    }
}

/// The address of `cx`'s sandbox context: the thread's current context is production's
/// itself when its sandbox context is at the address of production's. Production's is read
/// once, as the lookup costs about 40 instructions, and `run` asks before every production
/// message.
fn sandbox_context_address(cx: &opentelemetry::Context) -> Option<usize> {
    cx.sandbox_context()
        .map(|context| std::ptr::from_ref(context).addr())
}

/// The OpenTelemetry context a message with `context` is handled in (production's is the
/// consumer's own, `SandboxConsumer::production`): a fresh one, not the consumer task's.
fn handled_in(context: &prodbox_core::SandboxContext) -> opentelemetry::Context {
    context.attach_to(&opentelemetry::Context::new())
}

/// The role's name in metrics.
fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Baseline { .. } => "baseline",
        Role::Sandbox { .. } => "sandbox",
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
    event(sandbox, decision, reason, Some(detail)).emit();
}

/// The audit event of a consumer's decision about a message of `sandbox`'s.
pub(crate) fn event<'a>(
    sandbox: Option<&'a SandboxKey>,
    decision: Decision,
    reason: &'a str,
    detail: Option<&'a dyn Display>,
) -> AuditEvent<'a> {
    AuditEvent {
        sandbox: sandbox.map(SandboxKey::as_str),
        actor: None,
        origin: None,
        protocol: Protocol::Kafka,
        direction: Direction::Inbound,
        decision,
        reason,
        detail,
    }
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
