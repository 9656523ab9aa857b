//! Logging for the shop's processes: human logs on stderr, and every prodbox audit event
//! (target `prodbox::audit`) as one JSON line in a file, which the demo reads for its report.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Writes audit events as JSON lines, each with the service's name.
#[derive(Debug)]
pub struct AuditFile {
    service: String,
    file: Mutex<File>,
}

impl AuditFile {
    /// Appends to `path`.
    pub fn open(path: &Path, service: &str) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            service: service.to_owned(),
            file: Mutex::new(file),
        })
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S: Subscriber> Layer<S> for AuditFile {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "prodbox::audit" {
            return;
        }
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        fields
            .0
            .insert("service".to_owned(), Value::from(self.service.as_str()));
        let line = Value::Object(fields.0).to_string();
        if let Ok(mut file) = self.file.lock() {
            // Audit lines are best effort here: a full disk must not stop the shop.
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Installs logging for `service`: `RUST_LOG` (default `info`) on stderr, and audit events
/// into `audit` when given.
pub fn init(service: &str, audit: Option<&Path>) -> std::io::Result<()> {
    let audit = audit
        .map(|path| AuditFile::open(path, service))
        .transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(audit)
        .init();
    Ok(())
}
