//! Test helpers shared by every prodbox crate's integration tests, in one place:
//! capturing audit events and serving axum routers on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured audit event: its fields by name.
pub type AuditRecord = BTreeMap<String, String>;

/// Audit events captured from every thread of the test process.
#[derive(Clone, Default)]
pub struct AuditLog {
    records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl AuditLog {
    /// Installs (once per test binary) a global subscriber that records `prodbox::audit` events
    /// and returns the shared log. Tests tell their events apart by sandbox key.
    pub fn global() -> AuditLog {
        static LOG: OnceLock<AuditLog> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = AuditLog::default();
            let subscriber = tracing_subscriber::registry().with(Capture(log.clone()));
            // Another global subscriber may exist in a test binary; then nothing is captured
            // and the tests relying on it fail loudly.
            let _ = tracing::subscriber::set_global_default(subscriber);
            log
        })
        .clone()
    }

    /// Every record whose field `name` equals `value`.
    pub fn matching(&self, name: &str, value: &str) -> Vec<AuditRecord> {
        self.lock()
            .iter()
            .filter(|r| r.get(name).map(String::as_str) == Some(value))
            .cloned()
            .collect()
    }

    /// Every record.
    pub fn all(&self) -> Vec<AuditRecord> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AuditRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Capture(AuditLog);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        if event.metadata().target() != "prodbox::audit" {
            return;
        }
        let mut record = AuditRecord::new();
        event.record(&mut Fields(&mut record));
        self.0.lock().push(record);
    }
}

struct Fields<'a>(&'a mut AuditRecord);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

/// Serves `router` on a free port of 127.0.0.1 (with peer addresses as `ConnectInfo`) until
/// the test's runtime ends; returns the address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            eprintln!("test server on {addr} stopped: {error}");
        }
    });
    addr
}

pub mod directory;
pub mod grpc;
pub mod kafka;
pub mod metrics;
pub mod pg;

/// The `prodbox.test.Echo` gRPC service (`proto/echo.proto`), compiled at build time.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod echo {
    tonic::include_proto!("prodbox.test");
}
