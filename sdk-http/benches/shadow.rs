//! Overhead of the shadow layer at 10 % sampling on the requests it does not copy, against the
//! same bare in-process Tower service in the same run.
//!
//! Run: `cargo bench -p prodbox-http --features shadow --bench shadow`
//!
//! * `bare`: the service alone (it reads the request body, like a handler would);
//! * `layer_not_sampled`: the path of the 90 % not copied: the layer with a shadow in the
//!   directory and a sampling rate so small that no request is sampled (the atomic addition
//!   still runs; the wrappers of request body, response future and response body are there);
//! * `layer_10_percent`: rate 0.1 with a shadow, copies sent by an in-process client that answers
//!   at once: the average over all requests, the copied tenth included (header copy, body tee,
//!   queue, worker).

#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_http::ShadowLayer;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn bare<B>()
-> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    service_fn(|req: Request<B>| async move {
        // Read the body as a real handler would.
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    })
}

fn request() -> Request<Full<Bytes>> {
    Request::post("http://orders/orders")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"item":"book"}"#)))
        .unwrap()
}

fn shadow(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Ten sandboxes; pr-1 shadows `orders`.
    let directory = MemoryDirectory::new();
    for n in 0..10 {
        let mut entry = SandboxEntry::new(format!("pr-{n}").parse().unwrap()).fork(
            "orders",
            "http://127.0.0.1:9".parse().expect("a fork address"),
        );
        if n == 1 {
            entry = entry.shadow("orders");
        }
        directory.upsert(entry);
    }
    let fork = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let mut group = c.benchmark_group("shadow");

    let svc = bare::<Full<Bytes>>();
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let response = svc.clone().oneshot(black_box(request())).await.unwrap();
            response.into_body().collect().await.unwrap()
        })
    });
    let not_sampled = ServiceBuilder::new()
        .layer(ShadowLayer::new("orders", directory.clone()).sample(1e-9))
        .service(bare());
    group.bench_function("layer_not_sampled", |b| {
        b.to_async(&rt).iter(|| async {
            let response = not_sampled
                .clone()
                .oneshot(black_box(request()))
                .await
                .unwrap();
            response.into_body().collect().await.unwrap()
        })
    });
    let ten_percent = ServiceBuilder::new()
        .layer(
            ShadowLayer::new("orders", directory.clone())
                .sample(0.1)
                .client(fork),
        )
        .service(bare());
    group.bench_function("layer_10_percent", |b| {
        b.to_async(&rt).iter(|| async {
            let response = ten_percent
                .clone()
                .oneshot(black_box(request()))
                .await
                .unwrap();
            response.into_body().collect().await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, shadow);
criterion_main!(benches);
