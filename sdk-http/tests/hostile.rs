//! Hostile inputs against real servers on loopback, sent as raw bytes (so that nothing on the
//! client side tidies them up): an internal hop (`Accept`, strict by default) and a public edge
//! (`Signed`, stripping). For each input, the observed outcome is checked and printed as the
//! table in docs/SECURITY.md (`cargo test -p prodbox-http --test hostile -- --nocapture`).
//!
//! The safety property behind every expectation: nothing but a well-formed sandbox at the
//! internal hop, or a valid token at the edge, ever becomes a sandbox; at the internal hop,
//! anything broken that concerns a sandbox is refused rather than run as production.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::routing::get;
use prodbox_core::TrustPolicy;
use prodbox_core::token::TokenKeys;
use prodbox_http::SandboxLayer;
use prodbox_testkit::{AuditLog, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"hostile-test-secret-32-bytes-long";
const OLD_SECRET: &[u8] = b"hostile-test-old-secret-32-bytes!";

async fn report() -> Json<Value> {
    Json(json!({ "sandbox": prodbox_core::current().map(|s| s.key().to_string()) }))
}

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: u16,
    /// The sandbox the handler ran in.
    sandbox: Option<String>,
    /// Audit `decision:reason` pairs the request caused.
    audit: Vec<String>,
}

impl Outcome {
    fn describe(&self) -> String {
        let what = match (self.status, &self.sandbox) {
            (200, Some(key)) => format!("sandbox {key}"),
            (200, None) => "runs as production".to_owned(),
            (status, _) => format!("{status}"),
        };
        if self.audit.is_empty() {
            what
        } else {
            format!("{what} ({})", self.audit.join(", "))
        }
    }
}

/// Sends one GET with `headers` (raw name and value bytes) and reads the answer.
async fn send(addr: SocketAddr, headers: &[(String, Vec<u8>)]) -> Outcome {
    let log = AuditLog::global();
    let before = log.all().len();
    let mut request = b"GET / HTTP/1.1\r\nhost: hostile\r\nconnection: close\r\n".to_vec();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything (a flood it refuses).
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let sandbox = text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|body| {
            // The body may be chunked: take the JSON object out of it.
            let start = body.find('{')?;
            let end = body.rfind('}')?;
            serde_json::from_str::<Value>(&body[start..=end]).ok()
        })
        .and_then(|v| v["sandbox"].as_str().map(str::to_owned));
    // The audit event is written before the response goes out.
    let audit = log.all()[before..]
        .iter()
        .filter(|r| r.get("direction").map(String::as_str) == Some("inbound"))
        .map(|r| {
            format!(
                "{}:{}",
                r.get("decision").map_or("-", String::as_str),
                r.get("reason").map_or("-", String::as_str)
            )
        })
        .collect();
    Outcome {
        status,
        sandbox,
        audit,
    }
}

fn baggage(value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    ("baggage".to_owned(), value.into())
}

fn header(name: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_owned(), value.into())
}

/// A hostile input: its name, its headers, and what is expected at the internal hop and at
/// the edge.
type Case = (&'static str, Vec<(String, Vec<u8>)>, Expect, Expect);

/// What the test expects of a case at one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Runs in this sandbox.
    Sandbox(&'static str),
    /// Runs as production (stripped, or nothing of ours in it).
    Production,
    /// Refused by prodbox with this status.
    Refused(u16),
    /// Refused by the HTTP server (hyper) before prodbox sees it, with this status.
    Server(u16),
}

impl Expect {
    fn holds(self, outcome: &Outcome) -> bool {
        match self {
            Self::Sandbox(key) => outcome.status == 200 && outcome.sandbox.as_deref() == Some(key),
            Self::Production => outcome.status == 200 && outcome.sandbox.is_none(),
            Self::Refused(status) => outcome.status == status && !outcome.audit.is_empty(),
            Self::Server(status) => outcome.status == status && outcome.audit.is_empty(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_stripped_or_refused() {
    let _ = AuditLog::global();
    let internal = serve(
        Router::new()
            .route("/", get(report))
            .layer(SandboxLayer::new(TrustPolicy::accept())),
    )
    .await;
    let keys = TokenKeys::new()
        .with_key("k2", SECRET)
        .expect("key")
        .with_verify_only_key("k1", OLD_SECRET)
        .expect("old key");
    let edge = serve(
        Router::new()
            .route("/", get(report))
            .layer(SandboxLayer::new(TrustPolicy::signed(
                keys.clone().retire("k1"),
            ))),
    )
    .await;

    let sandbox = prodbox_core::Sandbox::builder("hx-a")
        .expect("key")
        .actor("alice")
        .expect("actor")
        .build();
    let valid = keys.mint(&sandbox, Duration::from_secs(600)).expect("mint");
    let expired = keys
        .mint_at(
            &sandbox,
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .expect("mint");
    let old_keys = TokenKeys::new().with_key("k1", OLD_SECRET).expect("old");
    let retired = old_keys
        .mint(&sandbox, Duration::from_secs(600))
        .expect("mint");
    let forged = TokenKeys::new()
        .with_key("k2", b"a forger's secret of 32 bytes...")
        .expect("forger")
        .mint(&sandbox, Duration::from_secs(600))
        .expect("mint");
    let mut tampered = valid.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let other = prodbox_core::Sandbox::builder("hx-b").expect("key").build();
    let other_token = keys.mint(&other, Duration::from_secs(600)).expect("mint");

    let many_headers = |n: usize| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = (0..n).map(|i| baggage(format!("m{i}=v"))).collect();
        v.push(baggage("prodbox.sandbox=hx-a"));
        v
    };
    let long_member =
        |bytes: usize| baggage(format!("prodbox.sandbox=hx-a,pad={}", "x".repeat(bytes)));
    use Expect::{Production, Refused, Sandbox, Server};
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("well-formed sandbox baggage", vec![baggage("prodbox.sandbox=hx-a,prodbox.actor=alice")], Sandbox("hx-a"), Production),
        ("valid signed token", vec![baggage(format!("prodbox.token={valid}"))], Refused(401), Sandbox("hx-a")),
        ("the same valid token replayed", vec![baggage(format!("prodbox.token={valid}"))], Refused(401), Sandbox("hx-a")),
        ("expired token", vec![baggage(format!("prodbox.token={expired}"))], Refused(401), Production),
        ("token signed with a retired key (k1)", vec![baggage(format!("prodbox.token={retired}"))], Refused(401), Production),
        ("token with a forged signature", vec![baggage(format!("prodbox.token={forged}"))], Refused(401), Production),
        ("token with one byte changed", vec![baggage(format!("prodbox.token={tampered}"))], Refused(401), Production),
        ("valid token for hx-b plus plain key hx-a", vec![baggage(format!("prodbox.token={other_token},prodbox.sandbox=hx-a"))], Sandbox("hx-a"), Production),
        ("90 baggage headers (65+ members) mentioning a sandbox", many_headers(90), Refused(400), Production),
        ("150 headers (hyper's limit is 100)", many_headers(150), Server(431), Server(431)),
        ("one 9 KB baggage header (W3C limit 8192)", vec![long_member(9 * 1024)], Refused(400), Production),
        ("one 200 KB baggage header", vec![long_member(200 * 1024)], Refused(400), Production),
        ("a 1 MB header", vec![long_member(1024 * 1024)], Server(431), Server(431)),
        ("our member repeated 50 times, same value", vec![baggage(vec!["prodbox.sandbox=hx-a"; 50].join(","))], Sandbox("hx-a"), Production),
        ("our member twice, different values", vec![baggage("prodbox.sandbox=hx-a,prodbox.sandbox=hx-b")], Refused(400), Production),
        ("two headers disagreeing", vec![baggage("prodbox.sandbox=hx-a"), baggage("prodbox.sandbox=hx-b")], Refused(400), Production),
        ("baggage and a legacy carrier disagreeing", vec![baggage("prodbox.sandbox=hx-a"), header("ot-baggage-prodbox.sandbox", "hx-b")], Refused(400), Production),
        ("percent-encoded CRLF in the actor", vec![baggage("prodbox.sandbox=hx-a,prodbox.actor=alice%0D%0Ax-evil:%201")], Refused(400), Production),
        ("raw CR inside the header value", vec![baggage(b"prodbox.sandbox=hx-a\rx-evil: 1".to_vec())], Server(400), Server(400)),
        ("NUL byte, percent-encoded", vec![baggage("prodbox.sandbox=hx-a%00")], Refused(400), Production),
        ("invalid UTF-8 (raw 0xFF)", vec![baggage(b"prodbox.sandbox=hx-\xff".to_vec())], Refused(400), Production),
        ("overlong UTF-8, percent-encoded (%C0%AE)", vec![baggage("prodbox.sandbox=hx-a%C0%AE")], Refused(400), Production),
        ("percent-encoded hyphen (hx%2Da)", vec![baggage("prodbox.sandbox=hx%2Da")], Sandbox("hx-a"), Production),
        ("double percent-encoding (hx%252Da)", vec![baggage("prodbox.sandbox=hx%252Da")], Refused(400), Production),
        ("percent-encoded member name (prodbox%2Esandbox)", vec![baggage("prodbox%2Esandbox=hx-a")], Production, Production),
        ("Cyrillic 'р' in the key (рr-42)", vec![baggage("prodbox.sandbox=рr-42")], Refused(400), Production),
        ("fullwidth key (ｈｘ-a)", vec![baggage("prodbox.sandbox=ｈｘ-a")], Refused(400), Production),
        ("Cyrillic 'о' in our member name", vec![baggage("prodbox.sandbоx=hx-a")], Refused(400), Production),
        ("our member name in upper case", vec![baggage("Prodbox.Sandbox=hx-a")], Refused(400), Production),
        ("upper-case key (HX-A)", vec![baggage("prodbox.sandbox=HX-A")], Refused(400), Production),
        ("key of 64 characters", vec![baggage(format!("prodbox.sandbox={}", "a".repeat(64)))], Refused(400), Production),
        ("SQL-looking key", vec![baggage("prodbox.sandbox=x');DROP TABLE orders;--")], Refused(400), Production),
        ("alias sd-routing-key from outside", vec![baggage("sd-routing-key=hx-a")], Production, Production),
    ];

    let mut table = String::from(
        "| input | internal hop (`Accept`) | public edge (`Signed`, strip) |\n|---|---|---|\n",
    );
    let mut wrong = Vec::new();
    for (name, headers, at_internal, at_edge) in &cases {
        let inside = send(internal, headers).await;
        let outside = send(edge, headers).await;
        table.push_str(&format!(
            "| {name} | {} | {} |\n",
            inside.describe(),
            outside.describe()
        ));
        if !at_internal.holds(&inside) {
            wrong.push(format!(
                "{name}: internal hop expected {at_internal:?}, got {inside:?}"
            ));
        }
        if !at_edge.holds(&outside) {
            wrong.push(format!(
                "{name}: edge expected {at_edge:?}, got {outside:?}"
            ));
        }
        // The safety property, whatever the table says.
        if let Some(key) = &outside.sandbox {
            assert!(
                name.contains("valid") && !name.contains("plain key"),
                "{name}: the edge made {key} a sandbox without a valid token"
            );
        }
    }
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
}
