//! When prodbox-db reads the context, for every way into a [`SandboxPool`]: each sqlx method
//! (queries, raw SQL, typed and scalar queries, the `Executor` trait itself, `prepare`,
//! `describe`, `begin`, `acquire`) under five arrangements of the context: present where the
//! call is made only, where its work is first polled only, at both, at neither, and a different
//! sandbox at each.
//!
//! The rule: the work runs in the context of its first poll; where prodbox also sees the call
//! (every method that is not an `async fn` of sqlx's), the context there must be the same, or
//! the call is refused with `SandboxDbError::ContextChanged` and an audit event. sqlx's own
//! `async fn`s (`Query::execute`, `fetch_all`, `fetch_one`, `fetch_optional`, ...) run nothing
//! of prodbox's until their first poll, so for them the first poll is the only reading.
//!
//! The printed table is the one in docs/SECURITY.md
//! (`cargo test -p prodbox-db --test context_rule -- --nocapture`).

mod common;

use std::fmt;

use common::{migrator, prodbox_error, sandbox, schema_of};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _, TryFutureExt as _, TryStreamExt as _};
use opentelemetry::Context;
use prodbox_core::{ContextExt, FutureExt, Sandbox};
use prodbox_db::SandboxPool;
use prodbox_testkit::AuditLog;
use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres, unique_key};
use sqlx::{Column, Executor, SqlSafeStr, Statement};

/// Writes one order wherever it runs.
const INSERT: &str = "INSERT INTO orders (item) VALUES ('matrix') RETURNING id";
/// A table that exists in production and in each sandbox with a different column name, so
/// that a statement prepared or described on it says where it ran.
const WHOAMI: &str = "SELECT * FROM whoami";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// prodbox sees the call (it returns a stream or a boxed future made by prodbox's executor).
    Called,
    /// An `async fn` of sqlx's: nothing of prodbox runs before the first poll.
    Lazy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    CallOnly,
    PollOnly,
    Both,
    Neither,
    Different,
}

const ARRANGEMENTS: [When; 5] = [
    When::CallOnly,
    When::PollOnly,
    When::Both,
    When::Neither,
    When::Different,
];

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            When::CallOnly => "call only",
            When::PollOnly => "poll only",
            When::Both => "both",
            When::Neither => "neither",
            When::Different => "A at call, B at poll",
        })
    }
}

/// Where a call's work went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Landed {
    Production,
    A,
    B,
    Refused(&'static str),
    Failed(String),
}

impl fmt::Display for Landed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Landed::Production => f.write_str("production"),
            Landed::A => f.write_str("A"),
            Landed::B => f.write_str("B"),
            Landed::Refused(reason) => write!(f, "refused (`{reason}`)"),
            Landed::Failed(error) => write!(f, "failed: {error}"),
        }
    }
}

/// What a call returned: for writes, nothing (the rows say where it went); for `prepare` and
/// `describe`, the name of the first column of `whoami` where it ran.
type Run = for<'p> fn(&'p SandboxPool) -> BoxFuture<'p, Result<Option<String>, sqlx::Error>>;

/// One way into the pool. The body is called where the call is made: it must call the sqlx
/// method right away (not inside an `async` block, which would delay the call to the poll).
macro_rules! way {
    ($name:literal, $kind:ident, |$pool:ident| $body:expr) => {{
        fn run($pool: &SandboxPool) -> BoxFuture<'_, Result<Option<String>, sqlx::Error>> {
            $body
        }
        ($name, Kind::$kind, run as Run)
    }};
}

fn wrote<T>(result: Result<T, sqlx::Error>) -> Result<Option<String>, sqlx::Error> {
    result.map(|_| None)
}

#[allow(deprecated)] // `Query::execute_many` and `fetch_many` are deprecated, not gone.
fn ways() -> Vec<(&'static str, Kind, Run)> {
    vec![
        way!("query().execute", Lazy, |p| sqlx::query(INSERT)
            .execute(p)
            .map(wrote)
            .boxed()),
        way!("query().execute_many", Lazy, |p| sqlx::query(INSERT)
            .execute_many(p)
            .then(|rows| rows.try_collect::<Vec<_>>())
            .map(wrote)
            .boxed()),
        way!("query().fetch", Called, |p| sqlx::query(INSERT)
            .fetch(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("query().fetch_many", Called, |p| sqlx::query(INSERT)
            .fetch_many(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("query().fetch_all", Lazy, |p| sqlx::query(INSERT)
            .fetch_all(p)
            .map(wrote)
            .boxed()),
        way!("query().fetch_one", Lazy, |p| sqlx::query(INSERT)
            .fetch_one(p)
            .map(wrote)
            .boxed()),
        way!("query().fetch_optional", Lazy, |p| sqlx::query(INSERT)
            .fetch_optional(p)
            .map(wrote)
            .boxed()),
        way!("query().map(..).fetch_all", Lazy, |p| sqlx::query(INSERT)
            .map(|_row| ())
            .fetch_all(p)
            .map(wrote)
            .boxed()),
        // What `query!` and `query_as!` expand to: a `Map`, whose streams call the executor
        // only when first polled.
        way!("query().try_map(..).fetch (the macros)", Lazy, |p| {
            sqlx::query(INSERT)
                .try_map(|_row| Ok(()))
                .fetch(p)
                .try_collect::<Vec<_>>()
                .map(wrote)
                .boxed()
        }),
        way!("query().map(..).fetch_many", Lazy, |p| sqlx::query(INSERT)
            .map(|_row| ())
            .fetch_many(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("query_as().fetch", Called, |p| sqlx::query_as::<_, (i64,)>(
            INSERT
        )
        .fetch(p)
        .try_collect::<Vec<_>>()
        .map(wrote)
        .boxed()),
        way!("query_as().fetch_all", Lazy, |p| {
            sqlx::query_as::<_, (i64,)>(INSERT)
                .fetch_all(p)
                .map(wrote)
                .boxed()
        }),
        way!("query_as().fetch_one", Lazy, |p| {
            sqlx::query_as::<_, (i64,)>(INSERT)
                .fetch_one(p)
                .map(wrote)
                .boxed()
        }),
        way!("query_as().fetch_optional", Lazy, |p| sqlx::query_as::<
            _,
            (i64,),
        >(INSERT)
        .fetch_optional(p)
        .map(wrote)
        .boxed()),
        way!("query_scalar().fetch", Called, |p| sqlx::query_scalar::<
            _,
            i64,
        >(INSERT)
        .fetch(p)
        .try_collect::<Vec<_>>()
        .map(wrote)
        .boxed()),
        way!("query_scalar().fetch_all", Lazy, |p| sqlx::query_scalar::<
            _,
            i64,
        >(INSERT)
        .fetch_all(p)
        .map(wrote)
        .boxed()),
        way!("query_scalar().fetch_one", Lazy, |p| sqlx::query_scalar::<
            _,
            i64,
        >(INSERT)
        .fetch_one(p)
        .map(wrote)
        .boxed()),
        way!("query_scalar().fetch_optional", Lazy, |p| {
            sqlx::query_scalar::<_, i64>(INSERT)
                .fetch_optional(p)
                .map(wrote)
                .boxed()
        }),
        way!("raw_sql().execute", Lazy, |p| sqlx::raw_sql(INSERT)
            .execute(p)
            .map(wrote)
            .boxed()),
        way!("raw_sql().execute_many", Called, |p| sqlx::raw_sql(INSERT)
            .execute_many(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("raw_sql().fetch", Called, |p| sqlx::raw_sql(INSERT)
            .fetch(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("raw_sql().fetch_many", Called, |p| sqlx::raw_sql(INSERT)
            .fetch_many(p)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("raw_sql().fetch_all", Called, |p| sqlx::raw_sql(INSERT)
            .fetch_all(p)
            .map(wrote)
            .boxed()),
        way!("raw_sql().fetch_one", Called, |p| sqlx::raw_sql(INSERT)
            .fetch_one(p)
            .map(wrote)
            .boxed()),
        way!("raw_sql().fetch_optional", Lazy, |p| sqlx::raw_sql(INSERT)
            .fetch_optional(p)
            .map(wrote)
            .boxed()),
        way!("Executor::execute", Called, |p| p
            .execute(INSERT)
            .map(wrote)
            .boxed()),
        way!("Executor::execute_many", Called, |p| p
            .execute_many(INSERT)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("Executor::fetch", Called, |p| p
            .fetch(INSERT)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("Executor::fetch_many", Called, |p| p
            .fetch_many(INSERT)
            .try_collect::<Vec<_>>()
            .map(wrote)
            .boxed()),
        way!("Executor::fetch_all", Called, |p| p
            .fetch_all(INSERT)
            .map(wrote)
            .boxed()),
        way!("Executor::fetch_one", Called, |p| p
            .fetch_one(INSERT)
            .map(wrote)
            .boxed()),
        way!("Executor::fetch_optional", Called, |p| p
            .fetch_optional(INSERT)
            .map(wrote)
            .boxed()),
        way!("Executor::prepare", Called, |p| p
            .prepare(WHOAMI.into_sql_str())
            .map_ok(|statement| statement.columns().first().map(|c| c.name().to_owned()))
            .boxed()),
        way!(
            "Executor::describe (the macros, at build time)",
            Called,
            |p| p
                .describe(WHOAMI.into_sql_str())
                .map_ok(|described| described.columns().first().map(|c| c.name().to_owned()))
                .boxed()
        ),
        way!("SandboxPool::begin", Called, |p| p
            .begin()
            .and_then(|mut tx| async move {
                sqlx::query(INSERT).execute(&mut *tx).await?;
                tx.commit().await
            })
            .map(wrote)
            .boxed()),
        way!("SandboxPool::acquire", Called, |p| p
            .acquire()
            .and_then(|mut conn| async move { sqlx::query(INSERT).execute(&mut *conn).await })
            .map(wrote)
            .boxed()),
    ]
}

/// What the rule says a call comes to, on a pool that requires a scope or not (then "no
/// sandbox" is no scope at all: work that lost its context).
fn expected(kind: Kind, when: When, scoped: bool) -> Landed {
    match (when, kind) {
        (When::Neither, _) if scoped => Landed::Refused("db_no_scope"),
        (When::CallOnly, _) if scoped => Landed::Refused("db_no_scope"),
        (When::Neither, _) => Landed::Production,
        (When::Both, _) => Landed::A,
        (_, Kind::Called) => Landed::Refused("db_context_changed"),
        (When::PollOnly, Kind::Lazy) => Landed::A,
        (When::Different, Kind::Lazy) => Landed::B,
        // Lost context: sqlx made the future without running anything of prodbox's, and it
        // was first polled with no sandbox (as in `tokio::spawn`). See docs/SECURITY.md.
        (When::CallOnly, Kind::Lazy) => Landed::Production,
    }
}

struct Fixture {
    db: TestDatabase,
    pool: SandboxPool,
    a: Sandbox,
    b: Sandbox,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_scope(false).await
    }

    async fn with_scope(require_scope: bool) -> Fixture {
        require_postgres().await;
        let db = TestDatabase::create_with(5).await;
        migrator("orders")
            .await
            .run(db.pool())
            .await
            .expect("migrate production");
        db.pool()
            .execute("CREATE TABLE whoami (production int)")
            .await
            .expect("production whoami");
        let pool = SandboxPool::builder(db.pool().clone())
            .migrations(migrator("orders").await)
            .require_scope(require_scope)
            .build();
        let a = sandbox(&unique_key("cra"));
        let b = sandbox(&unique_key("crb"));
        for (sandbox, column) in [(&a, "a"), (&b, "b")] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE whoami ({column} int)"
            )))
            .execute(&pool)
            .in_sandbox(sandbox.clone())
            .await
            .expect("sandbox whoami");
        }
        Fixture { db, pool, a, b }
    }

    async fn counts(&self) -> [i64; 3] {
        [
            count_rows(self.db.pool(), "public", "orders").await,
            count_rows(self.db.pool(), &schema_of(self.a.key().as_str()), "orders").await,
            count_rows(self.db.pool(), &schema_of(self.b.key().as_str()), "orders").await,
        ]
    }

    /// Makes the call in one context and polls it in another, as `when` says.
    async fn call(&self, run: Run, when: When) -> Landed {
        let (at_call, at_poll) = match when {
            When::CallOnly => (Some(&self.a), None),
            When::PollOnly => (None, Some(&self.a)),
            When::Both => (Some(&self.a), Some(&self.a)),
            When::Neither => (None, None),
            When::Different => (Some(&self.a), Some(&self.b)),
        };
        let before = self.counts().await;
        let future = match at_call {
            Some(sandbox) => {
                let _attached = Context::current().with_sandbox(sandbox.clone()).attach();
                run(&self.pool)
            }
            None => run(&self.pool),
        };
        let result = match at_poll {
            Some(sandbox) => future.in_sandbox(sandbox.clone()).await,
            None => future.await,
        };
        let after = self.counts().await;
        match result {
            Ok(Some(column)) => match column.as_str() {
                "production" => Landed::Production,
                "a" => Landed::A,
                "b" => Landed::B,
                other => Landed::Failed(format!("unexpected column {other}")),
            },
            Ok(None) => match [0, 1, 2].map(|i| after[i] - before[i]) {
                [1, 0, 0] => Landed::Production,
                [0, 1, 0] => Landed::A,
                [0, 0, 1] => Landed::B,
                moved => Landed::Failed(format!("rows moved {moved:?}")),
            },
            Err(error) => {
                if after != before {
                    return Landed::Failed(format!("refused, yet rows moved: {error}"));
                }
                match prodbox_db::SandboxDbError::of(&error) {
                    Some(refusal) => Landed::Refused(refusal.reason()),
                    None => Landed::Failed(error.to_string()),
                }
            }
        }
    }
}

/// Every way under every arrangement: the table, and whether each outcome is the rule's.
async fn matrix(fixture: &Fixture, scoped: bool) -> (String, Vec<String>, usize) {
    let mut table = String::from("| method | prodbox sees the call |");
    for when in ARRANGEMENTS {
        table.push_str(&format!(" {when} |"));
    }
    table.push_str("\n|---|---|");
    table.push_str(&"---|".repeat(ARRANGEMENTS.len()));
    table.push('\n');

    let mut wrong = Vec::new();
    let mut refusals = 0;
    for (name, kind, run) in ways() {
        table.push_str(&format!(
            "| `{name}` | {} |",
            if kind == Kind::Called { "yes" } else { "no" }
        ));
        for when in ARRANGEMENTS {
            let landed = fixture.call(run, when).await;
            table.push_str(&format!(" {landed} |"));
            if matches!(landed, Landed::Refused(_)) {
                refusals += 1;
            }
            let want = expected(kind, when, scoped);
            if landed != want {
                wrong.push(format!("{name}, {when}: expected {want}, got {landed}"));
            }
        }
        table.push('\n');
    }
    (table, wrong, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_into_the_pool_follows_one_rule() {
    let audit = AuditLog::global();
    let fixture = Fixture::new().await;
    let (table, wrong, refusals) = matrix(&fixture, false).await;
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );

    // Every refusal was audited, against the sandbox of the call.
    let audited = audit
        .all()
        .into_iter()
        .filter(|r| r.get("reason").map(String::as_str) == Some("db_context_changed"))
        .filter(|r| {
            let key = r.get("sandbox").map(String::as_str);
            key == Some(fixture.a.key().as_str()) || key == Some(fixture.b.key().as_str())
        })
        .count();
    assert_eq!(audited, refusals);

    for sandbox in [&fixture.a, &fixture.b] {
        fixture.pool.drop_sandbox(sandbox.key()).await.unwrap();
    }
    fixture.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_scope_work_made_in_a_sandbox_never_runs_as_production() {
    let fixture = Fixture::with_scope(true).await;
    let (table, wrong, _) = matrix(&fixture, true).await;
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
    assert!(!table.contains("production"), "{table}");
    for sandbox in [&fixture.a, &fixture.b] {
        fixture.pool.drop_sandbox(sandbox.key()).await.unwrap();
    }
    fixture.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_says_which_contexts_disagreed() {
    let fixture = Fixture::new().await;
    let future = {
        let _attached = Context::current().with_sandbox(fixture.a.clone()).attach();
        sqlx::raw_sql("TRUNCATE orders").fetch_all(&fixture.pool)
    };
    let error = future.await.unwrap_err();
    match prodbox_error(&error) {
        prodbox_db::SandboxDbError::ContextChanged { at_call, at_poll } => {
            assert_eq!(at_call.as_ref(), Some(fixture.a.key()));
            assert_eq!(at_poll.as_ref(), None);
        }
        other => panic!("expected ContextChanged, got {other:?}"),
    }
    assert!(
        error.to_string().contains(fixture.a.key().as_str()),
        "{error}"
    );
    for sandbox in [&fixture.a, &fixture.b] {
        fixture.pool.drop_sandbox(sandbox.key()).await.unwrap();
    }
    fixture.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_started_in_one_context_is_not_continued_in_another() {
    let fixture = Fixture::new().await;
    let (pool, a, b) = (&fixture.pool, fixture.a.clone(), fixture.b.clone());
    let reason = |item: Option<Result<sqlx::postgres::PgRow, sqlx::Error>>| match item {
        Some(Err(error)) => prodbox_db::SandboxDbError::of(&error)
            .map_or_else(|| error.to_string(), |e| e.reason().to_owned()),
        Some(Ok(_)) => "a row".to_owned(),
        None => "the end".to_owned(),
    };
    for _ in 0..3 {
        sqlx::query("INSERT INTO orders (item) VALUES ('row')")
            .execute(pool.baseline())
            .await
            .unwrap();
        for sb in [&a, &b] {
            sqlx::query("INSERT INTO orders (item) VALUES ('row')")
                .execute(pool)
                .in_sandbox(sb.clone())
                .await
                .unwrap();
        }
    }
    const ROWS: &str = "SELECT item FROM orders";

    // Production's rows, the first read by production, the next asked for inside a sandbox.
    let mut rows = sqlx::raw_sql(ROWS).fetch(pool.baseline());
    assert!(matches!(rows.try_next().await, Ok(Some(_))));
    let next = async { rows.next().await }.in_sandbox(a.clone()).await;
    assert_eq!(reason(next), "db_context_changed");
    assert!(
        rows.next().await.is_none(),
        "the stream ends after the refusal"
    );
    // (A stream holds its connection until dropped; cleaning up waits for it.)
    drop(rows);

    // Sandbox A's rows, continued in sandbox B.
    let mut rows = async { sqlx::raw_sql(ROWS).fetch(pool) }
        .in_sandbox(a.clone())
        .await;
    assert!(matches!(
        async { rows.try_next().await }.in_sandbox(a.clone()).await,
        Ok(Some(_))
    ));
    let next = async { rows.next().await }.in_sandbox(b.clone()).await;
    assert_eq!(reason(next), "db_context_changed");
    drop(rows);

    // A production transaction's rows, continued in a sandbox.
    let mut tx = pool.baseline().begin().await.unwrap();
    {
        let mut rows = sqlx::raw_sql(ROWS).fetch(&mut *tx);
        assert!(matches!(rows.try_next().await, Ok(Some(_))));
        let next = async { rows.next().await }.in_sandbox(a.clone()).await;
        assert_eq!(reason(next), "db_context_changed");
    }
    tx.rollback().await.unwrap();

    for sandbox in [&a, &b] {
        fixture.pool.drop_sandbox(sandbox.key()).await.unwrap();
    }
    fixture.db.cleanup().await;
}
