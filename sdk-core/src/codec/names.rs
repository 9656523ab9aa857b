//! Which names are ours, and how one member key is classified among them.
//!
//! The members we read and write, our namespace, other tools' routing keys and the legacy
//! carriers: everything an untrusted edge strips and the codec reads.

use super::{BaggageError, Codec};

/// The W3C baggage header.
pub const BAGGAGE: &str = "baggage";
/// Member that carries the sandbox key.
pub const SANDBOX: &str = "prodbox.sandbox";
/// Member that carries who started the sandbox.
pub const ACTOR: &str = "prodbox.actor";
/// Member that carries the PR or dev session of the sandbox.
pub const ORIGIN: &str = "prodbox.origin";
/// Member that carries a signed sandbox token (see [`crate::token`]).
pub const TOKEN: &str = "prodbox.token";
/// Every member name in this namespace is ours: stripped at an untrusted edge.
pub const NAMESPACE: &str = "prodbox.";
/// Legacy carrier prefixes (OpenTracing and Jaeger), each followed by a baggage key.
pub const LEGACY_PREFIXES: [&str; 2] = ["ot-baggage-", "uberctx-"];
/// Sandbox-key headers of other tools, ready to pass to [`Codec::alias`].
pub const KNOWN_ALIASES: [&str; 3] = ["sd-routing-key", "okteto-divert", "mirrord-session"];

/// What a member key is to the codec.
pub(super) enum Class {
    /// One of the members we read, in the slot it fills.
    Ours(Slot),
    /// In our namespace or another tool's routing key, but not read: still stripped at an
    /// untrusted edge.
    OtherOfOurs,
    /// Not ours: passed through untouched.
    Foreign,
}

/// The members a message may claim, one value each (the index into the claims).
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Key,
    Actor,
    Origin,
    Token,
}

impl Slot {
    pub(super) fn name(self) -> &'static str {
        match self {
            Slot::Key => SANDBOX,
            Slot::Actor => ACTOR,
            Slot::Origin => ORIGIN,
            Slot::Token => TOKEN,
        }
    }
}

impl Codec {
    /// What `key` is to this codec; one of ours spelled in another case is an error, never a
    /// foreign member, so that it cannot pass an edge unstripped.
    pub(super) fn classify(&self, key: &str) -> Result<Class, BaggageError> {
        // Our members as we write them: the common case, decided by one comparison each.
        match key {
            SANDBOX => return Ok(Class::Ours(Slot::Key)),
            ACTOR => return Ok(Class::Ours(Slot::Actor)),
            ORIGIN => return Ok(Class::Ours(Slot::Origin)),
            TOKEN => return Ok(Class::Ours(Slot::Token)),
            _ => {}
        }
        let Some(rest) = strip_prefix_ignore_case(key, NAMESPACE) else {
            // Most members are not ours: only the aliases are left to check.
            if self
                .config
                .aliases
                .iter()
                .any(|alias| key.eq_ignore_ascii_case(alias))
            {
                return Ok(Class::Ours(Slot::Key));
            }
            // Another tool's routing key that this codec does not read: an untrusted edge must
            // still strip it, or a hop configured to read it would take it as a sandbox.
            if is_known_alias(key) {
                return Ok(Class::OtherOfOurs);
            }
            return Ok(Class::Foreign);
        };
        for (canonical, slot) in [
            (SANDBOX, Slot::Key),
            (ACTOR, Slot::Actor),
            (ORIGIN, Slot::Origin),
            (TOKEN, Slot::Token),
        ] {
            if rest.eq_ignore_ascii_case(&canonical[NAMESPACE.len()..]) {
                return if key == canonical {
                    Ok(Class::Ours(slot))
                } else {
                    Err(BaggageError::NonCanonicalKey {
                        found: key.to_owned(),
                        canonical,
                    })
                };
            }
        }
        Ok(Class::OtherOfOurs)
    }

    /// One of the members the context writes (in any spelling), or an alias: never copied from
    /// elsewhere into outbound baggage. Unknown `prodbox.*` members are not: they pass through
    /// internal hops, so that newer versions can add members.
    pub(super) fn is_written_by_context(&self, key: &str) -> bool {
        matches!(self.classify(key), Ok(Class::Ours(_)) | Err(_))
    }
}

/// `s` without the ASCII `prefix` (compared case-insensitively), never slicing inside a
/// character: the prefix is ASCII, so a match ends on a character boundary.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Whether `key` is in our namespace, in any case.
pub fn in_namespace(key: &str) -> bool {
    strip_prefix_ignore_case(key, NAMESPACE).is_some()
}

/// Whether `key` is another tool's routing key ([`KNOWN_ALIASES`]), in any case.
pub(crate) fn is_known_alias(key: &str) -> bool {
    KNOWN_ALIASES
        .iter()
        .any(|alias| key.eq_ignore_ascii_case(alias))
}

/// Whether `name` is gRPC binary metadata (`*-bin`, base64): never a carrier of ours.
pub fn is_binary_metadata(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 4 && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b"-bin")
}

/// The baggage key a legacy carrier header (`ot-baggage-<key>`, `uberctx-<key>`) carries.
#[inline]
pub(super) fn legacy_key(name: &str) -> Option<&str> {
    // Most names start with neither prefix's letter: one comparison for them, inline where
    // a Kafka consumer scans every record's header names.
    let first = name.as_bytes().first().map_or(0, |b| b | 0x20);
    if first != b'o' && first != b'u' {
        return None;
    }
    legacy_key_of(name)
}

/// The same, for a name starting with a prefix's letter.
fn legacy_key_of(name: &str) -> Option<&str> {
    if is_binary_metadata(name) {
        return None;
    }
    LEGACY_PREFIXES
        .iter()
        .find_map(|prefix| strip_prefix_ignore_case(name, prefix).filter(|key| !key.is_empty()))
}
