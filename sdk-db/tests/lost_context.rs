//! What happens to a sandboxed request's database work when it leaves the request's task: each
//! way of starting work elsewhere, plainly and through prodbox's helpers, with where the write
//! landed. The printed table is the one in docs/SECURITY.md
//! (`cargo test -p prodbox-db --test lost_context -- --nocapture`).
//!
//! Work started plainly has no context: the `SandboxPool` then serves it as production (it
//! cannot tell lost work from production work), except where sqlx let prodbox see the call
//! being made in the sandbox, which it then refuses. The helpers keep the sandbox.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::pin::Pin;

use common::{migrator, sandbox, schema_of};
use prodbox_core::context::WithSandbox;
use prodbox_core::task::{AttachContextLayer, CarryContextLayer};
use prodbox_core::{FutureExt, Sandbox, task};
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres, unique_key};
use tower::{Service, ServiceBuilder, ServiceExt};

const INSERT: &str = "INSERT INTO orders (item) VALUES ('lost') RETURNING id";

type Outcome = Result<(), sqlx::Error>;
type Work = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The request's own write, as an `async fn` of sqlx's (nothing runs before the first poll).
fn insert(pool: &SandboxPool) -> Work {
    let pool = pool.clone();
    Box::pin(async move { sqlx::query(INSERT).execute(&pool).await.map(drop) })
}

/// The same write through a method prodbox sees being called (`raw_sql().fetch_all`).
fn insert_called(pool: &SandboxPool) -> impl Future<Output = Outcome> + Send + 'static {
    let rows = sqlx::raw_sql(INSERT).fetch_all(pool);
    async move { rows.await.map(drop) }
}

/// A service's work bound to the context its `call` runs in, as tower middleware that
/// captures the current context or span in `call` does (prodbox's client layers among them).
fn bound_in_call(pool: &SandboxPool) -> WithSandbox<Work> {
    insert(pool).in_current_sandbox()
}

fn block_on(work: Work) -> Outcome {
    tokio::runtime::Handle::current().block_on(work)
}

/// Each way work leaves the task, run inside the sandbox; returns the work's outcome.
#[allow(clippy::disallowed_methods)] // the plain ways are what this test is about
async fn start(way: &str, pool: &SandboxPool) -> Outcome {
    let work = insert(pool);
    let handle = tokio::runtime::Handle::current();
    match way {
        "awaited in the request" => work.await,
        "tokio::spawn" => tokio::spawn(work).await.unwrap(),
        "tokio::spawn, a call prodbox sees" => tokio::spawn(insert_called(pool)).await.unwrap(),
        "prodbox_core::spawn" => task::spawn(work).await.unwrap(),
        "JoinSet::spawn" => {
            let mut set = tokio::task::JoinSet::new();
            set.spawn(work);
            set.join_next().await.unwrap().unwrap()
        }
        "JoinSet::spawn(f.in_current_sandbox())" => {
            let mut set = tokio::task::JoinSet::new();
            set.spawn(work.in_current_sandbox());
            set.join_next().await.unwrap().unwrap()
        }
        "tokio::task::spawn_blocking" => tokio::task::spawn_blocking(move || block_on(work))
            .await
            .unwrap(),
        "prodbox_core::spawn_blocking" => {
            task::spawn_blocking(move || block_on(work)).await.unwrap()
        }
        "std::thread::spawn" => std::thread::spawn(move || handle.block_on(work))
            .join()
            .unwrap(),
        "prodbox_core::task::spawn_thread" => task::spawn_thread(move || handle.block_on(work))
            .join()
            .unwrap(),
        "tower Buffer, a service that binds its work to the context of `call`" => {
            let pool = pool.clone();
            let mut service = ServiceBuilder::new()
                .buffer(1)
                .service_fn(move |()| bound_in_call(&pool));
            service.ready().await.unwrap().call(()).await.map_err(boxed)
        }
        "the same with CarryContextLayer outside and AttachContextLayer inside" => {
            let pool = pool.clone();
            let mut service = ServiceBuilder::new()
                .layer(CarryContextLayer::new())
                .buffer(1)
                .layer(AttachContextLayer::new())
                .service_fn(move |()| bound_in_call(&pool));
            service.ready().await.unwrap().call(()).await.map_err(boxed)
        }
        other => panic!("unknown way {other}"),
    }
}

fn boxed(error: tower::BoxError) -> sqlx::Error {
    match error.downcast::<sqlx::Error>() {
        Ok(error) => *error,
        Err(other) => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Each way, started in a sandboxed request, and where its write landed.
async fn each_way(require_scope: bool, ways: &[(&str, &str)]) -> String {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    migrator("orders").await.run(db.pool()).await.unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .require_scope(require_scope)
        .build();
    let sb: Sandbox = sandbox(&unique_key("lost"));
    let schema = schema_of(sb.key().as_str());
    // Provision first, so that counting the sandbox's rows works from the start.
    insert(&pool).in_sandbox(sb.clone()).await.unwrap();

    let mut table =
        String::from("| how the work was started | where its write landed |\n|---|---|\n");
    let mut wrong = Vec::new();
    for (way, expected) in ways {
        let before = (
            count_rows(db.pool(), "public", "orders").await,
            count_rows(db.pool(), &schema, "orders").await,
        );
        let outcome = if way.starts_with("awaited in a task") {
            // A helper's task is a sandboxed task like any other.
            let pool = pool.clone();
            async move {
                task::spawn(async move { start("awaited in the request", &pool).await })
                    .await
                    .unwrap()
            }
            .in_sandbox(sb.clone())
            .await
        } else {
            start(way, &pool).in_sandbox(sb.clone()).await
        };
        let after = (
            count_rows(db.pool(), "public", "orders").await,
            count_rows(db.pool(), &schema, "orders").await,
        );
        let landed = match (outcome, after.0 - before.0, after.1 - before.1) {
            (Ok(()), 1, 0) => "production".to_owned(),
            (Ok(()), 0, 1) => "sandbox".to_owned(),
            (Err(error), 0, 0) => match SandboxDbError::of(&error) {
                Some(refusal) => format!("refused ({})", refusal.reason()),
                None => format!("failed: {error}"),
            },
            (outcome, p, s) => format!("{outcome:?} with {p} production and {s} sandbox rows"),
        };
        table.push_str(&format!("| {way} | {landed} |\n"));
        if landed != *expected {
            wrong.push(format!("{way}: expected {expected}, got {landed}"));
        }
    }
    pool.drop_sandbox(sb.key()).await.unwrap();
    // Outside any request, the pool serves production only in a scope when it requires one.
    let outside = insert(&pool).await;
    let in_production = insert(&pool).in_production().await;
    db.cleanup().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(outside.is_ok(), !require_scope, "{outside:?}");
    in_production.unwrap();
    table
}

#[rustfmt::skip]
const WAYS: [(&str, &str, &str); 13] = [
    // (way, where it lands by default, where it lands with `require_scope`)
    ("awaited in the request", "sandbox", "sandbox"),
    ("tokio::spawn", "production", "refused (db_no_scope)"),
    ("tokio::spawn, a call prodbox sees", "refused (db_context_changed)", "refused (db_no_scope)"),
    ("prodbox_core::spawn", "sandbox", "sandbox"),
    ("JoinSet::spawn", "production", "refused (db_no_scope)"),
    ("JoinSet::spawn(f.in_current_sandbox())", "sandbox", "sandbox"),
    ("tokio::task::spawn_blocking", "production", "refused (db_no_scope)"),
    ("prodbox_core::spawn_blocking", "sandbox", "sandbox"),
    ("std::thread::spawn", "production", "refused (db_no_scope)"),
    ("prodbox_core::task::spawn_thread", "sandbox", "sandbox"),
    ("tower Buffer, a service that binds its work to the context of `call`", "production", "refused (db_no_scope)"),
    ("the same with CarryContextLayer outside and AttachContextLayer inside", "sandbox", "sandbox"),
    ("awaited in a task prodbox_core::spawn started", "sandbox", "sandbox"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_losing_the_context_and_where_the_write_lands() {
    let ways: Vec<(&str, &str)> = WAYS.iter().map(|(way, plain, _)| (*way, *plain)).collect();
    println!("{}", each_way(false, &ways).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_scope_lost_work_is_refused_instead_of_running_as_production() {
    let ways: Vec<(&str, &str)> = WAYS
        .iter()
        .map(|(way, _, scoped)| (*way, *scoped))
        .collect();
    println!("{}", each_way(true, &ways).await);
}
