//! What recent `baggage` headers extracted to, so that the next message carrying exactly the
//! same header (the common case: every request of one test session sends the same members)
//! costs one hash and one comparison instead of a parse.
//!
//! Only messages with a single `baggage` header of at most [`MAX_HEADER_BYTES`] and no legacy
//! carrier are remembered, once they miss twice in a row in their slot, and only successful
//! extractions: a rejected header is parsed
//! (and reported) every time. An entry belongs to one codec configuration, so a codec with
//! other aliases or limits never sees another's result. Bounded ([`Slots`]: at most [`SLOTS`]
//! times [`MAX_HEADER_BYTES`] plus the results), and never waited for.

use super::Extracted;
use crate::cache::{Keep, Slots};
use crate::hash::WordHash;

pub(super) use crate::cache::Miss;

/// Number of remembered headers.
pub(super) const SLOTS: usize = 512;

/// Longer headers are always parsed (the codec does not look them up).
pub(super) const MAX_HEADER_BYTES: usize = 512;

struct Entry {
    config: u64,
    header: Box<[u8]>,
    extracted: Extracted,
}

static MEMO: Slots<Entry, SLOTS> = Slots::new();

/// What `header` extracted to under configuration `config`, or where to remember it.
pub(super) fn get(config: u64, header: &[u8]) -> Result<Extracted, Miss> {
    MEMO.get(hash(config, header), |entry| {
        (entry.config == config && *entry.header == *header).then(|| entry.extracted.clone())
    })
}

/// Records that `header` (which missed at `miss`) extracted to `extracted` under `config`.
pub(super) fn put(miss: Miss, config: u64, header: &[u8], extracted: &Extracted) {
    MEMO.put(miss, Keep::OnSecondMiss, || Entry {
        config,
        header: header.into(),
        extracted: extracted.clone(),
    });
}

fn hash(config: u64, header: &[u8]) -> u64 {
    WordHash::new(config).bytes(header).finish()
}

#[cfg(test)]
mod tests {
    use super::super::{BaggageError, Codec};

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_remembered_header_extracts_as_when_parsed() {
        let codec = Codec::default();
        let header = "memo-a=1, prodbox.sandbox=memo-a,prodbox.actor=al%69ce;p,prodbox.token=t";
        let message = headers(&[("baggage", header)]);
        let first = codec.extract(&message).unwrap();
        // Another test's flood may evict the entry or hold its slot for a moment: extract again.
        let remembered = (0..1000).find_map(|_| {
            codec.extract(&message).unwrap();
            super::get(codec.config.id, header.as_bytes()).ok()
        });
        assert_eq!(remembered, Some(first.clone()));
        let second = codec.extract(&message).unwrap();
        assert_eq!(second, first);
        assert_eq!(second.key().map(|k| k.as_str()), Some("memo-a"));
        assert_eq!(second.actor(), Some("alice"));
        assert_eq!(second.token(), Some("t"));
        assert_eq!(second.foreign().as_str(), "memo-a=1");
    }

    #[test]
    fn codecs_configured_differently_never_share_results() {
        let header = "sd-routing-key=memo-b";
        let message = headers(&[("baggage", header)]);
        let plain = Codec::default();
        let aliased = Codec::default().alias("sd-routing-key");
        assert_eq!(plain.extract(&message).unwrap().key(), None);
        assert_eq!(
            aliased.extract(&message).unwrap().key().map(|k| k.as_str()),
            Some("memo-b")
        );
        assert_eq!(plain.extract(&message).unwrap().key(), None);

        let three = headers(&[("baggage", "memo-c=1,memo-c2=2,memo-c3=3")]);
        assert!(plain.extract(&three).is_ok());
        let strict = plain.clone().max_members(2);
        assert!(matches!(
            strict.extract(&three),
            Err(BaggageError::TooManyMembers { limit: 2 })
        ));
    }

    #[test]
    fn other_carriers_are_never_answered_from_memory() {
        let codec = Codec::default();
        let single = headers(&[("baggage", "prodbox.sandbox=memo-d")]);
        assert!(codec.extract(&single).is_ok());
        // A conflicting legacy carrier, or a second `baggage` header, beside the same one.
        for (name, value) in [
            ("ot-baggage-prodbox.sandbox", "memo-other"),
            ("baggage", "prodbox.sandbox=memo-other"),
        ] {
            let message = headers(&[("baggage", "prodbox.sandbox=memo-d"), (name, value)]);
            assert!(matches!(
                codec.extract(&message),
                Err(BaggageError::Ambiguous { .. })
            ));
        }
    }

    #[test]
    fn a_codec_told_not_to_remember_never_does() {
        let codec = Codec::default().remember_headers(false);
        let header = "prodbox.sandbox=memo-f";
        let message = headers(&[("baggage", header)]);
        for _ in 0..3 {
            assert_eq!(
                codec.extract(&message).unwrap().key().map(|k| k.as_str()),
                Some("memo-f")
            );
        }
        assert!(super::get(codec.config.id, header.as_bytes()).is_err());
    }

    #[test]
    fn rejected_headers_are_not_remembered() {
        let codec = Codec::default();
        let header = "prodbox.sandbox=Not_Valid";
        let message = headers(&[("baggage", header)]);
        assert!(codec.extract(&message).is_err());
        assert!(super::get(codec.config.id, header.as_bytes()).is_err());
        assert!(codec.extract(&message).is_err());
    }

    #[test]
    fn a_flood_of_headers_only_evicts() {
        let codec = Codec::default();
        for n in 0..(4 * super::SLOTS) {
            let header = format!("prodbox.sandbox=memo-flood-{n}");
            let got = codec.extract(&headers(&[("baggage", &header)])).unwrap();
            assert_eq!(got.key().unwrap().as_str(), format!("memo-flood-{n}"));
        }
        let long = format!(
            "prodbox.sandbox=memo-e,pad={}",
            "x".repeat(super::MAX_HEADER_BYTES)
        );
        assert!(codec.extract(&headers(&[("baggage", &long)])).is_ok());
        assert!(codec.extract(&headers(&[("baggage", &long)])).is_ok());
        assert!(super::get(codec.config.id, long.as_bytes()).is_err());
    }
}
