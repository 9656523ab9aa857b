//! The egress policy on a tonic client: `prodbox_http::EgressPolicyLayer` between prodbox's
//! gRPC client layer and the `Channel`. A sandboxed call reaches a declared internal service
//! with its context, and an undeclared one not at all; production's calls are untouched.

use prodbox_core::egress::EgressPolicy;
use prodbox_core::{FutureExt, Sandbox, TrustPolicy};
use prodbox_grpc::{PropagateSandboxLayer, SandboxLayer};
use prodbox_http::EgressPolicyLayer;
use prodbox_testkit::echo::Ping;
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::grpc::{EchoService, channel, serve_echo, uri};
use tower::ServiceBuilder;

#[tokio::test]
async fn a_tonic_client_under_the_policy_reaches_only_declared_services() {
    let service = EchoService::new("billing");
    let billing = serve_echo(SandboxLayer::new(TrustPolicy::accept()), service.clone()).await;
    // `with_origin`: tonic's requests carry only their path unless the client is given its
    // origin, and a sandboxed request that names no host is refused.
    let client = |policy: EgressPolicy| {
        EchoClient::with_origin(
            ServiceBuilder::new()
                .layer(PropagateSandboxLayer::new())
                .layer(EgressPolicyLayer::new(policy))
                .service(channel(billing)),
            uri(billing).parse().expect("origin"),
        )
    };
    let sandbox = Sandbox::new("grpc-egress".parse().expect("key"));

    // Declared internal: the call goes, with its sandbox.
    let mut declared = client(EgressPolicy::new().internal(&billing.to_string()));
    let seen = async { declared.unary(Ping { id: 1, count: 0 }).await }
        .in_sandbox(sandbox.clone())
        .await
        .expect("internal call")
        .into_inner();
    assert_eq!(seen.sandbox, "grpc-egress");
    assert_eq!(service.calls(), 1);

    // Not declared: refused before anything is sent; production's call goes.
    let mut undeclared = client(EgressPolicy::new());
    let refused = async { undeclared.unary(Ping { id: 2, count: 0 }).await }
        .in_sandbox(sandbox)
        .await
        .expect_err("refused");
    assert!(refused.message().contains("egress policy"), "{refused:?}");
    assert_eq!(service.calls(), 1, "the undeclared service was reached");
    let seen = undeclared
        .unary(Ping { id: 3, count: 0 })
        .await
        .expect("production's call")
        .into_inner();
    assert_eq!(seen.sandbox, "");
    assert_eq!(service.calls(), 2);
}

/// Without its origin, a tonic client's requests name no host: a sandboxed call is refused
/// (fail closed), production's goes.
#[tokio::test]
async fn a_tonic_client_without_its_origin_refuses_sandboxed_calls() {
    let service = EchoService::new("billing");
    let billing = serve_echo(SandboxLayer::new(TrustPolicy::accept()), service.clone()).await;
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .layer(EgressPolicyLayer::new(
                EgressPolicy::new().internal(&billing.to_string()),
            ))
            .service(channel(billing)),
    );
    let sandbox = Sandbox::new("grpc-no-origin".parse().expect("key"));
    let refused = async { client.unary(Ping { id: 1, count: 0 }).await }
        .in_sandbox(sandbox)
        .await
        .expect_err("refused");
    assert!(refused.message().contains("(no host)"), "{refused:?}");
    client
        .unary(Ping { id: 2, count: 0 })
        .await
        .expect("production's call");
    assert_eq!(service.calls(), 1);
}
