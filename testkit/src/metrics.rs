//! OpenTelemetry metrics captured in memory: install [`Metrics::global`] before anything of
//! prodbox runs in the test binary (prodbox creates its instruments once, on first use).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

/// The test binary's meter provider and what it exported.
pub struct Metrics {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Metrics {
    /// Installs (once per test binary) an SDK meter provider with an in-memory exporter as the
    /// global one, and returns it.
    pub fn global() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let exporter = InMemoryMetricExporter::default();
            let provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(exporter.clone()).build())
                .build();
            opentelemetry::global::set_meter_provider(provider.clone());
            Metrics { provider, exporter }
        })
    }

    /// The latest cumulative export.
    fn latest(&self) -> Option<ResourceMetrics> {
        self.provider.force_flush().expect("metrics flushed");
        self.exporter
            .get_finished_metrics()
            .expect("exported metrics")
            .pop()
    }

    /// Each data point of metric `name` (a `u64` counter or an `f64` histogram) as its
    /// attributes and its value (a histogram's value is its count).
    fn points(&self, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
        let Some(latest) = self.latest() else {
            return Vec::new();
        };
        let pairs = |kvs: &mut dyn Iterator<Item = &KeyValue>| -> Vec<(String, String)> {
            kvs.map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
                .collect()
        };
        let mut points = Vec::new();
        for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
            if metric.name() != name {
                continue;
            }
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => points.extend(
                    sum.data_points()
                        .map(|p| (pairs(&mut p.attributes()), p.value())),
                ),
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => points.extend(
                    histogram
                        .data_points()
                        .map(|p| (pairs(&mut p.attributes()), p.count())),
                ),
                _ => {}
            }
        }
        points
    }

    fn total(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        self.points(name)
            .into_iter()
            .filter(|(have, _)| {
                attributes
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The total of counter `name` over data points carrying every attribute in `attributes`.
    pub fn sum(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        self.total(name, attributes)
    }

    /// How many values histogram `name` recorded over data points carrying `attributes`.
    pub fn histogram_count(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        self.total(name, attributes)
    }

    /// Every value attribute `key` takes in metric `name`.
    pub fn attribute_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.points(name)
            .into_iter()
            .flat_map(|(attributes, _)| attributes)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }
}
