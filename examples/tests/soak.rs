//! End-to-end isolation soak of the shop demo (issue #7): the gateway, orders and billing
//! services of [`prodbox_examples::shop`] in this process, on loopback ports, against the
//! machine's real PostgreSQL and the real tansu broker.
//!
//! Ten sandboxes (three of them forking billing) and production send 5,000 orders through the
//! gateway at concurrency 32, while the baseline billing consumer is killed and restarted, the
//! database's sessions are all terminated, and one sandbox bursts several hundred requests at
//! once. Afterwards: no sandboxed order touched production, every accepted order was stored and
//! invoiced exactly once, in its own schema, by the right billing version, every consumer group
//! is at the end of the topic, and forged or expired tokens never became sandboxes.
//!
//! `cargo test -p prodbox-examples --test soak -- --nocapture` shows the figures.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prodbox_core::directory::{Directory, SandboxEntry};
use prodbox_core::token::TokenKeys;
use prodbox_core::{Guardrails, SandboxKey};
use prodbox_db::SandboxPool;
use prodbox_db::directory::{DirectoryStore, PgDirectory};
use prodbox_db::names::schema_name;
use prodbox_examples::shop::billing::{self, Stats, Version};
use prodbox_examples::shop::payments::{Payments, Provider};
use prodbox_examples::shop::{self, gateway, orders};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{
    assert_zero_lag, client_config, committed, create_topic, read_all, topic_ends, unique_topic,
};
use prodbox_testkit::pg::{TestDatabase, admin_connection, quote, unique_key};
use rdkafka::ClientConfig;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Orders of the main run (about half of them production).
const ORDERS: usize = 5_000;
/// Requests in flight at once during the main run.
const CONCURRENCY: usize = 32;
const SANDBOXES: usize = 10;
/// Sandboxes `0..FORKS` fork billing.
const FORKS: usize = 3;
/// The sandbox whose burst the gateway's guardrail must throttle (one that does not fork).
const BURSTING: usize = SANDBOXES - 1;
/// Requests of the burst, all sent at once.
const BURST: usize = 400;
/// The sandbox forged and expired tokens claim (one that forks billing: had a forged token
/// been taken, its order would be billed by the fork, in the sandbox's schema).
const CLAIMED: usize = 0;
/// Forged and expired tokens each.
const FORGED: usize = 5;
const PARTITIONS: i32 = 3;
/// Attempts of one request (retried on 5xx and connection errors) before the test gives up.
const MAX_ATTEMPTS: u32 = 30;
/// The main run sends no faster than this (order `i` not before `i / MAX_SEND_RATE` s), so
/// that each sandbox, one order in 20, sends at most 50 per second however fast the machine.
/// This one makes about 300 to 600 per second.
const MAX_SEND_RATE: u64 = 1_000;
/// The gateway's per-sandbox rate limit: twice what a sandbox sends in the main run at most,
/// far below a burst of 400 arriving within a second or two.
const RATE_PER_SECOND: f64 = 100.0;
const RATE_BURST: u32 = 50;
/// The fork's tax rule.
const FORK_TAX_PERCENT: i64 = 25;
const KEY_ID: &str = "soak-1";
const SECRET: &[u8] = b"the soak test's token secret, 32+ bytes long";
const FORGED_SECRET: &[u8] = b"somebody else's secret, also 32+ bytes long!";
/// How long the invoices may take to catch up once every order is in.
const INVOICE_DEADLINE: Duration = Duration::from_secs(120);

/// Who sends an order, and so where it must end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No baggage: production.
    Baseline,
    /// A valid token of sandbox `n`.
    Sandboxed(usize),
    /// Part of sandbox `n`'s burst.
    Burst(usize),
    /// A forged or expired token claiming sandbox `n`: must run as production.
    Forged(usize),
}

impl Kind {
    /// The sandbox the order must be stored in (`None`: production).
    fn sandbox(self) -> Option<usize> {
        match self {
            Kind::Sandboxed(n) | Kind::Burst(n) => Some(n),
            Kind::Baseline | Kind::Forged(_) => None,
        }
    }
}

/// One order to send.
#[derive(Debug, Clone)]
struct Planned {
    id: String,
    amount_cents: i64,
    kind: Kind,
    /// The `baggage` header, if any.
    baggage: Option<String>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 201, with the sandbox the reply named as expected.
    Accepted,
    /// 429 for the bursting sandbox (not retried); `after_failure` if an earlier attempt failed
    /// (then the order may or may not have been stored).
    Throttled { after_failure: bool },
    /// Anything else: the test fails with it.
    Failed(String),
}

/// What one request did.
#[derive(Debug, Clone)]
struct Sent {
    order: Planned,
    outcome: Outcome,
    attempts: u32,
    /// 429s answered to a request that must not be throttled (retried, counted).
    unexpected_throttles: u32,
    started: Instant,
    latency: Duration,
}

/// Sends `order` to the gateway until it is accepted, throttled (bursting sandbox only), or
/// refused for good; retries 5xx and connection errors with the same id.
async fn send(http: &reqwest::Client, url: &str, order: &Planned, keys: &[SandboxKey]) -> Sent {
    let started = Instant::now();
    let may_be_throttled = order.kind.sandbox() == Some(BURSTING);
    let expected_sandbox = order
        .kind
        .sandbox()
        .map_or_else(String::new, |n| keys[n].to_string());
    let body = serde_json::json!({
        "id": order.id,
        "item": "soak book",
        "amount_cents": order.amount_cents,
    });
    let mut attempts = 0;
    let mut unexpected_throttles = 0;
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    let outcome = loop {
        if attempts == MAX_ATTEMPTS {
            break Outcome::Failed(format!("gave up after {attempts} attempts: {last_error}"));
        }
        attempts += 1;
        let mut request = http.post(url).json(&body);
        if let Some(baggage) = &order.baggage {
            request = request.header("baggage", baggage);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status == reqwest::StatusCode::CREATED {
                    let reply: serde_json::Value = match response.json().await {
                        Ok(reply) => reply,
                        Err(error) => {
                            last_error = format!("reading the reply: {error}");
                            continue;
                        }
                    };
                    let sandbox = reply["sandbox"].as_str().unwrap_or("?");
                    break if reply["id"] == order.id.as_str() && sandbox == expected_sandbox {
                        Outcome::Accepted
                    } else {
                        Outcome::Failed(format!(
                            "accepted as {reply}, expected sandbox {expected_sandbox:?}"
                        ))
                    };
                }
                let text = response.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    if may_be_throttled {
                        break Outcome::Throttled {
                            after_failure: attempts > 1,
                        };
                    }
                    unexpected_throttles += 1;
                    last_error = format!("429 {text}");
                } else if status.is_server_error() {
                    last_error = format!("{status} {text}");
                } else {
                    break Outcome::Failed(format!("{status} {text}"));
                }
            }
            Err(error) => last_error = format!("request failed: {error}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    };
    Sent {
        order: order.clone(),
        outcome,
        attempts,
        unexpected_throttles,
        started,
        latency: started.elapsed(),
    }
}

/// A billing consumer running in a task.
struct Billing {
    /// Its consumer group (a fork's is derived from the baseline's).
    group: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Billing {
    #[allow(clippy::too_many_arguments)]
    async fn start(
        kafka: &ClientConfig,
        group: &str,
        topic: &str,
        directory: &PgDirectory,
        version: Version,
        pool: SandboxPool,
        payments: Payments,
        stats: &Arc<Stats>,
    ) -> Billing {
        let consumer = billing::start(kafka, group, topic, directory.clone(), &version)
            .await
            .unwrap();
        let group = consumer.group().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let stats = Arc::clone(stats);
        let task = tokio::spawn(async move {
            billing::run(consumer, pool, Some(payments), version, stats, async move {
                let _ = stopped.await;
            })
            .await
            .expect("billing ran");
        });
        Billing {
            group,
            shutdown: stop,
            task,
        }
    }

    /// The orderly way: `run` commits what it has done.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("billing stopped within 30 s")
            .expect("billing did not panic");
    }

    /// As a crash would: wherever it is, without `run`'s final commit.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Everything billing needs to start a consumer: the baseline's restart happens mid-run.
struct BillingSetup {
    kafka: ClientConfig,
    group: String,
    topic: String,
    directory: PgDirectory,
    pool: SandboxPool,
    payments: Payments,
}

impl BillingSetup {
    async fn baseline(&self, stats: &Arc<Stats>) -> Billing {
        Billing::start(
            &self.kafka,
            &self.group,
            &self.topic,
            &self.directory,
            Version::Baseline,
            self.pool.clone(),
            self.payments.clone(),
            stats,
        )
        .await
    }
}

/// Terminates every session of database `name` but this one's; returns how many.
async fn terminate_backends(name: &str) -> i64 {
    let mut admin = admin_connection().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()
         ) t WHERE ok",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

/// An invoice row, with the schema it was found in.
#[derive(Debug, Clone)]
struct Invoice {
    schema: String,
    amount_cents: i64,
    tax_cents: i64,
    billed_by: String,
}

/// Every order id (by the schemas holding it) and every invoice (by order id), across `public`
/// and every sandbox schema of the database.
async fn rows(
    pool: &PgPool,
) -> (
    BTreeMap<String, Vec<String>>,
    BTreeMap<String, Vec<Invoice>>,
) {
    let mut schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sbx\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    schemas.insert(0, "public".to_owned());
    let mut orders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut invoices: BTreeMap<String, Vec<Invoice>> = BTreeMap::new();
    for schema in schemas {
        // A schema being provisioned may not have its tables yet.
        let ready: bool = sqlx::query_scalar(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
        )
        .bind(format!("{}.orders", quote(&schema)))
        .bind(format!("{}.invoices", quote(&schema)))
        .fetch_one(pool)
        .await
        .unwrap();
        if !ready {
            continue;
        }
        let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {}.orders",
            quote(&schema)
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        for id in ids {
            orders.entry(id).or_default().push(schema.clone());
        }
        let found: Vec<(String, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT order_id, amount_cents, tax_cents, billed_by FROM {}.invoices",
            quote(&schema)
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        for (id, amount_cents, tax_cents, billed_by) in found {
            invoices.entry(id).or_default().push(Invoice {
                schema: schema.clone(),
                amount_cents,
                tax_cents,
                billed_by,
            });
        }
    }
    (orders, invoices)
}

/// `p50 / p90 / p99 / max` of `latencies`, in milliseconds.
fn percentiles(latencies: &[Duration]) -> String {
    if latencies.is_empty() {
        return "n=0".to_owned();
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    };
    format!(
        "n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        sorted.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

/// Collects failed checks: the figures are printed before the test fails on them.
#[derive(Default)]
struct Problems(BTreeMap<&'static str, (usize, Vec<String>)>);

impl Problems {
    fn add(&mut self, check: &'static str, example: String) {
        let (count, examples) = self.0.entry(check).or_default();
        *count += 1;
        if examples.len() < 5 {
            examples.push(example);
        }
    }

    fn report(&self) -> String {
        self.0
            .iter()
            .map(|(check, (count, examples))| format!("{check}: {count}, e.g. {examples:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_keeps_sandboxes_isolated_under_faults() {
    let test_started = Instant::now();
    let audit = AuditLog::global();

    // PostgreSQL: a fresh database with the shop's production tables.
    let db = TestDatabase::create_with(4).await;
    shop::migrator()
        .await
        .unwrap()
        .run(db.pool())
        .await
        .unwrap();
    let orders_pg = db.new_pool(8).await;
    let billing_pg = db.new_pool(4).await;

    // Kafka: the orders topic and its dead letters.
    let topic = unique_topic("soak-orders");
    let dead_letters = format!("{topic}.dead-letter");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&dead_letters, 1).await;
    let group = format!("{topic}-billing");
    let mut consumer_kafka = client_config();
    consumer_kafka.set("auto.commit.interval.ms", "200");

    // The sandboxes, registered before anything consumes (a fork's consumer starts at its
    // sandbox's creation time).
    let store = DirectoryStore::new(db.pool().clone());
    let keys: Vec<SandboxKey> = (0..SANDBOXES)
        .map(|_| unique_key("soak").parse().unwrap())
        .collect();
    // As created: tokens are minted for these incarnations.
    let mut registered = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let mut entry = SandboxEntry::new(key.clone())
            .expires_at(SystemTime::now() + Duration::from_secs(3600));
        entry.actor = Some("soak".to_owned());
        entry.origin = Some("issue-7".to_owned());
        if n < FORKS {
            entry = entry.fork(
                "billing",
                "http://127.0.0.1:9".parse().expect("a fork address"),
            );
        }
        registered.push(store.create(&entry).await.unwrap());
    }

    // One directory per service, all reading the same table.
    let directories: Vec<PgDirectory> = (0..3)
        .map(|_| PgDirectory::builder(db.pool()).start())
        .collect();
    for directory in &directories {
        directory.synced(Duration::from_secs(10)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while keys.iter().any(|key| directory.get(key).is_none()) {
            assert!(Instant::now() < deadline, "a directory missed a sandbox");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let [gateway_directory, orders_directory, billing_directory] =
        <[PgDirectory; 3]>::try_from(directories).unwrap();

    // orders (gRPC).
    let orders_pool = shop::sandbox_pool(orders_pg.clone()).await.unwrap();
    let service = orders::OrdersService::new(
        orders_pool.clone(),
        orders::producer(&client_config()).unwrap(),
        &topic,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders_addr = listener.local_addr().unwrap();
    let (stop_orders, orders_stopped) = oneshot::channel::<()>();
    let orders_server = tokio::spawn(
        service
            .router(orders_directory)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = orders_stopped.await;
                },
            ),
    );

    // gateway (HTTP), with signed tokens and per-sandbox guardrails.
    let keys_ring = TokenKeys::new().with_key(KEY_ID, SECRET).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{orders_addr}"))
        .unwrap()
        .connect_lazy();
    let guardrails = Guardrails::builder()
        .rate(RATE_PER_SECOND, RATE_BURST)
        .build();
    let gateway_addr = prodbox_testkit::serve(gateway::router(
        channel,
        keys_ring.clone(),
        guardrails,
        gateway_directory,
    ))
    .await;
    let url = format!("http://{gateway_addr}/orders");

    // The payment provider billing charges every invoice at: a sandbox's charge must never
    // reach it (the egress policy stubs it), whatever the faults.
    let provider = Provider::default();
    let provider_addr = provider.serve().await.unwrap();
    let payments = Payments::new(provider_addr, billing_directory.clone());

    // billing: the baseline, and one fork per forking sandbox (a process of its own each).
    let billing = BillingSetup {
        payments: payments.clone(),
        kafka: consumer_kafka.clone(),
        group: group.clone(),
        topic: topic.clone(),
        directory: billing_directory.clone(),
        pool: shop::sandbox_pool(billing_pg.clone()).await.unwrap(),
    };
    // The baseline's counters before and after its restart.
    let first_stats = Arc::new(Stats::default());
    let restarted_stats = Arc::new(Stats::default());
    let baseline_billing = billing.baseline(&first_stats).await;
    let mut forks: Vec<Billing> = Vec::new();
    let mut fork_stats = Vec::new();
    for key in &keys[..FORKS] {
        let stats = Arc::new(Stats::default());
        let version = Version::Fork {
            sandbox: key.clone(),
            tax_percent: FORK_TAX_PERCENT,
        };
        let pool = shop::sandbox_pool(billing_pg.clone()).await.unwrap();
        forks.push(
            Billing::start(
                &consumer_kafka,
                &group,
                &topic,
                &billing_directory,
                version,
                pool,
                payments.clone(),
                &stats,
            )
            .await,
        );
        fork_stats.push(stats);
    }
    let fork_groups: Vec<String> = forks.iter().map(|fork| fork.group.clone()).collect();

    // The plan: every other order production, the rest round-robin over the sandboxes, so that
    // no sandbox sends faster than its share.
    let baggage: Vec<String> = registered
        .iter()
        .map(|entry| {
            let token = keys_ring
                .mint(&entry.sandbox(), Duration::from_secs(3600))
                .unwrap();
            format!("prodbox.token={token}")
        })
        .collect();
    let plan: Vec<Planned> = (0..ORDERS)
        .map(|i| {
            let kind = if i % 2 == 0 {
                Kind::Baseline
            } else {
                Kind::Sandboxed((i / 2) % SANDBOXES)
            };
            Planned {
                id: format!("order-{i:05}"),
                amount_cents: 100 + (i as i64 % 900),
                kind,
                baggage: kind.sandbox().map(|n| baggage[n].clone()),
            }
        })
        .collect();
    let burst: Vec<Planned> = (0..BURST)
        .map(|i| Planned {
            id: format!("burst-{i:04}"),
            amount_cents: 1000 + i as i64,
            kind: Kind::Burst(BURSTING),
            baggage: Some(baggage[BURSTING].clone()),
        })
        .collect();

    // The run: CONCURRENCY workers take the plan in order; a controller injects the faults at
    // 25 %, 50 % and 75 % of the orders sent.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let plan = Arc::new(plan);
    let keys = Arc::new(keys);
    let next = Arc::new(AtomicUsize::new(0));
    let load_started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, url, plan, keys, next) = (
            http.clone(),
            url.clone(),
            Arc::clone(&plan),
            Arc::clone(&keys),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(order) = plan.get(i) else {
                    break;
                };
                let not_before = Duration::from_micros(i as u64 * 1_000_000 / MAX_SEND_RATE);
                tokio::time::sleep_until((load_started + not_before).into()).await;
                sent.push(send(&http, &url, order, &keys).await);
            }
            sent
        });
    }
    let controller = {
        let (http, url, keys, next) = (
            http.clone(),
            url.clone(),
            Arc::clone(&keys),
            Arc::clone(&next),
        );
        let database = db.name().to_owned();
        let restarted_stats = Arc::clone(&restarted_stats);
        tokio::spawn(async move {
            let reached = |share: usize| {
                let next = Arc::clone(&next);
                async move {
                    while next.load(Ordering::Relaxed) < ORDERS * share / 100 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            reached(25).await;
            eprintln!("25 %: killing the baseline billing consumer and starting another");
            baseline_billing.kill().await;
            let baseline_billing = billing.baseline(&restarted_stats).await;

            reached(50).await;
            let terminated = terminate_backends(&database).await;
            eprintln!("50 %: terminated {terminated} sessions of the shop's database");

            reached(75).await;
            eprintln!("75 %: sandbox {} bursts {BURST} requests", keys[BURSTING]);
            let burst_started = Instant::now();
            let mut requests = JoinSet::new();
            for order in burst {
                let (http, url, keys) = (http.clone(), url.clone(), Arc::clone(&keys));
                requests.spawn(async move { send(&http, &url, &order, &keys).await });
            }
            let burst_sent = requests.join_all().await;
            let burst_window = (burst_started, Instant::now());
            (
                billing,
                baseline_billing,
                terminated,
                burst_sent,
                burst_window,
            )
        })
    };
    let mut sent: Vec<Sent> = workers.join_all().await.into_iter().flatten().collect();
    let (billing, baseline_billing, terminated, burst_sent, burst_window) =
        controller.await.unwrap();
    let load_elapsed = load_started.elapsed();
    sent.extend(burst_sent);

    // Forged and expired tokens claiming a sandbox: they must run as production.
    let forged_ring = TokenKeys::new().with_key(KEY_ID, FORGED_SECRET).unwrap();
    let claimed = registered[CLAIMED].sandbox();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for i in 0..FORGED {
        let forged = forged_ring
            .mint(&claimed, Duration::from_secs(3600))
            .unwrap();
        let expired = keys_ring
            .mint_at(&claimed, two_hours_ago, Duration::from_secs(3600))
            .unwrap();
        for (name, token) in [("forged", forged), ("expired", expired)] {
            let order = Planned {
                id: format!("{name}-{i}"),
                amount_cents: 5000 + i as i64,
                kind: Kind::Forged(CLAIMED),
                baggage: Some(format!("prodbox.token={token}")),
            };
            sent.push(send(&http, &url, &order, &keys).await);
        }
    }

    // What must exist: every accepted order, once, in its schema, invoiced once.
    let mut problems = Problems::default();
    let expected: BTreeMap<String, &Sent> = sent
        .iter()
        .filter(|s| s.outcome == Outcome::Accepted)
        .map(|s| (s.order.id.clone(), s))
        .collect();
    let throttled_clean: BTreeSet<&str> = sent
        .iter()
        .filter(|s| {
            s.outcome
                == Outcome::Throttled {
                    after_failure: false,
                }
        })
        .map(|s| s.order.id.as_str())
        .collect();
    let throttled_after_failure: BTreeSet<&str> = sent
        .iter()
        .filter(|s| {
            s.outcome
                == Outcome::Throttled {
                    after_failure: true,
                }
        })
        .map(|s| s.order.id.as_str())
        .collect();
    for s in &sent {
        if let Outcome::Failed(error) = &s.outcome {
            problems.add(
                "requests failed",
                format!("{} ({:?}): {error}", s.order.id, s.order.kind),
            );
        }
    }
    let ids: BTreeSet<&str> = sent.iter().map(|s| s.order.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        ORDERS + BURST + 2 * FORGED,
        "order ids are unique"
    );

    // Wait for billing to catch up.
    let invoices_started = Instant::now();
    let mut last_print = Instant::now();
    let (orders_rows, invoice_rows) = loop {
        let (orders_rows, invoice_rows) = rows(db.pool()).await;
        let missing = expected
            .keys()
            .filter(|id| !invoice_rows.contains_key(*id))
            .count();
        let waited = invoices_started.elapsed();
        if missing == 0 || waited > INVOICE_DEADLINE {
            eprintln!(
                "invoices: {} of {} after {:.1} s",
                expected.len() - missing,
                expected.len(),
                waited.as_secs_f64()
            );
            break (orders_rows, invoice_rows);
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "waiting for invoices: {} of {} after {:.1} s",
                expected.len() - missing,
                expected.len(),
                waited.as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let invoices_waited = invoices_started.elapsed();

    // Every accepted order: its row in its own schema only; one invoice, there, by the right
    // billing version, with that version's tax.
    let fork_names: Vec<String> = keys[..FORKS]
        .iter()
        .map(|key| {
            Version::Fork {
                sandbox: key.clone(),
                tax_percent: FORK_TAX_PERCENT,
            }
            .name()
        })
        .collect();
    let charges = provider.charges();
    for (id, charge) in &charges {
        let sandboxed = expected
            .get(id)
            .is_none_or(|s| s.order.kind.sandbox().is_some());
        if sandboxed || charge.sandbox().is_some() {
            problems.add(
                "a sandbox's charge reached the real payment provider",
                format!("{id}: {charge:?}"),
            );
        }
    }
    for (id, s) in &expected {
        let sandbox = s.order.kind.sandbox();
        if sandbox.is_none() && !charges.contains_key(id) {
            problems.add("production order never charged", id.clone());
        }
        let schema = sandbox.map_or_else(|| "public".to_owned(), |n| schema_name(&keys[n]));
        let (billed_by, tax_percent) = match sandbox {
            Some(n) if n < FORKS => (fork_names[n].clone(), FORK_TAX_PERCENT),
            _ => (Version::Baseline.name(), 20),
        };
        let stored = orders_rows.get(id).cloned().unwrap_or_default();
        if stored != [schema.clone()] {
            problems.add(
                "order not stored exactly once, in its own schema",
                format!("{id}: expected in {schema}, found in {stored:?}"),
            );
        }
        match invoice_rows.get(id).map(Vec::as_slice) {
            None | Some([]) => problems.add("accepted order never invoiced", id.clone()),
            Some([invoice]) => {
                let tax = s.order.amount_cents * tax_percent / 100;
                if invoice.schema != schema
                    || invoice.billed_by != billed_by
                    || invoice.tax_cents != tax
                    || invoice.amount_cents != s.order.amount_cents + tax
                {
                    problems.add(
                        "invoice wrong",
                        format!(
                            "{id}: expected in {schema} by {billed_by:?} with tax {tax}, got {invoice:?}"
                        ),
                    );
                }
            }
            Some(many) => problems.add("order invoiced more than once", format!("{id}: {many:?}")),
        }
    }
    // Nothing else: no row for an order throttled before it reached `orders`, nor for one that
    // was never accepted.
    for id in orders_rows.keys().chain(invoice_rows.keys()) {
        if !expected.contains_key(id) && !throttled_after_failure.contains(id.as_str()) {
            let why = if throttled_clean.contains(id.as_str()) {
                "row of a throttled order"
            } else {
                "row of an order that was not accepted"
            };
            problems.add(why, id.clone());
        }
    }
    // Explicitly: zero production rows for any sandboxed order id.
    let sandboxed_ids: Vec<String> = sent
        .iter()
        .filter(|s| s.order.kind.sandbox().is_some())
        .map(|s| s.order.id.clone())
        .collect();
    let mut production_rows = 0i64;
    for (table, column) in [("orders", "id"), ("invoices", "order_id")] {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM public.{table} WHERE {column} = ANY($1)"
        )))
        .bind(&sandboxed_ids)
        .fetch_one(db.pool())
        .await
        .unwrap();
        production_rows += count;
    }
    if production_rows != 0 {
        problems.add(
            "sandboxed orders in production tables",
            format!("{production_rows} rows"),
        );
    }
    // The forged and expired tokens never made a sandbox: production rows (checked above),
    // answered as production, audited as stripped.
    let records = audit.all();
    let audited = |decision: &str, reason: &str| {
        records
            .iter()
            .filter(|r| {
                r.get("decision").map(String::as_str) == Some(decision)
                    && r.get("reason").map(String::as_str) == Some(reason)
            })
            .count()
    };
    let stripped_forged = audited("stripped", "token_bad_signature");
    let stripped_expired = audited("stripped", "token_expired");
    if stripped_forged < FORGED || stripped_expired < FORGED {
        problems.add(
            "forged or expired tokens not audited as stripped",
            format!("forged {stripped_forged}, expired {stripped_expired}"),
        );
    }
    let throttled_audited = records
        .iter()
        .filter(|r| {
            r.get("decision").map(String::as_str) == Some("throttled")
                && r.get("sandbox").map(String::as_str) == Some(keys[BURSTING].as_str())
        })
        .count();

    // The faults happened.
    if terminated == 0 {
        problems.add("no database session was terminated", String::new());
    }
    if first_stats.invoiced.load(Ordering::Relaxed) == 0
        || restarted_stats.invoiced.load(Ordering::Relaxed) == 0
    {
        problems.add(
            "the baseline billing consumer did not work both before and after its restart",
            String::new(),
        );
    }
    // The burst was throttled, and only the bursting sandbox: production and every other
    // sandbox went through.
    let throttled = throttled_clean.len() + throttled_after_failure.len();
    if throttled == 0 {
        problems.add("the burst was not throttled", String::new());
    }
    let unexpected_throttles: BTreeMap<String, u32> = sent
        .iter()
        .filter(|s| s.unexpected_throttles > 0)
        .fold(BTreeMap::new(), |mut by, s| {
            let who = match s.order.kind.sandbox() {
                None => "production".to_owned(),
                Some(n) => keys[n].to_string(),
            };
            *by.entry(who).or_default() += s.unexpected_throttles;
            by
        });
    if !unexpected_throttles.is_empty() {
        problems.add(
            "requests throttled that must not be",
            format!("{unexpected_throttles:?}"),
        );
    }
    let (burst_start, burst_end) = burst_window;
    let overlaps_burst = |s: &Sent| s.started < burst_end && s.started + s.latency > burst_start;
    let baseline: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.order.kind == Kind::Baseline)
        .collect();
    let during: Vec<&Sent> = baseline
        .iter()
        .copied()
        .filter(|s| overlaps_burst(s))
        .collect();
    if during.is_empty() {
        problems.add("no production request ran during the burst", String::new());
    }
    for s in &during {
        if s.outcome != Outcome::Accepted {
            problems.add(
                "production request during the burst did not succeed",
                format!("{}: {:?}", s.order.id, s.outcome),
            );
        }
    }
    let latency_during: Vec<Duration> = during.iter().map(|s| s.latency).collect();
    let latency_outside: Vec<Duration> = baseline
        .iter()
        .filter(|s| !overlaps_burst(s))
        .map(|s| s.latency)
        .collect();

    // Where the topic ends (read back: tansu's high watermark is not to be trusted), and the
    // dead letters (there should be none).
    let ends = topic_ends(&topic, PARTITIONS).await;
    let dead = read_all(
        &dead_letters,
        1,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await;
    if !dead.is_empty() {
        problems.add(
            "dead-lettered orders",
            format!(
                "{} records, e.g. {:?}",
                dead.len(),
                dead[0].header(prodbox_kafka::consumer::DEAD_LETTER_REASON)
            ),
        );
    }
    let groups: Vec<String> = std::iter::once(group.clone())
        .chain(fork_groups.iter().cloned())
        .collect();

    // The figures.
    let count = |f: &dyn Fn(&Sent) -> bool| sent.iter().filter(|s| f(s)).count();
    let retries: u32 = sent.iter().map(|s| s.attempts - 1).sum();
    println!("---- shop soak ----");
    println!(
        "orders sent: {} ({ORDERS} main: {} production, {} sandboxed; {BURST} burst; {} forged/expired tokens)",
        sent.len(),
        count(&|s| s.order.kind == Kind::Baseline),
        count(&|s| matches!(s.order.kind, Kind::Sandboxed(_))),
        2 * FORGED,
    );
    println!(
        "accepted: {}; throttled: {throttled} ({} after a failed attempt); failed: {}",
        expected.len(),
        throttled_after_failure.len(),
        count(&|s| matches!(s.outcome, Outcome::Failed(_))),
    );
    println!(
        "retries: {retries} over {} requests; unexpected 429s: {unexpected_throttles:?}",
        count(&|s| s.attempts > 1)
    );
    println!(
        "faults: baseline billing killed and restarted at 25 %, {terminated} database sessions terminated at 50 %, burst of {BURST} at 75 %"
    );
    let throttled_of = |kind: Kind| {
        count(&|s| s.order.kind == kind && matches!(s.outcome, Outcome::Throttled { .. }))
    };
    println!(
        "burst of {}: {} accepted, {} throttled (429) in {:.0} ms; its ordinary orders throttled meanwhile: {}; {throttled_audited} throttle audit events",
        keys[BURSTING],
        count(&|s| s.order.kind == Kind::Burst(BURSTING) && s.outcome == Outcome::Accepted),
        throttled_of(Kind::Burst(BURSTING)),
        (burst_end - burst_start).as_secs_f64() * 1000.0,
        throttled_of(Kind::Sandboxed(BURSTING)),
    );
    println!(
        "production latency during the burst:  {}",
        percentiles(&latency_during)
    );
    println!(
        "production latency outside the burst: {}",
        percentiles(&latency_outside)
    );
    let production_orders = orders_rows
        .values()
        .filter(|s| s.contains(&"public".to_owned()))
        .count();
    let production_invoices = invoice_rows
        .values()
        .flatten()
        .filter(|i| i.schema == "public")
        .count();
    println!(
        "public: {production_orders} orders, {production_invoices} invoices; sandboxed ids in public: {production_rows}"
    );
    for (n, key) in keys.iter().enumerate() {
        let schema = schema_name(key);
        let orders = orders_rows.values().filter(|s| s.contains(&schema)).count();
        let invoices = invoice_rows
            .values()
            .flatten()
            .filter(|i| i.schema == schema)
            .count();
        let accepted = expected
            .values()
            .filter(|s| s.order.kind.sandbox() == Some(n))
            .count();
        let role = match n {
            _ if n < FORKS => "forks billing",
            BURSTING => "bursts",
            _ => "",
        };
        println!("  {schema}: {orders} orders, {invoices} invoices (accepted {accepted}) {role}");
    }
    let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
    for invoice in invoice_rows.values().flatten() {
        *by_version.entry(invoice.billed_by.as_str()).or_default() += 1;
    }
    println!("invoices by billing version: {by_version:?}");
    println!(
        "payment provider: {} real charges, {} of them for a sandbox",
        charges.len(),
        charges.values().filter(|c| c.sandbox().is_some()).count()
    );
    for (which, stats) in [("killed", &first_stats), ("restarted", &restarted_stats)] {
        println!(
            "billing v1 ({which} consumer): {} invoices written, {} handler retries",
            stats.invoiced.load(Ordering::Relaxed),
            stats.retries.load(Ordering::Relaxed)
        );
    }
    for (key, stats) in keys[..FORKS].iter().zip(&fork_stats) {
        println!(
            "billing v2 fork of {key}: {} invoices written, {} handler retries",
            stats.invoiced.load(Ordering::Relaxed),
            stats.retries.load(Ordering::Relaxed)
        );
    }
    println!(
        "forged/expired tokens: audited stripped {stripped_forged}/{stripped_expired}; dead letters: {}",
        dead.len()
    );
    println!("topic ends: {ends:?}");
    for group in &groups {
        println!(
            "  committed {group}: {:?}",
            committed(group, &topic, PARTITIONS).await
        );
    }
    println!(
        "load: {:.1} s ({:.0} orders/s); invoices caught up {:.1} s later; total so far {:.1} s",
        load_elapsed.as_secs_f64(),
        (ORDERS + BURST) as f64 / load_elapsed.as_secs_f64(),
        invoices_waited.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );

    assert!(
        problems.0.is_empty(),
        "isolation soak failed:\n{}",
        problems.report()
    );
    // Every group at the end of the topic (commits every 200 ms: allow a short wait).
    assert_zero_lag(&groups, &topic, PARTITIONS, &ends).await;

    // Clean up: consumers first (their final commit), then the servers, then the database.
    baseline_billing.stop().await;
    for fork in forks {
        fork.stop().await;
    }
    let _ = stop_orders.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), orders_server).await;
    drop((billing, orders_pool, billing_directory));
    orders_pg.close().await;
    billing_pg.close().await;
    db.cleanup().await;
    println!("elapsed: {:.1} s", test_started.elapsed().as_secs_f64());
}
