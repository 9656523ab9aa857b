//! Extraction's decision: one value per member of ours across every carrier, or an error.
//!
//! The limits apply across all carriers, carriers that disagree are refused rather than
//! resolved by picking one, and what was claimed is validated before it is handed back.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::foreign::ForeignBuilder;
use super::names::{Class, Slot, legacy_key};
use super::scan::{ScannedMembers, check_text, trim_ows};
use super::{BAGGAGE, BaggageError, Carrier, Codec, Extracted, ForeignMembers, interned};
use crate::sandbox::{SandboxBuilder, SandboxKey, validate_label};

impl Codec {
    /// Reads the `baggage` headers in `values` and, when `has_legacy`, the legacy carriers of
    /// `carrier`.
    pub(super) fn parse<'a, C: Carrier + ?Sized>(
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
}

/// The values of ours one message claims, each with the carrier that said it first.
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

/// A value cut to 64 bytes for an error message, on a character boundary.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
