//! Where a sandboxed call to a service goes: the sandbox's fork or the baseline, and why it fell
//! back. The one decision every protocol's routing asks; what a protocol can reach (HTTPS, TLS)
//! stays in its own crate.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use prodbox_core::directory::{ForkRoute, MemoryDirectory, SandboxEntry, fork_route};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = MemoryDirectory::new();
//! directory.upsert(SandboxEntry::new("pr-42".parse()?).fork("billing", "http://127.0.0.1:9001".parse()?));
//!
//! let now = SystemTime::now();
//! match fork_route(&directory, &"pr-42".parse()?, "billing", now) {
//!     ForkRoute::Fork(address) => assert_eq!(address.authority().as_str(), "127.0.0.1:9001"),
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(fork_route(&directory, &"pr-42".parse()?, "orders", now), ForkRoute::Baseline));
//! assert!("http://127.0.0.1:9001/prefix".parse::<prodbox_core::directory::ForkAddress>().is_err());
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use http::Uri;
use http::uri::{Authority, Scheme};

use super::{Directory, SandboxEntry};
use crate::sandbox::SandboxKey;

/// A fork's base address: `http://host[:port]` or `https://host[:port]`, with nothing after the
/// authority but an optional `/`, and no user info. Checked once, where it enters (the
/// directory's sources, the CLI, [`SandboxEntry::fork`]), so routing never meets a bad one.
///
/// Serialized as its text; deserializing checks it.
#[derive(Clone)]
pub struct ForkAddress {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority/`, kept for clients that connect by URI.
    uri: Uri,
}

/// A fork address that is not `http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fork address {address:?}: expected http://host[:port] or https://host[:port]")]
pub struct InvalidForkAddress {
    address: String,
}

impl ForkAddress {
    /// The scheme: `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `scheme://authority/`, for clients that connect by URI (a tonic `Endpoint`).
    pub fn to_uri(&self) -> Uri {
        self.uri.clone()
    }

    /// Whether calls to this fork need TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl FromStr for ForkAddress {
    type Err = InvalidForkAddress;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidForkAddress {
            address: address.chars().take(256).collect(),
        };
        let parts = address.parse::<Uri>().map_err(|_| invalid())?.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err(invalid());
        };
        let scheme_ok = scheme == Scheme::HTTP || scheme == Scheme::HTTPS;
        // A path would be dropped by routing (only scheme and authority are replaced), and
        // user info would be sent to the fork in every `Host` header.
        let bare = parts.path_and_query.is_none_or(|p| p.as_str() == "/");
        let host_ok = !authority.host().is_empty() && !authority.as_str().contains('@');
        if !(scheme_ok && bare && host_ok) {
            return Err(invalid());
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme.clone());
        uri.authority = Some(authority.clone());
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::from_parts(uri).map_err(|_| invalid())?;
        Ok(Self {
            scheme,
            authority,
            uri,
        })
    }
}

impl TryFrom<&str> for ForkAddress {
    type Error = InvalidForkAddress;

    fn try_from(address: &str) -> Result<Self, Self::Error> {
        address.parse()
    }
}

impl TryFrom<String> for ForkAddress {
    type Error = InvalidForkAddress;

    fn try_from(address: String) -> Result<Self, Self::Error> {
        address.parse()
    }
}

// Equal by scheme and authority alone (`uri` follows from them).
impl PartialEq for ForkAddress {
    fn eq(&self, other: &Self) -> bool {
        self.scheme == other.scheme && self.authority == other.authority
    }
}

impl Eq for ForkAddress {}

impl std::hash::Hash for ForkAddress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scheme.as_str().hash(state);
        self.authority.hash(state);
    }
}

impl fmt::Display for ForkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Debug for ForkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for ForkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ForkAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a sandboxed call to a service goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkRoute {
    /// The sandbox does not fork the service (or the directory does not know it): the baseline,
    /// as for any call. Nothing to audit.
    Baseline,
    /// The sandbox's fork, at this address.
    Fork(ForkAddress),
    /// The sandbox forks the service, but the call goes to the baseline; audited.
    Fallback(Fallback),
}

/// Why a call to a forked service goes to the baseline. The call keeps its sandbox context, so
/// the baseline isolates its effects: routing fails open, data isolation does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// The directory has lost its source for longer than its staleness bound.
    DirectoryStale,
    /// The sandbox is disabled or expired.
    Inactive,
    /// The fork's address is one this protocol cannot reach (HTTPS where there is no TLS).
    Unreachable,
}

impl Fallback {
    /// The audit reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::DirectoryStale => "fallback_directory_stale",
            Self::Inactive => "fallback_fork_inactive",
            Self::Unreachable => "fallback_invalid_fork_address",
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DirectoryStale => "the directory is stale",
            Self::Inactive => "the sandbox is disabled or expired",
            Self::Unreachable => "the fork's address cannot be reached by this client",
        })
    }
}

impl SandboxEntry {
    /// Where this sandbox's calls to `service` go at `now`, from a directory that is `stale` or
    /// not. See [`fork_route`].
    pub fn fork_route(&self, service: &str, now: SystemTime, stale: bool) -> ForkRoute {
        let Some(address) = self.fork_of(service) else {
            return ForkRoute::Baseline;
        };
        if stale {
            ForkRoute::Fallback(Fallback::DirectoryStale)
        } else if self.disabled || self.is_expired_at(now) {
            ForkRoute::Fallback(Fallback::Inactive)
        } else {
            ForkRoute::Fork(address.clone())
        }
    }
}

/// Where sandbox `key`'s calls to `service` go at `now`: its fork while it is active and the
/// directory fresh; the baseline, silently, when it forks nothing there; otherwise the baseline
/// with the [`Fallback`] to audit.
pub fn fork_route(
    directory: &dyn Directory,
    key: &SandboxKey,
    service: &str,
    now: SystemTime,
) -> ForkRoute {
    match directory.get(key) {
        Some(entry) => entry.fork_route(service, now, directory.is_stale()),
        None => ForkRoute::Baseline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_http_or_https_authority_is_a_fork_address() {
        for good in [
            "http://127.0.0.1:9001",
            "http://billing-fork",
            "https://billing.pr-42.example:8443/",
            "http://[::1]:9001",
        ] {
            let address: ForkAddress = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(address.to_string(), good.trim_end_matches('/'));
        }
        for bad in [
            "",
            "fork",
            "not an address",
            "127.0.0.1:9001",
            "/relative",
            "ftp://host",
            "grpc://host:1",
            "http://host:1/prefix",
            "http://host:1/?q=1",
            "http://user:secret@host:1",
            "http://",
        ] {
            assert!(bad.parse::<ForkAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_file_or_row_with_a_bad_address_does_not_deserialize() {
        let ok: ForkAddress = serde_json::from_str("\"https://fork:1\"").unwrap();
        assert!(ok.is_https());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"https://fork:1\"");
        assert!(serde_json::from_str::<ForkAddress>("\"fork\"").is_err());
    }

    #[test]
    fn the_route_says_why_it_falls_back() {
        let key: SandboxKey = "pr-1".parse().unwrap();
        let address: ForkAddress = "http://fork:1".parse().unwrap();
        let entry = SandboxEntry::new(key).fork("billing", address.clone());
        let now = SystemTime::now();
        assert_eq!(entry.fork_route("orders", now, true), ForkRoute::Baseline);
        assert_eq!(
            entry.fork_route("billing", now, false),
            ForkRoute::Fork(address)
        );
        assert_eq!(
            entry.fork_route("billing", now, true),
            ForkRoute::Fallback(Fallback::DirectoryStale)
        );
        let disabled = entry.clone().disabled(true);
        assert_eq!(
            disabled.fork_route("billing", now, false),
            ForkRoute::Fallback(Fallback::Inactive)
        );
        let expired = entry.expires_at(now);
        assert_eq!(
            expired.fork_route("billing", now, false),
            ForkRoute::Fallback(Fallback::Inactive)
        );
    }
}
