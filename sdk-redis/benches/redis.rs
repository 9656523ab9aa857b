//! A sandboxed GET/SET against the same on a raw connection, and production's GET through the
//! handle against a raw connection, alternating in one run (Redis on 127.0.0.1:6379).
//!
//! Run: `cargo bench -p prodbox-redis --bench redis`.
//!
//! What the handle adds to a production command, without the network's noise: the
//! `overhead` group sends GETs to a connection that answers at once (`Ready`), bare and
//! through the handle.
//!
//! Instructions per command (callgrind counts this process only, never the wait on the
//! socket): `PRODBOX_REDIS_COUNT=<raw|baseline|sandbox|ready-raw|ready-handle> valgrind
//! --tool=callgrind <bench binary>` runs 20,000 GETs one way and exits; the difference of two
//! totals over 20,000 is what the handle adds per command.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::Criterion;
use prodbox_core::{FutureExt, Sandbox};
use prodbox_redis::SandboxRedis;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

const URL: &str = "redis://127.0.0.1:6379/";
const SECRET: &[u8] = b"prodbox-redis bench secret, 32 bytes or more";

/// A connection that answers every command at once, so only the handle's work is measured.
#[derive(Clone)]
struct Ready;

impl redis::aio::ConnectionLike for Ready {
    fn req_packed_command<'a>(
        &'a mut self,
        _: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(std::future::ready(Ok(redis::Value::BulkString(
            b"value".to_vec(),
        ))))
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        _: &'a redis::Pipeline,
        _: usize,
        _: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    fn get_db(&self) -> i64 {
        0
    }
}

async fn over_ready() -> SandboxRedis<Ready> {
    SandboxRedis::builder(redis::Client::open(URL).unwrap(), SECRET)
        .build_over(Ready)
        .await
        .unwrap()
}
const COUNT: usize = 20_000;

async fn connections() -> (MultiplexedConnection, SandboxRedis, Sandbox) {
    let client = redis::Client::open(URL).unwrap();
    let raw = client.get_multiplexed_async_connection().await.unwrap();
    let handle = SandboxRedis::builder(client, SECRET).build().await.unwrap();
    // A new incarnation each run: the last run's teardown left a tombstone for the old one.
    let sandbox = Sandbox::builder("bench-redis")
        .unwrap()
        .created_at(std::time::SystemTime::now())
        .build();
    let mut warm = handle.clone();
    async {
        let () = warm.set("bench:key", "value").await.unwrap();
    }
    .in_sandbox(sandbox.clone())
    .await;
    let mut raw_warm = raw.clone();
    let () = raw_warm.set("bench:key", "value").await.unwrap();
    let () = raw_warm
        .set("sbx:{bench-redis}:bench:raw", "value")
        .await
        .unwrap();
    (raw, handle, sandbox)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get_set(c: &mut Criterion) {
    let rt = runtime();
    let (raw, handle, sandbox) = rt.block_on(connections());
    let mut group = c.benchmark_group("redis");
    for round in 0..2 {
        // Alternating, so drift of the machine or the server falls on both sides.
        group.bench_function(format!("get_set/raw/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = raw.clone();
                async move {
                    let () = con
                        .set("sbx:{bench-redis}:bench:raw", "value")
                        .await
                        .unwrap();
                    let v: String = con.get("sbx:{bench-redis}:bench:raw").await.unwrap();
                    black_box(v)
                }
            })
        });
        group.bench_function(format!("get_set/sandboxed/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = handle.clone();
                async move {
                    let () = con.set("bench:key", "value").await.unwrap();
                    let v: String = con.get("bench:key").await.unwrap();
                    black_box(v)
                }
                .in_sandbox(sandbox.clone())
            })
        });
        group.bench_function(format!("get/raw/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = raw.clone();
                async move { black_box(con.get::<_, String>("bench:key").await.unwrap()) }
            })
        });
        group.bench_function(format!("get/baseline_through_handle/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = handle.clone();
                async move { black_box(con.get::<_, String>("bench:key").await.unwrap()) }
            })
        });
    }
    group.finish();
    rt.block_on(async {
        handle.teardown(sandbox.key()).await.unwrap();
    });

    let ready = rt.block_on(over_ready());
    let mut group = c.benchmark_group("overhead");
    for round in 0..3 {
        group.bench_function(format!("get/bare/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = Ready;
                async move { black_box(con.get::<_, String>("bench:key").await.unwrap()) }
            })
        });
        group.bench_function(format!("get/through_handle/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut con = ready.clone();
                async move { black_box(con.get::<_, String>("bench:key").await.unwrap()) }
            })
        });
    }
    group.finish();
}

/// `COUNT` GETs one way, for callgrind.
fn count(mode: &str) {
    let rt = runtime();
    if let Some(over) = mode.strip_prefix("ready-") {
        rt.block_on(async {
            let ready = over_ready().await;
            for _ in 0..COUNT {
                let v: String = if over == "raw" {
                    Ready.get("bench:key").await.unwrap()
                } else {
                    ready.clone().get("bench:key").await.unwrap()
                };
                black_box(v);
            }
        });
        return;
    }
    rt.block_on(async {
        let (raw, handle, sandbox) = connections().await;
        for _ in 0..COUNT {
            let v: String = match mode {
                "raw" => raw.clone().get("bench:key").await.unwrap(),
                "baseline" => handle.clone().get("bench:key").await.unwrap(),
                _ => {
                    let mut con = handle.clone();
                    async move { con.get("bench:key").await.unwrap() }
                        .in_sandbox(sandbox.clone())
                        .await
                }
            };
            black_box(v);
        }
        handle.teardown(sandbox.key()).await.unwrap();
    });
}

fn main() {
    if let Ok(mode) = std::env::var("PRODBOX_REDIS_COUNT") {
        count(&mode);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    get_set(&mut c);
    c.final_summary();
}
