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

/// The process's OpenTelemetry metrics, kept in memory so the demo can show them (a real
/// service would install an OTLP exporter instead; prodbox only uses the API).
pub struct Metrics {
    provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    exporter: opentelemetry_sdk::metrics::InMemoryMetricExporter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Installs an SDK meter provider as the global one; call before anything of prodbox runs.
    pub fn install() -> std::sync::Arc<Self> {
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        };
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        std::sync::Arc::new(Self { provider, exporter })
    }

    /// Every prodbox counter and histogram as JSON: `[{name, attributes, value}]` (a
    /// histogram's value is its count).
    pub fn snapshot(&self) -> Value {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        let _ = self.provider.force_flush();
        let Some(latest) = self
            .exporter
            .get_finished_metrics()
            .ok()
            .and_then(|mut m| m.pop())
        else {
            return Value::Array(Vec::new());
        };
        self.exporter.reset();
        let attributes = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| -> Value {
            Value::Object(
                kvs.map(|kv| {
                    (
                        kv.key.as_str().to_owned(),
                        Value::from(kv.value.as_str().into_owned()),
                    )
                })
                .collect(),
            )
        };
        let mut out = Vec::new();
        for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for point in sum.data_points() {
                        out.push(serde_json::json!({
                            "name": metric.name(),
                            "attributes": attributes(&mut point.attributes()),
                            "value": point.value(),
                        }));
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    for point in histogram.data_points() {
                        out.push(serde_json::json!({
                            "name": metric.name(),
                            "attributes": attributes(&mut point.attributes()),
                            "value": point.count(),
                            "sum": point.sum(),
                        }));
                    }
                }
                _ => {}
            }
        }
        Value::Array(out)
    }
}
