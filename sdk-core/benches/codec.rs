//! Codec speed against OpenTelemetry's `BaggagePropagator`, in the same run.
//!
//! Run: `cargo bench -p prodbox-core --bench codec`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::BaggagePropagator;
use prodbox_core::codec::{Codec, ForeignMembers};
use prodbox_core::{Admission, Ingress, Sandbox, SandboxContext, TrustPolicy};

const TYPICAL: &str = "prodbox.sandbox=pr-42,prodbox.actor=alice,prodbox.origin=pr-123";

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("orders:8080"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    headers.insert("baggage", HeaderValue::from_static(TYPICAL));
    headers
}

fn extract(c: &mut Criterion) {
    let headers = request_headers();
    let codec = Codec::default();
    let otel = BaggagePropagator::new();
    let ingress = Ingress::new(TrustPolicy::accept());
    let mut group = c.benchmark_group("extract_3_members");
    group.bench_function("otel_baggage_propagator", |b| {
        b.iter(|| otel.extract_with_context(&Context::new(), &Headers(black_box(&headers))))
    });
    group.bench_function("prodbox_codec", |b| {
        b.iter(|| codec.extract(black_box(&headers)))
    });
    // The same header with the memo of recent headers turned off: the parse, with the sandbox
    // still taken from the cache of recent sandboxes.
    let parsing = Codec::default().remember_headers(false);
    group.bench_function("prodbox_codec_not_remembering", |b| {
        b.iter(|| parsing.extract(black_box(&headers)))
    });
    // Every header different (a request counter among the members, 4096 headers in turn, more
    // than the codec remembers): the parse that a repeated header skips.
    let distinct: Vec<HeaderMap> = (0..4096)
        .map(|n| {
            let mut headers = request_headers();
            let value = format!("{TYPICAL},req={n}");
            headers.insert("baggage", HeaderValue::from_str(&value).unwrap());
            headers
        })
        .collect();
    let mut next = 0;
    group.bench_function("prodbox_codec_every_header_new", |b| {
        b.iter(|| {
            next = (next + 1) % distinct.len();
            codec.extract(black_box(&distinct[next]))
        })
    });
    // Codec plus trust decision plus a Context as OpenTelemetry would build it: the whole
    // ingress, for comparison with the propagator's output.
    group.bench_function("prodbox_admit_and_attach", |b| {
        b.iter(|| match ingress.admit(black_box(&headers), None) {
            Admission::Sandboxed { context, .. } => Some(context.attach_to(&Context::new())),
            _ => None,
        })
    });
    group.finish();
}

fn inject(c: &mut Criterion) {
    let codec = Codec::default();
    let sandbox = Sandbox::builder("pr-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .origin("pr-123")
        .unwrap()
        .build();
    let none = ForeignMembers::default();
    let otel = BaggagePropagator::new();
    let cx = SandboxContext::new(sandbox.clone()).attach_to(&Context::new());
    let mut group = c.benchmark_group("inject");
    group.bench_function("otel_baggage_propagator", |b| {
        b.iter_batched_ref(
            std::collections::HashMap::<String, String>::new,
            |carrier| otel.inject_context(black_box(&cx), carrier),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("prodbox_codec", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |headers| codec.inject(Some(black_box(&sandbox)), None, &none, headers),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// An internal hop with a directory: admit the request's sandbox (completed from its entry,
/// which knows its creation) and send it onward, as each hop of a chain does.
fn relay(c: &mut Criterion) {
    use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
    use prodbox_core::egress::Egress;
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new("pr-42".parse().unwrap());
    entry.actor = Some("alice".to_owned());
    entry.origin = Some("pr-123".to_owned());
    entry.created_at = Some(std::time::SystemTime::now());
    directory.upsert(entry);
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);
    let egress = Egress::new(prodbox_core::audit::Protocol::Http);
    let headers = request_headers();
    let mut group = c.benchmark_group("relay_with_directory");
    group.bench_function("admit_attach_inject", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |out| {
                if let Admission::Sandboxed { context, .. } =
                    ingress.admit(black_box(&headers), None)
                {
                    let cx = context.attach_to(&Context::new());
                    let _ = egress.inject_from(&cx, out);
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, extract, inject, relay);
criterion_main!(benches);
