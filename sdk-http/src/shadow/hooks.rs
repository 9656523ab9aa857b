//! The pluggable parts of shadowing: what a copy loses before it leaves ([`Scrub`]) and how the
//! two responses are compared ([`Compare`]).

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION};
use http::request::Parts;
use http::{HeaderMap, StatusCode};

/// A response seen by the shadow layer: the baseline's (as it streamed to the caller) or the
/// fork's, with its body up to [`compare_body`](super::ShadowLayer::compare_body) bytes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Observed {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The trailers, if any (gRPC puts `grpc-status` there).
    pub trailers: Option<HeaderMap>,
    /// The body, up to the bound.
    pub body: Bytes,
    /// Whether `body` is incomplete: the body was longer than the bound, failed, or was not read
    /// to its end.
    pub truncated: bool,
}

impl Observed {
    /// A response with `status`, no headers and an empty, complete body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            trailers: None,
            body: Bytes::new(),
            truncated: false,
        }
    }
}

/// A scrub hook refused to let a copy leave (it could not remove what it must); the copy is
/// dropped with reason `scrub_failed`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shadow copy not sent: {message}")]
pub struct ScrubError {
    message: String,
}

impl ScrubError {
    /// A refusal that says why.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Removes personal data from a copy before it leaves for the fork. Runs on the shadow worker,
/// never on the baseline request's path.
///
/// Closures `Fn(&mut http::request::Parts, &mut Bytes) -> Result<(), ScrubError>` implement it.
/// An error drops the copy: when in doubt, personal data stays home.
pub trait Scrub: Send + Sync + 'static {
    /// Edits the copy's head (method, URI, headers) and body in place.
    fn scrub(&self, head: &mut Parts, body: &mut Bytes) -> Result<(), ScrubError>;
}

impl<F> Scrub for F
where
    F: Fn(&mut Parts, &mut Bytes) -> Result<(), ScrubError> + Send + Sync + 'static,
{
    fn scrub(&self, head: &mut Parts, body: &mut Bytes) -> Result<(), ScrubError> {
        self(head, body)
    }
}

/// The default scrub: removes `authorization`, `cookie` and `proxy-authorization`, plus any
/// header added with [`header`](Self::header), and removes the JSON fields named with
/// [`json_field`](Self::json_field) at any depth of a JSON body.
///
/// With JSON fields configured, a non-empty body that is not JSON is refused (the copy is
/// dropped): the fields could not be found, so they could not be removed.
#[derive(Debug, Clone)]
pub struct DefaultScrub {
    headers: Vec<HeaderName>,
    json_fields: Vec<String>,
}

impl Default for DefaultScrub {
    fn default() -> Self {
        Self {
            headers: vec![AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION],
            json_fields: Vec::new(),
        }
    }
}

impl DefaultScrub {
    /// Removes `authorization`, `cookie` and `proxy-authorization`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also removes header `name`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.headers.push(name);
        self
    }

    /// Also removes every JSON object member named `field`, at any depth of the body.
    pub fn json_field(mut self, field: &str) -> Self {
        self.json_fields.push(field.to_owned());
        self
    }
}

impl Scrub for DefaultScrub {
    fn scrub(&self, head: &mut Parts, body: &mut Bytes) -> Result<(), ScrubError> {
        for name in &self.headers {
            head.headers.remove(name);
        }
        if self.json_fields.is_empty() || body.is_empty() {
            return Ok(());
        }
        let mut value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ScrubError::new(format!("body is not JSON ({e}); fields not removed")))?;
        if remove_fields(&mut value, &self.json_fields) {
            let bytes = serde_json::to_vec(&value)
                .map_err(|e| ScrubError::new(format!("scrubbed body not written: {e}")))?;
            *body = Bytes::from(bytes);
        }
        Ok(())
    }
}

/// Removes `fields` from every object in `value`; returns whether anything was removed.
fn remove_fields(value: &mut serde_json::Value, fields: &[String]) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let mut removed = false;
            for field in fields {
                removed |= map.remove(field).is_some();
            }
            for nested in map.values_mut() {
                removed |= remove_fields(nested, fields);
            }
            removed
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |removed, item| remove_fields(item, fields) | removed),
        _ => false,
    }
}

/// Compares the baseline's response with the fork's; a difference (a sentence) is reported as an
/// audit event (decision `shadowed`, reason `differs`) and counted as `differing`.
///
/// Closures `Fn(&Observed, &Observed) -> Option<String>` implement it.
pub trait Compare: Send + Sync + 'static {
    /// The difference between `baseline` and `shadow`, if they differ.
    fn compare(&self, baseline: &Observed, shadow: &Observed) -> Option<String>;
}

impl<F> Compare for F
where
    F: Fn(&Observed, &Observed) -> Option<String> + Send + Sync + 'static,
{
    fn compare(&self, baseline: &Observed, shadow: &Observed) -> Option<String> {
        self(baseline, shadow)
    }
}

/// Compares statuses, the `grpc-status` (from trailers or headers), and bodies when both were
/// observed completely. Headers are not compared (dates, request ids and the like always differ).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCompare;

impl Compare for DefaultCompare {
    fn compare(&self, baseline: &Observed, shadow: &Observed) -> Option<String> {
        if baseline.status != shadow.status {
            return Some(format!(
                "status {} (baseline) vs {} (shadow)",
                baseline.status.as_u16(),
                shadow.status.as_u16()
            ));
        }
        let grpc = |o: &Observed| {
            o.trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| o.headers.get("grpc-status"))
                .cloned()
        };
        let (base, fork) = (grpc(baseline), grpc(shadow));
        if base != fork {
            return Some(format!(
                "grpc-status {base:?} (baseline) vs {fork:?} (shadow)"
            ));
        }
        if baseline.truncated || shadow.truncated || baseline.body == shadow.body {
            return None;
        }
        let at = baseline
            .body
            .iter()
            .zip(shadow.body.iter())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| baseline.body.len().min(shadow.body.len()));
        Some(format!(
            "bodies differ from byte {at} ({} bytes baseline, {} bytes shadow)",
            baseline.body.len(),
            shadow.body.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scrub_removes_credentials_and_nested_fields() {
        let (mut head, ()) = http::Request::post("/x")
            .header("authorization", "Bearer t")
            .header("cookie", "a=b")
            .header("x-keep", "1")
            .body(())
            .map(http::Request::into_parts)
            .expect("a valid request");
        let mut body = Bytes::from_static(br#"{"email":"a@b","items":[{"email":"c","n":1}]}"#);
        DefaultScrub::new()
            .json_field("email")
            .scrub(&mut head, &mut body)
            .expect("scrubbed");
        assert!(head.headers.get("authorization").is_none());
        assert!(head.headers.get("cookie").is_none());
        assert_eq!(head.headers["x-keep"], "1");
        assert_eq!(body, r#"{"items":[{"n":1}]}"#);

        let mut text = Bytes::from_static(b"email=a@b");
        assert!(
            DefaultScrub::new()
                .json_field("email")
                .scrub(&mut head, &mut text)
                .is_err()
        );
    }

    #[test]
    fn the_default_compare_reports_status_and_body() {
        let a = Observed::new(StatusCode::OK);
        let mut b = Observed::new(StatusCode::OK);
        assert_eq!(DefaultCompare.compare(&a, &b), None);
        b.body = Bytes::from_static(b"x");
        assert!(DefaultCompare.compare(&a, &b).is_some());
        b.truncated = true;
        assert_eq!(DefaultCompare.compare(&a, &b), None);
        let c = Observed::new(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            DefaultCompare.compare(&a, &c).as_deref(),
            Some("status 200 (baseline) vs 500 (shadow)")
        );
    }
}
