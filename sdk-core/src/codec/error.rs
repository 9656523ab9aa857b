//! Why baggage is refused: [`BaggageError`], and the stable names audit events and metrics use.

use super::InvalidHeader;
use crate::sandbox::{KeyError, LabelError};

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
