//! The sandbox in process: across `.await`, spawned tasks, and OpenTelemetry baggage.

use std::time::Duration;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::{Context, KeyValue};
use prodbox_core::codec::{Codec, ForeignMembers};
use prodbox_core::{ContextExt, FutureExt, Sandbox, SandboxContext, current};

fn sandbox(key: &str) -> Sandbox {
    Sandbox::builder(key).expect("valid key").build()
}

fn full_sandbox(key: &str) -> Sandbox {
    Sandbox::builder(key)
        .expect("valid key")
        .actor("alice@example.com")
        .expect("actor")
        .origin("pr 42")
        .expect("origin")
        .build()
}

fn baggage_value(cx: &Context, key: &str) -> Option<String> {
    cx.baggage().get(key).map(|v| v.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_sandbox_survives_awaits_on_a_multi_thread_runtime() {
    let sb = sandbox("ctx-await");
    let seen = async {
        let mut seen = vec![current()];
        for _ in 0..20 {
            tokio::task::yield_now().await;
            seen.push(current());
            tokio::time::sleep(Duration::from_millis(1)).await;
            seen.push(current());
        }
        seen
    }
    .in_sandbox(sb.clone())
    .await;
    assert_eq!(seen.len(), 41);
    assert!(seen.iter().all(|s| s.as_ref() == Some(&sb)), "{seen:?}");
    assert_eq!(
        current(),
        None,
        "the sandbox does not leak out of the future"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sandboxes_never_see_each_other() {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let sb = sandbox(&format!("ctx-many-{i}"));
            let task = async move {
                let mut wrong = Vec::new();
                for step in 0..50 {
                    if step % 2 == 0 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                    let now = current();
                    if now.as_ref().map(|s| s.key().as_str().to_owned())
                        != Some(format!("ctx-many-{i}"))
                    {
                        wrong.push(now);
                    }
                }
                wrong
            };
            // Spawned plainly: the task migrates between worker threads, the wrapper travels
            // with it.
            tokio::spawn(task.in_sandbox(sb))
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let wrong = task.await.expect("task");
        assert!(wrong.is_empty(), "task {i} saw {wrong:?}");
    }
    assert_eq!(current(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prodbox_spawn_keeps_the_sandbox_and_tokio_spawn_does_not() {
    let sb = sandbox("ctx-spawn");
    let (with_helper, with_tokio, nested) = async {
        let with_helper = prodbox_core::spawn(async {
            tokio::task::yield_now().await;
            current()
        })
        .await
        .expect("task");
        let with_tokio = tokio::spawn(async {
            tokio::task::yield_now().await;
            current()
        })
        .await
        .expect("task");
        // A task spawned from a spawned task keeps it too.
        let nested = prodbox_core::spawn(async {
            prodbox_core::spawn(async { current() })
                .await
                .expect("task")
        })
        .await
        .expect("task");
        (with_helper, with_tokio, nested)
    }
    .in_sandbox(sb.clone())
    .await;
    assert_eq!(with_helper, Some(sb.clone()));
    assert_eq!(nested, Some(sb));
    assert_eq!(with_tokio, None, "tokio::spawn starts with no context");
}

#[tokio::test]
async fn in_current_sandbox_captures_the_context_when_created() {
    let sb = sandbox("ctx-current");
    let deferred = {
        let _guard = Context::new().with_sandbox(sb.clone()).attach();
        assert_eq!(current(), Some(sb.clone()));
        async { current() }.in_current_sandbox()
    };
    // Polled later, outside the sandbox, it still runs inside it.
    assert_eq!(current(), None);
    assert_eq!(deferred.await, Some(sb));
}

#[test]
fn with_sandbox_mirrors_into_otel_baggage() {
    let app = Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
    let cx = app.with_sandbox(full_sandbox("ctx-mirror"));

    assert_eq!(cx.sandbox().map(|s| s.key().as_str()), Some("ctx-mirror"));
    assert_eq!(
        baggage_value(&cx, "prodbox.sandbox").as_deref(),
        Some("ctx-mirror")
    );
    assert_eq!(
        baggage_value(&cx, "prodbox.actor").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        baggage_value(&cx, "prodbox.origin").as_deref(),
        Some("pr 42")
    );
    assert_eq!(
        baggage_value(&cx, "tenant").as_deref(),
        Some("acme"),
        "other baggage is kept"
    );
    // And the application's baggage is carried onward by prodbox too.
    assert_eq!(
        SandboxContext::outbound_foreign(&cx).as_str(),
        "tenant=acme"
    );

    // A sandbox without actor and origin writes neither.
    let bare = Context::new().with_sandbox(sandbox("ctx-mirror-bare"));
    assert_eq!(baggage_value(&bare, "prodbox.actor"), None);
    assert_eq!(baggage_value(&bare, "prodbox.origin"), None);

    // Switching sandboxes replaces the mirrored members.
    let switched = cx.with_sandbox(sandbox("ctx-mirror-2"));
    assert_eq!(
        baggage_value(&switched, "prodbox.sandbox").as_deref(),
        Some("ctx-mirror-2")
    );
    assert_eq!(baggage_value(&switched, "prodbox.actor"), None);
    assert_eq!(baggage_value(&switched, "tenant").as_deref(), Some("acme"));

    // Leaving the sandbox removes them and keeps the rest.
    let out = cx.without_sandbox();
    assert_eq!(out.sandbox(), None);
    assert_eq!(baggage_value(&out, "prodbox.sandbox"), None);
    assert_eq!(baggage_value(&out, "prodbox.actor"), None);
    assert_eq!(baggage_value(&out, "tenant").as_deref(), Some("acme"));
}

#[test]
fn attach_to_mirrors_foreign_members_with_decoded_values_and_properties() {
    let context = SandboxContext::new(sandbox("ctx-attach"))
        .with_foreign(prodbox_core::plumbing::codec::foreign_members([
            "userId=Am%C3%A9lie;p=1",
            "k=v",
        ]))
        .with_token(Some("v1.k1.c.s"));
    let cx = context.attach_to(&Context::new());
    assert_eq!(cx.sandbox_context(), Some(&context));
    assert_eq!(baggage_value(&cx, "userId").as_deref(), Some("Amélie"));
    let (_, meta) = cx.baggage().get_with_metadata("userId").expect("userId");
    assert_eq!(meta.as_str(), "p=1");
    assert_eq!(
        baggage_value(&cx, "prodbox.token"),
        None,
        "the token is not mirrored"
    );
    // Unchanged since attached: exactly the members that arrived.
    assert_eq!(
        SandboxContext::outbound_foreign(&cx).as_str(),
        "userId=Am%C3%A9lie;p=1,k=v"
    );
}

#[test]
fn attach_to_keeps_the_parents_otel_baggage_and_sends_it_onward() {
    // An application (or another middleware) put members into OpenTelemetry baggage before
    // prodbox attached the request's context: they stay in the context and go onward.
    let parent = Context::new().with_baggage([
        KeyValue::new("tenant", "acme"),
        KeyValue::new("k", "parent"),
        KeyValue::new("prodbox.sandbox", "ctx-spoofed"),
    ]);
    let context = SandboxContext::new(sandbox("ctx-inherit"))
        .with_foreign(prodbox_core::plumbing::codec::foreign_members(["k=v"]));
    let cx = context.attach_to(&parent);
    assert_eq!(cx.sandbox().map(|s| s.key().as_str()), Some("ctx-inherit"));
    assert_eq!(baggage_value(&cx, "tenant").as_deref(), Some("acme"));
    // The request's own member wins over the parent's of the same key; ours are never taken
    // from the parent.
    assert_eq!(baggage_value(&cx, "k").as_deref(), Some("v"));
    assert_eq!(
        baggage_value(&cx, "prodbox.sandbox").as_deref(),
        Some("ctx-inherit")
    );
    assert_eq!(
        SandboxContext::outbound_foreign(&cx).as_str(),
        "k=v,tenant=acme"
    );
    assert_eq!(
        cx.sandbox_context().map(|c| c.foreign().as_str()),
        Some("k=v,tenant=acme")
    );
    // Attaching it again inside itself changes nothing.
    let again = cx
        .sandbox_context()
        .expect("attached")
        .clone()
        .attach_to(&cx);
    assert_eq!(
        SandboxContext::outbound_foreign(&again).as_str(),
        "k=v,tenant=acme"
    );
    // A baseline context keeps them too.
    let baseline = SandboxContext::baseline(ForeignMembers::default()).attach_to(&parent);
    assert_eq!(
        SandboxContext::outbound_foreign(&baseline).as_str(),
        "k=parent,tenant=acme"
    );
}

#[test]
fn another_tools_routing_key_in_a_parents_baggage_is_never_sent_onward() {
    // An outer OpenTelemetry layer read an untrusted request's baggage into the context; the
    // trust policy stripped the routing keys from prodbox's own context, and they must not
    // come back through the parent.
    let parent = Context::new().with_baggage([
        KeyValue::new("sd-routing-key", "victim"),
        KeyValue::new("Okteto-Divert", "victim"),
        KeyValue::new("mirrord-session", "victim"),
        KeyValue::new("tenant", "acme"),
    ]);
    for context in [
        SandboxContext::new(sandbox("ctx-alias")),
        SandboxContext::baseline(ForeignMembers::default()),
    ] {
        let cx = context.attach_to(&parent);
        assert_eq!(
            SandboxContext::outbound_foreign(&cx).as_str(),
            "tenant=acme"
        );
        // Not in the OpenTelemetry mirror either, which other propagators may send.
        for alias in ["sd-routing-key", "Okteto-Divert", "mirrord-session"] {
            assert_eq!(baggage_value(&cx, alias), None, "{alias}");
        }
        // Nor when the application changes the baggage afterwards.
        let changed = cx.with_baggage(
            cx.baggage()
                .iter()
                .map(|(k, (v, _))| KeyValue::new(k.clone(), v.clone()))
                .chain([KeyValue::new("userId", "7")]),
        );
        assert_eq!(
            SandboxContext::outbound_foreign(&changed).as_str(),
            "tenant=acme,userId=7"
        );
    }
}

#[test]
fn a_parents_baggage_never_crowds_out_the_requests_own_members() {
    // 100 members in the parent, 40 of the request's own: the request's are all kept, the
    // parent's fill what the W3C minimum limits leave, keeping room for ours.
    let parent = Context::new()
        .with_baggage((0..100).map(|i| KeyValue::new(format!("parent{i:03}"), "x".repeat(50))));
    let own: Vec<String> = (0..40).map(|i| format!("own{i:02}=v")).collect();
    let context = SandboxContext::new(sandbox("ctx-crowd")).with_foreign(
        prodbox_core::plumbing::codec::foreign_members(own.iter().map(String::as_str)),
    );
    let cx = context.attach_to(&parent);
    let outbound = SandboxContext::outbound_foreign(&cx).into_owned();
    let members: Vec<&str> = outbound.iter_raw().collect();
    assert_eq!(
        &members[..40],
        own.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let parents = members.len() - 40;
    assert_eq!(parents, 64 - 40 - 4, "room kept for our four members");
    assert!(members[40..].iter().all(|m| m.starts_with("parent")));
    // The request's members and ours still make one valid header under the default codec.
    let mut carrier: Vec<(String, Vec<u8>)> = Vec::new();
    Codec::default()
        .inject(
            Some(&full_sandbox("ctx-crowd")),
            Some("v1.k1.abc.def"),
            &outbound,
            &mut carrier,
        )
        .expect("fits");
}

#[test]
fn a_parents_large_baggage_fits_beside_the_largest_members_of_ours() {
    // Parent members of about 1 KiB: the byte limit binds before the member limit.
    let parent = Context::new()
        .with_baggage((0..20).map(|i| KeyValue::new(format!("big{i:02}"), "v".repeat(1000))));
    let context = SandboxContext::new(sandbox("ctx-bytes"))
        .with_foreign(prodbox_core::plumbing::codec::foreign_members(["own=1"]));
    let cx = context.attach_to(&parent);
    let outbound = SandboxContext::outbound_foreign(&cx).into_owned();
    let members: Vec<&str> = outbound.iter_raw().collect();
    assert_eq!(members[0], "own=1");
    assert!(members.len() > 1, "some of the parent's are kept");
    assert!(members.len() < 21, "not all of them fit: {}", members.len());
    // Our largest: a 63-character key, actor and origin of 256 bytes that encode to three
    // times that, and a 1 KiB token.
    let label = "é".repeat(128);
    let largest = Sandbox::builder(&"k".repeat(63))
        .expect("valid key")
        .actor(&label)
        .expect("actor")
        .origin(&label)
        .expect("origin")
        .build();
    let token = "t".repeat(1024);
    let mut carrier: Vec<(String, Vec<u8>)> = Vec::new();
    Codec::default()
        .inject(Some(&largest), Some(&token), &outbound, &mut carrier)
        .expect("fits");
}

#[tokio::test]
async fn outbound_foreign_includes_members_added_through_the_otel_api() {
    let attached = SandboxContext::new(sandbox("ctx-outbound"))
        .with_foreign(prodbox_core::plumbing::codec::foreign_members(["userId=7"]))
        .attach_to(&Context::new());

    let (before, after, key) = async {
        let before = SandboxContext::outbound_foreign(&Context::current()).into_owned();
        let cx = Context::current_with_baggage([
            KeyValue::new("tenant", "acme"),
            KeyValue::new("note", "a b,c"),
        ]);
        let _guard = cx.attach();
        let after = SandboxContext::outbound_foreign(&Context::current()).into_owned();
        (
            before,
            after,
            current().map(|s| s.key().as_str().to_owned()),
        )
    }
    .in_context(attached)
    .await;

    assert_eq!(before.as_str(), "userId=7");
    // Added members follow the original ones, sorted by key, values encoded.
    assert_eq!(after.as_str(), "userId=7,note=a%20b%2Cc,tenant=acme");
    assert_eq!(after.len(), 3);
    assert_eq!(key.as_deref(), Some("ctx-outbound"));

    // What goes out on the wire: the sandbox plus those members, readable at the next hop.
    let mut carrier: Vec<(String, Vec<u8>)> = Vec::new();
    let codec = Codec::default();
    codec
        .inject(Some(&sandbox("ctx-outbound")), None, &after, &mut carrier)
        .expect("inject");
    let next = codec.extract(&carrier).expect("extract");
    assert_eq!(next.key().map(|k| k.as_str()), Some("ctx-outbound"));
    assert_eq!(
        next.foreign().as_str(),
        "userId=7,note=a%20b%2Cc,tenant=acme"
    );
}

#[test]
fn otel_baggage_set_by_the_application_is_never_a_sandbox() {
    let evil = Context::new().with_baggage([
        KeyValue::new("prodbox.sandbox", "evil"),
        KeyValue::new("prodbox.actor", "mallory"),
        KeyValue::new("userId", "7"),
    ]);
    {
        let _guard = evil.clone().attach();
        assert_eq!(current(), None);
        assert_eq!(SandboxContext::current(), None);
    }
    assert_eq!(evil.sandbox(), None);
    assert_eq!(evil.sandbox_context(), None);
    // Outbound, our namespace is never taken from OTel baggage.
    let foreign = SandboxContext::outbound_foreign(&evil);
    assert_eq!(foreign.as_str(), "userId=7");

    let mut carrier: Vec<(String, Vec<u8>)> = Vec::new();
    Codec::default()
        .inject(None, None, &foreign, &mut carrier)
        .expect("inject");
    let next = Codec::default().extract(&carrier).expect("extract");
    assert!(!next.claims_anything(), "{carrier:?}");
}

#[tokio::test]
async fn otel_baggage_cannot_override_the_sandbox_inside_one() {
    let sb = sandbox("ctx-real");
    let (seen, foreign, mirrored) = async {
        let cx = Context::current_with_baggage([
            KeyValue::new("prodbox.sandbox", "evil"),
            KeyValue::new("tenant", "acme"),
        ]);
        let _guard = cx.attach();
        let cx = Context::current();
        (
            current(),
            SandboxContext::outbound_foreign(&cx).into_owned(),
            baggage_value(&cx, "prodbox.sandbox"),
        )
    }
    .in_sandbox(sb.clone())
    .await;
    assert_eq!(seen, Some(sb));
    assert_eq!(foreign.as_str(), "tenant=acme");
    // The application did overwrite its own OTel view; prodbox does not read it back.
    assert_eq!(mirrored.as_deref(), Some("evil"));
}

/// `outbound_foreign` decides whether the application changed the baggage by comparing the
/// address of the baggage it wrote with the current one. Once the attached context is dropped,
/// that address can be reused by new baggage, and members the application added are then
/// silently dropped from outbound calls.
#[test]
fn outbound_foreign_sees_added_members_after_the_attached_context_is_dropped() {
    // Control: with the attached context still alive, the added members are seen.
    let attached = Context::new().with_sandbox(sandbox("ctx-aba"));
    let added = attached.with_baggage([KeyValue::new("first", "1")]);
    let cx = added.with_baggage([KeyValue::new("first", "1"), KeyValue::new("second", "2")]);
    assert_eq!(
        SandboxContext::outbound_foreign(&cx).as_str(),
        "first=1,second=2"
    );
    drop((attached, added, cx));

    let mut lost = Vec::new();
    for round in 0..50 {
        let added = {
            let attached = Context::new().with_sandbox(sandbox("ctx-aba"));
            attached.with_baggage([KeyValue::new("first", "1")])
        };
        // `attached` and the baggage it mirrored into are gone; add another member.
        let cx = added.with_baggage([KeyValue::new("first", "1"), KeyValue::new("second", "2")]);
        let foreign = SandboxContext::outbound_foreign(&cx);
        if foreign.as_str() != "first=1,second=2" {
            lost.push(format!("round {round}: {:?}", foreign.as_str()));
        }
    }
    assert!(lost.is_empty(), "{}", lost.join("\n"));
}

/// The codec treats `Prodbox.Sandbox` as ours (refusing it as non-canonical); the OTel bridge
/// filters our namespace case-sensitively, so such a member set through the OTel API is sent
/// onward and makes the next hop refuse (or, when lenient, strip) the sandboxed call.
#[tokio::test]
async fn outbound_foreign_never_carries_our_namespace_in_another_case() {
    let sb = sandbox("ctx-case");
    let foreign = async {
        let cx = Context::current_with_baggage([
            KeyValue::new("Prodbox.Sandbox", "evil"),
            KeyValue::new("tenant", "acme"),
        ]);
        SandboxContext::outbound_foreign(&cx).into_owned()
    }
    .in_sandbox(sb.clone())
    .await;

    let mut carrier: Vec<(String, Vec<u8>)> = Vec::new();
    Codec::default()
        .inject(Some(&sb), None, &foreign, &mut carrier)
        .expect("inject");
    let next = Codec::default().extract(&carrier);
    assert!(
        next.as_ref()
            .is_ok_and(|x| x.key().map(|k| k.as_str()) == Some("ctx-case")),
        "outbound foreign {:?}; next hop reads {next:?}",
        foreign.as_str()
    );
}
