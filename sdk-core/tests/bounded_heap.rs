//! The heap under a flood of distinct sandbox keys (issue #8), measured with a counting global
//! allocator (live bytes = bytes allocated - bytes freed; exact, unlike RSS). The codec keeps a
//! private cache of recently extracted sandboxes (`codec/interned.rs`, 1,024 slots) and the
//! guardrails a map of tracked sandboxes: neither is visible through the API, so their bound is
//! checked here as heap growth.
//!
//! One test only: the allocator counts every thread of the process, and tests of one binary run
//! in parallel.

use std::time::Duration;

use prodbox_core::directory::MemoryDirectory;
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Admission, Codec, Guardrails, Ingress, SandboxKey, TrustPolicy};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes, net of everything freed, since `region` started.
fn live(region: &Region<'_, std::alloc::System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

fn baggage(i: usize) -> Vec<(String, Vec<u8>)> {
    vec![(
        "baggage".to_owned(),
        format!("prodbox.sandbox=flood-{i},prodbox.actor=user-{i},userId={i}").into_bytes(),
    )]
}

/// Runs `step` for `from..to` and returns the live heap growth over the run.
fn growth(from: usize, to: usize, mut step: impl FnMut(usize)) -> isize {
    let region = Region::new(GLOBAL);
    for i in from..to {
        step(i);
    }
    live(&region)
}

const KIB: isize = 1024;

#[test]
fn per_sandbox_heap_stays_bounded_under_a_flood_of_keys() {
    // 1. The codec: every extraction of a new sandbox may enter the cache (1,024 slots) and
    //    evict another. Past the first few thousand keys, the heap stops growing.
    let codec = Codec::default();
    let extract = |i: usize| {
        let extracted = codec.extract(&baggage(i)).expect("valid baggage");
        assert!(extracted.key().is_some());
    };
    let warm = growth(0, 5_000, extract);
    let flood = growth(5_000, 105_000, extract);
    println!("codec: {warm} B live after 5,000 keys, then {flood} B over 100,000 more");
    // A cached sandbox here is about 200 bytes (key, actor, the shared record).
    assert!(warm < 512 * KIB, "the warm cache holds {warm} B");
    assert!(
        flood < 64 * KIB,
        "100,000 more sandboxes grew the heap by {flood} B (unbounded would be > 5 MB)"
    );

    // 2. An ingress: internal hop, a directory that allows unknown sandboxes, guardrails
    //    tracking at most 1,000 sandboxes.
    let guardrails = Guardrails::builder()
        .max_concurrent(8)
        .max_tracked(1_000)
        .circuit_breaker(3, Duration::from_secs(60))
        .build();
    let ingress = Ingress::new(TrustPolicy::accept())
        .directory(MemoryDirectory::new())
        .unknown_sandboxes(UnknownSandbox::Allow)
        .guardrails(guardrails.clone());
    let admit = |i: usize| match ingress.admit(&baggage(i), None) {
        Admission::Sandboxed { permit, .. } => drop(permit),
        other => panic!("flood-{i}: {other:?}"),
    };
    let warm = growth(200_000, 205_000, admit);
    let flood = growth(205_000, 305_000, admit);
    println!("ingress: {warm} B live after 5,000 keys, then {flood} B over 100,000 more");
    assert!(guardrails.tracked() <= 1_000);
    assert!(warm < 1024 * KIB, "{warm} B");
    // One step of about 50 KB may fall in this window (measured in 10,000-key steps it is a
    // single jump, the size of the guardrails' hash table resizing once); unbounded state
    // would be megabytes.
    assert!(
        flood < 128 * KIB,
        "100,000 more sandboxes grew the heap by {flood} B"
    );

    // 3. Circuit breakers of one sandbox: at most 256 destinations kept.
    let sandbox: SandboxKey = "breakers".parse().expect("a valid key");
    let call = |i: usize| {
        guardrails
            .outbound(
                &sandbox,
                &format!("http://destination-{i}.example:8080/path"),
            )
            .expect("closed")
            .failure();
    };
    let warm = growth(0, 1_000, call);
    let flood = growth(1_000, 101_000, call);
    println!("breakers: {warm} B live after 1,000 destinations, then {flood} B over 100,000 more");
    assert!(warm < 256 * KIB, "{warm} B");
    assert!(flood < 16 * KIB, "{flood} B");
}
