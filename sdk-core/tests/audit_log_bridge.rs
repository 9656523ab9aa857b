//! Audit events reach a `log` logger when no `tracing` subscriber is set: tracing's `log`
//! feature (enabled by sqlx, and by any application that asks for it) forwards every event to
//! the `log` crate then, whatever tracing's own level filter says. A fast path that checked
//! that filter first dropped them all. (Its own binary: nothing here may set a tracing
//! dispatcher.)

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};

struct Capture(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((record.level(), record.target().to_owned()));
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn audit_events_reach_a_log_logger_when_no_tracing_subscriber_is_set() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    assert!(!tracing::dispatcher::has_been_set());
    let about = |decision, reason| {
        AuditEvent::about(None, Protocol::Kafka, Direction::Inbound, decision, reason)
    };
    about(Decision::Skipped, "untagged").emit();
    about(Decision::DeadLettered, "malformed").emit();
    let seen = CAPTURE.0.lock().unwrap().clone();
    for level in [log::Level::Info, log::Level::Warn] {
        assert!(
            seen.iter()
                .any(|(at, target)| *at == level && target == "prodbox::audit"),
            "an event at {level} reached the logger: {seen:?}"
        );
    }
}
