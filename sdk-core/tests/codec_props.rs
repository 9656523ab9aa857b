//! Property tests of the baggage codec: round trips, robustness on arbitrary input, and the
//! sandbox key language.

use prodbox_core::codec::{Codec, ForeignMembers, Member};
use prodbox_core::{KeyError, Sandbox, SandboxKey};
use proptest::prelude::*;

type Headers = Vec<(String, Vec<u8>)>;

const KEY_REGEX: &str = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
/// RFC 7230 `tchar`.
const TOKEN_REGEX: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}";
/// W3C `baggage-octet`: `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
const OCTETS_REGEX: &str = "[\\x21\\x23-\\x2B\\x2D-\\x3A\\x3C-\\x5B\\x5D-\\x7E]{0,20}";

fn key_strategy() -> impl Strategy<Value = String> {
    proptest::string::string_regex(KEY_REGEX).expect("valid regex")
}

/// 1 to 40 non-control characters, biased towards the ones baggage must escape.
fn label_strategy() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => any::<char>().prop_filter("no control characters", |c| !c.is_control()),
        2 => prop::sample::select(vec!['=', ',', ';', '%', ' ', '"', '\\', '+', 'é', '✓', '😀']),
        1 => prop::char::range('a', 'z'),
    ];
    prop::collection::vec(ch, 1..40).prop_map(String::from_iter)
}

/// A foreign list-member: a token key (never in our namespace), a value of baggage octets and
/// maybe a property.
fn foreign_member_strategy() -> impl Strategy<Value = String> {
    let key = proptest::string::string_regex(TOKEN_REGEX)
        .expect("valid regex")
        .prop_filter("not in our namespace", |k| {
            !k.to_ascii_lowercase().starts_with("prodbox.")
        });
    let value = proptest::string::string_regex(OCTETS_REGEX).expect("valid regex");
    let property = prop::option::of(
        (
            proptest::string::string_regex(TOKEN_REGEX).expect("valid regex"),
            prop::option::of(proptest::string::string_regex(OCTETS_REGEX).expect("valid regex")),
        )
            .prop_map(|(k, v)| match v {
                Some(v) => format!(";{k}={v}"),
                None => format!(";{k}"),
            }),
    );
    (key, value, property).prop_map(|(k, v, p)| format!("{k}={v}{}", p.unwrap_or_default()))
}

fn sandbox_strategy() -> impl Strategy<Value = Sandbox> {
    (
        key_strategy(),
        prop::option::of(label_strategy()),
        prop::option::of(label_strategy()),
    )
        .prop_map(|(key, actor, origin)| {
            let mut builder = Sandbox::builder(&key).expect("generated keys are valid");
            if let Some(actor) = actor {
                builder = builder.actor(&actor).expect("generated actors are valid");
            }
            if let Some(origin) = origin {
                builder = builder
                    .origin(&origin)
                    .expect("generated origins are valid");
            }
            builder.build()
        })
}

/// Bytes that look like baggage often enough to reach deep into the parser.
fn baggage_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        prop::sample::select(vec![
            "prodbox.sandbox",
            "prodbox.actor",
            "prodbox.origin",
            "prodbox.token",
            "prodbox.x",
            "Prodbox.Sandbox",
            "sd-routing-key",
            "=",
            "=",
            ",",
            ",",
            ";",
            " ",
            "\t",
            "%",
            "%2D",
            "%FF",
            "%C3%A9",
            "%0A",
            "pr-1",
            "pr-2",
            "PR",
            "-",
            "k",
            "v",
            "é",
            "\r\n",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(fragment, 0..30).prop_map(|parts| parts.concat())
}

fn header_name_strategy() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "baggage",
        "baggage",
        "baggage",
        "Baggage",
        "ot-baggage-prodbox.sandbox",
        "uberctx-prodbox.sandbox",
        "uberctx-prodbox.actor",
        "ot-baggage-prodbox.origin",
        "uberctx-prodbox.token",
        "uberctx-sd-routing-key",
        "uberctx-Prodbox.Sandbox",
        "ot-baggage-userid",
        "traceparent",
    ])
    .prop_map(str::to_owned)
}

fn headers_strategy() -> impl Strategy<Value = Headers> {
    let value = prop_oneof![
        baggage_like_bytes(),
        prop::collection::vec(any::<u8>(), 0..64)
    ];
    prop::collection::vec((header_name_strategy(), value), 1..5)
}

/// What an `Ok` extraction must satisfy whatever the input.
fn check_extracted(codec: &Codec, headers: &Headers) -> Result<(), TestCaseError> {
    let Ok(x) = codec.extract(headers) else {
        return Ok(());
    };
    if let Some(key) = x.key() {
        prop_assert_eq!(SandboxKey::validate(key.as_str()), Ok(()));
        prop_assert!(x.claims_anything());
    }
    for label in [x.actor(), x.origin()].into_iter().flatten() {
        prop_assert!(!label.is_empty() && label.len() <= 256);
        prop_assert!(!label.chars().any(char::is_control), "{:?}", label);
    }
    prop_assert_eq!(x.foreign().len(), x.foreign().iter_raw().count());
    for raw in x.foreign().iter_raw() {
        let member = Member::parse(raw);
        prop_assert!(member.is_ok(), "foreign member {:?} does not parse", raw);
        if let Ok(member) = member {
            // Only members of our namespace that we do not know may pass through.
            prop_assert!(
                !codec.is_ours(member.key)
                    || member.key.to_ascii_lowercase().starts_with("prodbox."),
                "{:?}",
                raw
            );
        }
    }
    Ok(())
}

/// Writing what was read and reading it again gives the same result.
fn check_reencoding(codec: &Codec, headers: &Headers) -> Result<(), TestCaseError> {
    let Ok(x) = codec.extract(headers) else {
        return Ok(());
    };
    let mut carrier: Headers = Vec::new();
    if codec
        .inject(x.sandbox().as_ref(), x.token(), x.foreign(), &mut carrier)
        .is_ok()
    {
        let again = codec.extract(&carrier);
        prop_assert!(again.is_ok(), "{:?} from {:?}", again, carrier);
        if let Ok(again) = again {
            prop_assert_eq!(again.key(), x.key());
            // Actor and origin are written as part of a sandbox: only with a key.
            if x.key().is_some() {
                prop_assert_eq!(again.actor(), x.actor());
                prop_assert_eq!(again.origin(), x.origin());
            } else {
                prop_assert_eq!(again.actor(), None);
                prop_assert_eq!(again.origin(), None);
            }
            prop_assert_eq!(again.token(), x.token());
            prop_assert_eq!(again.foreign(), x.foreign());
        }
    }
    Ok(())
}

/// The language of `KEY_REGEX`, written out independently of the library.
fn in_key_language(s: &str) -> bool {
    let alnum = |c: &char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let chars: Vec<char> = s.chars().collect();
    match chars.as_slice() {
        [] => false,
        [only] => alnum(only),
        [first, middle @ .., last] => {
            alnum(first)
                && alnum(last)
                && middle.len() <= 61
                && middle.iter().all(|c| alnum(c) || *c == '-')
        }
    }
}

proptest! {
    #[test]
    fn inject_then_extract_round_trips(
        sandbox in sandbox_strategy(),
        token in prop::option::of(label_strategy()),
        foreign in prop::collection::vec(foreign_member_strategy(), 0..20),
    ) {
        let codec = Codec::default();
        let members = prodbox_core::plumbing::codec::foreign_members(foreign.iter().map(String::as_str));
        prop_assert_eq!(members.len(), foreign.len());

        let mut carrier: Headers = Vec::new();
        codec.inject(Some(&sandbox), token.as_deref(), &members, &mut carrier)
            .map_err(|e| TestCaseError::fail(format!("inject: {e}")))?;
        prop_assert_eq!(carrier.len(), 1);
        // Everything written is plain baggage octets and separators.
        prop_assert!(
            carrier[0].1.iter().all(|&b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\'),
            "{:?}", String::from_utf8_lossy(&carrier[0].1)
        );

        let back = codec.extract(&carrier)
            .map_err(|e| TestCaseError::fail(format!("extract: {e}")))?;
        prop_assert_eq!(back.key(), Some(sandbox.key()));
        prop_assert_eq!(back.actor(), sandbox.actor());
        prop_assert_eq!(back.origin(), sandbox.origin());
        prop_assert_eq!(back.token(), token.as_deref());
        prop_assert_eq!(back.foreign().as_str(), foreign.join(","));
        prop_assert_eq!(back.foreign().len(), foreign.len());
        prop_assert_eq!(back.sandbox(), Some(sandbox));
    }

    #[test]
    fn inject_into_existing_baggage_round_trips(
        old in sandbox_strategy(),
        sandbox in sandbox_strategy(),
        foreign in prop::collection::vec(foreign_member_strategy(), 1..20),
        split in any::<prop::sample::Index>(),
    ) {
        let codec = Codec::default();
        // The message already holds an old sandbox and the foreign members, over two headers.
        let at = split.index(foreign.len() + 1);
        let mut carrier: Headers = vec![
            ("baggage".to_owned(), {
                let mut first: Vec<String> = foreign[..at].to_vec();
                first.push(codec.encode(&old).to_owned());
                first.join(",").into_bytes()
            }),
            ("baggage".to_owned(), foreign[at..].join(" , ").into_bytes()),
        ];
        codec.inject(Some(&sandbox), None, &ForeignMembers::default(), &mut carrier)
            .map_err(|e| TestCaseError::fail(format!("inject: {e}")))?;
        prop_assert_eq!(carrier.len(), 1);
        let back = codec.extract(&carrier)
            .map_err(|e| TestCaseError::fail(format!("extract: {e}")))?;
        prop_assert_eq!(back.sandbox(), Some(sandbox));
        prop_assert_eq!(back.foreign().as_str(), foreign.join(","));

        // Stripping leaves only the foreign members.
        codec.strip(&mut carrier);
        let stripped = codec.extract(&carrier)
            .map_err(|e| TestCaseError::fail(format!("extract after strip: {e}")))?;
        prop_assert!(!stripped.claims_anything());
        prop_assert_eq!(stripped.foreign().as_str(), foreign.join(","));
    }

    #[test]
    fn extract_never_panics_on_one_header(value in prop::collection::vec(any::<u8>(), 0..256)) {
        let headers: Headers = vec![("baggage".to_owned(), value)];
        check_extracted(&Codec::default(), &headers)?;
    }

    #[test]
    fn extract_never_panics_on_several_headers(headers in headers_strategy()) {
        check_extracted(&Codec::default(), &headers)?;
        let codec = Codec::default().alias("sd-routing-key").max_members(4).max_bytes(64);
        check_extracted(&codec, &headers)?;
        let mut stripped = headers.clone();
        codec.strip(&mut stripped);
        if let Ok(x) = codec.extract(&stripped) {
            prop_assert!(!x.claims_anything(), "{:?} left {:?}", headers, stripped);
        }
    }

    #[test]
    fn reextracting_what_was_injected_gives_the_same_result(headers in headers_strategy()) {
        check_reencoding(&Codec::default(), &headers)?;
        check_reencoding(&Codec::default().alias("sd-routing-key"), &headers)?;
    }

    #[test]
    fn sandbox_key_accepts_every_string_of_the_language(key in key_strategy()) {
        prop_assert!(in_key_language(&key));
        let parsed = SandboxKey::new(&key);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", key, parsed);
        prop_assert_eq!(parsed.map(|k| k.as_str().to_owned()).ok(), Some(key));
    }

    #[test]
    fn sandbox_key_accepts_exactly_the_language(
        chars in prop::collection::vec(
            prop_oneof![
                6 => prop::sample::select(
                    "abcdefghijklmnopqrstuvwxyz0123456789-".chars().collect::<Vec<_>>()
                ),
                1 => prop::sample::select(vec!['A', 'Z', '_', '.', ' ', '/', '\'', 'é', 'ß', '✓', '\n']),
                1 => any::<char>(),
            ],
            0..70,
        ),
    ) {
        let s = String::from_iter(chars);
        let result = SandboxKey::validate(&s);
        prop_assert_eq!(result.is_ok(), in_key_language(&s), "{:?}: {:?}", s, result);
        match result {
            Ok(()) => {}
            Err(KeyError::Empty) => prop_assert!(s.is_empty()),
            Err(KeyError::TooLong { len }) => prop_assert!(len == s.len() && len > 63),
            Err(KeyError::InvalidChar { found, index }) => {
                let first_bad = s
                    .chars()
                    .enumerate()
                    .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'));
                prop_assert_eq!(Some((index, found)), first_bad);
            }
            Err(KeyError::LeadingHyphen) => prop_assert!(s.starts_with('-')),
            Err(KeyError::TrailingHyphen) => prop_assert!(s.ends_with('-') && !s.starts_with('-')),
        }
    }

    #[test]
    fn sandbox_key_rejects_mutations_of_valid_keys(
        // At most 61 characters, so that one more (even a 2-byte one) stays within 63 bytes.
        key in "[a-z0-9]([a-z0-9-]{0,59}[a-z0-9])?",
        bad in prop::sample::select(vec!['A', '_', '.', ' ', 'é', ',', '=']),
        at in any::<prop::sample::Index>(),
    ) {
        let chars: Vec<char> = key.chars().collect();
        let i = at.index(chars.len() + 1);
        let mut inserted = chars.clone();
        inserted.insert(i, bad);
        let inserted = String::from_iter(inserted);
        prop_assert_eq!(
            SandboxKey::validate(&inserted),
            Err(KeyError::InvalidChar { found: bad, index: i })
        );
        prop_assert_eq!(
            SandboxKey::validate(&format!("-{key}")),
            Err(KeyError::LeadingHyphen)
        );
        prop_assert_eq!(
            SandboxKey::validate(&format!("{key}-")),
            Err(KeyError::TrailingHyphen)
        );
        let long = format!("{key}{}", "a".repeat(64 - key.len()));
        prop_assert_eq!(SandboxKey::validate(&long), Err(KeyError::TooLong { len: 64 }));
    }
}

proptest! {
    /// Header names are arbitrary strings in the `Vec` carrier: no name may make the codec
    /// panic. (Fails today, see `legacy_prefix_followed_by_non_ascii_does_not_panic` in
    /// `codec.rs`.)
    #[test]
    fn extract_and_strip_never_panic_on_arbitrary_header_names(
        name in "(ot-baggage-|uberctx-|OT-BAGGAGE-|)(prodbox)?\\PC{0,12}",
        value in baggage_like_bytes(),
    ) {
        let headers: Headers = vec![
            ("baggage".to_owned(), b"a=1".to_vec()),
            (name, value),
        ];
        check_extracted(&Codec::default(), &headers)?;
        let mut stripped = headers.clone();
        Codec::default().strip(&mut stripped);
    }
}
