//! Whether a sandbox may run now, by its directory entry: the one check every way in (the
//! HTTP and gRPC [`Ingress`](crate::Ingress), the Kafka filter) makes of the directory.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Directory, SandboxEntry};
use crate::sandbox::Sandbox;

/// What the directory says of a sandbox at a given time.
#[derive(Debug, Clone)]
pub enum Standing {
    /// It may run, as `sandbox`: completed from its entry (actor, origin, incarnation, the
    /// earlier expiry), or as it came when the directory does not know it (`entry` is `None`;
    /// whether that is allowed is the caller's policy).
    Active {
        /// The sandbox to run as.
        sandbox: Sandbox,
        /// Its entry.
        entry: Option<Arc<SandboxEntry>>,
    },
    /// Its kill switch is on.
    Disabled,
    /// Its entry or the sandbox itself has expired.
    Expired,
}

impl Standing {
    /// The standing of `sandbox` in `directory` at `now`.
    pub fn of(directory: &dyn Directory, sandbox: Sandbox, now: SystemTime) -> Self {
        let entry = directory.get(sandbox.key());
        let sandbox = match &entry {
            Some(entry) if entry.disabled => return Self::Disabled,
            Some(entry) if entry.is_expired_at(now) => return Self::Expired,
            Some(entry) => entry.complete(&sandbox),
            None => sandbox,
        };
        // Completion keeps the earlier expiry, so this covers the message's own as well.
        if sandbox.is_expired_at(now) {
            return Self::Expired;
        }
        Self::Active { sandbox, entry }
    }

    /// The audit reason of a standing that refuses the sandbox.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Active { .. } => None,
            Self::Disabled => Some("sandbox_disabled"),
            Self::Expired => Some("sandbox_expired"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::directory::MemoryDirectory;

    #[test]
    fn disabled_and_expired_entries_and_expired_sandboxes_may_not_run() {
        let directory = MemoryDirectory::new();
        let now = SystemTime::now();
        let key = |k: &str| k.parse().unwrap_or_else(|e| panic!("{e}"));
        directory.upsert(SandboxEntry::new(key("st-off")).disabled(true));
        directory.upsert(SandboxEntry::new(key("st-old")).expires_at(now));
        directory.upsert(SandboxEntry::new(key("st-on")).expires_at(now + Duration::from_secs(60)));
        let standing = |k: &str| Standing::of(&directory, Sandbox::new(key(k)), now);
        assert!(matches!(standing("st-off"), Standing::Disabled));
        assert!(matches!(standing("st-old"), Standing::Expired));
        match standing("st-on") {
            Standing::Active { sandbox, entry } => {
                assert!(entry.is_some());
                // Completed from the entry: its expiry now travels with the sandbox.
                assert_eq!(sandbox.expires_at(), Some(now + Duration::from_secs(60)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            standing("st-unknown"),
            Standing::Active { entry: None, .. }
        ));
        let stale = Sandbox::builder("st-unknown")
            .unwrap_or_else(|e| panic!("{e}"))
            .expires_at(now)
            .build();
        assert!(matches!(
            Standing::of(&directory, stale, now),
            Standing::Expired
        ));
    }
}
