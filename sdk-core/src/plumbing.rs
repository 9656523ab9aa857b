//! What prodbox's own crates share that is no part of prodbox-core's API: hidden from the docs,
//! with no stability promise (as tonic's `codegen`). Services never need it.

pub use crate::cache::{Keep, LocalSlots, Miss, Slots};

/// The production scope prodbox's layers enter around admitted production work.
pub mod scope {
    pub use crate::scope::{Entered, enter, entered};
}

/// The recorders of prodbox's own instruments (see [`crate::metrics`]).
pub mod metrics {
    pub use crate::metrics::record::{
        KafkaOutcome, ShadowOutcome, kafka_message, kafka_messages, redis_deleted, sandbox_label,
        schema_dropped, schema_provisioned, shadow_copy,
    };
}

/// Audit events whose count is kept by their caller: a Kafka consumer skips a forked
/// sandbox's records at hundreds of thousands a second, and counting each in
/// `prodbox.sandbox.decisions` (its attributes) cost more than the rest of the skip.
pub mod audit {
    use crate::audit::AuditEvent;

    /// Writes `event` without counting it.
    pub fn log(event: &AuditEvent<'_>) {
        event.log();
    }

    /// Counts `n` events like `event` in `prodbox.sandbox.decisions`.
    pub fn count(event: &AuditEvent<'_>, n: u64) {
        event.count(n);
    }

    /// Writes and counts `event` as one that would have been made, by a component that only
    /// observes (see `Ingress::observe_only`).
    pub fn observed(event: &AuditEvent<'_>) {
        event.emit_observed();
    }
}

/// Observe-only rollout beyond the edge: the sandbox an observe-only server would have
/// attached travels in the context as a marker of its own, which no isolation reads, so that
/// routing layers can audit where they would have sent its calls.
pub mod observe {
    use opentelemetry::Context;

    use crate::Sandbox;
    use crate::audit::Decision;
    use crate::egress::Egress;

    /// `None` once work is made production's on purpose (see [`forget`]).
    #[derive(Debug)]
    struct Observed(Option<Sandbox>);

    /// `cx` with `sandbox` as the observed one.
    pub fn attach_to(cx: &Context, sandbox: Sandbox) -> Context {
        cx.with_value(Observed(Some(sandbox)))
    }

    /// `cx` without an observed sandbox: work made production's on purpose
    /// (`in_production`, `without_sandbox`) would not be routed in acting mode either.
    pub(crate) fn forget(cx: Context) -> Context {
        match cx.get::<Observed>() {
            Some(Observed(Some(_))) => cx.with_value(Observed(None)),
            _ => cx,
        }
    }

    /// The sandbox observed for the current work, if any (never the current sandbox).
    pub fn current() -> Option<Sandbox> {
        Context::map_current(|cx| cx.get::<Observed>().and_then(|observed| observed.0.clone()))
    }

    /// Audits, as observed, the outbound decision `egress` would have made about `sandbox`.
    pub fn audit(
        egress: &Egress,
        sandbox: &Sandbox,
        decision: Decision,
        reason: &str,
        detail: &dyn std::fmt::Display,
    ) {
        egress
            .event(Some(sandbox), decision, reason, detail)
            .emit_observed();
    }
}

/// The codec's scans that prodbox's Kafka filter and egress need beside extraction.
pub mod codec {
    pub use crate::codec::Reads;
    use crate::codec::{Carrier, CarrierMut, Codec, ForeignMembers};

    /// The bytes that alone decide what `codec` extracts from `carrier`, when it remembers
    /// headers: the only `baggage` header, with no legacy carrier beside it.
    pub fn memo_key<'c, C: Carrier + ?Sized>(codec: &Codec, carrier: &'c C) -> Option<&'c [u8]> {
        codec.memo_key(carrier)
    }

    /// What `codec` has to read in headers listed as `(name, value)` (nothing, only a header
    /// it can remember, or more), found in one pass over them.
    pub fn reads_entries<'c>(
        codec: &Codec,
        entries: impl IntoIterator<Item = (&'c str, Option<&'c [u8]>)>,
    ) -> Reads<'c> {
        codec.reads_entries(entries)
    }

    /// Whether any carrier mentions something of ours, parseable or not.
    pub fn mentions_ours<C: Carrier + ?Sized>(codec: &Codec, carrier: &C) -> bool {
        codec.mentions_ours(carrier)
    }

    /// Removes what is ours from baggage that parses, leaving the rest as it is.
    pub fn strip_parsable<C: CarrierMut + ?Sized>(codec: &Codec, carrier: &mut C) -> bool {
        codec.strip_parsable(carrier)
    }

    /// Removes the legacy carriers of our members and aliases.
    pub fn strip_legacy<C: CarrierMut + ?Sized>(codec: &Codec, carrier: &mut C) -> bool {
        codec.strip_legacy(carrier)
    }

    /// Foreign members from raw list-members (each must parse; others are skipped).
    pub fn foreign_members<'a>(members: impl IntoIterator<Item = &'a str>) -> ForeignMembers {
        ForeignMembers::from_raw_members(members)
    }
}

/// The inner-service accessors every middleware has (as tower-http's): `get_ref`, `get_mut`
/// and `into_inner` over its field `inner` of type `S`, written inside its `impl` block.
#[doc(hidden)]
#[macro_export]
macro_rules! __prodbox_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub use crate::__prodbox_inner_service_accessors as inner_service_accessors;

/// Builder setters that only store their argument, each written as
/// `name(arg: Type) => field = value;` under its docs, inside the builder's `impl` block:
/// one `pub fn name(mut self, arg: Type) -> Self` each.
#[doc(hidden)]
#[macro_export]
macro_rules! __prodbox_setters {
    ($($(#[$attr:meta])* $name:ident($arg:ident: $ty:ty) => $field:ident = $value:expr;)*) => {
        $(
            $(#[$attr])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.$field = $value;
                self
            }
        )*
    };
}

pub use crate::__prodbox_setters as setters;
