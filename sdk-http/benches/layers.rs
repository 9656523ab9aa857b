//! Overhead of the server and client layers around a bare in-process Tower service, against
//! the bare service in the same run.
//!
//! Run: `cargo bench -p prodbox-http --bench layers`

#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request, Response};
use opentelemetry::Context;
use prodbox_core::{Sandbox, SandboxContext, TrustPolicy};
use prodbox_http::{PropagateSandboxLayer, SandboxLayer};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn bare() -> impl Service<Request<()>, Response = Response<&'static str>, Error = Infallible> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new("ok")) })
}

fn sandbox() -> Sandbox {
    Sandbox::builder("pr-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .origin("pr-123")
        .unwrap()
        .build()
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let request = || Request::get("http://orders/x").body(()).unwrap();
    let mut group = c.benchmark_group("server_plus_client_layer");

    group.bench_function("bare", |b| {
        let svc = bare();
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(black_box(request())))
    });
    // Client layer outside, server layer inside: the client writes the context, the server
    // reads, admits and attaches it, the response body is wrapped.
    let stacked = ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .layer(SandboxLayer::new(TrustPolicy::accept()))
        .service(bare());
    group.bench_function("prodbox_baseline", |b| {
        b.to_async(&rt)
            .iter(|| stacked.clone().oneshot(black_box(request())))
    });
    // The server layer alone, for a sandboxed request reaching a service with no context yet
    // (an ingress): the OpenTelemetry baggage mirror is built from scratch. Its baseline is the
    // bare service given the same tagged request.
    let tagged = || {
        Request::get("http://orders/x")
            .header(
                "baggage",
                "prodbox.sandbox=pr-42,prodbox.actor=alice,prodbox.origin=pr-123",
            )
            .body(())
            .unwrap()
    };
    group.bench_function("bare_tagged_request", |b| {
        let svc = bare();
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(black_box(tagged())))
    });
    let server = ServiceBuilder::new()
        .layer(SandboxLayer::new(TrustPolicy::accept()))
        .service(bare());
    group.bench_function("server_layer_sandboxed_empty_context", |b| {
        b.to_async(&rt)
            .iter(|| server.clone().oneshot(black_box(tagged())))
    });
    // A sandboxed request inside a service that is itself handling a sandboxed request: the
    // context is attached once, as the server layer of this service would have done.
    let _guard = SandboxContext::new(sandbox())
        .attach_to(&Context::new())
        .attach();
    group.bench_function("bare_under_sandbox", |b| {
        let svc = bare();
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(black_box(request())))
    });
    group.bench_function("prodbox_sandboxed", |b| {
        b.to_async(&rt)
            .iter(|| stacked.clone().oneshot(black_box(request())))
    });
    group.finish();
}

fn inject(c: &mut Criterion) {
    // The client layer's whole injection: read the current context, write one header.
    let cx = SandboxContext::new(sandbox()).attach_to(&Context::new());
    let _guard = cx.attach();
    let mut svc = ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .service(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.headers().len()))
        }));
    let mut group = c.benchmark_group("client_inject");
    group.bench_function("prodbox_client_layer_call", |b| {
        b.iter_batched(
            request_with_headers,
            |req| {
                // `call` does the injection synchronously; the future is dropped unpolled.
                drop(black_box(svc.call(req)));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn request_with_headers() -> Request<()> {
    let mut req = Request::get("http://orders/x").body(()).unwrap();
    *req.headers_mut() = HeaderMap::with_capacity(4);
    req
}

/// The egress policy layer's cost beside the client layer alone, for production's calls and a
/// sandbox's call to an internal service (the policy's third of five rules), alternating.
fn egress_policy(c: &mut Criterion) {
    use prodbox_core::FutureExt;
    use prodbox_core::egress::{EgressPolicy, Stub};
    use prodbox_http::EgressPolicyLayer;

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let policy = EgressPolicy::new()
        .internal("*.svc.cluster.local")
        .internal("billing")
        .internal("orders")
        .external("maps", "maps.example.com")
        .stub(
            "payments",
            "api.payments.example",
            Stub::respond(200, "text/plain", "ok"),
        );
    let client_only = ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .service(bare());
    let with_policy = ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .layer(EgressPolicyLayer::new(policy))
        .service(bare());
    let request = || Request::get("http://orders:8080/x").body(()).unwrap();
    let mut group = c.benchmark_group("egress_policy");
    for round in 0..2 {
        group.bench_function(format!("baseline/client_layer/{round}"), |b| {
            b.to_async(&rt)
                .iter(|| client_only.clone().oneshot(black_box(request())))
        });
        group.bench_function(format!("baseline/client_and_policy/{round}"), |b| {
            b.to_async(&rt)
                .iter(|| with_policy.clone().oneshot(black_box(request())))
        });
        group.bench_function(format!("sandboxed/client_layer/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                client_only
                    .clone()
                    .oneshot(black_box(request()))
                    .in_sandbox(sandbox())
            })
        });
        group.bench_function(format!("sandboxed/client_and_policy/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                with_policy
                    .clone()
                    .oneshot(black_box(request()))
                    .in_sandbox(sandbox())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, layers, inject, egress_policy);
criterion_main!(benches);
