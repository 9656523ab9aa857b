//! Each call below starts work without the sandbox context; each line ending in `// flagged`
//! must draw one `disallowed_methods` warning from clippy with docs/clippy.toml.

use std::convert::Infallible;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let handle = runtime.handle().clone();
    // Not flagged: `block_on` polls on the calling thread, whose context it keeps.
    runtime.block_on(calls(handle));
    drop(runtime.spawn(async {})); // flagged
    drop(runtime.spawn_blocking(|| ())); // flagged
    let _ = std::thread::spawn(|| ()).join(); // flagged
    let _ = std::thread::Builder::new().spawn(|| ()); // flagged
    std::thread::scope(|scope| {
        scope.spawn(|| ()); // flagged
        let _ = std::thread::Builder::new().spawn_scoped(scope, || ()); // flagged
    });
}

async fn calls(handle: tokio::runtime::Handle) {
    let _ = tokio::spawn(async {}).await; // flagged
    let _ = tokio::task::spawn(async {}).await; // flagged
    let _ = tokio::task::spawn_blocking(|| ()).await; // flagged
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async { tokio::task::spawn_local(async {}).await }) // flagged
        .await
        .expect("local task");
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async {}); // flagged
    set.spawn_blocking(|| ()); // flagged
    let _ = handle.spawn(async {}).await; // flagged
    let _ = handle.spawn_blocking(|| ()).await; // flagged
    let service = tower::service_fn(|()| async { Ok::<_, Infallible>(()) });
    let _ = tower::buffer::Buffer::new(service, 1); // flagged
    let _ = tower::buffer::BufferLayer::<()>::new(1); // flagged
    let _ = tower::ServiceBuilder::new().buffer::<()>(1); // flagged
    let pair = tower::service_fn(|()| async { Ok::<_, Infallible>(()) });
    let _ = tower::buffer::Buffer::pair(pair, 1); // flagged
    let local = tokio::task::LocalSet::new();
    drop(local.spawn_local(async {})); // flagged
    let mut set = tokio::task::JoinSet::new();
    set.spawn_on(async {}, &handle); // flagged
    set.spawn_blocking_on(|| (), &handle); // flagged
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut set = tokio::task::JoinSet::new();
            set.spawn_local(async {}); // flagged
        })
        .await;
}
