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
mod claims;
mod error;
mod extracted;
mod foreign;
pub(crate) mod interned;
mod member;
mod memo;
mod names;
/// What [`Codec::extract`] has to read in a carrier (plumbing for prodbox's Kafka filter:
/// `prodbox_core::plumbing::codec::reads_entries`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads<'c> {
    /// No `baggage` header and no legacy carrier: nothing of anybody's context.
    Nothing,
    /// Only this `baggage` header, short enough for the codec's memory of headers (when the
    /// codec remembers headers): the bytes that alone decide what `extract` makes of the
    /// carrier. A caller that remembers something derived from a successful extraction keys
    /// it by them (and by this codec's configuration); they do not cover
    /// [`Codec::mentions_ours`], which reads every header name.
    Remembered(&'c [u8]),
    /// Anything else: several `baggage` headers, a long one, a legacy carrier (`legacy`), or
    /// a codec that remembers nothing.
    Other {
        /// Whether a legacy carrier is present.
        legacy: bool,
    },
}

#[cfg(test)]
mod reference;
mod scan;

pub use carrier::{Carrier, CarrierMut, InvalidHeader};
pub use error::BaggageError;
pub use extracted::Extracted;
pub use foreign::ForeignMembers;
pub use member::Member;
pub(crate) use names::is_known_alias;
pub use names::{
    ACTOR, BAGGAGE, KNOWN_ALIASES, LEGACY_PREFIXES, NAMESPACE, ORIGIN, SANDBOX, TOKEN,
    in_namespace, is_binary_metadata,
};

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::limits::{DEFAULT_MAX_BAGGAGE_BYTES, DEFAULT_MAX_BAGGAGE_MEMBERS};
use crate::sandbox::Sandbox;
use member::push_member;
use names::{Class, legacy_key};
use scan::{Scanned, ScannedMembers, check_text};

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
        let (memo_key, has_legacy) = match self.reads(carrier) {
            // The other common message: nothing to read at all.
            Reads::Nothing => return Ok(Extracted::nothing()),
            Reads::Remembered(header) => (Some(header), false),
            Reads::Other { legacy } => (None, legacy),
        };
        // The common message: one `baggage` header, often the same as the last one.
        let miss = match memo_key.map(|header| memo::get(cfg.id, header)) {
            Some(Ok(hit)) => return Ok(hit),
            Some(Err(miss)) => Some(miss),
            None => None,
        };
        let extracted = self.parse(carrier.get_all(BAGGAGE), carrier, has_legacy)?;
        if let (Some(miss), Some(header)) = (miss, memo_key) {
            memo::put(miss, cfg.id, header, &extracted);
        }
        Ok(extracted)
    }

    /// What [`extract`](Self::extract) has to read in `carrier`, found in one pass over its
    /// `baggage` values and one over its names.
    pub(crate) fn reads<'c, C: Carrier + ?Sized>(&self, carrier: &'c C) -> Reads<'c> {
        let mut values = carrier.get_all(BAGGAGE);
        let first = values.next();
        let more = first.is_some() && values.next().is_some();
        let legacy =
            self.config.legacy_carriers && carrier.names().any(|n| legacy_key(n).is_some());
        self.reads_found(first, more, legacy)
    }

    /// The same for headers listed as `(name, value)`, in one pass over them: what a Kafka
    /// consumer reads per message.
    pub(crate) fn reads_entries<'c>(
        &self,
        entries: impl IntoIterator<Item = (&'c str, Option<&'c [u8]>)>,
    ) -> Reads<'c> {
        let legacy_carriers = self.config.legacy_carriers;
        let (mut first, mut more, mut legacy) = (None, false, false);
        for (name, value) in entries {
            // As `get_all` compares names: the exact name first, as producers write it.
            if name == BAGGAGE || name.eq_ignore_ascii_case(BAGGAGE) {
                if let Some(value) = value {
                    more |= first.is_some();
                    first = first.or(Some(value));
                }
            } else if legacy_carriers && !legacy {
                legacy = legacy_key(name).is_some();
            }
        }
        self.reads_found(first, more, legacy)
    }

    /// What `extract` has to read, given the first `baggage` value, whether there are `more`,
    /// and whether a `legacy` carrier is present.
    fn reads_found<'c>(&self, first: Option<&'c [u8]>, more: bool, legacy: bool) -> Reads<'c> {
        match first {
            None if !legacy => Reads::Nothing,
            Some(header)
                if !legacy
                    && !more
                    && self.config.remember_headers
                    && header.len() <= memo::MAX_HEADER_BYTES =>
            {
                Reads::Remembered(header)
            }
            _ => Reads::Other { legacy },
        }
    }

    /// The bytes that alone decide what [`extract`](Self::extract) makes of `carrier`, when this
    /// codec remembers headers and they are short enough to remember: the message's only
    /// `baggage` header, with no legacy carrier beside it. A caller that remembers something it
    /// derived from a successful extraction keys it by these bytes (and by this codec's
    /// configuration); they do not cover [`mentions_ours`](Self::mentions_ours), which reads
    /// every header name.
    pub(crate) fn memo_key<'c, C: Carrier + ?Sized>(&self, carrier: &'c C) -> Option<&'c [u8]> {
        match self.reads(carrier) {
            Reads::Remembered(header) => Some(header),
            Reads::Nothing | Reads::Other { .. } => None,
        }
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
    pub(crate) fn strip_parsable<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
        self.strip_with(carrier, false)
    }

    /// Removes the legacy carriers (`ot-baggage-*`, `uberctx-*`) of our members and aliases;
    /// returns whether there were any.
    pub(crate) fn strip_legacy<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
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
    pub(crate) fn mentions_ours<C: Carrier + ?Sized>(&self, carrier: &C) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers as a Kafka record has them: a header may have a name and no value. The values
    /// are read as the codec's own list carrier reads them; every name counts.
    struct Listed<'a> {
        valued: Vec<(String, Vec<u8>)>,
        names: Vec<&'a str>,
    }

    impl<'a> Listed<'a> {
        fn new(entries: &[(&'a str, Option<&[u8]>)]) -> Self {
            let valued = entries
                .iter()
                .filter_map(|(name, value)| Some(((*name).to_owned(), (*value)?.to_vec())))
                .collect();
            let names = entries.iter().map(|(name, _)| *name).collect();
            Self { valued, names }
        }
    }

    impl Carrier for Listed<'_> {
        fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
        where
            Self: 'a,
        {
            self.valued.get_all(name)
        }

        fn names(&self) -> impl Iterator<Item = &str> {
            self.names.iter().copied()
        }
    }

    /// The one-pass read of a list of headers says what the carrier's read says, for every
    /// subset of a mix of `baggage` headers (any case, valueless, empty, at and past the
    /// memory's limit), legacy carriers (any case, valueless, empty key, binary) and others,
    /// in either order, whatever the codec's settings.
    #[test]
    fn reading_entries_in_one_pass_agrees_with_reading_the_carrier() {
        let at_limit = "k=".to_owned() + &"v".repeat(memo::MAX_HEADER_BYTES - 2);
        let past_limit = at_limit.clone() + "v";
        let headers: [(&str, Option<&str>); 13] = [
            ("baggage", Some("prodbox.sandbox=pr-42")),
            ("Baggage", Some("userId=7")),
            ("BAGGAGE", None),
            ("bAgGaGe", Some("")),
            ("baggage", Some(&at_limit)),
            ("baggage", Some(&past_limit)),
            ("ot-baggage-prodbox.sandbox", Some("pr-42")),
            ("OT-BAGGAGE-v", None),
            ("UBERCTX-userId", Some("7")),
            ("uberctx-", Some("empty key: not a carrier")),
            ("ot-baggage-x-bin", Some("binary metadata: not a carrier")),
            ("content-type", None),
            (
                "traceparent",
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ),
        ];
        let codecs = [
            Codec::default(),
            Codec::default().legacy_carriers(false),
            Codec::default().remember_headers(false),
            Codec::default()
                .legacy_carriers(false)
                .remember_headers(false),
        ];
        for mask in 0u32..1 << headers.len() {
            let mut chosen: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (name, value))| (*name, value.map(str::as_bytes)))
                .collect();
            for _ in 0..2 {
                let listed = Listed::new(&chosen);
                for (c, codec) in codecs.iter().enumerate() {
                    assert_eq!(
                        codec.reads_entries(chosen.iter().copied()),
                        codec.reads(&listed),
                        "codec {c}, {chosen:?}"
                    );
                }
                chosen.reverse();
            }
        }
    }
}
