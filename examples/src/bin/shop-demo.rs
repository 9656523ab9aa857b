//! Run: `bash scripts/demo.sh` (builds the shop's binaries, then runs this)
//!
//! The shop demo, end to end, on loopback: it makes a fresh database and topic, registers
//! sandbox `pr-42` (which forks billing with a new tax rule), `pr-7` (which forks nothing) and
//! `pr-9` (kill switch on) in the directory, starts `orders`, `billing` (baseline and the
//! pr-42 fork) and `gateway` as processes, mints tokens, sends baseline, sandboxed, forged,
//! expired and unsigned orders, and prints which billing version handled each, the rows per
//! schema and the audit events per sandbox. Then it deletes the sandboxes (their schemas go
//! too) and exits 0 only if isolation held.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use prodbox_core::directory::SandboxEntry;
use prodbox_core::token::TokenKeys;
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_db::SandboxPool;
use prodbox_db::directory::DirectoryStore;
use prodbox_db::names::schema_name;
use prodbox_examples::shop::payments::Provider;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Row};

/// The shop demo.
#[derive(Parser)]
struct Args {
    /// A superuser URL of the PostgreSQL cluster; the demo makes its own database there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_url: String,
    /// Name of the demo's database (dropped and made again).
    #[arg(long, default_value = "prodbox_shop_demo")]
    database: String,
    /// Kafka bootstrap servers (tansu is started when nothing listens on 127.0.0.1:9092).
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Baseline orders to send (sandboxed ones come on top).
    #[arg(long, default_value_t = 8)]
    orders: usize,
    /// Keep the database afterwards, for a look around.
    #[arg(long)]
    keep: bool,
}

const SECRET: &str = "demo secret: at least thirty-two bytes long";
const KEY_ID: &str = "demo";

/// How an order was sent.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    how: String,
    /// The sandbox it should end up in (`None`: production).
    expect: Option<String>,
    status: u16,
}

struct Services {
    children: Vec<(String, Child)>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Services {
    /// Starts `bin` with `args` and waits for its `listening on ADDR` line.
    fn start(
        &mut self,
        name: &str,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        let path = sibling(bin);
        let mut child = Command::new(&path)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}); run `bash scripts/demo.sh`, which builds it",
                    path.display()
                )
            })?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        self.children.push((name.to_owned(), child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("{name} did not start within 60 s (its log is above)"))
    }
}

fn sibling(bin: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(bin)))
        .unwrap_or_else(|| PathBuf::from(bin))
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => {
            println!("\nisolation held: exit 0");
            std::process::ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nISOLATION FAILED: exit 1");
            std::process::ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("demo could not run: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let started = Instant::now();
    if args.kafka == prodbox_testkit::kafka::BOOTSTRAP {
        prodbox_testkit::kafka::ensure_broker();
    }

    // A fresh database with the shop's production tables.
    let mut admin = sqlx::PgConnection::connect(&args.admin_url).await?;
    let quoted = format!("\"{}\"", args.database.replace('"', "\"\""));
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await?;
    let options: sqlx::postgres::PgConnectOptions = args.admin_url.parse()?;
    let options = options.database(&args.database);
    let database_url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        args.database
    );
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    prodbox_examples::shop::migrator().await?.run(&pg).await?;

    // A topic of this run's own: the broker may have served earlier runs.
    let run_id = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let topic = format!("order-created.{run_id}");
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &args.kafka);
    let kafka_admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let dead = format!("{topic}.dead-letter");
    kafka_admin
        .create_topics(
            &[
                NewTopic::new(&topic, 3, TopicReplication::Fixed(1)),
                NewTopic::new(&dead, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;

    // The payment provider every invoice is charged at (a third party: its charges are real
    // money), and pr-42's own stub of it.
    let provider = Provider::default();
    let provider_addr = provider.serve().await?;
    let pr42_stub = Provider::default();
    let pr42_stub_addr = pr42_stub.serve().await?;

    // The sandboxes, as `prodbox sandbox create` would register them.
    let store = DirectoryStore::new(pg.clone());
    let fork_port = free_port()?;
    let fork_address = format!("http://127.0.0.1:{fork_port}");
    let hour = SystemTime::now() + Duration::from_secs(3600);
    let mut pr42 = SandboxEntry::new("pr-42".parse()?)
        .fork("billing", fork_address.parse()?)
        .stub("payments", format!("http://{pr42_stub_addr}").parse()?);
    pr42.actor = Some("alice".to_owned());
    pr42.origin = Some("pr-42".to_owned());
    pr42.expires_at = Some(hour);
    let mut pr7 = SandboxEntry::new("pr-7".parse()?).expires_at(hour);
    pr7.actor = Some("bob".to_owned());
    let pr9 = SandboxEntry::new("pr-9".parse()?)
        .expires_at(hour)
        .disabled(true);
    // As created: with the creation time that tokens are bound to.
    let mut registered = std::collections::HashMap::new();
    for entry in [&pr42, &pr7, &pr9] {
        let created = store.create(entry).await?;
        registered.insert(created.key.as_str().to_owned(), created);
    }
    println!(
        "directory: pr-42 forks billing at {fork_address} and stubs payments at {pr42_stub_addr}; pr-7 forks nothing; pr-9 is disabled"
    );
    println!("payment provider (real charges) at {provider_addr}");
    let payments = provider_addr.to_string();

    // The services, each a process of its own.
    let audit_dir = std::env::temp_dir().join(format!("prodbox-shop-{run_id}"));
    std::fs::create_dir_all(&audit_dir)?;
    let audit = |name: &str| {
        audit_dir
            .join(format!("{name}.jsonl"))
            .display()
            .to_string()
    };
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--database-url".into(), database_url.clone()];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let group = format!("billing.{run_id}");
    let mut services = Services {
        children: Vec::new(),
    };
    let orders_admin = format!("127.0.0.1:{}", free_port()?);
    let orders_addr = services.start(
        "orders",
        "orders",
        &common(&[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &orders_admin,
            "--kafka",
            &args.kafka,
            "--topic",
            &topic,
            "--audit-log",
            &audit("orders"),
        ]),
        &[],
    )?;
    let billing_v1 = services.start(
        "billing v1",
        "billing",
        &common(&[
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            &args.kafka,
            "--topic",
            &topic,
            "--group",
            &group,
            "--payments",
            &payments,
            "--audit-log",
            &audit("billing-v1"),
        ]),
        &[],
    )?;
    let fork_listen = format!("127.0.0.1:{fork_port}");
    services.start(
        "billing v2 (pr-42)",
        "billing",
        &common(&[
            "--listen",
            &fork_listen,
            "--kafka",
            &args.kafka,
            "--topic",
            &topic,
            "--group",
            &group,
            "--sandbox",
            "pr-42",
            "--tax-percent",
            "25",
            "--payments",
            &payments,
            "--audit-log",
            &audit("billing-v2"),
        ]),
        &[],
    )?;
    let orders_url = format!("http://{orders_addr}");
    let gateway_addr = services.start(
        "gateway",
        "gateway",
        &common(&[
            "--listen",
            "127.0.0.1:0",
            "--orders-url",
            &orders_url,
            "--token-key-id",
            KEY_ID,
            "--audit-log",
            &audit("gateway"),
        ]),
        &[("PRODBOX_TOKEN_SECRET", SECRET)],
    )?;
    println!(
        "services: gateway {gateway_addr}, orders {orders_addr}, billing v1, billing v2 (pr-42) on {fork_listen}\n"
    );

    // Tokens, as `prodbox token mint` makes them (for the sandbox as the directory has it, so
    // for this incarnation only); and some that must not work.
    let keys = TokenKeys::new().with_key(KEY_ID, SECRET.as_bytes())?;
    let forger = TokenKeys::new().with_key(KEY_ID, b"not the secret but just as long....")?;
    let sandbox = |key: &str| -> Result<Sandbox, Box<dyn std::error::Error>> {
        Ok(registered
            .get(key)
            .ok_or_else(|| format!("{key} is not registered"))?
            .sandbox())
    };
    let ttl = Duration::from_secs(600);
    let token = |k: &TokenKeys, key: &str| -> Result<String, Box<dyn std::error::Error>> {
        Ok(k.mint(&sandbox(key)?, ttl)?)
    };
    let expired = keys.mint_at(
        &sandbox("pr-42")?,
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(60),
    )?;

    let mut plan: Vec<(String, Option<String>, Option<String>)> = Vec::new(); // (how, baggage, expect)
    for _ in 0..args.orders {
        plan.push(("baseline".into(), None, None));
    }
    for _ in 0..4 {
        plan.push((
            "token pr-42".into(),
            Some(format!("prodbox.token={}", token(&keys, "pr-42")?)),
            Some("pr-42".into()),
        ));
        plan.push((
            "token pr-7".into(),
            Some(format!("prodbox.token={}", token(&keys, "pr-7")?)),
            Some("pr-7".into()),
        ));
    }
    plan.push((
        "token pr-9 (disabled)".into(),
        Some(format!("prodbox.token={}", token(&keys, "pr-9")?)),
        Some("refused".into()),
    ));
    plan.push((
        "forged token pr-42".into(),
        Some(format!("prodbox.token={}", token(&forger, "pr-42")?)),
        None,
    ));
    plan.push((
        "expired token pr-42".into(),
        Some(format!("prodbox.token={expired}")),
        None,
    ));
    plan.push((
        "unsigned baggage pr-42".into(),
        Some("prodbox.sandbox=pr-42".into()),
        None,
    ));

    let http = reqwest::Client::new();
    let mut sent = Vec::new();
    for (n, (how, baggage, expect)) in plan.into_iter().enumerate() {
        let id = format!("o{n:03}");
        let mut request = http
            .post(format!("http://{gateway_addr}/orders"))
            .json(&json!({"id": id, "item": "book", "amount_cents": 1000 + n as i64}));
        if let Some(baggage) = &baggage {
            request = request.header("baggage", baggage);
        }
        let status = request.send().await?.status().as_u16();
        sent.push(Sent {
            id,
            how,
            expect,
            status,
        });
    }

    // Wait for billing.
    let accepted: Vec<&Sent> = sent.iter().filter(|s| s.status == 201).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let invoices = loop {
        let invoices = read_invoices(&pg, &["pr-42", "pr-7", "pr-9"]).await?;
        if invoices.len() >= accepted.len() || Instant::now() > deadline {
            break invoices;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let orders = read_rows(&pg, "orders", &["pr-42", "pr-7", "pr-9"]).await?;

    // The report.
    let mut failures = Vec::new();
    println!(
        "{:<6} {:<24} {:>6}  {:<12} {:<28} expected",
        "order", "sent as", "status", "stored in", "billed by"
    );
    for s in &sent {
        let stored = orders.get(&s.id).cloned().unwrap_or_else(|| "-".into());
        let (billed_in, billed_by) = invoices
            .get(&s.id)
            .cloned()
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let expected_place = match s.expect.as_deref() {
            None => "public".to_owned(),
            Some("refused") => "refused".to_owned(),
            Some(key) => schema_name(&key.parse::<SandboxKey>()?),
        };
        let expected_billing = match s.expect.as_deref() {
            Some("pr-42") => "billing v2 (fork of pr-42)",
            Some("refused") => "-",
            _ => "billing v1",
        };
        let ok = if expected_place == "refused" {
            s.status == 403 && stored == "-"
        } else {
            s.status == 201
                && stored == expected_place
                && billed_in == expected_place
                && billed_by == expected_billing
        };
        if !ok {
            failures.push(format!(
                "order {} ({}) expected {expected_place} / {expected_billing}",
                s.id, s.how
            ));
        }
        println!(
            "{:<6} {:<24} {:>6}  {:<12} {:<28} {}",
            s.id,
            s.how,
            s.status,
            stored,
            billed_by,
            if ok {
                "ok".to_owned()
            } else {
                format!("WRONG: expected {expected_place}, {expected_billing}")
            }
        );
    }

    // Payments: only production's orders may have reached the provider.
    let real = provider.charges();
    let stubbed = pr42_stub.charges();
    println!("\npayments:");
    let billed_production: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status == 201 && s.expect.is_none())
        .collect();
    println!(
        "  real charges at the provider: {} (production orders billed: {})",
        real.len(),
        billed_production.len()
    );
    for s in &billed_production {
        if !real.contains_key(&s.id) {
            failures.push(format!("production order {} was not charged", s.id));
        }
    }
    for (id, charge) in &real {
        let order = sent.iter().find(|s| &s.id == id);
        let sandboxed = order.is_some_and(|s| s.expect.is_some()) || charge.sandbox().is_some();
        if sandboxed {
            failures.push(format!(
                "order {id} of a sandbox reached the real payment provider (baggage {:?})",
                charge.baggage
            ));
        }
    }
    for key in ["pr-42", "pr-7"] {
        let orders: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.status == 201 && s.expect.as_deref() == Some(key))
            .collect();
        let at_stub = orders
            .iter()
            .filter(|s| stubbed.contains_key(&s.id))
            .count();
        let at_provider = orders.iter().filter(|s| real.contains_key(&s.id)).count();
        let by_policy = orders
            .iter()
            .filter(|s| !stubbed.contains_key(&s.id) && !real.contains_key(&s.id))
            .count();
        println!(
            "  {key}: {} orders; charged at its own stub service {at_stub}, answered by the policy's stub {by_policy}, at the real provider {at_provider}",
            orders.len()
        );
        let expected = if key == "pr-42" {
            (orders.len(), 0)
        } else {
            (0, orders.len())
        };
        if (at_stub, by_policy) != expected {
            failures.push(format!(
                "{key}'s charges: {at_stub} at its stub service and {by_policy} by the policy, expected {expected:?}"
            ));
        }
    }
    if stubbed.values().any(|c| c.sandbox() != Some("pr-42")) {
        failures.push("pr-42's stub service was charged for another sandbox".to_owned());
    }

    println!("\nrows per schema:");
    let mut places: BTreeSet<String> = BTreeSet::from(["public".to_owned()]);
    places.extend(orders.values().cloned());
    for place in &places {
        let o = orders.values().filter(|p| *p == place).count();
        let i = invoices.values().filter(|(p, _)| p == place).count();
        println!("  {place:<14} orders {o:>3}  invoices {i:>3}");
    }

    println!("\naudit events per sandbox (all services):");
    for (sandbox, decisions) in audit_summary(&audit_dir)? {
        let text: Vec<String> = decisions.iter().map(|(d, n)| format!("{d} {n}")).collect();
        println!("  {sandbox:<10} {}", text.join(", "));
    }

    println!("\nOpenTelemetry metrics (GET /metrics of each service):");
    for (service, address) in [
        ("gateway", gateway_addr.as_str()),
        ("orders", orders_admin.as_str()),
        ("billing v1", billing_v1.as_str()),
        ("billing v2", fork_listen.as_str()),
    ] {
        let snapshot: Value = match http.get(format!("http://{address}/metrics")).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(error) => {
                println!("  {service:<11} unavailable: {error}");
                continue;
            }
        };
        for line in metric_lines(&snapshot) {
            println!("  {service:<11} {line}");
        }
    }

    // Delete the sandboxes: directory rows, then schemas and roles.
    let schemas = SandboxPool::new(pg.clone());
    println!();
    for key in ["pr-42", "pr-7", "pr-9"] {
        let key: SandboxKey = key.parse()?;
        store.delete(&key).await?;
        let dropped = schemas.drop_sandbox(&key).await?;
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema_name(&key))
                .fetch_one(&pg)
                .await?;
        if left {
            failures.push(format!(
                "schema of {key} still exists after the sandbox was deleted"
            ));
        }
        println!(
            "deleted sandbox {key}{}",
            if dropped {
                " and its schema"
            } else {
                " (it had no schema)"
            }
        );
    }
    drop(services);
    pg.close().await;
    if !args.keep {
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    let _ = std::fs::remove_dir_all(&audit_dir);
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    for failure in &failures {
        println!("FAILED: {failure}");
    }
    Ok(failures.is_empty())
}

/// `order id -> schema` for `table` in `public` and each sandbox's schema.
async fn read_rows(
    pg: &sqlx::PgPool,
    table: &str,
    sandboxes: &[&str],
) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    let column = if table == "orders" { "id" } else { "order_id" };
    let mut places = vec!["public".to_owned()];
    for key in sandboxes {
        places.push(schema_name(&key.parse()?));
    }
    let mut out = BTreeMap::new();
    for place in places {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("\"{place}\".{table}"))
            .fetch_one(pg)
            .await?;
        if !exists {
            continue;
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {column} AS id FROM \"{place}\".{table}"
        )))
        .fetch_all(pg)
        .await?;
        for row in rows {
            // An order in two places would be an isolation failure: keep both to show it.
            out.entry(row.try_get::<String, _>("id")?)
                .and_modify(|p: &mut String| *p = format!("{p}+{place}"))
                .or_insert_with(|| place.clone());
        }
    }
    Ok(out)
}

/// `order id -> (schema, billed_by)`.
async fn read_invoices(
    pg: &sqlx::PgPool,
    sandboxes: &[&str],
) -> Result<BTreeMap<String, (String, String)>, Box<dyn std::error::Error>> {
    let places = read_rows(pg, "invoices", sandboxes).await?;
    let mut out = BTreeMap::new();
    for (id, place) in places {
        if place.contains('+') {
            out.insert(id, (place, "several".to_owned()));
            continue;
        }
        let by: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT billed_by FROM \"{place}\".invoices WHERE order_id = $1"
        )))
        .bind(&id)
        .fetch_one(pg)
        .await?;
        out.insert(id, (place, by));
    }
    Ok(out)
}

/// Audit events by sandbox and decision, from every service's file.
fn audit_summary(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, usize>>, std::io::Error> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let field = |name: &str| {
                event
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            let sandbox = match field("sandbox") {
                s if s == "-" => "(none)".to_owned(),
                s => s,
            };
            let decision = format!("{}:{}", field("decision"), field("reason"));
            *out.entry(sandbox).or_default().entry(decision).or_default() += 1;
        }
    }
    Ok(out)
}

/// One line per prodbox data point: the name, the attributes that say what was counted, and
/// the value.
fn metric_lines(snapshot: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for point in snapshot.as_array().into_iter().flatten() {
        let name = point["name"].as_str().unwrap_or("?");
        if !name.starts_with("prodbox.") {
            continue;
        }
        let attributes: Vec<String> = point["attributes"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with("prodbox.") && key.as_str() != "prodbox.direction")
            .map(|(key, value)| {
                format!(
                    "{}={}",
                    key.trim_start_matches("prodbox."),
                    value.as_str().unwrap_or("?")
                )
            })
            .collect();
        lines.push(format!(
            "{name} {{{}}} {}",
            attributes.join(", "),
            point["value"]
        ));
    }
    lines.sort();
    lines
}
