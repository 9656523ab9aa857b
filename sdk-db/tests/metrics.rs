//! Schemas provisioned and dropped, and provisioning time, as OpenTelemetry metrics.

mod common;

use std::time::Duration;

use common::{migrator, sandbox};
use prodbox_db::SandboxPool;
use prodbox_testkit::metrics::Metrics;
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_and_drops_are_counted() {
    let metrics = Metrics::global();
    require_postgres().await;
    let db = TestDatabase::create_with(4).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .default_ttl(Duration::from_secs(600))
        .build();
    let schemas = |operation: &str| {
        metrics.sum(
            "prodbox.db.schemas",
            &[
                ("db.system.name", "postgresql"),
                ("prodbox.db.operation", operation),
            ],
        )
    };
    let (a, b) = (sandbox(&unique_key("met")), sandbox(&unique_key("met")));
    pool.pool_for(&a).await.expect("provision a");
    pool.pool_for(&b).await.expect("provision b");
    // Already provisioned: not counted again.
    pool.pool_for(&a).await.expect("a again");
    assert_eq!(schemas("provisioned"), 2);
    assert_eq!(
        metrics.histogram_count(
            "prodbox.db.provisioning.duration",
            &[("db.system.name", "postgresql")]
        ),
        2
    );
    assert!(pool.drop_sandbox(a.key()).await.expect("drop a"));
    assert!(!pool.drop_sandbox(a.key()).await.expect("drop a again"));
    assert_eq!(schemas("dropped"), 1);
    db.cleanup().await;
}
