//! The one strict W3C `baggage` codec every prodbox protocol uses.
//!
//! # Example
//!
//! ```
//! use prodbox_core::codec::Codec;
//!
//! let codec = Codec::default();
//! let headers = vec![
//!     ("baggage".to_owned(), b"userId=42, prodbox.sandbox=pr-42".to_vec()),
//!     ("baggage".to_owned(), b"prodbox.actor=alice%40example.com;p=1".to_vec()),
//! ];
//! let extracted = codec.extract(&headers)?;
//! assert_eq!(extracted.key().map(|k| k.as_str()), Some("pr-42"));
//! assert_eq!(extracted.actor(), Some("alice@example.com"));
//! // Members that are not ours pass through untouched, in order.
//! assert_eq!(extracted.foreign().as_str(), "userId=42");
//! # Ok::<(), prodbox_core::codec::BaggageError>(())
//! ```
//!
//! # What it reads
//!
//! * every `baggage` header, combined in order; the limits (8192 bytes and 64 members by
//!   default, configurable) apply across all of them, and breaking one is an error, never a
//!   silent drop;
//! * optional whitespace around members, keys, values and properties; properties kept; `=`
//!   inside a value kept; values percent-decoded;
//! * the canonical members [`SANDBOX`], [`ACTOR`], [`ORIGIN`] and [`TOKEN`], configured
//!   [aliases](Codec::alias) for the sandbox key (such as `sd-routing-key`), and the legacy
//!   carriers `ot-baggage-<key>` and `uberctx-<key>` for any of those names.
//!
//! # What it refuses
//!
//! Control characters (CR and LF included), invalid UTF-8, a member without `=` or with a key
//! that is not an RFC 7230 token, one of our members spelled in another case
//! (`Prodbox.Sandbox`), and **ambiguity**: the same member of ours twice with different values,
//! or carriers that disagree, is an error, never resolved by picking one.
//!
//! # What it writes
//!
//! One canonical `baggage` header: our members first, then every other member in the order it
//! arrived. Values are percent-encoded, `=` included, so that decoders which truncate a value at
//! a second `=` (OpenTelemetry Rust's `BaggagePropagator` does) still read it whole, and `+`
//! included, so that decoders which read `+` as a space (OpenTelemetry Python's
//! `W3CBaggagePropagator` does) still read a plus.

mod carrier;
pub(crate) mod interned;
mod memo;

pub use carrier::{Carrier, CarrierMut, InvalidHeader};

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::limits::{DEFAULT_MAX_BAGGAGE_BYTES, DEFAULT_MAX_BAGGAGE_MEMBERS};
use crate::sandbox::{KeyError, LabelError, Sandbox, SandboxBuilder, SandboxKey, validate_label};

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

/// Characters percent-encoded in the values we write: everything outside the W3C
/// `baggage-octet` set, plus `%`, `=` and `+` (see the [module docs](self)).
const VALUE_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%')
    .add(b'=')
    .add(b'+');

/// Why a message's baggage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaggageError {
    /// The carriers together are larger than the configured limit.
    #[error("baggage is {bytes} bytes across all carriers; the limit is {limit}")]
    TooLarge {
        /// Bytes seen before giving up.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The carriers together hold more members than the configured limit.
    #[error("baggage has more than {limit} members across all carriers")]
    TooManyMembers {
        /// The configured limit.
        limit: usize,
    },
    /// A carrier is not valid UTF-8.
    #[error("{carrier} header is not valid UTF-8")]
    InvalidUtf8 {
        /// The header that held it.
        carrier: String,
    },
    /// A carrier holds a control character, such as CR or LF.
    #[error("{carrier} header contains a control character (0x{byte:02x})")]
    ControlCharacter {
        /// The header that held it.
        carrier: String,
        /// The offending byte.
        byte: u8,
    },
    /// A list-member does not follow `key=value *(;property)`.
    #[error("baggage member {index} is malformed: {reason}")]
    MalformedMember {
        /// Position of the member across all carriers (0-based).
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// One of our members spelled in another case, such as `Prodbox.Sandbox`.
    #[error("baggage member {found:?} is not canonical; write {canonical:?}")]
    NonCanonicalKey {
        /// What arrived.
        found: String,
        /// How it must be spelled.
        canonical: &'static str,
    },
    /// A value of ours is not valid percent-encoded UTF-8.
    #[error("{member} is not valid percent-encoded UTF-8")]
    InvalidPercentEncoding {
        /// The member.
        member: &'static str,
    },
    /// The sandbox key is not a valid key.
    #[error("{carrier} carries an invalid sandbox key: {source}")]
    InvalidKey {
        /// The carrier that held it.
        carrier: String,
        /// What is wrong with the key.
        source: KeyError,
    },
    /// Actor or origin is not acceptable.
    #[error(transparent)]
    InvalidLabel(#[from] LabelError),
    /// The carrier cannot hold the baggage written for it.
    #[error(transparent)]
    Unwritable(#[from] InvalidHeader),
    /// The same member of ours arrived with different values (twice, or from two carriers).
    #[error(
        "ambiguous {member}: {first_carrier} says {first:?} but {second_carrier} says {second:?}"
    )]
    Ambiguous {
        /// The member in question.
        member: &'static str,
        /// The carrier that spoke first.
        first_carrier: String,
        /// Its value (truncated to 64 bytes).
        first: String,
        /// The carrier that disagreed.
        second_carrier: String,
        /// Its value (truncated to 64 bytes).
        second: String,
    },
    /// A signed token without the sandbox key, where nothing can verify it (a Kafka message,
    /// an internal hop): it meant a sandbox, so it must not run as production.
    #[error("a sandbox token without the sandbox key cannot be verified here")]
    TokenWithoutKey,
}

impl BaggageError {
    /// A short stable name for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "baggage_too_large",
            Self::TooManyMembers { .. } => "baggage_too_many_members",
            Self::InvalidUtf8 { .. } => "baggage_invalid_utf8",
            Self::ControlCharacter { .. } => "baggage_control_character",
            Self::MalformedMember { .. } => "baggage_malformed_member",
            Self::NonCanonicalKey { .. } => "baggage_non_canonical_key",
            Self::InvalidPercentEncoding { .. } => "baggage_invalid_percent_encoding",
            Self::InvalidKey { .. } => "invalid_sandbox_key",
            Self::InvalidLabel(_) => "invalid_label",
            Self::Ambiguous { .. } => "ambiguous_sandbox",
            Self::Unwritable(_) => "baggage_unwritable",
            Self::TokenWithoutKey => "token_without_key",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    /// Tells configurations apart in the shared memo of extracted headers.
    id: u64,
    max_bytes: usize,
    max_members: usize,
    aliases: Vec<Box<str>>,
    legacy_carriers: bool,
    remember_headers: bool,
}

/// The baggage codec, configured once and cheap to clone.
#[derive(Debug, Clone)]
pub struct Codec {
    config: Arc<Config>,
}

impl Default for Codec {
    fn default() -> Self {
        Self {
            config: Arc::new(Config {
                id: next_config_id(),
                max_bytes: DEFAULT_MAX_BAGGAGE_BYTES,
                max_members: DEFAULT_MAX_BAGGAGE_MEMBERS,
                aliases: Vec::new(),
                legacy_carriers: true,
                remember_headers: true,
            }),
        }
    }
}

fn next_config_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Codec {
    fn config_mut(&mut self) -> &mut Config {
        let config = Arc::make_mut(&mut self.config);
        config.id = next_config_id();
        config
    }

    /// Caps the combined size of all carriers (default 8192 bytes).
    pub fn max_bytes(mut self, limit: usize) -> Self {
        self.config_mut().max_bytes = limit;
        self
    }

    /// Caps the combined number of members (default 64).
    pub fn max_members(mut self, limit: usize) -> Self {
        self.config_mut().max_members = limit;
        self
    }

    /// Also reads the sandbox key from baggage member (or legacy carrier) `name`, such as
    /// `sd-routing-key`. Names are matched case-insensitively. Output stays canonical.
    pub fn alias(mut self, name: &str) -> Self {
        self.config_mut()
            .aliases
            .push(name.to_ascii_lowercase().into());
        self
    }

    /// Reads (default) or ignores the `ot-baggage-*` and `uberctx-*` carriers.
    pub fn legacy_carriers(mut self, enabled: bool) -> Self {
        self.config_mut().legacy_carriers = enabled;
        self
    }

    /// Remembers (default) or not what recent `baggage` headers extracted to. A message whose
    /// only `baggage` header is one seen recently is then answered without parsing it again;
    /// the memo is bounded (512 headers of at most 512 bytes, shared by all codecs) and keeps
    /// only successful extractions, so rejected input is parsed and reported every time.
    pub fn remember_headers(mut self, enabled: bool) -> Self {
        self.config_mut().remember_headers = enabled;
        self
    }

    /// Reads the sandbox context from every carrier of one message.
    pub fn extract<C: Carrier + ?Sized>(&self, carrier: &C) -> Result<Extracted, BaggageError> {
        let cfg = &*self.config;
        // The common message: one `baggage` header, often the same as the last one.
        let memo_key = self.memo_key(carrier);
        let miss = match memo_key.map(|header| memo::get(cfg.id, header)) {
            Some(Ok(hit)) => return Ok(hit),
            Some(Err(miss)) => Some(miss),
            None => None,
        };
        let has_legacy = memo_key.is_none()
            && cfg.legacy_carriers
            && carrier.names().any(|n| legacy_key(n).is_some());
        let extracted = self.parse(carrier.get_all(BAGGAGE), carrier, has_legacy)?;
        if let (Some(miss), Some(header)) = (miss, memo_key) {
            memo::put(miss, cfg.id, header, &extracted);
        }
        Ok(extracted)
    }

    /// The bytes that alone decide what [`extract`](Self::extract) makes of `carrier`, when this
    /// codec remembers headers and they are short enough to remember: the message's only
    /// `baggage` header, with no legacy carrier beside it. A caller that remembers something it
    /// derived from a successful extraction keys it by these bytes (and by this codec's
    /// configuration); they do not cover [`mentions_ours`](Self::mentions_ours), which reads
    /// every header name.
    pub fn memo_key<'c, C: Carrier + ?Sized>(&self, carrier: &'c C) -> Option<&'c [u8]> {
        let cfg = &*self.config;
        if !cfg.remember_headers {
            return None;
        }
        let mut values = carrier.get_all(BAGGAGE);
        let header = values.next()?;
        if values.next().is_some()
            || header.len() > memo::MAX_HEADER_BYTES
            || (cfg.legacy_carriers && carrier.names().any(|n| legacy_key(n).is_some()))
        {
            return None;
        }
        Some(header)
    }

    fn parse<'a, C: Carrier + ?Sized>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
        carrier: &C,
        has_legacy: bool,
    ) -> Result<Extracted, BaggageError> {
        let cfg = &*self.config;
        let mut claims = Claims::default();
        let mut bytes = 0usize;
        let mut members = 0usize;
        let mut foreign = ForeignBuilder::default();

        for value in values {
            bytes += value.len() + usize::from(bytes > 0);
            if bytes > cfg.max_bytes {
                return Err(BaggageError::TooLarge {
                    bytes,
                    limit: cfg.max_bytes,
                });
            }
            let text = check_text(BAGGAGE, value)?;
            for scanned in ScannedMembers::new(text) {
                let index = members;
                members += 1;
                if members > cfg.max_members {
                    return Err(BaggageError::TooManyMembers {
                        limit: cfg.max_members,
                    });
                }
                let raw = scanned.raw;
                let member = scanned
                    .member
                    .map_err(|reason| BaggageError::MalformedMember { index, reason })?;
                match self.classify(member.key)? {
                    Class::Ours(slot) => {
                        claims.put(slot, member.value, scanned.value_has_percent, BAGGAGE)?;
                    }
                    Class::OtherOfOurs => {
                        claims.seen = true;
                        foreign.push(raw);
                    }
                    Class::Foreign => foreign.push(raw),
                }
            }
        }

        if has_legacy {
            // A carrier may list a name once per value; read each name once.
            let mut seen: Vec<&str> = Vec::new();
            for name in carrier.names() {
                let Some(key) = legacy_key(name) else {
                    continue;
                };
                if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                    continue;
                }
                seen.push(name);
                // Header names are case-insensitive, so the key in one is too.
                let slot = match self.classify(&key.to_ascii_lowercase())? {
                    Class::Ours(slot) => slot,
                    Class::OtherOfOurs => {
                        claims.seen = true;
                        continue;
                    }
                    Class::Foreign => continue,
                };
                for value in carrier.get_all(name) {
                    bytes += value.len() + 1;
                    if bytes > cfg.max_bytes {
                        return Err(BaggageError::TooLarge {
                            bytes,
                            limit: cfg.max_bytes,
                        });
                    }
                    let text = check_text(name, value)?;
                    let value = trim_ows(text);
                    claims.put(slot, value, value.contains('%'), name)?;
                }
            }
        }

        claims.finish(foreign.finish())
    }

    fn classify(&self, key: &str) -> Result<Class, BaggageError> {
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
    fn is_written_by_context(&self, key: &str) -> bool {
        matches!(self.classify(key), Ok(Class::Ours(_)) | Err(_))
    }

    /// Whether `key` names one of our members or aliases (stripped at an untrusted edge).
    pub fn is_ours(&self, key: &str) -> bool {
        !matches!(self.classify(key), Ok(Class::Foreign))
    }

    /// The canonical members for `sandbox`, such as
    /// `prodbox.sandbox=pr-42,prodbox.actor=alice`. Computed once per sandbox.
    pub fn encode<'a>(&self, sandbox: &'a Sandbox) -> &'a str {
        sandbox.encoded_members(|sandbox| {
            let mut out = String::with_capacity(64);
            out.push_str(SANDBOX);
            out.push('=');
            out.push_str(sandbox.key().as_str());
            for (name, value) in [(ACTOR, sandbox.actor()), (ORIGIN, sandbox.origin())] {
                if let Some(value) = value {
                    let _ = write!(out, ",{name}={}", utf8_percent_encode(value, VALUE_ENCODE));
                }
            }
            out.into_boxed_str()
        })
    }

    /// Writes `sandbox`, `token` and the `foreign` members into `carrier`'s `baggage` header,
    /// merging with what is already there: members of ours already present are replaced, other
    /// members kept in order, and `foreign` members whose key is already present are not
    /// repeated. The result is one header.
    ///
    /// Fails, leaving the carrier unchanged, when the existing header cannot be parsed or the
    /// result would break the size or member limits: sending a sandboxed message with baggage
    /// the next hop must refuse would let it run as production.
    pub fn inject<C: CarrierMut + ?Sized>(
        &self,
        sandbox: Option<&Sandbox>,
        token: Option<&str>,
        foreign: &ForeignMembers,
        carrier: &mut C,
    ) -> Result<(), BaggageError> {
        // The common call: only a sandbox, into headers without baggage. Its members are
        // encoded once per sandbox, and the carrier may reuse the value it made of them.
        if let Some(sandbox) = sandbox
            && token.is_none()
            && foreign.is_empty()
            && carrier.get_all(BAGGAGE).next().is_none()
        {
            let encoded = self.encode(sandbox);
            let members = 1
                + usize::from(sandbox.actor().is_some())
                + usize::from(sandbox.origin().is_some());
            self.check_limits(encoded.len(), members)?;
            carrier.set_sandbox_baggage(sandbox, encoded)?;
            return Ok(());
        }
        let mut out = String::new();
        let mut ours_count = 0;
        if let Some(sandbox) = sandbox {
            out.push_str(self.encode(sandbox));
            ours_count += 1
                + usize::from(sandbox.actor().is_some())
                + usize::from(sandbox.origin().is_some());
        }
        if let Some(token) = token {
            push_member(&mut out, TOKEN);
            out.push('=');
            out.extend(utf8_percent_encode(token, VALUE_ENCODE));
            ours_count += 1;
        }
        let mut existing = carrier.get_all(BAGGAGE).peekable();
        if existing.peek().is_none() {
            drop(existing);
            let mut count = ours_count;
            for raw in foreign.iter_raw() {
                if Member::parse(raw).is_ok_and(|m| !self.is_written_by_context(m.key)) {
                    push_member(&mut out, raw);
                    count += 1;
                }
            }
            if out.is_empty() {
                return Ok(());
            }
            return self.finish_inject(out, count, carrier);
        }
        let ours_written = sandbox.is_some() || token.is_some();
        let mut present: Vec<&str> = Vec::new();
        let mut count = ours_count;
        let mut index = 0;
        for value in existing {
            let text = check_text(BAGGAGE, value)?;
            for scanned in ScannedMembers::new(text) {
                let raw = scanned.raw;
                let member = scanned
                    .member
                    .map_err(|reason| BaggageError::MalformedMember { index, reason })?;
                index += 1;
                if ours_written && self.is_written_by_context(member.key) {
                    continue;
                }
                present.push(member.key);
                push_member(&mut out, raw);
                count += 1;
            }
        }
        for raw in foreign.iter_raw() {
            let Ok(member) = Member::parse(raw) else {
                continue;
            };
            // Only the context decides our members: never take them from the foreign list.
            if !self.is_written_by_context(member.key) && !present.contains(&member.key) {
                push_member(&mut out, raw);
                count += 1;
            }
        }
        self.finish_inject(out, count, carrier)
    }

    fn finish_inject<C: CarrierMut + ?Sized>(
        &self,
        out: String,
        members: usize,
        carrier: &mut C,
    ) -> Result<(), BaggageError> {
        self.check_limits(out.len(), members)?;
        carrier.set(BAGGAGE, out)?;
        Ok(())
    }

    fn check_limits(&self, bytes: usize, members: usize) -> Result<(), BaggageError> {
        if bytes > self.config.max_bytes {
            return Err(BaggageError::TooLarge {
                bytes,
                limit: self.config.max_bytes,
            });
        }
        if members > self.config.max_members {
            return Err(BaggageError::TooManyMembers {
                limit: self.config.max_members,
            });
        }
        Ok(())
    }

    /// Removes every member and carrier of ours from `carrier`, keeping all other members in
    /// order. When the baggage cannot be parsed at all, every `baggage` header is removed: what
    /// is ours cannot be told apart from the rest.
    pub fn strip<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
        self.strip_with(carrier, true)
    }

    /// Like [`strip`](Self::strip), but leaves baggage it cannot parse as it is: for egress,
    /// where the application's own headers are not ours to drop. Returns whether anything of
    /// ours was removed.
    pub fn strip_parsable<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
        self.strip_with(carrier, false)
    }

    /// Removes the legacy carriers (`ot-baggage-*`, `uberctx-*`) of our members and aliases;
    /// returns whether there were any.
    pub fn strip_legacy<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
        let legacy: Vec<String> = carrier
            .names()
            .filter(|name| {
                legacy_key(name).is_some_and(|key| self.is_ours(&key.to_ascii_lowercase()))
            })
            .map(str::to_owned)
            .collect();
        for name in &legacy {
            carrier.remove(name);
        }
        !legacy.is_empty()
    }

    fn strip_with<C: CarrierMut + ?Sized>(&self, carrier: &mut C, drop_unparsable: bool) -> bool {
        let mut kept = String::new();
        let mut changed = false;
        let mut unparsable = false;
        for value in carrier.get_all(BAGGAGE) {
            let Ok(text) = check_text(BAGGAGE, value) else {
                unparsable = true;
                break;
            };
            for Scanned { raw, member, .. } in ScannedMembers::new(text) {
                match member {
                    Ok(member) if !self.is_ours(member.key) => push_member(&mut kept, raw),
                    Ok(_) => changed = true,
                    Err(_) => unparsable = true,
                }
            }
        }
        if unparsable {
            if drop_unparsable {
                carrier.remove(BAGGAGE);
                changed = true;
            }
        } else if changed && (kept.is_empty() || carrier.set(BAGGAGE, kept).is_err()) {
            carrier.remove(BAGGAGE);
        }
        self.strip_legacy(carrier) || changed
    }

    /// Whether any carrier mentions something of ours (our namespace, an alias, a legacy
    /// carrier of ours), parseable or not: a cheap scan to tell malformed baggage that concerns
    /// a sandbox from malformed baggage that does not.
    pub fn mentions_ours<C: Carrier + ?Sized>(&self, carrier: &C) -> bool {
        let mentions = |text: &[u8], needle: &str| {
            text.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        };
        let aliases = || {
            KNOWN_ALIASES
                .iter()
                .copied()
                .chain(self.config.aliases.iter().map(|a| &**a))
        };
        for value in carrier.get_all(BAGGAGE) {
            if mentions(value, NAMESPACE) || aliases().any(|alias| mentions(value, alias)) {
                return true;
            }
        }
        carrier
            .names()
            .any(|name| legacy_key(name).is_some_and(|key| self.is_ours(&key.to_ascii_lowercase())))
    }
}

/// Whether `raw` is exactly one well-formed list-member with no control characters.
pub fn is_single_member(raw: &str) -> bool {
    !raw.contains(',') && check_text(BAGGAGE, raw.as_bytes()).is_ok() && Member::parse(raw).is_ok()
}

/// Percent-encodes a baggage value the way the codec writes it.
pub fn encode_value(value: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(value, VALUE_ENCODE)
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

fn legacy_key(name: &str) -> Option<&str> {
    // Most names start with neither prefix's letter: one comparison for them.
    let first = name.as_bytes().first().map_or(0, |b| b | 0x20);
    if (first != b'o' && first != b'u') || is_binary_metadata(name) {
        return None;
    }
    LEGACY_PREFIXES
        .iter()
        .find_map(|prefix| strip_prefix_ignore_case(name, prefix).filter(|key| !key.is_empty()))
}

fn push_member(out: &mut String, raw: &str) {
    if raw.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(raw);
}

/// Checks a carrier value for control characters and UTF-8 (tab counts as whitespace).
fn check_text<'a>(carrier: &str, value: &'a [u8]) -> Result<&'a str, BaggageError> {
    let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    // Eight bytes at a time, branch-free; the offending byte is looked up only on error.
    if has_control(value)
        && let Some(&byte) = value.iter().find(|&&b| is_control(b))
    {
        return Err(BaggageError::ControlCharacter {
            carrier: carrier.to_owned(),
            byte,
        });
    }
    std::str::from_utf8(value).map_err(|_| BaggageError::InvalidUtf8 {
        carrier: carrier.to_owned(),
    })
}

/// Whether `bytes` holds a control character other than tab: any byte below 0x20 but 0x09, or
/// 0x7f. Each 64-bit word is tested with carry-free byte arithmetic (no carry crosses a byte).
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = !HIGH;
    // The high bit of each zero byte of `x`, and of no other.
    let zero_bytes = |x: u64| !((((x & LOW7) + LOW7) | x) | LOW7);
    let word_has_control = |x: u64| {
        // Tabs become 0x29, which is not a control.
        let x = x | (zero_bytes(x ^ (ONES * 0x09)) >> 2);
        // High bit set for bytes >= 0x20 (the low seven bits plus 0x60 carry into bit 7, or
        // bit 7 was set already).
        let at_least_space = ((x & LOW7) + ONES * 0x60) | x;
        (!at_least_space & HIGH) | zero_bytes(x ^ (ONES * 0x7f)) != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut found = false;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        found |= word_has_control(u64::from_le_bytes(word));
    }
    // The tail, padded with spaces.
    let mut word = [b' '; 8];
    for (to, from) in word.iter_mut().zip(chunks.remainder()) {
        *to = *from;
    }
    found | word_has_control(u64::from_le_bytes(word))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without surrounding spaces and tabs. Byte loops rather than `char` patterns: members are
/// short, and the general-purpose searchers cost more than the scan. Both bytes are ASCII, so the
/// ends found are character boundaries.
fn trim_ows(s: &str) -> &str {
    let bytes = s.as_bytes();
    let Some(start) = bytes.iter().position(|&b| !is_ows(b)) else {
        return "";
    };
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// `s` split around the first ASCII byte `sep` (a character boundary on both sides).
#[cfg(test)]
fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let at = find_either(s.as_bytes(), sep, sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// Position of the first byte equal to `a` or `b`, eight bytes at a time (members are short:
/// `memchr`'s set-up costs more than it saves, and a byte loop branches on every byte).
fn find_either(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of each byte of `x` that is zero, and of no other (no carry crosses bytes).
    let zero_bytes = |x: u64| !((((x & LOW7) + LOW7) | x) | LOW7);
    let (a_word, b_word) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let hits = zero_bytes(word ^ a_word) | zero_bytes(word ^ b_word);
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let tail = chunks.remainder().iter().position(|&x| x == a || x == b)?;
    Some(base + tail)
}

/// The comma-separated list-members of `text`, trimmed, empty ones skipped: the plain
/// reference the tests hold [`ScannedMembers`] to.
#[cfg(test)]
fn list_members(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        loop {
            let current = rest?;
            let member = match split_once_byte(current, b',') {
                Some((member, tail)) => {
                    rest = Some(tail);
                    member
                }
                None => {
                    rest = None;
                    current
                }
            };
            let member = trim_ows(member);
            if !member.is_empty() {
                return Some(member);
            }
        }
    })
}

/// RFC 7230 `tchar`, as a table: keys are checked byte by byte on every message.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// One parsed list-member, borrowing from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key, a token.
    pub key: &'a str,
    /// The value as written (still percent-encoded), `=` included.
    pub value: &'a str,
    /// The properties after the first `;`, as written, without the leading `;`.
    pub properties: Option<&'a str>,
}

impl<'a> Member<'a> {
    /// Parses one list-member (without surrounding commas).
    pub fn parse(raw: &'a str) -> Result<Self, &'static str> {
        // The first `;` ends the pair, and the first `=` before it ends the key.
        let bytes = raw.as_bytes();
        let (eq, semicolon) = match find_either(bytes, b'=', b';') {
            Some(at) if bytes.get(at) == Some(&b'=') => {
                let after = bytes.get(at + 1..).unwrap_or_default();
                (Some(at), find_either(after, b';', b';').map(|i| at + 1 + i))
            }
            found => (None, found),
        };
        // Both separators are ASCII, so every cut below is on a character boundary.
        let pair_end = semicolon.unwrap_or(raw.len());
        let eq = eq.ok_or("missing '='")?;
        let key = trim_ows(raw.get(..eq).unwrap_or_default());
        if key.is_empty() {
            return Err("empty key");
        }
        // Branch-free: keys are almost always valid, and checked on every message.
        if !key.bytes().fold(true, |ok, b| ok & is_tchar(b)) {
            return Err("key is not a token");
        }
        Ok(Member {
            key,
            value: trim_ows(raw.get(eq + 1..pair_end).unwrap_or_default()),
            properties: semicolon.map(|at| trim_ows(raw.get(at + 1..).unwrap_or_default())),
        })
    }

    /// The value percent-decoded; invalid UTF-8 becomes U+FFFD, as the W3C spec asks.
    pub fn decoded_value(&self) -> Cow<'a, str> {
        percent_decode_str(self.value).decode_utf8_lossy()
    }
}

/// Byte classes of the one-pass member scanner.
const CLASS_TCHAR: u8 = 1;
const CLASS_SKIP: u8 = 2; // whitespace or `,`: what lies between members
const CLASS_VALUE_END: u8 = 4; // `,` or `;`
const CLASS_PERCENT: u8 = 8;

const CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if TCHAR[b] {
            class |= CLASS_TCHAR;
        }
        if c == b' ' || c == b'\t' || c == b',' {
            class |= CLASS_SKIP;
        }
        if c == b',' || c == b';' {
            class |= CLASS_VALUE_END;
        }
        if c == b'%' {
            class |= CLASS_PERCENT;
        }
        table[b] = class;
        b += 1;
    }
    table
};

fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// One list-member as [`ScannedMembers`] found it.
struct Scanned<'a> {
    /// The member as written, without surrounding whitespace.
    raw: &'a str,
    member: Result<Member<'a>, &'static str>,
    /// Whether the value holds a `%` (and so may need decoding).
    value_has_percent: bool,
}

/// The members of one header in a single pass over its bytes: the same members, and the same
/// results, as [`list_members`] followed by [`Member::parse`] (a property test holds the two
/// together), without searching each member three times. A member that is not a plain
/// `token OWS "=" ...` is handed to [`Member::parse`] for its error.
struct ScannedMembers<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> ScannedMembers<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }
}

impl<'a> Iterator for ScannedMembers<'a> {
    type Item = Scanned<'a>;

    fn next(&mut self) -> Option<Scanned<'a>> {
        // Index loops guarded by `i < n`: the compiler drops the bounds checks. Every cut is
        // next to an ASCII byte, so on a character boundary.
        let text = self.text;
        let bytes = text.as_bytes();
        let n = bytes.len();
        let slice = |from: usize, to: usize| text.get(from..to).unwrap_or_default();
        let mut i = self.pos;
        while i < n && class(bytes[i]) & CLASS_SKIP != 0 {
            i += 1;
        }
        if i >= n {
            self.pos = n;
            return None;
        }
        let start = i;
        while i < n && class(bytes[i]) & CLASS_TCHAR != 0 {
            i += 1;
        }
        let key_end = i;
        while i < n && is_ows(bytes[i]) {
            i += 1;
        }
        if key_end == start || i >= n || bytes[i] != b'=' {
            // Not `token OWS "="`: an error, worded by the general parser.
            while i < n && bytes[i] != b',' {
                i += 1;
            }
            self.pos = i + 1;
            let raw = trim_ows(slice(start, i));
            return Some(Scanned {
                raw,
                member: Member::parse(raw),
                value_has_percent: raw.contains('%'),
            });
        }
        i += 1;
        while i < n && is_ows(bytes[i]) {
            i += 1;
        }
        let value_start = i;
        let mut seen = 0;
        while i < n {
            let class = class(bytes[i]);
            if class & CLASS_VALUE_END != 0 {
                break;
            }
            seen |= class;
            i += 1;
        }
        let mut value_end = i;
        while value_end > value_start && is_ows(bytes[value_end - 1]) {
            value_end -= 1;
        }
        let mut properties = None;
        if i < n && bytes[i] == b';' {
            i += 1;
            let properties_start = i;
            while i < n && bytes[i] != b',' {
                i += 1;
            }
            properties = Some(trim_ows(slice(properties_start, i)));
        }
        let mut end = i;
        while end > start && is_ows(bytes[end - 1]) {
            end -= 1;
        }
        // `i` is at the `,` that ends the member, or at the end of the text.
        self.pos = i + 1;
        Some(Scanned {
            raw: slice(start, end),
            member: Ok(Member {
                key: slice(start, key_end),
                value: slice(value_start, value_end),
                properties,
            }),
            value_has_percent: seen & CLASS_PERCENT != 0,
        })
    }
}

/// Baggage members that are not ours, in arrival order, exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignMembers {
    /// `None` when empty, so the common case allocates nothing.
    raw: Option<Arc<str>>,
    count: usize,
}

impl ForeignMembers {
    /// The members joined with `,`, as they would be written.
    pub fn as_str(&self) -> &str {
        self.raw.as_deref().unwrap_or_default()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each member as written.
    pub fn iter_raw(&self) -> impl Iterator<Item = &str> {
        self.as_str().split(',').filter(|m| !m.is_empty())
    }

    /// Members from raw list-members (each must parse; others are skipped).
    pub fn from_raw_members<'a>(members: impl IntoIterator<Item = &'a str>) -> Self {
        let mut raw = String::new();
        let mut count = 0;
        for member in members.into_iter().map(trim_ows) {
            if Member::parse(member).is_ok() {
                push_member(&mut raw, member);
                count += 1;
            }
        }
        Self::new(raw, count)
    }

    fn new(raw: String, count: usize) -> Self {
        Self {
            raw: (!raw.is_empty()).then(|| Arc::from(raw)),
            count,
        }
    }

    /// These members without any that `codec` counts as ours (our namespace in any case, its
    /// aliases, other tools' known routing keys): what an untrusted edge may pass on.
    pub fn without_ours(&self, codec: &Codec) -> Self {
        let ours = |raw: &str| Member::parse(raw).map_or(true, |m| codec.is_ours(m.key));
        if !self.iter_raw().any(ours) {
            return self.clone();
        }
        Self::from_raw_members(self.iter_raw().filter(|raw| !ours(raw)))
    }

    /// Each member, parsed.
    pub fn iter(&self) -> impl Iterator<Item = Member<'_>> {
        self.iter_raw().filter_map(|raw| Member::parse(raw).ok())
    }
}

/// Collects the foreign members of one message: the common single member is shared straight
/// from the header text, without joining it into a string first.
#[derive(Default)]
struct ForeignBuilder<'a> {
    first: &'a str,
    joined: String,
    count: usize,
}

impl<'a> ForeignBuilder<'a> {
    fn push(&mut self, raw: &'a str) {
        match self.count {
            0 => self.first = raw,
            1 => {
                push_member(&mut self.joined, self.first);
                push_member(&mut self.joined, raw);
            }
            _ => push_member(&mut self.joined, raw),
        }
        self.count += 1;
    }

    fn finish(self) -> ForeignMembers {
        let raw: Option<Arc<str>> = match self.count {
            0 => None,
            1 => Some(Arc::from(self.first)),
            _ => Some(Arc::from(self.joined)),
        };
        ForeignMembers {
            raw: raw.filter(|raw| !raw.is_empty()),
            count: self.count,
        }
    }
}

enum Class {
    Ours(Slot),
    OtherOfOurs,
    Foreign,
}

#[derive(Clone, Copy)]
enum Slot {
    Key,
    Actor,
    Origin,
    Token,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Key => SANDBOX,
            Slot::Actor => ACTOR,
            Slot::Origin => ORIGIN,
            Slot::Token => TOKEN,
        }
    }
}

#[derive(Default)]
struct Claims<'a> {
    seen: bool,
    values: [Option<(Cow<'a, str>, &'a str)>; 4],
}

impl<'a> Claims<'a> {
    fn put(
        &mut self,
        slot: Slot,
        encoded: &'a str,
        has_percent: bool,
        carrier: &'a str,
    ) -> Result<(), BaggageError> {
        self.seen = true;
        // Most values need no decoding: skip the decoder (and its second UTF-8 check).
        let value = if has_percent {
            percent_decode_str(encoded).decode_utf8().map_err(|_| {
                BaggageError::InvalidPercentEncoding {
                    member: slot.name(),
                }
            })?
        } else {
            Cow::Borrowed(encoded)
        };
        let entry = &mut self.values[slot as usize];
        match entry {
            None => *entry = Some((value, carrier)),
            Some((first, first_carrier)) if *first != value => {
                return Err(BaggageError::Ambiguous {
                    member: slot.name(),
                    first_carrier: (*first_carrier).to_owned(),
                    first: truncate(first),
                    second_carrier: carrier.to_owned(),
                    second: truncate(&value),
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn finish(self, foreign: ForeignMembers) -> Result<Extracted, BaggageError> {
        let [key, actor, origin, token] = self.values;
        let actor = actor.as_ref().map(|(value, _)| &**value);
        let origin = origin.as_ref().map(|(value, _)| &**value);
        let validate_labels = || {
            for (field, value) in [("actor", actor), ("origin", origin)] {
                if let Some(value) = value {
                    validate_label(field, value)?;
                }
            }
            Ok::<_, BaggageError>(())
        };
        let sandbox = match &key {
            None => {
                validate_labels()?;
                None
            }
            // A sandbox seen before is taken from the cache: the same strings validate the same.
            Some((value, carrier)) => Some(interned::sandbox(
                interned::Fields {
                    key: value,
                    actor,
                    origin,
                    expires_at: None,
                    created_at: None,
                },
                || {
                    validate_labels()?;
                    let key =
                        SandboxKey::new(value).map_err(|source| BaggageError::InvalidKey {
                            carrier: (*carrier).to_owned(),
                            source,
                        })?;
                    let mut builder = SandboxBuilder::from_key(key);
                    if let Some(actor) = actor {
                        builder = builder.actor(actor)?;
                    }
                    if let Some(origin) = origin {
                        builder = builder.origin(origin)?;
                    }
                    Ok::<_, BaggageError>(builder.build())
                },
            )?),
        };
        Ok(Extracted {
            claimed: self.seen,
            sandbox,
            token: token.map(|(v, _)| v.into_owned().into_boxed_str()),
            foreign,
        })
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What [`Codec::extract`] found: the claimed sandbox (not yet trusted) and everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    claimed: bool,
    sandbox: Option<Sandbox>,
    token: Option<Box<str>>,
    foreign: ForeignMembers,
}

impl Extracted {
    /// Whether any member or carrier of ours was present, valid or not yet verified.
    pub fn claims_anything(&self) -> bool {
        self.claimed
    }

    /// The claimed sandbox key.
    pub fn key(&self) -> Option<&SandboxKey> {
        self.sandbox.as_ref().map(Sandbox::key)
    }

    /// The claimed actor (read only alongside a key).
    pub fn actor(&self) -> Option<&str> {
        self.sandbox.as_ref().and_then(Sandbox::actor)
    }

    /// The claimed origin (read only alongside a key).
    pub fn origin(&self) -> Option<&str> {
        self.sandbox.as_ref().and_then(Sandbox::origin)
    }

    /// The signed token, if one arrived.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Members that are not ours.
    pub fn foreign(&self) -> &ForeignMembers {
        &self.foreign
    }

    /// The claimed sandbox, as sent (unverified): key, actor and origin.
    pub fn sandbox(&self) -> Option<Sandbox> {
        self.sandbox.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_members(text: &str) -> Vec<(&str, Result<Member<'_>, &'static str>)> {
        list_members(text)
            .map(|raw| (raw, Member::parse(raw)))
            .collect()
    }

    fn scanned_members(text: &str) -> Vec<(&str, Result<Member<'_>, &'static str>)> {
        ScannedMembers::new(text)
            .map(|scanned| {
                let has_percent = scanned
                    .member
                    .as_ref()
                    .is_ok_and(|member| member.value.contains('%'));
                if scanned.member.is_ok() {
                    assert_eq!(scanned.value_has_percent, has_percent, "in {text:?}");
                }
                (scanned.raw, scanned.member)
            })
            .collect()
    }

    #[test]
    fn has_control_agrees_with_a_byte_loop() {
        let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        for len in 0..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(
                        has_control(&bytes),
                        is_control(byte),
                        "{byte:#x} at {at} of {len}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn has_control_agrees_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
            prop_assert_eq!(has_control(&bytes), bytes.iter().any(|&b| is_control(b)));
        }

        /// The one-pass scanner finds the same members, with the same results, as splitting on
        /// `,` and parsing each member: separators, whitespace and odd bytes everywhere.
        #[test]
        fn the_scanner_agrees_with_split_and_parse(
            text in proptest::string::string_regex("[a-c=;,% \t.é\\x00-]{0,40}").unwrap_or_else(|e| panic!("{e}"))
        ) {
            prop_assert_eq!(scanned_members(&text), reference_members(&text));
        }
    }

    #[test]
    fn the_scanner_agrees_on_the_usual_headers() {
        for text in [
            "",
            ",,, ,",
            "prodbox.sandbox=pr-42,prodbox.actor=alice,prodbox.origin=pr-123",
            " a = b ; p = 1 ; q , c=d=e ,  ",
            "k=v;",
            "k =v",
            "k= v%20x ;p",
            "=v",
            "k",
            "k;x=1",
            "k v=1",
            "k\u{e9}=1",
            "a=1,\tb=2\t,c=%zz",
        ] {
            assert_eq!(scanned_members(text), reference_members(text), "{text:?}");
        }
    }

    #[test]
    fn find_either_agrees_with_a_byte_loop() {
        let text = "ab=c;d,e%f\u{e9}=\u{80}x;;,,%\u{7f}\u{100}=";
        for start in 0..text.len() {
            let bytes = &text.as_bytes()[start..];
            for (a, b) in [
                (b'=', b';'),
                (b',', b','),
                (b'%', b'%'),
                (0xc3, 0x80),
                (0, 0xff),
            ] {
                let naive = bytes.iter().position(|&x| x == a || x == b);
                assert_eq!(find_either(bytes, a, b), naive, "{start} {a} {b}");
            }
        }
    }

    #[test]
    fn members_split_and_trim_like_str_methods() {
        let text = " a=1 ,\t,b = 2;p ; q,, c=3=4 ;x=y,";
        let ours: Vec<&str> = list_members(text).collect();
        let std: Vec<&str> = text
            .split(',')
            .map(|m| m.trim_matches([' ', '\t']))
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(ours, std);
        let member = Member::parse("b = 2;p ; q").unwrap();
        assert_eq!(
            (member.key, member.value, member.properties),
            ("b", "2", Some("p ; q"))
        );
        let member = Member::parse("c=3=4 ;x=y").unwrap();
        assert_eq!(
            (member.key, member.value, member.properties),
            ("c", "3=4", Some("x=y"))
        );
        assert_eq!(Member::parse("a;b=c"), Err("missing '='"));
        assert_eq!(Member::parse(" =c"), Err("empty key"));
        assert_eq!(Member::parse("a b=c"), Err("key is not a token"));
    }
}
