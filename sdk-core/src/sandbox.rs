//! The sandbox model: a validated routing key plus who started it, for what, and until when.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::limits::{MAX_KEY_LEN, MAX_LABEL_LEN};

/// Why a string is not a valid [`SandboxKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("sandbox key is empty; use 1 to 63 characters of a-z, 0-9 and '-'")]
    Empty,
    /// The key is longer than a DNS label.
    #[error("sandbox key is {len} bytes long; the limit is 63 (a DNS label)")]
    TooLong {
        /// Length of the rejected key in bytes.
        len: usize,
    },
    /// The key holds a character outside `a-z`, `0-9` and `-`.
    #[error("sandbox key has {found:?} at position {index}; only a-z, 0-9 and '-' are allowed{hint}", hint = if found.is_ascii_uppercase() { " (use lowercase)" } else { "" })]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its character position (0-based).
        index: usize,
    },
    /// The key starts with `-`.
    #[error("sandbox key must start with a letter or digit, not '-'")]
    LeadingHyphen,
    /// The key ends with `-`, which a DNS label may not.
    #[error("sandbox key must not end with '-' (it must be a valid DNS label)")]
    TrailingHyphen,
}

/// Why an actor or origin label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Longer than [`MAX_LABEL_LEN`].
    #[error("{field} is {len} bytes long; the limit is 256")]
    TooLong {
        /// `actor` or `origin`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// Holds a control character (including CR and LF).
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// `actor` or `origin`.
        field: &'static str,
    },
    /// Empty.
    #[error("{field} is empty")]
    Empty {
        /// `actor` or `origin`.
        field: &'static str,
    },
}

/// A validated sandbox routing key: 1 to 63 characters of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit.
///
/// That makes it a valid DNS label and Kafka group suffix as it stands, and a Postgres identifier
/// once `-` becomes `_` (a character keys cannot contain, so the mapping is one to one).
///
/// ```
/// use prodbox_core::SandboxKey;
///
/// let key: SandboxKey = "pr-42".parse()?;
/// assert_eq!(key.as_str(), "pr-42");
/// assert!("PR-42".parse::<SandboxKey>().is_err());
/// assert!("x'; drop table users; --".parse::<SandboxKey>().is_err());
/// # Ok::<(), prodbox_core::KeyError>(())
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct SandboxKey(Arc<str>);

/// By text, as equality.
impl std::hash::Hash for SandboxKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Keys are compared by text; copies of one key (the Kafka consumer compares a record's key
/// with the ones it tallies and caches, several times a record) by address first.
impl PartialEq for SandboxKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl SandboxKey {
    /// Validates `key`.
    pub fn new(key: &str) -> Result<Self, KeyError> {
        Self::validate(key)?;
        Ok(Self(Arc::from(key)))
    }

    /// Checks `key` without allocating.
    pub fn validate(key: &str) -> Result<(), KeyError> {
        let bytes = key.as_bytes();
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: bytes.len() });
        }
        for (index, &b) in bytes.iter().enumerate() {
            if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                // Non-ASCII: report the character, not a byte of it.
                let (index, found) = key
                    .char_indices()
                    .enumerate()
                    .find(|(_, (at, _))| *at >= index)
                    .map(|(n, (_, c))| (n, c))
                    .unwrap_or((index, char::from(b)));
                return Err(KeyError::InvalidChar { found, index });
            }
        }
        if bytes[0] == b'-' {
            return Err(KeyError::LeadingHyphen);
        }
        if bytes[bytes.len() - 1] == b'-' {
            return Err(KeyError::TrailingHyphen);
        }
        Ok(())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for zero-copy hand-offs (OpenTelemetry `StringValue`s).
    pub(crate) fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl std::str::FromStr for SandboxKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SandboxKey {
    type Error = KeyError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for SandboxKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SandboxKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for SandboxKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SandboxKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn validate_label(field: &'static str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Err(LabelError::Empty { field });
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(LabelError::TooLong {
            field,
            len: value.len(),
        });
    }
    // ASCII needs no decoding; `char::is_control` is C0, DEL and C1 (only outside ASCII).
    let control = if value.is_ascii() {
        value.bytes().any(|b| b.is_ascii_control())
    } else {
        value.chars().any(char::is_control)
    };
    if control {
        return Err(LabelError::ControlCharacter { field });
    }
    Ok(())
}

/// A sandbox: its key plus optional actor (who started it), origin (the PR or dev session it
/// belongs to) and expiry. Cloning is one reference-count increment.
///
/// ```
/// use prodbox_core::Sandbox;
///
/// let sandbox = Sandbox::builder("pr-42")?.actor("alice")?.origin("pr-42")?.build();
/// assert_eq!(sandbox.key().as_str(), "pr-42");
/// assert_eq!(sandbox.actor(), Some("alice"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Sandbox(Arc<Inner>);

struct Inner {
    key: SandboxKey,
    actor: Option<Arc<str>>,
    origin: Option<Arc<str>>,
    expires_at: Option<SystemTime>,
    created_at: Option<SystemTime>,
    /// The canonical baggage members, built once on first injection.
    encoded: OnceLock<Box<str>>,
    /// The same as an HTTP header value, built once on first injection into HTTP headers;
    /// clones share its bytes.
    #[cfg(feature = "http")]
    header: OnceLock<http::HeaderValue>,
}

impl Sandbox {
    /// A sandbox with only a key.
    pub fn new(key: SandboxKey) -> Self {
        SandboxBuilder::from_key(key).build()
    }

    /// Starts building a sandbox, validating `key`.
    pub fn builder(key: &str) -> Result<SandboxBuilder, KeyError> {
        Ok(SandboxBuilder::from_key(SandboxKey::new(key)?))
    }

    /// The routing key.
    pub fn key(&self) -> &SandboxKey {
        &self.0.key
    }

    /// Who started the sandbox.
    pub fn actor(&self) -> Option<&str> {
        self.0.actor.as_deref()
    }

    /// The PR or dev session the sandbox belongs to.
    pub fn origin(&self) -> Option<&str> {
        self.0.origin.as_deref()
    }

    /// Actor and origin as shared strings, for zero-copy hand-offs.
    pub(crate) fn shared_labels(&self) -> (Option<Arc<str>>, Option<Arc<str>>) {
        (self.0.actor.clone(), self.0.origin.clone())
    }

    /// When the sandbox stops being valid.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at
    }

    /// When this incarnation of the sandbox was created (by the directory), if known: a sandbox
    /// deleted and made again under the same key is another incarnation.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.0.created_at
    }

    /// Whether the sandbox has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.0.expires_at.is_some_and(|at| at <= now)
    }

    /// A copy with the earlier of the current and the given expiry.
    pub fn with_expiry_at_most(&self, at: SystemTime) -> Self {
        match self.0.expires_at {
            Some(current) if current <= at => self.clone(),
            _ => SandboxBuilder {
                key: self.0.key.clone(),
                actor: self.0.actor.clone(),
                origin: self.0.origin.clone(),
                expires_at: Some(at),
                created_at: self.0.created_at,
            }
            .build(),
        }
    }

    pub(crate) fn encoded_members(&self, encode: impl FnOnce(&Sandbox) -> Box<str>) -> &str {
        self.0.encoded.get_or_init(|| encode(self))
    }

    /// `encoded` (this sandbox's members) as a header value, built once.
    #[cfg(feature = "http")]
    pub(crate) fn header_value(&self, encoded: &str) -> Option<&http::HeaderValue> {
        if let Some(value) = self.0.header.get() {
            return Some(value);
        }
        let value = http::HeaderValue::try_from(encoded).ok()?;
        Some(self.0.header.get_or_init(|| value))
    }
}

impl PartialEq for Sandbox {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.key == other.0.key
                && self.0.actor == other.0.actor
                && self.0.origin == other.0.origin
                && self.0.expires_at == other.0.expires_at
                && self.0.created_at == other.0.created_at)
    }
}

impl Eq for Sandbox {}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("key", &self.0.key)
            .field("actor", &self.0.actor)
            .field("origin", &self.0.origin)
            .field("expires_at", &self.0.expires_at)
            .field("created_at", &self.0.created_at)
            .finish()
    }
}

impl fmt::Display for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.key.as_str())
    }
}

/// Builds a [`Sandbox`]; see [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    key: SandboxKey,
    actor: Option<Arc<str>>,
    origin: Option<Arc<str>>,
    expires_at: Option<SystemTime>,
    created_at: Option<SystemTime>,
}

impl SandboxBuilder {
    /// Starts from an already validated key.
    pub fn from_key(key: SandboxKey) -> Self {
        Self {
            key,
            actor: None,
            origin: None,
            expires_at: None,
            created_at: None,
        }
    }

    /// Who started the sandbox (at most 256 bytes, no control characters).
    pub fn actor(mut self, actor: &str) -> Result<Self, LabelError> {
        validate_label("actor", actor)?;
        self.actor = Some(actor.into());
        Ok(self)
    }

    /// The PR or dev session (at most 256 bytes, no control characters).
    pub fn origin(mut self, origin: &str) -> Result<Self, LabelError> {
        validate_label("origin", origin)?;
        self.origin = Some(origin.into());
        Ok(self)
    }

    crate::plumbing::setters! {
        /// When the sandbox expires.
        expires_at(at: SystemTime) => expires_at = Some(at);

        /// When this incarnation of the sandbox was created (its directory entry's creation time).
        created_at(at: SystemTime) => created_at = Some(at);
    }

    /// Finishes the sandbox.
    pub fn build(self) -> Sandbox {
        Sandbox(Arc::new(Inner {
            key: self.key,
            actor: self.actor,
            origin: self.origin,
            expires_at: self.expires_at,
            created_at: self.created_at,
            encoded: OnceLock::new(),
            #[cfg(feature = "http")]
            header: OnceLock::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equality (by address first, then text), hashing, order and `Borrow<str>` agree.
    #[test]
    fn keys_compare_hash_and_order_by_their_text() {
        use std::collections::{BTreeSet, HashMap, HashSet};
        use std::hash::BuildHasher;

        let key = |s: &str| s.parse::<SandboxKey>().expect("a key");
        let (a, a2, b) = (key("pr-1"), key("pr-1"), key("pr-2"));
        let copy = a.clone();
        assert_eq!(a, a2, "another allocation, the same text");
        assert_eq!(a, copy);
        assert_ne!(a, b);
        assert_eq!(a.cmp(&a2), std::cmp::Ordering::Equal);
        assert_eq!(a.partial_cmp(&b), Some(std::cmp::Ordering::Less));
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&a2));
        assert_eq!(
            state.hash_one(&a),
            state.hash_one("pr-1"),
            "as `str` hashes"
        );
        let map = HashMap::from([(a.clone(), 1)]);
        assert_eq!(map.get("pr-1"), Some(&1));
        assert_eq!(map.get(&a2), Some(&1));
        assert_eq!(map.get("pr-2"), None);
        let set: HashSet<SandboxKey> = [a.clone(), a2.clone(), copy].into();
        assert_eq!(set.len(), 1);
        let ordered: BTreeSet<SandboxKey> = [b, a, a2].into();
        assert_eq!(ordered.len(), 2);
        assert!(ordered.contains("pr-1"));
    }

    #[test]
    fn keys_follow_dns_label_rules() {
        for ok in ["a", "0", "pr-42", "a-b-c", &"a".repeat(63)] {
            assert_eq!(SandboxKey::validate(ok), Ok(()), "{ok}");
        }
        assert_eq!(SandboxKey::validate(""), Err(KeyError::Empty));
        assert_eq!(
            SandboxKey::validate(&"a".repeat(64)),
            Err(KeyError::TooLong { len: 64 })
        );
        assert_eq!(SandboxKey::validate("-a"), Err(KeyError::LeadingHyphen));
        assert_eq!(SandboxKey::validate("a-"), Err(KeyError::TrailingHyphen));
        assert_eq!(
            SandboxKey::validate("Pr"),
            Err(KeyError::InvalidChar {
                found: 'P',
                index: 0
            })
        );
        assert_eq!(
            SandboxKey::validate("aé"),
            Err(KeyError::InvalidChar {
                found: 'é',
                index: 1
            })
        );
        assert_eq!(
            SandboxKey::validate("a_b"),
            Err(KeyError::InvalidChar {
                found: '_',
                index: 1
            })
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = SandboxKey::new("PR-1").unwrap_err().to_string();
        assert!(err.contains("use lowercase"), "{err}");
        let err = SandboxKey::new("a;b").unwrap_err().to_string();
        assert!(err.contains("';'") && err.contains("position 1"), "{err}");
    }

    #[test]
    fn labels_reject_control_characters() {
        assert!(Sandbox::builder("a").unwrap().actor("al\r\nice").is_err());
        assert!(Sandbox::builder("a").unwrap().origin("").is_err());
        assert!(
            Sandbox::builder("a")
                .unwrap()
                .actor(&"x".repeat(257))
                .is_err()
        );
    }
}
