//! Every limit and default prodbox applies, in one place.

use std::time::Duration;

/// Longest sandbox key: the length of a DNS label.
pub const MAX_KEY_LEN: usize = 63;

/// Longest actor or origin, in bytes, after percent-decoding.
pub const MAX_LABEL_LEN: usize = 256;

/// Largest combined size of all `baggage` carriers of one message (W3C: at least 8192 bytes).
pub const DEFAULT_MAX_BAGGAGE_BYTES: usize = 8192;

/// Most list-members across all `baggage` carriers of one message (W3C: at least 64).
pub const DEFAULT_MAX_BAGGAGE_MEMBERS: usize = 64;

/// Longest signed token accepted, in bytes; anything longer is rejected before any crypto runs.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Clock skew tolerated when checking a token's expiry and issue time.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);

/// The longest lifetime (expiry minus issue time) a verifier accepts in a token, and the longest
/// `TokenKeys::mint` issues: 24 hours. A stolen token is good for at most this long; mint a
/// new one for a longer session.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How often a [`FileDirectory`](crate::directory::FileDirectory) looks for changes.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Sandboxes whose guardrail state is kept at once; past it, idle ones are evicted and, when
/// none is idle, new sandboxes are throttled (a flood of keys cannot grow memory without bound).
pub const DEFAULT_MAX_TRACKED_SANDBOXES: usize = 10_000;
