//! What the service does for production traffic; the same test passes before and after
//! adopting prodbox.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_signup_is_stored_and_welcomed() {
    let started = common::start().await;
    let (status, id) = started.sign_up("ada@example.com", None).await;
    assert_eq!(status, 201, "{id}");
    assert_eq!(started.get("/signups", None).await, (200, "1".into()));
    let welcomed = common::eventually(Duration::from_secs(30), || async {
        started.get("/welcomes", None).await == (200, "1".into())
    })
    .await;
    assert!(welcomed, "the welcome email was sent");
    started.stop();
}
