//! Helpers shared by the broker tests: producing and running consumers. Reading lag and topics
//! back is `prodbox_testkit::kafka`'s (re-exported here).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prodbox_core::{FutureExt, Sandbox};
use prodbox_kafka::{SandboxConsumer, SandboxRecordExt};
// Each test binary uses a different subset of these too.
use prodbox_testkit::kafka::client_config;
#[allow(unused_imports)]
pub(crate) use prodbox_testkit::kafka::{assert_zero_lag, committed, ends, read_topic};
use rdkafka::ClientConfig;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// rdkafka settings for consumers under test: stored offsets are committed every 200 ms, so a
/// running consumer's lag is visible soon.
pub(crate) fn consumer_config() -> ClientConfig {
    let mut config = client_config();
    config.set("auto.commit.interval.ms", "200");
    config
}

pub(crate) fn producer() -> FutureProducer {
    client_config()
        .set("linger.ms", "5")
        .create()
        .expect("a producer")
}

/// A producer that sends every record in a record batch of its own.
///
/// Tests that resume a group from a committed offset use it: tansu 0.6 answers a fetch from an
/// offset inside a record batch with the batches that *start* at or after it, so the rest of
/// that batch is skipped by every consumer that resumes there (its `fetch` keeps the stored
/// batches whose base offset is `>=` the requested offset).
pub(crate) fn unbatched_producer() -> FutureProducer {
    client_config()
        .set("batch.num.messages", "1")
        .create()
        .expect("a producer")
}

/// One record to produce: payload, explicit partition, raw headers, and the sandbox whose
/// context it is produced in (through `with_sandbox_context`).
#[derive(Clone, Default)]
pub(crate) struct Out {
    pub(crate) payload: String,
    pub(crate) partition: Option<i32>,
    pub(crate) headers: Option<OwnedHeaders>,
    pub(crate) sandbox: Option<Sandbox>,
    /// Sent as it is, without `with_sandbox_context` (which would clean up its headers).
    pub(crate) raw: bool,
}

impl Out {
    pub(crate) fn new(payload: impl Into<String>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    pub(crate) fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub(crate) fn headers(mut self, headers: OwnedHeaders) -> Self {
        self.headers = Some(headers);
        self
    }

    pub(crate) fn sandbox(mut self, sandbox: Option<Sandbox>) -> Self {
        self.sandbox = sandbox;
        self
    }

    pub(crate) fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
}

/// Produces every record (each with `with_sandbox_context`, inside its sandbox when it has
/// one, unless it is `raw`), all in flight at once; returns where each landed: `(partition, offset)`.
pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[Out],
) -> Vec<(i32, i64)> {
    let mut deliveries = Vec::with_capacity(records.len());
    for out in records {
        // Enqueued in the record's context; the delivery is awaited later, all at once.
        #[allow(clippy::async_yields_async)]
        let enqueue = async {
            let mut record = FutureRecord::<str, str>::to(topic)
                .key(&out.payload)
                .payload(&out.payload);
            record.partition = out.partition;
            record.headers = out.headers.clone();
            if !out.raw {
                record = record.with_sandbox_context().expect("context written");
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => return delivery,
                    Err((error, back)) => {
                        // Queue full: let deliveries drain.
                        eprintln!("enqueue failed ({error}); retrying");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        record = back;
                    }
                }
            }
        };
        let delivery = match &out.sandbox {
            Some(sandbox) => enqueue.in_sandbox(sandbox.clone()).await,
            None => enqueue.await,
        };
        deliveries.push(delivery);
    }
    let mut landed = Vec::with_capacity(records.len());
    for delivery in deliveries {
        let delivered = delivery
            .await
            .expect("delivery not cancelled")
            .expect("delivered");
        landed.push((delivered.partition, delivered.offset));
    }
    landed
}

/// A consumer running in a task until [`Running::stop`] (which lets `run` commit) or
/// [`Running::kill`] (which aborts it mid-stream).
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Which loop consumes: prodbox's [`SandboxConsumer::run`], or a service's own loop over
/// [`SandboxConsumer::stream`] handling up to 8 deliveries at once (so they finish out of
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loop {
    Run,
    Own,
}

impl Running {
    /// Runs `consumer` in `kind` of loop with `handler`.
    pub(crate) fn spawn_in<F, Fut, E>(
        kind: Loop,
        consumer: impl Into<Arc<SandboxConsumer>>,
        handler: F,
    ) -> Self
    where
        F: FnMut(OwnedMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        match kind {
            Loop::Run => Self::spawn(consumer, handler),
            Loop::Own => Self::spawn_own_loop(consumer, handler),
        }
    }

    /// A service's own loop: deliveries from `stream`, up to 8 handled at once, each in its
    /// context, done once its handler succeeded (a failed one is left undone: it holds its
    /// partition's commits); on stop, a final commit.
    pub(crate) fn spawn_own_loop<F, Fut, E>(
        consumer: impl Into<Arc<SandboxConsumer>>,
        mut handler: F,
    ) -> Self
    where
        F: FnMut(OwnedMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        use futures_util::StreamExt;
        use rdkafka::consumer::CommitMode;

        let consumer = consumer.into();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            consumer
                .stream()
                .take_until(stopped)
                .for_each_concurrent(8, |delivery| {
                    let work = delivery.as_ref().ok().map(|d| handler(d.detach()));
                    async move {
                        let delivery = match delivery {
                            Ok(delivery) => delivery,
                            Err(error) => {
                                eprintln!("recv: {error}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                return;
                            }
                        };
                        let Some(work) = work else { return };
                        match delivery.in_context(work).await {
                            Ok(()) => delivery.done(),
                            Err(error) => eprintln!("handler failed: {error}; left undone"),
                        }
                    }
                })
                .await;
            consumer.commit(CommitMode::Sync).expect("final commit");
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Runs `consumer` (owned, or shared to run it again later) with `handler`.
    pub(crate) fn spawn<F, Fut, E>(consumer: impl Into<Arc<SandboxConsumer>>, handler: F) -> Self
    where
        F: FnMut(OwnedMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let consumer = consumer.into();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut handler = handler;
        let task = tokio::spawn(async move {
            consumer
                .run(move |message| handler(message.detach()), async move {
                    let _ = stopped.await;
                })
                .await
                .expect("consumer run failed");
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Shuts the consumer down the orderly way and waits for its final commit.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("consumer stopped within 30 s")
            .expect("consumer task did not panic");
    }

    /// Aborts the consumer wherever it is, as a crash would: no final commit by `run`.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The payload as text.
pub(crate) fn payload(message: &impl Message) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

/// The current sandbox's key, as a handler sees it.
pub(crate) fn current_key() -> Option<String> {
    prodbox_core::current().map(|s| s.key().to_string())
}

/// Calls `check` every 100 ms until it is true or `limit` has passed; returns whether it was.
#[must_use = "assert what it returns"]
pub(crate) async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What handlers saw: (consumer, payload, sandbox in context), in order.
pub(crate) type Log = Arc<Mutex<Vec<(&'static str, String, Option<String>)>>>;

/// A handler that records each message it is given under `name` and succeeds. It reads the
/// context inside the handler's future, where `run` attaches it.
pub(crate) fn recorder(
    log: &Log,
    name: &'static str,
) -> impl FnMut(OwnedMessage) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>
+ Send
+ 'static {
    let log = Arc::clone(log);
    move |message| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            log.lock()
                .unwrap()
                .push((name, payload(&message), current_key()));
            Ok(())
        })
    }
}
