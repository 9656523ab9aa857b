//! What each `prodbox` command does, one module per command; `main.rs` parses the arguments
//! and dispatches here.

pub(crate) mod db;
pub(crate) mod doctor;
pub(crate) mod redis;
pub(crate) mod sandbox;
pub(crate) mod token;

use std::time::{Duration, SystemTime};

// Shared because the `sandbox` and `db` listings show expiries alike.
fn when(at: Option<SystemTime>, now: SystemTime) -> String {
    let Some(at) = at else {
        return "never".to_owned();
    };
    let stamp = humantime::format_rfc3339_seconds(at);
    match at.duration_since(now) {
        Ok(left) => format!(
            "{stamp} (in {})",
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        ),
        Err(ago) => format!(
            "{stamp} ({} ago)",
            humantime::format_duration(Duration::from_secs(ago.duration().as_secs()))
        ),
    }
}
