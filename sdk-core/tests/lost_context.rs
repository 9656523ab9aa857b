//! Every way work leaves the task that started it, without and with prodbox's helpers: the
//! plain way starts with no context (production), the helper keeps the sandbox.

use std::convert::Infallible;

use prodbox_core::task::{self, AttachContextLayer, CarryContextLayer};
use prodbox_core::{ContextExt, FutureExt, Sandbox, current};
use tower::{Service, ServiceBuilder, ServiceExt};

fn pr42() -> Sandbox {
    #![allow(clippy::unwrap_used)]
    Sandbox::builder("pr-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_keep_the_sandbox_only_through_the_helper() {
    let (plain, helper) = async {
        let plain = tokio::spawn(async { current() }).await.unwrap();
        let helper = task::spawn(async { current() }).await.unwrap();
        (plain, helper)
    }
    .in_sandbox(pr42())
    .await;
    assert_eq!(plain, None);
    assert_eq!(helper, Some(pr42()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_work_keeps_the_sandbox_only_through_the_helper() {
    let (plain, helper) = async {
        let plain = tokio::task::spawn_blocking(current).await.unwrap();
        let helper = task::spawn_blocking(current).await.unwrap();
        (plain, helper)
    }
    .in_sandbox(pr42())
    .await;
    assert_eq!(plain, None);
    assert_eq!(helper, Some(pr42()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_keep_the_sandbox_only_through_the_helpers() {
    let (plain, helper, named) = async {
        let plain = std::thread::spawn(current).join().unwrap();
        let helper = task::spawn_thread(current).join().unwrap();
        let named = std::thread::Builder::new()
            .name("worker".into())
            .spawn(task::carry(current))
            .unwrap()
            .join()
            .unwrap();
        (plain, helper, named)
    }
    .in_sandbox(pr42())
    .await;
    assert_eq!(plain, None);
    assert_eq!(helper, Some(pr42()));
    assert_eq!(named, Some(pr42()));
}

#[test]
fn scoped_threads_keep_the_sandbox_through_carry() {
    let borrowed = String::from("abc");
    let cx = opentelemetry::Context::current().with_sandbox(pr42());
    let _attached = cx.attach();
    let (plain, carried) = std::thread::scope(|scope| {
        let plain = scope.spawn(|| (borrowed.len(), current()));
        let carried = scope.spawn(task::carry(|| (borrowed.len(), current())));
        (plain.join().unwrap(), carried.join().unwrap())
    });
    assert_eq!(plain, (3, None));
    assert_eq!(carried, (3, Some(pr42())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_set_keeps_the_sandbox_only_when_the_future_carries_it() {
    let (plain, carried) = async {
        let mut set = tokio::task::JoinSet::new();
        set.spawn(async { current() });
        let plain = set.join_next().await.unwrap().unwrap();
        set.spawn(async { current() }.in_current_sandbox());
        let carried = set.join_next().await.unwrap().unwrap();
        (plain, carried)
    }
    .in_sandbox(pr42())
    .await;
    assert_eq!(plain, None);
    assert_eq!(carried, Some(pr42()));
}

/// What a service behind a buffer sees: the sandbox in `call` and in its response future.
fn observer() -> impl Service<
    (),
    Response = (Option<Sandbox>, Option<Sandbox>),
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|()| {
        let in_call = current();
        async move {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>((in_call, current()))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_worker_loses_the_sandbox_unless_the_context_travels_with_the_request() {
    let mut plain = ServiceBuilder::new().buffer(4).service(observer());
    let mut carried = ServiceBuilder::new()
        .layer(CarryContextLayer::new())
        .buffer(4)
        .layer(AttachContextLayer::new())
        .service(observer());
    let (seen_plain, seen_carried) = async {
        let plain = plain.ready().await.unwrap().call(()).await.unwrap();
        let carried = carried.ready().await.unwrap().call(()).await.unwrap();
        (plain, carried)
    }
    .in_sandbox(pr42())
    .await;
    // The buffer's worker calls the service from a task of its own.
    assert_eq!(seen_plain.0, None);
    assert_eq!(seen_carried, (Some(pr42()), Some(pr42())));

    // A request sent outside any sandbox stays outside, through the same buffer.
    let seen = carried.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(seen, (None, None));
}
