//! Every request the server layer admits runs in a prodbox scope, production requests
//! included, so that a pool that requires one (`SandboxPoolBuilder::require_scope`) serves
//! them, and refuses work that a handler let lose its context.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use prodbox_core::TrustPolicy;
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_http::SandboxLayer;
use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres, unique_key};
use sqlx::Executor;

async fn write(State(pool): State<SandboxPool>) -> String {
    outcome(
        sqlx::query("INSERT INTO orders (item) VALUES ('handler')")
            .execute(&pool)
            .await,
    )
}

/// The same write, spawned without the helper: it lost the request's context.
async fn write_spawned(State(pool): State<SandboxPool>) -> String {
    let written = tokio::spawn(async move {
        sqlx::query("INSERT INTO orders (item) VALUES ('spawned')")
            .execute(&pool)
            .await
    });
    outcome(written.await.unwrap())
}

fn outcome<T>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(error) => {
            SandboxDbError::of(&error).map_or_else(|| error.to_string(), |e| e.reason().to_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_in_a_scope_and_work_that_loses_it_is_refused() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    db.pool()
        .execute("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)")
        .await
        .unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .seed("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)")
        .require_scope(true)
        .build();
    let app = Router::new()
        .route("/write", post(write))
        .route("/spawned", post(write_spawned))
        .with_state(pool.clone())
        .layer(SandboxLayer::new(TrustPolicy::accept()));
    let addr = prodbox_testkit::serve(app).await;
    let client = reqwest::Client::new();
    let key = unique_key("scope");
    let call = |path: &str, sandbox: Option<&str>| {
        let mut request = client.post(format!("http://{addr}{path}"));
        if let Some(key) = sandbox {
            request = request.header("baggage", format!("prodbox.sandbox={key}"));
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };

    // A production request (no baggage at all) and a sandboxed one are served.
    assert_eq!(call("/write", None).await, "ok");
    assert_eq!(call("/write", Some(&key)).await, "ok");
    // Work spawned without the helper lost its context: refused, whichever request it was.
    assert_eq!(call("/spawned", Some(&key)).await, "db_no_scope");
    assert_eq!(call("/spawned", None).await, "db_no_scope");

    assert_eq!(count_rows(db.pool(), "public", "orders").await, 1);
    let schema = prodbox_db::names::schema_name(&key.parse().unwrap());
    assert_eq!(count_rows(db.pool(), &schema, "orders").await, 1);
    pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    db.cleanup().await;
}
