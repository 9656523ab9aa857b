//! Table-driven tests of the baggage codec: `extract`, `inject` and `strip`.

use prodbox_core::codec::{BaggageError, Codec, ForeignMembers};
use prodbox_core::{KeyError, Sandbox};

type Headers = Vec<(String, Vec<u8>)>;

fn h(name: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_owned(), value.into())
}

fn baggage(value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    h("baggage", value)
}

/// A foreign member `key=xxx…` exactly `len` bytes long.
fn member_of_len(key: &str, len: usize) -> String {
    let pad = len
        .checked_sub(key.len() + 1)
        .expect("length leaves room for the key");
    format!("{key}={}", "x".repeat(pad))
}

/// `count` foreign members `m<start>=v`, `m<start+1>=v`, … joined with `,`.
fn members(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|i| format!("m{i}=v"))
        .collect::<Vec<_>>()
        .join(",")
}

fn default_codec() -> Codec {
    Codec::default()
}

fn alias_codec() -> Codec {
    Codec::default().alias("sd-routing-key")
}

fn no_legacy_codec() -> Codec {
    Codec::default().legacy_carriers(false)
}

fn small_bytes_codec() -> Codec {
    Codec::default().max_bytes(100)
}

fn small_members_codec() -> Codec {
    Codec::default().max_members(2)
}

/// What a successful extraction must contain.
#[derive(Debug)]
struct Want {
    key: Option<&'static str>,
    actor: Option<&'static str>,
    origin: Option<&'static str>,
    token: Option<&'static str>,
    foreign: String,
    claims: bool,
}

impl Want {
    fn none(foreign: impl Into<String>) -> Self {
        Self {
            key: None,
            actor: None,
            origin: None,
            token: None,
            foreign: foreign.into(),
            claims: false,
        }
    }

    fn key(key: &'static str, foreign: impl Into<String>) -> Self {
        Self {
            key: Some(key),
            claims: true,
            ..Self::none(foreign)
        }
    }

    fn actor(mut self, actor: &'static str) -> Self {
        self.actor = Some(actor);
        self.claims = true;
        self
    }

    fn origin(mut self, origin: &'static str) -> Self {
        self.origin = Some(origin);
        self.claims = true;
        self
    }

    fn token(mut self, token: &'static str) -> Self {
        self.token = Some(token);
        self.claims = true;
        self
    }

    fn claims(mut self) -> Self {
        self.claims = true;
        self
    }
}

enum Expect {
    Ok(Want),
    Err(fn(&BaggageError) -> bool),
}

struct Case {
    name: &'static str,
    codec: fn() -> Codec,
    headers: Headers,
    expect: Expect,
}

fn case(name: &'static str, headers: Headers, expect: Expect) -> Case {
    Case {
        name,
        codec: default_codec,
        headers,
        expect,
    }
}

fn case_with(name: &'static str, codec: fn() -> Codec, headers: Headers, expect: Expect) -> Case {
    Case {
        name,
        codec,
        headers,
        expect,
    }
}

fn run(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in &cases {
        let got = (case.codec)().extract(&case.headers);
        match (&case.expect, &got) {
            (Expect::Ok(want), Ok(x)) => {
                let seen = (
                    x.key().map(|k| k.as_str()),
                    x.actor(),
                    x.origin(),
                    x.token(),
                    x.foreign().as_str(),
                    x.claims_anything(),
                );
                let wanted = (
                    want.key,
                    want.actor,
                    want.origin,
                    want.token,
                    want.foreign.as_str(),
                    want.claims,
                );
                if seen != wanted {
                    failures.push(format!(
                        "{}: got (key, actor, origin, token, foreign, claims) = {seen:?}, want {wanted:?}",
                        case.name
                    ));
                }
                // The foreign count agrees with the members listed.
                let listed = x.foreign().iter_raw().count();
                if x.foreign().len() != listed {
                    failures.push(format!(
                        "{}: foreign len {} but {listed} members listed",
                        case.name,
                        x.foreign().len()
                    ));
                }
            }
            (Expect::Err(matches), Err(e)) if matches(e) => {
                // Every error has a stable reason for audits.
                assert!(!e.reason().is_empty());
            }
            (Expect::Ok(want), Err(e)) => {
                failures.push(format!("{}: got Err({e:?}), want Ok({want:?})", case.name));
            }
            (Expect::Err(_), other) => {
                failures.push(format!(
                    "{}: got {other:?}, want a different outcome",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn w3c_spec_examples_and_syntax() {
    run(vec![
        case(
            "w3c example with properties and whitespace",
            vec![baggage(
                "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
            )],
            Expect::Ok(Want::none(
                "key1=value1;property1;property2,key2 = value2,key3=value3; propertyKey=propertyValue",
            )),
        ),
        case(
            "w3c percent-encoded example passes through untouched",
            vec![baggage(
                "serverNode=DF%2028,userId=Am%C3%A9lie,isProduction=false",
            )],
            Expect::Ok(Want::none(
                "serverNode=DF%2028,userId=Am%C3%A9lie,isProduction=false",
            )),
        ),
        case(
            "w3c example split over two headers",
            vec![
                baggage("userId=alice"),
                baggage("serverNode=DF%2028,isProduction=false"),
            ],
            Expect::Ok(Want::none(
                "userId=alice,serverNode=DF%2028,isProduction=false",
            )),
        ),
        case(
            "no baggage at all",
            vec![h(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
            Expect::Ok(Want::none("")),
        ),
        case(
            "empty baggage header",
            vec![baggage("")],
            Expect::Ok(Want::none("")),
        ),
        case(
            "our members among foreign ones",
            vec![baggage(
                "userId=42,prodbox.sandbox=pr-42,prodbox.actor=alice,prodbox.origin=pr-42,isProduction=false",
            )],
            Expect::Ok(
                Want::key("pr-42", "userId=42,isProduction=false")
                    .actor("alice")
                    .origin("pr-42"),
            ),
        ),
        case(
            "optional whitespace around members, keys and values",
            vec![baggage(
                "  prodbox.sandbox =  pr-1 ,   prodbox.actor= alice ,k = v  ",
            )],
            Expect::Ok(Want::key("pr-1", "k = v").actor("alice")),
        ),
        case(
            "tabs count as whitespace",
            vec![baggage("\tprodbox.sandbox\t=\tpr-1\t,\tk=v\t")],
            Expect::Ok(Want::key("pr-1", "k=v")),
        ),
        case(
            "empty list members are skipped",
            vec![baggage(",, a=1 , ,\t,b=2,")],
            Expect::Ok(Want::none("a=1,b=2")),
        ),
        case(
            "properties of our members are allowed and ignored",
            vec![baggage(
                "prodbox.sandbox=pr-1;ttl=60;flag, prodbox.actor=bob ; p",
            )],
            Expect::Ok(Want::key("pr-1", "").actor("bob")),
        ),
        case(
            "properties of foreign members are kept",
            vec![baggage("a=1;p1;p2=v2,b=2; q")],
            Expect::Ok(Want::none("a=1;p1;p2=v2,b=2; q")),
        ),
        case(
            "= inside our value is kept",
            vec![baggage("prodbox.sandbox=pr-1,prodbox.actor=a=b=c")],
            Expect::Ok(Want::key("pr-1", "").actor("a=b=c")),
        ),
        case(
            "= inside a foreign value passes through untouched",
            vec![baggage("k=v=w,prodbox.sandbox=pr-1")],
            Expect::Ok(Want::key("pr-1", "k=v=w")),
        ),
        case(
            "empty foreign value is a valid member",
            vec![baggage("k=,prodbox.sandbox=pr-1")],
            Expect::Ok(Want::key("pr-1", "k=")),
        ),
        case(
            "token member",
            vec![baggage("prodbox.token=v1.k1.abc.def,x=1")],
            Expect::Ok(Want::none("x=1").token("v1.k1.abc.def")),
        ),
        case(
            "unknown member of our namespace passes through but is a claim",
            vec![baggage("prodbox.future=1,a=2")],
            Expect::Ok(Want::none("prodbox.future=1,a=2").claims()),
        ),
        case(
            "unknown member of our namespace in another case is a claim too",
            vec![baggage("PRODBOX.Future=1")],
            Expect::Ok(Want::none("PRODBOX.Future=1").claims()),
        ),
        case(
            "a key merely starting with prodbox is foreign",
            vec![baggage("prodboxsandbox=pr-1,prodbox=x")],
            Expect::Ok(Want::none("prodboxsandbox=pr-1,prodbox=x")),
        ),
        case(
            "foreign members keep their order across headers",
            vec![
                baggage("z=1,prodbox.sandbox=pr-1,a=2"),
                h("other", "q=9"),
                baggage("m=3"),
                baggage("prodbox.actor=al,b=4"),
            ],
            Expect::Ok(Want::key("pr-1", "z=1,a=2,m=3,b=4").actor("al")),
        ),
        case(
            "header name matched case-insensitively",
            vec![h("Baggage", "prodbox.sandbox=pr-1"), h("BAGGAGE", "a=1")],
            Expect::Ok(Want::key("pr-1", "a=1")),
        ),
    ]);
}

#[test]
fn percent_encoding() {
    run(vec![
        case(
            "our values are percent-decoded",
            vec![baggage(
                "prodbox.actor=alice%40example.com,prodbox.origin=DF%2028,prodbox.sandbox=pr%2D7",
            )],
            Expect::Ok(
                Want::key("pr-7", "")
                    .actor("alice@example.com")
                    .origin("DF 28"),
            ),
        ),
        case(
            "multi-byte UTF-8 is decoded",
            vec![baggage(
                "prodbox.actor=Am%C3%A9lie,prodbox.origin=%E2%9C%93%20ok,prodbox.sandbox=pr-1",
            )],
            Expect::Ok(Want::key("pr-1", "").actor("Amélie").origin("✓ ok")),
        ),
        case(
            "encoded separators in our values",
            vec![
                baggage("prodbox.actor=a%2Cb%3Bc%3Dd%25e"),
                baggage("prodbox.sandbox=pr-1"),
            ],
            Expect::Ok(Want::key("pr-1", "").actor("a,b;c=d%e")),
        ),
        case(
            "invalid percent-encoded UTF-8 in the actor",
            vec![baggage("prodbox.actor=%FF")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidPercentEncoding {
                        member: "prodbox.actor"
                    }
                )
            }),
        ),
        case(
            "invalid percent-encoded UTF-8 in the sandbox key",
            vec![baggage("prodbox.sandbox=pr%C3")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidPercentEncoding {
                        member: "prodbox.sandbox"
                    }
                )
            }),
        ),
        case(
            "invalid percent-encoded UTF-8 in the origin",
            vec![baggage("prodbox.origin=%C3%28")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidPercentEncoding {
                        member: "prodbox.origin"
                    }
                )
            }),
        ),
        case(
            "invalid percent-encoded UTF-8 in a foreign member is not our business",
            vec![baggage("k=%FF,prodbox.sandbox=pr-1")],
            Expect::Ok(Want::key("pr-1", "k=%FF")),
        ),
        case(
            "percent-encoded CR LF in the actor is refused after decoding",
            vec![baggage("prodbox.actor=al%0D%0Aice")],
            Expect::Err(|e| matches!(e, BaggageError::InvalidLabel(_))),
        ),
        case(
            "empty actor is refused",
            vec![baggage("prodbox.actor=")],
            Expect::Err(|e| matches!(e, BaggageError::InvalidLabel(_))),
        ),
        case(
            "actor longer than 256 bytes after decoding is refused",
            vec![baggage(format!("prodbox.actor={}", "%C3%A9".repeat(129)))],
            Expect::Err(|e| matches!(e, BaggageError::InvalidLabel(_))),
        ),
        case(
            "actor of exactly 256 bytes after decoding is accepted",
            vec![baggage(format!(
                "prodbox.sandbox=pr-1,prodbox.actor={}",
                "%C3%A9".repeat(128)
            ))],
            Expect::Ok(Want {
                actor: Some(Box::leak("é".repeat(128).into_boxed_str())),
                ..Want::key("pr-1", "")
            }),
        ),
    ]);
}

#[test]
fn control_characters_and_invalid_utf8() {
    run(vec![
        case(
            "CR LF in a value",
            vec![baggage("prodbox.sandbox=pr-1\r\nx-injected: 1")],
            Expect::Err(
                |e| matches!(e, BaggageError::ControlCharacter { carrier, byte: 0x0d } if carrier == "baggage"),
            ),
        ),
        case(
            "bare LF",
            vec![baggage("a=1\nb=2")],
            Expect::Err(|e| matches!(e, BaggageError::ControlCharacter { byte: 0x0a, .. })),
        ),
        case(
            "NUL",
            vec![baggage(b"a=1\0".to_vec())],
            Expect::Err(|e| matches!(e, BaggageError::ControlCharacter { byte: 0x00, .. })),
        ),
        case(
            "ESC",
            vec![baggage("a=\x1b[31m")],
            Expect::Err(|e| matches!(e, BaggageError::ControlCharacter { byte: 0x1b, .. })),
        ),
        case(
            "DEL",
            vec![baggage("a=1\x7f")],
            Expect::Err(|e| matches!(e, BaggageError::ControlCharacter { byte: 0x7f, .. })),
        ),
        case(
            "control character in a foreign member of a later header",
            vec![baggage("prodbox.sandbox=pr-1"), baggage("a=\x01")],
            Expect::Err(|e| matches!(e, BaggageError::ControlCharacter { byte: 0x01, .. })),
        ),
        case(
            "control character in a legacy carrier",
            vec![h("uberctx-prodbox.sandbox", "pr-1\r\n")],
            Expect::Err(
                |e| matches!(e, BaggageError::ControlCharacter { carrier, .. } if carrier == "uberctx-prodbox.sandbox"),
            ),
        ),
        case(
            "invalid UTF-8",
            vec![baggage(b"a=\xff\xfe".to_vec())],
            Expect::Err(
                |e| matches!(e, BaggageError::InvalidUtf8 { carrier } if carrier == "baggage"),
            ),
        ),
        case(
            "truncated UTF-8 sequence",
            vec![baggage(b"prodbox.actor=\xc3".to_vec())],
            Expect::Err(|e| matches!(e, BaggageError::InvalidUtf8 { .. })),
        ),
        case(
            "invalid UTF-8 in a legacy carrier",
            vec![h("ot-baggage-prodbox.actor", b"al\xffice".to_vec())],
            Expect::Err(
                |e| matches!(e, BaggageError::InvalidUtf8 { carrier } if carrier == "ot-baggage-prodbox.actor"),
            ),
        ),
        case(
            "raw UTF-8 in a foreign value is not refused",
            vec![baggage("city=Zürich")],
            Expect::Ok(Want::none("city=Zürich")),
        ),
    ]);
}

#[test]
fn size_limits() {
    // Header sizes add up, plus one separator between headers (as if joined with `,`).
    let exactly_8192 = vec![
        baggage(format!(
            "prodbox.sandbox=pr-1,{}",
            member_of_len("a", 4096 - "prodbox.sandbox=pr-1,".len())
        )),
        baggage(member_of_len("b", 4095)),
    ];
    let one_more = vec![
        baggage(format!(
            "prodbox.sandbox=pr-1,{}",
            member_of_len("a", 4096 - "prodbox.sandbox=pr-1,".len())
        )),
        baggage(member_of_len("b", 4096)),
    ];
    let three_headers_8192 = vec![
        baggage(member_of_len("a", 3000)),
        baggage(member_of_len("b", 3000)),
        baggage(member_of_len("c", 8192 - 6002)),
    ];
    let three_headers_8193 = vec![
        baggage(member_of_len("a", 3000)),
        baggage(member_of_len("b", 3000)),
        baggage(member_of_len("c", 8193 - 6002)),
    ];
    let foreign_8192 = format!(
        "{},{}",
        member_of_len("a", 4096 - "prodbox.sandbox=pr-1,".len()),
        member_of_len("b", 4095)
    );
    let foreign_3 = format!(
        "{},{},{}",
        member_of_len("a", 3000),
        member_of_len("b", 3000),
        member_of_len("c", 8192 - 6002)
    );

    run(vec![
        case(
            "single header of exactly 8192 bytes",
            vec![baggage(member_of_len("a", 8192))],
            Expect::Ok(Want::none(member_of_len("a", 8192))),
        ),
        case(
            "single header of 8193 bytes",
            vec![baggage(member_of_len("a", 8193))],
            Expect::Err(|e| matches!(e, BaggageError::TooLarge { limit: 8192, .. })),
        ),
        case(
            "two headers totalling 8192 bytes",
            exactly_8192,
            Expect::Ok(Want::key("pr-1", foreign_8192)),
        ),
        case(
            "two headers totalling 8193 bytes",
            one_more,
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::TooLarge {
                        bytes: 8193,
                        limit: 8192
                    }
                )
            }),
        ),
        case(
            "three headers totalling 8192 bytes",
            three_headers_8192,
            Expect::Ok(Want::none(foreign_3)),
        ),
        case(
            "three headers totalling 8193 bytes",
            three_headers_8193,
            Expect::Err(|e| matches!(e, BaggageError::TooLarge { limit: 8192, .. })),
        ),
        case(
            "a huge header is refused before it is parsed",
            vec![baggage(format!("a=1\r\n{}", "x".repeat(9000)))],
            Expect::Err(|e| matches!(e, BaggageError::TooLarge { .. })),
        ),
        case_with(
            "configured max_bytes: exactly 100",
            small_bytes_codec,
            vec![
                baggage(member_of_len("a", 60)),
                baggage(member_of_len("b", 39)),
            ],
            Expect::Ok(Want::none(format!(
                "{},{}",
                member_of_len("a", 60),
                member_of_len("b", 39)
            ))),
        ),
        case_with(
            "configured max_bytes: 101",
            small_bytes_codec,
            vec![
                baggage(member_of_len("a", 60)),
                baggage(member_of_len("b", 40)),
            ],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::TooLarge {
                        bytes: 101,
                        limit: 100
                    }
                )
            }),
        ),
        case_with(
            "configured max_bytes counts legacy carriers",
            small_bytes_codec,
            vec![
                baggage(member_of_len("a", 95)),
                h("uberctx-prodbox.actor", "alice"),
            ],
            Expect::Err(|e| matches!(e, BaggageError::TooLarge { limit: 100, .. })),
        ),
    ]);
}

#[test]
fn member_limits() {
    let sixty_four = vec![
        baggage(format!("prodbox.sandbox=pr-1,{}", members(0, 31))),
        baggage(members(31, 32)),
    ];
    let sixty_five = vec![
        baggage(format!("prodbox.sandbox=pr-1,{}", members(0, 31))),
        baggage(members(31, 33)),
    ];
    let three_headers_65 = vec![
        baggage(members(0, 20)),
        baggage(members(20, 20)),
        baggage(members(40, 25)),
    ];
    run(vec![
        case(
            "64 members across two headers",
            sixty_four,
            Expect::Ok(Want::key("pr-1", members(0, 63))),
        ),
        case(
            "65 members across two headers",
            sixty_five,
            Expect::Err(|e| matches!(e, BaggageError::TooManyMembers { limit: 64 })),
        ),
        case(
            "65 members across three headers",
            three_headers_65,
            Expect::Err(|e| matches!(e, BaggageError::TooManyMembers { limit: 64 })),
        ),
        case(
            "64 members in one header",
            vec![baggage(members(0, 64))],
            Expect::Ok(Want::none(members(0, 64))),
        ),
        case_with(
            "configured max_members: 2 across headers",
            small_members_codec,
            vec![baggage("prodbox.sandbox=pr-1"), baggage("a=1")],
            Expect::Ok(Want::key("pr-1", "a=1")),
        ),
        case_with(
            "configured max_members: empty members do not count",
            small_members_codec,
            vec![baggage(", a=1,,"), baggage(" , b=2")],
            Expect::Ok(Want::none("a=1,b=2")),
        ),
        case_with(
            "configured max_members: 3",
            small_members_codec,
            vec![baggage("prodbox.sandbox=pr-1"), baggage("a=1,b=2")],
            Expect::Err(|e| matches!(e, BaggageError::TooManyMembers { limit: 2 })),
        ),
    ]);
}

#[test]
fn duplicates_and_ambiguity() {
    run(vec![
        case(
            "same key twice in one header",
            vec![baggage("prodbox.sandbox=pr-1,prodbox.sandbox=pr-1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "same key twice across headers",
            vec![
                baggage("prodbox.sandbox=pr-1"),
                baggage("prodbox.sandbox=pr-1"),
            ],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "same key, once percent-encoded",
            vec![baggage("prodbox.sandbox=pr-1,prodbox.sandbox=pr%2D1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "different keys in one header",
            vec![baggage("prodbox.sandbox=pr-1,prodbox.sandbox=pr-2")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous { member: "prodbox.sandbox", first, second, .. }
                        if first == "pr-1" && second == "pr-2"
                )
            }),
        ),
        case(
            "different keys across headers",
            vec![
                baggage("prodbox.sandbox=pr-1"),
                baggage("prodbox.sandbox=pr-2"),
            ],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous { member: "prodbox.sandbox", first_carrier, second_carrier, .. }
                        if first_carrier == "baggage" && second_carrier == "baggage"
                )
            }),
        ),
        case(
            "an invalid key twice with different values is ambiguous, not picked",
            vec![baggage("prodbox.sandbox=pr-1,prodbox.sandbox=PR-1")],
            Expect::Err(|e| matches!(e, BaggageError::Ambiguous { .. })),
        ),
        case(
            "different actors",
            vec![baggage("prodbox.actor=alice,prodbox.actor=mallory")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous {
                        member: "prodbox.actor",
                        ..
                    }
                )
            }),
        ),
        case(
            "different origins",
            vec![baggage("prodbox.origin=a"), baggage("prodbox.origin=b")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous {
                        member: "prodbox.origin",
                        ..
                    }
                )
            }),
        ),
        case(
            "different tokens",
            vec![baggage("prodbox.token=t1,prodbox.token=t2")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous {
                        member: "prodbox.token",
                        ..
                    }
                )
            }),
        ),
        case(
            "same foreign key twice with different values is not ours to judge",
            vec![baggage("a=1,a=2")],
            Expect::Ok(Want::none("a=1,a=2")),
        ),
    ]);
}

#[test]
fn aliases() {
    run(vec![
        // Another tool's routing key this codec does not read still passes internal hops, but
        // counts as a claim, so an untrusted edge strips it.
        case(
            "known alias not configured: passes through, strippable",
            vec![baggage("sd-routing-key=pr-1")],
            Expect::Ok(Want::none("sd-routing-key=pr-1").claims()),
        ),
        case_with(
            "alias alone",
            alias_codec,
            vec![baggage("sd-routing-key=pr-1,a=1")],
            Expect::Ok(Want::key("pr-1", "a=1")),
        ),
        case_with(
            "alias matched case-insensitively",
            alias_codec,
            vec![baggage("SD-Routing-Key=pr-1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case_with(
            "alias agreeing with prodbox.sandbox",
            alias_codec,
            vec![
                baggage("prodbox.sandbox=pr-1"),
                baggage("sd-routing-key=pr-1"),
            ],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case_with(
            "alias disagreeing with prodbox.sandbox",
            alias_codec,
            vec![baggage("prodbox.sandbox=pr-1,sd-routing-key=pr-2")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous {
                        member: "prodbox.sandbox",
                        ..
                    }
                )
            }),
        ),
        case_with(
            "alias with an invalid key",
            alias_codec,
            vec![baggage("sd-routing-key=Feature_X")],
            Expect::Err(|e| matches!(e, BaggageError::InvalidKey { .. })),
        ),
    ]);
}

#[test]
fn legacy_carriers() {
    run(vec![
        case(
            "ot-baggage sandbox",
            vec![h("ot-baggage-prodbox.sandbox", "pr-1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "uberctx sandbox",
            vec![h("uberctx-prodbox.sandbox", " pr-1 ")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "legacy prefix matched case-insensitively",
            vec![h("OT-Baggage-prodbox.sandbox", "pr-1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "ot-baggage actor, percent-decoded",
            vec![
                baggage("prodbox.sandbox=pr-1,a=1"),
                h("ot-baggage-prodbox.actor", "alice%40example.com"),
            ],
            Expect::Ok(Want::key("pr-1", "a=1").actor("alice@example.com")),
        ),
        case(
            "uberctx origin and token",
            vec![
                h("uberctx-prodbox.origin", "pr-9"),
                h("uberctx-prodbox.token", "v1.k.c.s"),
                h("uberctx-prodbox.sandbox", "pr-1"),
            ],
            Expect::Ok(Want::key("pr-1", "").origin("pr-9").token("v1.k.c.s")),
        ),
        case_with(
            "uberctx alias",
            alias_codec,
            vec![h("uberctx-sd-routing-key", "pr-1")],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "uberctx known alias not configured: not read, strippable",
            vec![h("uberctx-sd-routing-key", "pr-1")],
            Expect::Ok(Want::none("").claims()),
        ),
        case(
            "legacy agreeing with baggage",
            vec![
                h("ot-baggage-prodbox.sandbox", "pr-1"),
                baggage("prodbox.sandbox=pr-1"),
            ],
            Expect::Ok(Want::key("pr-1", "")),
        ),
        case(
            "legacy disagreeing with baggage",
            vec![
                baggage("prodbox.sandbox=pr-1"),
                h("ot-baggage-prodbox.sandbox", "pr-2"),
            ],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous { member: "prodbox.sandbox", first_carrier, second_carrier, .. }
                        if first_carrier == "baggage" && second_carrier == "ot-baggage-prodbox.sandbox"
                )
            }),
        ),
        case(
            "two legacy carriers disagreeing",
            vec![
                h("ot-baggage-prodbox.sandbox", "pr-1"),
                h("uberctx-prodbox.sandbox", "pr-2"),
            ],
            Expect::Err(|e| matches!(e, BaggageError::Ambiguous { .. })),
        ),
        case_with(
            "legacy alias disagreeing with baggage",
            alias_codec,
            vec![
                baggage("prodbox.sandbox=pr-1"),
                h("uberctx-sd-routing-key", "pr-2"),
            ],
            Expect::Err(|e| matches!(e, BaggageError::Ambiguous { .. })),
        ),
        case(
            "legacy actor disagreeing with baggage",
            vec![
                baggage("prodbox.actor=alice"),
                h("ot-baggage-prodbox.actor", "bob"),
            ],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::Ambiguous {
                        member: "prodbox.actor",
                        ..
                    }
                )
            }),
        ),
        case(
            "legacy invalid key",
            vec![h("uberctx-prodbox.sandbox", "PR 1")],
            Expect::Err(
                |e| matches!(e, BaggageError::InvalidKey { carrier, .. } if carrier == "uberctx-prodbox.sandbox"),
            ),
        ),
        case(
            "legacy carrier for a foreign key is ignored",
            vec![h("uberctx-userid", "7"), h("ot-baggage-tenant", "acme")],
            Expect::Ok(Want::none("")),
        ),
        case_with(
            "legacy disabled: ignored",
            no_legacy_codec,
            vec![
                h("ot-baggage-prodbox.sandbox", "pr-1"),
                h("uberctx-prodbox.actor", "alice"),
            ],
            Expect::Ok(Want::none("")),
        ),
        case_with(
            "legacy disabled: no ambiguity with baggage",
            no_legacy_codec,
            vec![
                baggage("prodbox.sandbox=pr-1"),
                h("ot-baggage-prodbox.sandbox", "pr-2"),
            ],
            Expect::Ok(Want::key("pr-1", "")),
        ),
    ]);
}

#[test]
fn refused_members() {
    run(vec![
        case(
            "non-canonical case of the sandbox key",
            vec![baggage("Prodbox.Sandbox=pr-1")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::NonCanonicalKey { found, canonical: "prodbox.sandbox" }
                        if found == "Prodbox.Sandbox"
                )
            }),
        ),
        case(
            "non-canonical case of the actor",
            vec![baggage("prodbox.sandbox=pr-1,PRODBOX.ACTOR=alice")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::NonCanonicalKey {
                        canonical: "prodbox.actor",
                        ..
                    }
                )
            }),
        ),
        case(
            "non-canonical case of the token",
            vec![baggage("prodbox.Token=x")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::NonCanonicalKey {
                        canonical: "prodbox.token",
                        ..
                    }
                )
            }),
        ),
        case(
            "upper case and underscore in the key",
            vec![baggage("prodbox.sandbox=PR_1")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidKey { carrier, source: KeyError::InvalidChar { found: 'P', index: 0 } }
                        if carrier == "baggage"
                )
            }),
        ),
        case(
            "SQL injection in the key, percent-encoded",
            vec![baggage("prodbox.sandbox=x%27%3B%20drop%20table")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidKey {
                        source: KeyError::InvalidChar {
                            found: '\'',
                            index: 1
                        },
                        ..
                    }
                )
            }),
        ),
        case(
            "empty key value",
            vec![baggage("prodbox.sandbox=")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidKey {
                        source: KeyError::Empty,
                        ..
                    }
                )
            }),
        ),
        case(
            "key too long",
            vec![baggage(format!("prodbox.sandbox={}", "a".repeat(64)))],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidKey {
                        source: KeyError::TooLong { len: 64 },
                        ..
                    }
                )
            }),
        ),
        case(
            "key with a trailing hyphen",
            vec![baggage("prodbox.sandbox=pr-")],
            Expect::Err(|e| {
                matches!(
                    e,
                    BaggageError::InvalidKey {
                        source: KeyError::TrailingHyphen,
                        ..
                    }
                )
            }),
        ),
        case(
            "member without =",
            vec![baggage("a=1,novalue,b=2")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { index: 1, .. })),
        ),
        case(
            "member with only properties",
            vec![baggage(";p=1")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { index: 0, .. })),
        ),
        case(
            "member with an empty key",
            vec![baggage("a=1"), baggage(" =v")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { index: 1, .. })),
        ),
        case(
            "key with a space",
            vec![baggage("my key=v")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { index: 0, .. })),
        ),
        case(
            "key with a separator",
            vec![baggage("a/b=v")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { .. })),
        ),
        case(
            "key with non-ASCII",
            vec![baggage("clé=v")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { .. })),
        ),
        case(
            "malformed member counted across headers",
            vec![baggage("a=1,b=2"), baggage(",c=3,oops")],
            Expect::Err(|e| matches!(e, BaggageError::MalformedMember { index: 3, .. })),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// inject

fn sandbox(key: &str) -> Sandbox {
    Sandbox::builder(key).expect("valid key").build()
}

fn full_sandbox(key: &str, actor: &str, origin: &str) -> Sandbox {
    Sandbox::builder(key)
        .expect("valid key")
        .actor(actor)
        .expect("valid actor")
        .origin(origin)
        .expect("valid origin")
        .build()
}

fn baggage_values(carrier: &Headers) -> Vec<String> {
    carrier
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("baggage"))
        .map(|(_, v)| String::from_utf8(v.clone()).expect("UTF-8"))
        .collect()
}

#[test]
fn inject_into_empty_carrier() {
    let codec = Codec::default();
    let sb = full_sandbox("pr-42", "alice@example.com", "PR #42, \"fix=all\"; 100%");
    let foreign = prodbox_core::plumbing::codec::foreign_members(["userId=7", "k=v=w;p"]);
    let mut carrier: Headers = vec![h("traceparent", "00-x")];
    codec
        .inject(Some(&sb), Some("v1.k1.abc.def"), &foreign, &mut carrier)
        .expect("inject");

    assert_eq!(
        baggage_values(&carrier),
        ["prodbox.sandbox=pr-42,prodbox.actor=alice@example.com,\
             prodbox.origin=PR%20#42%2C%20%22fix%3Dall%22%3B%20100%25,\
             prodbox.token=v1.k1.abc.def,userId=7,k=v=w;p"]
    );
    assert_eq!(carrier[0], h("traceparent", "00-x"));

    let back = codec.extract(&carrier).expect("extract");
    assert_eq!(back.sandbox(), Some(sb));
    assert_eq!(back.token(), Some("v1.k1.abc.def"));
    assert_eq!(back.foreign(), &foreign);
}

#[test]
fn inject_nothing_into_empty_carrier_writes_nothing() {
    let mut carrier: Headers = vec![h("x", "1")];
    Codec::default()
        .inject(None, None, &ForeignMembers::default(), &mut carrier)
        .expect("inject");
    assert_eq!(carrier, vec![h("x", "1")]);
}

#[test]
fn inject_only_foreign_into_empty_carrier() {
    let mut carrier: Headers = Vec::new();
    let foreign =
        prodbox_core::plumbing::codec::foreign_members(["a=1", " b=2 ", "not a member", "c=3;p"]);
    assert_eq!(foreign.len(), 3, "the unparseable member is skipped");
    Codec::default()
        .inject(None, None, &foreign, &mut carrier)
        .expect("inject");
    assert_eq!(baggage_values(&carrier), ["a=1,b=2,c=3;p"]);
}

#[test]
fn inject_merges_with_existing_baggage() {
    let codec = Codec::default().alias("sd-routing-key");
    let mut carrier: Headers = vec![
        baggage("a=1, prodbox.sandbox=old ,b=2;p"),
        h("other", "x"),
        baggage("prodbox.actor=old-actor;q, c=3,sd-routing-key=old,prodbox.token=old-token"),
        baggage("prodbox.future=1,d=4"),
    ];
    let foreign = prodbox_core::plumbing::codec::foreign_members(["e=5"]);
    codec
        .inject(Some(&sandbox("pr-new")), None, &foreign, &mut carrier)
        .expect("inject");

    // One header: ours first, the other members in order, old members of ours gone. Unknown
    // members of our namespace pass through internal hops (newer versions may add members).
    assert_eq!(
        baggage_values(&carrier),
        ["prodbox.sandbox=pr-new,a=1,b=2;p,c=3,prodbox.future=1,d=4,e=5"]
    );
    assert!(carrier.contains(&h("other", "x")));
    let back = codec.extract(&carrier).expect("extract");
    assert_eq!(back.key().map(|k| k.as_str()), Some("pr-new"));
    assert_eq!(back.actor(), None, "the old actor was replaced, not kept");
    assert_eq!(back.token(), None, "the old token was replaced, not kept");
}

#[test]
fn inject_does_not_repeat_foreign_members_already_present() {
    let mut carrier: Headers = vec![baggage("userId=7,x=1"), baggage("tenant=acme;p")];
    let foreign = prodbox_core::plumbing::codec::foreign_members([
        "userId=8",
        "tenant=acme;p",
        "new=1",
        "x=1",
    ]);
    Codec::default()
        .inject(Some(&sandbox("pr-1")), None, &foreign, &mut carrier)
        .expect("inject");
    // Members already in the message win; only `new` is added.
    assert_eq!(
        baggage_values(&carrier),
        ["prodbox.sandbox=pr-1,userId=7,x=1,tenant=acme;p,new=1"]
    );
}

#[test]
fn inject_refuses_malformed_existing_baggage_and_leaves_carrier_unchanged() {
    type ErrCase = (&'static str, Headers, fn(&BaggageError) -> bool);
    let cases: Vec<ErrCase> = vec![
        (
            "member without =",
            vec![baggage("a=1,garbage"), h("other", "x")],
            |e| matches!(e, BaggageError::MalformedMember { .. }),
        ),
        ("CR LF", vec![baggage("a=1\r\nb=2")], |e| {
            matches!(e, BaggageError::ControlCharacter { .. })
        }),
        ("invalid UTF-8", vec![baggage(b"a=\xff".to_vec())], |e| {
            matches!(e, BaggageError::InvalidUtf8 { .. })
        }),
        (
            "second header malformed",
            vec![baggage("a=1"), baggage("=x")],
            |e| matches!(e, BaggageError::MalformedMember { .. }),
        ),
    ];
    for (name, before, check) in cases {
        let mut carrier = before.clone();
        let result = Codec::default().inject(
            Some(&sandbox("pr-1")),
            None,
            &prodbox_core::plumbing::codec::foreign_members(["f=1"]),
            &mut carrier,
        );
        assert!(
            result.as_ref().is_err_and(check),
            "{name}: unexpected {result:?}"
        );
        assert_eq!(carrier, before, "{name}: carrier changed");
    }
}

#[test]
fn inject_refuses_output_over_the_byte_limit() {
    let codec = Codec::default().max_bytes(64);
    let sb = full_sandbox("pr-1", "alice", "pr-1");
    let ours = "prodbox.sandbox=pr-1,prodbox.actor=alice,prodbox.origin=pr-1";
    assert_eq!(ours.len(), 60);
    let fits = prodbox_core::plumbing::codec::foreign_members(["k=1"]);
    let mut carrier: Headers = Vec::new();
    codec
        .inject(Some(&sb), None, &fits, &mut carrier)
        .expect("exactly 64 bytes fit");
    assert_eq!(baggage_values(&carrier), [format!("{ours},k=1")]);

    let too_big = prodbox_core::plumbing::codec::foreign_members(["k=12"]);
    let mut empty: Headers = Vec::new();
    let err = codec
        .inject(Some(&sb), None, &too_big, &mut empty)
        .expect_err("65 bytes");
    assert!(
        matches!(
            err,
            BaggageError::TooLarge {
                bytes: 65,
                limit: 64
            }
        ),
        "{err:?}"
    );
    assert!(empty.is_empty());

    let before: Headers = vec![baggage("existing=1")];
    let mut existing = before.clone();
    let err = codec
        .inject(Some(&sb), None, &fits, &mut existing)
        .expect_err("too large with the existing member");
    assert!(matches!(err, BaggageError::TooLarge { .. }), "{err:?}");
    assert_eq!(existing, before);
}

#[test]
fn inject_refuses_output_over_the_member_limit_existing_carrier() {
    let codec = Codec::default().max_members(3);
    let before: Headers = vec![baggage("a=1,b=2,c=3")];
    let mut carrier = before.clone();
    let result = codec.inject(
        Some(&sandbox("pr-1")),
        None,
        &ForeignMembers::default(),
        &mut carrier,
    );
    assert!(
        matches!(result, Err(BaggageError::TooManyMembers { limit: 3 })),
        "{result:?}"
    );
    assert_eq!(carrier, before);
}

/// `inject` promises never to write baggage the next hop (same limits) must refuse.
/// The member limit must count every member it writes: the sandbox key, actor, origin and token.
#[test]
fn inject_counts_all_of_our_members_against_the_member_limit() {
    let codec = Codec::default();
    let sb = full_sandbox("pr-1", "alice", "pr-1");
    let foreign_raw: Vec<String> = (0..62).map(|i| format!("m{i}=v")).collect();
    let foreign =
        prodbox_core::plumbing::codec::foreign_members(foreign_raw.iter().map(String::as_str));

    // Empty carrier: 3 members of ours + 62 foreign = 65 > 64.
    let mut empty: Headers = Vec::new();
    let into_empty = codec.inject(Some(&sb), None, &foreign, &mut empty);

    // Existing carrier holding the foreign members: 3 of ours + 62 = 65 > 64.
    let mut existing: Headers = vec![baggage(foreign.as_str().to_owned())];
    let into_existing = codec.inject(Some(&sb), None, &ForeignMembers::default(), &mut existing);

    // Token too: 1 key + 1 token + 63 foreign = 65 > 64.
    let foreign63: Vec<String> = (0..63).map(|i| format!("m{i}=v")).collect();
    let foreign63 =
        prodbox_core::plumbing::codec::foreign_members(foreign63.iter().map(String::as_str));
    let mut with_token: Headers = Vec::new();
    let token = codec.inject(
        Some(&sandbox("pr-1")),
        Some("t"),
        &foreign63,
        &mut with_token,
    );

    let mut problems = Vec::new();
    for (name, result, carrier) in [
        ("empty carrier", into_empty, &empty),
        ("existing carrier", into_existing, &existing),
        ("token, empty carrier", token, &with_token),
    ] {
        match result {
            Err(BaggageError::TooManyMembers { limit: 64 }) => {}
            other => problems.push(format!(
                "{name}: inject returned {other:?}; extract of what it wrote: {:?}",
                codec.extract(carrier).map(|_| "ok")
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `ForeignMembers::from_raw_members` accepts any member, ours included; `inject` must still
/// never write baggage the next hop must refuse (a lenient next hop would run the sandboxed
/// message as production).
#[test]
fn inject_never_writes_our_members_taken_as_foreign() {
    let codec = Codec::default();
    let mut problems = Vec::new();
    for raw in [
        "prodbox.sandbox=pr-2",
        "Prodbox.Sandbox=pr-2",
        "prodbox.actor=mallory",
    ] {
        for existing in [Vec::new(), vec![baggage("a=1")]] {
            let mut carrier: Headers = existing.clone();
            let foreign = prodbox_core::plumbing::codec::foreign_members([raw]);
            if codec
                .inject(Some(&sandbox("pr-1")), None, &foreign, &mut carrier)
                .is_err()
            {
                continue;
            }
            match codec.extract(&carrier) {
                Ok(x) if x.key().map(|k| k.as_str()) == Some("pr-1") && x.actor().is_none() => {}
                other => problems.push(format!(
                    "foreign {raw:?} into {existing:?}: wrote {:?}, next hop reads {other:?}",
                    baggage_values(&carrier)
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// strip

#[test]
fn strip_removes_ours_and_keeps_the_rest_in_order() {
    let codec = Codec::default().alias("sd-routing-key");
    let mut carrier: Headers = vec![
        h("traceparent", "00-x"),
        baggage("a=1, prodbox.sandbox=pr-1 ,SD-Routing-Key=pr-1,b=2;p"),
        h("ot-baggage-prodbox.sandbox", "pr-1"),
        baggage("prodbox.actor=x,prodbox.future=y,Prodbox.Origin=z,c=3,prodbox.token=t"),
        h("uberctx-prodbox.actor", "x"),
        h("UBERCTX-SD-ROUTING-KEY", "pr-1"),
        h("uberctx-userid", "7"),
        h("ot-baggage-tenant", "acme"),
    ];
    codec.strip(&mut carrier);
    assert_eq!(baggage_values(&carrier), ["a=1,b=2;p,c=3"]);
    let names: Vec<&str> = carrier.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "traceparent",
            "uberctx-userid",
            "ot-baggage-tenant",
            "baggage"
        ]
    );
    let after = codec.extract(&carrier).expect("extract");
    assert!(!after.claims_anything());
}

/// An edge strips other tools' known routing keys even when it does not read them: a hop
/// behind it configured to read one would otherwise take it as a sandbox.
#[test]
fn strip_removes_known_aliases_even_when_not_configured() {
    let mut carrier: Headers = vec![baggage(
        "sd-routing-key=pr-1,prodbox.sandbox=pr-1,Okteto-Divert=x,tenant=a",
    )];
    Codec::default().strip(&mut carrier);
    assert_eq!(baggage_values(&carrier), ["tenant=a"]);
}

#[test]
fn strip_leaves_baggage_without_ours_untouched() {
    let before: Headers = vec![
        baggage("a=1 , b=2"),
        baggage("c=3"),
        h("uberctx-userid", "7"),
    ];
    let mut carrier = before.clone();
    Codec::default().strip(&mut carrier);
    assert_eq!(carrier, before);
}

#[test]
fn strip_removes_the_header_when_only_ours_remain() {
    let mut carrier: Headers = vec![
        baggage("prodbox.sandbox=pr-1"),
        baggage("prodbox.actor=a"),
        h("x", "1"),
    ];
    Codec::default().strip(&mut carrier);
    assert_eq!(carrier, vec![h("x", "1")]);
}

#[test]
fn strip_removes_all_baggage_when_unparseable() {
    let cases: Vec<(&str, Headers)> = vec![
        (
            "member without =",
            vec![
                baggage("a=1,prodbox.sandbox=pr-1"),
                baggage("garbage"),
                h("x", "1"),
            ],
        ),
        (
            "CR LF",
            vec![
                baggage("a=1\r\nprodbox.sandbox: pr-1"),
                baggage("b=2"),
                h("x", "1"),
            ],
        ),
        (
            "invalid UTF-8",
            vec![
                baggage("b=2"),
                baggage(b"prodbox.sandbox=\xff".to_vec()),
                h("x", "1"),
            ],
        ),
    ];
    for (name, mut carrier) in cases {
        Codec::default().strip(&mut carrier);
        assert_eq!(carrier, vec![h("x", "1")], "{name}");
    }
}

#[test]
fn is_ours_names_our_members_and_aliases() {
    let codec = Codec::default().alias("sd-routing-key");
    for ours in [
        "prodbox.sandbox",
        "prodbox.actor",
        "prodbox.origin",
        "prodbox.token",
        "prodbox.future",
        "Prodbox.Sandbox",
        "sd-routing-key",
        "SD-ROUTING-KEY",
    ] {
        assert!(codec.is_ours(ours), "{ours}");
    }
    for foreign in ["userId", "prodbox", "prodboxsandbox", "routing-key"] {
        assert!(!codec.is_ours(foreign), "{foreign}");
    }
    // Known routing keys of other tools are ours to strip, configured or not.
    for known in ["sd-routing-key", "okteto-divert", "Mirrord-Session"] {
        assert!(Codec::default().is_ours(known), "{known}");
    }
}

// ---------------------------------------------------------------------------------------------
// robustness

/// Header names are arbitrary strings in the `Vec` carrier (and in Kafka record headers). A name
/// that starts like a legacy prefix and continues with a multi-byte character must be ignored
/// or refused, never panic.
#[test]
fn legacy_prefix_followed_by_non_ascii_does_not_panic() {
    let names = [
        "ot-baggageé",      // byte 11 falls inside 'é'
        "uberctxé",         // byte 8 falls inside 'é'
        "uberctx-prodboxé", // the key after the prefix: byte 8 falls inside 'é'
        "ot-baggage-prodbox✓",
        "✓✓✓", // no legacy prefix at all: byte 8 falls inside the third '✓'
    ];
    let mut panicked = Vec::new();
    for name in names {
        let headers: Headers = vec![baggage("a=1"), h(name, "x")];
        let extract = std::panic::catch_unwind(|| {
            let _ = Codec::default().extract(&headers);
        });
        let strip = std::panic::catch_unwind(|| {
            let mut carrier = headers.clone();
            Codec::default().strip(&mut carrier);
        });
        if extract.is_err() {
            panicked.push(format!("extract panicked on header name {name:?}"));
        }
        if strip.is_err() {
            panicked.push(format!("strip panicked on header name {name:?}"));
        }
    }
    for key in ["prodbox✓", "prodboxé"] {
        if std::panic::catch_unwind(|| Codec::default().is_ours(key)).is_err() {
            panicked.push(format!("is_ours panicked on {key:?}"));
        }
    }
    assert!(panicked.is_empty(), "{}", panicked.join("\n"));
}

/// A legacy carrier sent twice must count its bytes once per value, as it does for a carrier
/// that yields each header name once (`http::HeaderMap`).
#[test]
fn repeated_legacy_header_is_counted_once_against_the_byte_limit() {
    let codec = Codec::default().max_bytes(100);
    // 88 + (5 + 1) + (5 + 1) = 100 bytes across all carriers.
    let headers: Headers = vec![
        baggage(member_of_len("a", 88)),
        h("uberctx-prodbox.actor", "alice"),
        h("uberctx-prodbox.actor", "alice"),
    ];
    // Exactly at the limit: accepted (an actor without a key is not read, but it is counted).
    let got = codec.extract(&headers);
    assert!(got.as_ref().is_ok_and(|x| x.claims_anything()), "{got:?}");
}

/// Injecting only a sandbox into HTTP headers reuses one header value per sandbox: the same
/// bytes each time, checked against the limits like any other injection.
#[test]
fn a_sandbox_alone_is_injected_into_http_headers_from_its_prebuilt_value() {
    let sandbox = Sandbox::builder("pr-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .build();
    let codec = Codec::default();
    let none = ForeignMembers::default();
    let mut first = http::HeaderMap::new();
    codec
        .inject(Some(&sandbox), None, &none, &mut first)
        .unwrap();
    let mut second = http::HeaderMap::new();
    second.insert("x-other", http::HeaderValue::from_static("1"));
    codec
        .inject(Some(&sandbox), None, &none, &mut second)
        .unwrap();
    for headers in [&first, &second] {
        let values: Vec<_> = headers.get_all("baggage").iter().collect();
        assert_eq!(values, ["prodbox.sandbox=pr-42,prodbox.actor=alice"]);
    }
    assert_eq!(
        codec.extract(&second).unwrap().sandbox(),
        Some(sandbox.clone())
    );
    let small = Codec::default().max_bytes(20);
    let mut third = http::HeaderMap::new();
    assert!(matches!(
        small.inject(Some(&sandbox), None, &none, &mut third),
        Err(BaggageError::TooLarge { .. })
    ));
    assert!(third.is_empty());
    let one_member = Codec::default().max_members(1);
    assert!(matches!(
        one_member.inject(Some(&sandbox), None, &none, &mut third),
        Err(BaggageError::TooManyMembers { limit: 1 })
    ));
}
