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

    fn matches(
        point: impl Iterator<Item = impl std::borrow::Borrow<KeyValue>>,
        want: &[(&str, &str)],
    ) -> bool {
        let have: Vec<(String, String)> = point
            .map(|kv| {
                let kv = kv.borrow();
                (kv.key.as_str().to_owned(), kv.value.as_str().into_owned())
            })
            .collect();
        want.iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
    }

    /// The total of counter `name` over data points carrying every attribute in `attributes`.
    pub fn sum(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        let Some(latest) = self.latest() else {
            return 0;
        };
        let mut total = 0;
        for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
            if metric.name() != name {
                continue;
            }
            if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                total += sum
                    .data_points()
                    .filter(|p| Self::matches(p.attributes(), attributes))
                    .map(|p| p.value())
                    .sum::<u64>();
            }
        }
        total
    }

    /// How many values histogram `name` recorded over data points carrying `attributes`.
    pub fn histogram_count(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        let Some(latest) = self.latest() else {
            return 0;
        };
        let mut total = 0;
        for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
            if metric.name() != name {
                continue;
            }
            if let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() {
                total += histogram
                    .data_points()
                    .filter(|p| Self::matches(p.attributes(), attributes))
                    .map(|p| p.count())
                    .sum::<u64>();
            }
        }
        total
    }

    /// Every value attribute `key` takes in metric `name`.
    pub fn attribute_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        let Some(latest) = self.latest() else {
            return BTreeSet::new();
        };
        let mut values = BTreeSet::new();
        for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
            if metric.name() != name {
                continue;
            }
            if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                for point in sum.data_points() {
                    values.extend(
                        point
                            .attributes()
                            .filter(|kv| kv.key.as_str() == key)
                            .map(|kv| kv.value.as_str().into_owned()),
                    );
                }
            }
        }
        values
    }
}
