//! Interceptor injection, and the server plus client layers around an in-process tonic service
//! against the same service without prodbox, in the same run.
//!
//! Run: `cargo bench -p prodbox-grpc --bench grpc`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::Context;
use prodbox_core::{Sandbox, SandboxContext, TrustPolicy};
use prodbox_grpc::{PropagateSandboxLayer, SandboxInterceptor, SandboxLayer};
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::echo::echo_server::{Echo, EchoServer};
use prodbox_testkit::echo::{Ping, Seen};
use tonic::service::Interceptor;
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceBuilder;

/// The cheapest possible handler: the layers are what is measured.
struct Bare;

#[tonic::async_trait]
impl Echo for Bare {
    async fn unary(&self, request: Request<Ping>) -> Result<Response<Seen>, Status> {
        Ok(Response::new(Seen {
            id: request.get_ref().id,
            ..Seen::default()
        }))
    }
    type ServerStreamStream = tokio_stream::Empty<Result<Seen, Status>>;
    async fn server_stream(
        &self,
        _: Request<Ping>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
    async fn client_stream(&self, _: Request<Streaming<Ping>>) -> Result<Response<Seen>, Status> {
        Ok(Response::new(Seen::default()))
    }
    type BidiStream = tokio_stream::Empty<Result<Seen, Status>>;
    async fn bidi(
        &self,
        _: Request<Streaming<Ping>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
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

fn interceptor(c: &mut Criterion) {
    let _guard = SandboxContext::new(sandbox())
        .attach_to(&Context::new())
        .attach();
    let mut interceptor = SandboxInterceptor::new();
    c.bench_function("interceptor_inject", |b| {
        b.iter_batched(
            || Request::new(()),
            |request| black_box(interceptor.call(request)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ping = || Request::new(Ping { id: 7, count: 0 });
    let mut group = c.benchmark_group("unary_in_process");

    let bare = EchoClient::new(EchoServer::new(Bare));
    let layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .layer(SandboxLayer::new(TrustPolicy::accept()))
            .service(EchoServer::new(Bare)),
    );
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.clone().unary(black_box(ping())).await.unwrap() })
    });
    group.bench_function("prodbox_baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { layered.clone().unary(black_box(ping())).await.unwrap() })
    });
    // Inside a sandboxed handler: the context is attached once, as the server layer of the
    // calling service would have done.
    let _guard = SandboxContext::new(sandbox())
        .attach_to(&Context::new())
        .attach();
    group.bench_function("bare_under_sandbox", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.clone().unary(black_box(ping())).await.unwrap() })
    });
    group.bench_function("prodbox_sandboxed", |b| {
        b.to_async(&rt)
            .iter(|| async { layered.clone().unary(black_box(ping())).await.unwrap() })
    });
    group.finish();
}

criterion_group!(benches, interceptor, unary);
criterion_main!(benches);
