//! Waiting that gives way to shutdown: every pause of the consumer loop (retries, throttling,
//! a stale directory) and of the cut's probes ends as soon as the consumer is told to stop.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Waits `wait`, unless `shutdown` completes first (then `false`).
pub(crate) async fn pause<S: Future<Output = ()>>(
    wait: Duration,
    shutdown: &mut Pin<&mut S>,
) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
