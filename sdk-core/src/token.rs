//! Signed, expiring sandbox tokens for a [`Signed`](crate::TrustPolicy::signed) edge.
//!
//! A token is `v1.<key id>.<claims>.<signature>`: the claims are base64url JSON (sandbox key,
//! actor, origin, issued-at and expiry in Unix seconds, and the creation of the sandbox's
//! incarnation in Unix microseconds when known) and the signature is HMAC-SHA256 over
//! everything before it. Key ids let you rotate: mint with the new key while the old one still
//! verifies, then retire the old one.
//!
//! A verifier refuses tokens that live longer than its maximum (24 hours by default, see
//! [`TokenKeys::max_lifetime`]), whatever their expiry says. A token minted for a sandbox with
//! a creation time (as `prodbox token mint` does, from the directory) admits only that
//! incarnation: an ingress with a directory refuses it once the sandbox has been deleted and
//! made again under the same key, and refuses a token without one for a sandbox whose creation
//! the directory knows.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use prodbox_core::{Sandbox, token::TokenKeys};
//!
//! let keys = TokenKeys::new().with_key("2026-11", b"a secret of at least 32 bytes....")?;
//! let sandbox = Sandbox::builder("pr-42")?.actor("alice")?.build();
//! let token = keys.mint(&sandbox, Duration::from_secs(3600))?;
//!
//! let verified = keys.verify(&token, SystemTime::now())?;
//! assert_eq!(verified.key().as_str(), "pr-42");
//! assert_eq!(verified.actor(), Some("alice"));
//!
//! // A token signed with another secret is refused.
//! let forger = TokenKeys::new().with_key("2026-11", b"not the secret, but long enough.")?;
//! let forged = forger.mint(&sandbox, Duration::from_secs(3600))?;
//! assert!(keys.verify(&forged, SystemTime::now()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::limits::{DEFAULT_MAX_TOKEN_LIFETIME, DEFAULT_TOKEN_LEEWAY, MAX_TOKEN_LEN};
use crate::sandbox::{Sandbox, SandboxBuilder, SandboxKey};

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
/// Shortest secret accepted: the HMAC-SHA256 block of entropy the algorithm can use.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a token could not be minted or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes long; the limit is 1024")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not of the form `v1.<kid>.<claims>.<signature>`.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// Signed with a key id this service does not know (never issued, or retired).
    #[error("token is signed with unknown or retired key id {0:?}")]
    UnknownKey(String),
    /// The signature does not match: forged or altered.
    #[error("token signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired {ago_secs} s ago")]
    Expired {
        /// Seconds since it expired.
        ago_secs: u64,
    },
    /// Issued in the future (beyond the clock-skew leeway).
    #[error("token is issued in the future")]
    NotYetValid,
    /// The claims are signed but invalid (a bad sandbox key, say).
    #[error("token claims are invalid: {0}")]
    InvalidClaims(String),
    /// Minting needs an active key.
    #[error("no active signing key; add one with `with_key`")]
    NoActiveKey,
    /// A secret shorter than [`MIN_SECRET_LEN`].
    #[error("signing secret for key id {0:?} is shorter than 32 bytes")]
    WeakSecret(String),
    /// A key id outside `[A-Za-z0-9_-]{1,32}`.
    #[error("key id {0:?} must be 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidKeyId(String),
    /// Minting for a sandbox that has expired (or expires within the second).
    #[error("sandbox {0} has expired; no token is minted for it")]
    SandboxExpired(String),
    /// The token's lifetime (expiry minus issue time) is longer than the verifier accepts, or
    /// than the keyring mints.
    #[error("token lifetime of {secs} s is longer than the maximum of {max_secs} s")]
    LifetimeTooLong {
        /// Its lifetime.
        secs: u64,
        /// The maximum.
        max_secs: u64,
    },
    /// The token was minted for another incarnation of its sandbox (deleted and made again under
    /// the same key since), or names none where the directory knows the sandbox's creation.
    #[error("token was minted for another incarnation of sandbox {0}")]
    OtherIncarnation(String),
}

impl TokenError {
    /// A short stable name for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } | Self::Malformed(_) => "token_malformed",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired { .. } => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::InvalidClaims(_) => "token_invalid_claims",
            Self::NoActiveKey | Self::WeakSecret(_) | Self::InvalidKeyId(_) => "token_config",
            Self::SandboxExpired(_) => "sandbox_expired",
            Self::LifetimeTooLong { .. } => "token_lifetime_too_long",
            Self::OtherIncarnation(_) => "token_other_incarnation",
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    sbx: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    iat: u64,
    exp: u64,
    /// When the sandbox's incarnation was created, in Unix microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crt: Option<u64>,
}

/// A keyring of HMAC secrets by key id: one active for minting, all of them for verifying.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct TokenKeys {
    keys: Arc<HashMap<String, Vec<u8>>>,
    active: Option<String>,
    leeway: Option<Duration>,
    max_lifetime: Option<Duration>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("TokenKeys")
            .field("key_ids", &ids)
            .field("active", &self.active)
            .field("max_lifetime_secs", &self.max_lifetime_secs())
            .finish()
    }
}

impl TokenKeys {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret under `kid` and makes it the active key for minting.
    pub fn with_key(mut self, kid: &str, secret: &[u8]) -> Result<Self, TokenError> {
        if kid.is_empty()
            || kid.len() > 32
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TokenError::InvalidKeyId(kid.to_owned()));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret(kid.to_owned()));
        }
        Arc::make_mut(&mut self.keys).insert(kid.to_owned(), secret.to_vec());
        self.active = Some(kid.to_owned());
        Ok(self)
    }

    /// Adds a secret that verifies but does not mint (the previous key during a rotation).
    pub fn with_verify_only_key(self, kid: &str, secret: &[u8]) -> Result<Self, TokenError> {
        let active = self.active.clone();
        let mut this = self.with_key(kid, secret)?;
        this.active = active;
        Ok(this)
    }

    /// Removes `kid`: tokens signed with it are refused from now on.
    pub fn retire(mut self, kid: &str) -> Self {
        Arc::make_mut(&mut self.keys).remove(kid);
        if self.active.as_deref() == Some(kid) {
            self.active = None;
        }
        self
    }

    crate::plumbing::setters! {
        /// Clock skew tolerated on expiry and issue time (default 30 s).
        leeway(leeway: Duration) => leeway = Some(leeway);

        /// The longest lifetime (expiry minus issue time) a token may have: longer ones are neither
        /// minted nor accepted (default [`DEFAULT_MAX_TOKEN_LIFETIME`], 24 hours).
        max_lifetime(max: Duration) => max_lifetime = Some(max);
    }

    fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime
            .unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME)
            .as_secs()
    }

    /// Mints a token for `sandbox` valid for `ttl` from now, or until the sandbox expires if
    /// that comes first: a token never outlives its sandbox (beyond the verifier's clock-skew
    /// leeway). A `ttl` longer than [`max_lifetime`](Self::max_lifetime) is refused. When the
    /// sandbox has a [creation time](Sandbox::created_at), the token admits only that
    /// incarnation of it.
    pub fn mint(&self, sandbox: &Sandbox, ttl: Duration) -> Result<String, TokenError> {
        self.mint_at(sandbox, SystemTime::now(), ttl)
    }

    /// Mints a token as if `now` were the current time.
    pub fn mint_at(
        &self,
        sandbox: &Sandbox,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let kid = self.active.as_deref().ok_or(TokenError::NoActiveKey)?;
        let secret = self.keys.get(kid).ok_or(TokenError::NoActiveKey)?;
        let iat = unix_secs(now);
        let lifetime = ttl.as_secs().max(1);
        let max_secs = self.max_lifetime_secs();
        if lifetime > max_secs {
            return Err(TokenError::LifetimeTooLong {
                secs: lifetime,
                max_secs,
            });
        }
        let mut exp = iat.saturating_add(lifetime);
        if let Some(expires_at) = sandbox.expires_at() {
            // Whole seconds, rounded down: the token stops first.
            exp = exp.min(unix_secs(expires_at));
            if exp <= iat {
                return Err(TokenError::SandboxExpired(sandbox.key().to_string()));
            }
        }
        let claims = Claims {
            sbx: sandbox.key().as_str().to_owned(),
            act: sandbox.actor().map(str::to_owned),
            org: sandbox.origin().map(str::to_owned),
            iat,
            exp,
            crt: sandbox.created_at().map(micros),
        };
        let json =
            serde_json::to_vec(&claims).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        let mut token = format!("{VERSION}.{kid}.{}", B64.encode(json));
        let signature = sign(secret, token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature));
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: token.len() });
        }
        Ok(token)
    }

    /// Verifies `token` at `now` and returns the sandbox it grants, expiring when the token
    /// stops being accepted (its expiry plus the leeway).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Sandbox, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: token.len() });
        }
        let (signed, signature) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("expected 4 dot-separated parts"))?;
        let mut parts = signed.splitn(3, '.');
        let (Some(version), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected 4 dot-separated parts"));
        };
        if version != VERSION {
            return Err(TokenError::Malformed("unknown version"));
        }
        let secret = self
            .keys
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.chars().take(32).collect()))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::BadSignature)?;
        mac.update(signed.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;

        // Only signed bytes are parsed from here on.
        let json = B64
            .decode(payload)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims =
            serde_json::from_slice(&json).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        let leeway = self.leeway.unwrap_or(DEFAULT_TOKEN_LEEWAY).as_secs();
        let now_secs = unix_secs(now);
        if claims.exp.saturating_add(leeway) <= now_secs {
            return Err(TokenError::Expired {
                ago_secs: now_secs - claims.exp,
            });
        }
        if claims.iat > now_secs.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
        let (lifetime, max_secs) = (
            claims.exp.saturating_sub(claims.iat),
            self.max_lifetime_secs(),
        );
        if lifetime > max_secs {
            return Err(TokenError::LifetimeTooLong {
                secs: lifetime,
                max_secs,
            });
        }
        let key =
            SandboxKey::new(&claims.sbx).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        // The sandbox lives as long as the token is accepted, leeway included, so that an
        // ingress checking the sandbox's expiry agrees with this check.
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp.saturating_add(leeway)))
            .ok_or_else(|| TokenError::InvalidClaims("expiry out of range".to_owned()))?;
        let mut builder = SandboxBuilder::from_key(key).expires_at(expires_at);
        if let Some(created) = claims.crt {
            builder = builder.created_at(UNIX_EPOCH + Duration::from_micros(created));
        }
        if let Some(actor) = &claims.act {
            builder = builder
                .actor(actor)
                .map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        }
        if let Some(origin) = &claims.org {
            builder = builder
                .origin(origin)
                .map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        }
        Ok(builder.build())
    }
}

fn sign(secret: &[u8], data: &[u8]) -> Vec<u8> {
    // Any key length is valid for HMAC; `with_key` already enforced a minimum.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` in Unix microseconds: the precision a sandbox's creation is compared at (PostgreSQL's).
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn sandbox() -> Sandbox {
        Sandbox::builder("pr-42")
            .unwrap()
            .actor("alice")
            .unwrap()
            .origin("pr-42")
            .unwrap()
            .build()
    }

    #[test]
    fn round_trip_keeps_claims_and_sets_expiry() {
        let keys = TokenKeys::new().with_key("k1", SECRET).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = keys
            .mint_at(&sandbox(), now, Duration::from_secs(60))
            .unwrap();
        let got = keys.verify(&token, now).unwrap();
        assert_eq!(got.key().as_str(), "pr-42");
        assert_eq!(got.actor(), Some("alice"));
        assert_eq!(got.origin(), Some("pr-42"));
        assert_eq!(
            got.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_060 + 30)),
            "expiry plus the default leeway"
        );
    }

    #[test]
    fn a_token_never_outlives_its_sandbox() {
        let keys = TokenKeys::new().with_key("k1", SECRET).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expiring = |secs: u64| {
            Sandbox::builder("pr-43")
                .unwrap()
                .expires_at(now + Duration::from_millis(secs))
                .build()
        };
        // An hour asked for, ten minutes left: ten minutes (plus the leeway); a shorter ttl
        // than the sandbox's is kept.
        for (asked, lasts) in [(3600, 600), (60, 60)] {
            let token = keys
                .mint_at(&expiring(600_000), now, Duration::from_secs(asked))
                .unwrap();
            assert_eq!(
                keys.verify(&token, now).unwrap().expires_at(),
                Some(now + Duration::from_secs(lasts + 30))
            );
        }
        // Expired, or expiring within the second: refused.
        for millis in [0, 999] {
            assert_eq!(
                keys.mint_at(&expiring(millis), now, Duration::from_secs(60)),
                Err(TokenError::SandboxExpired("pr-43".to_owned()))
            );
        }
        assert_eq!(
            TokenError::SandboxExpired(String::new()).reason(),
            "sandbox_expired"
        );
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let keys = TokenKeys::new()
            .with_key("k1", SECRET)
            .unwrap()
            .leeway(Duration::ZERO);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = keys
            .mint_at(&sandbox(), now, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            keys.verify(&token, now + Duration::from_secs(61)),
            Err(TokenError::Expired { ago_secs: 1 })
        );
        assert_eq!(
            keys.verify(&token, now - Duration::from_secs(10)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn tampering_forgery_and_retired_keys_are_refused() {
        let keys = TokenKeys::new().with_key("k1", SECRET).unwrap();
        let now = SystemTime::now();
        let token = keys
            .mint_at(&sandbox(), now, Duration::from_secs(60))
            .unwrap();

        // Swap the claims for another sandbox's, keeping the signature.
        let other = keys
            .mint_at(
                &Sandbox::new("prod".parse().unwrap()),
                now,
                Duration::from_secs(60),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let spliced = format!("v1.k1.{}.{}", other_parts[2], parts[3]);
        assert_eq!(keys.verify(&spliced, now), Err(TokenError::BadSignature));

        let forger = TokenKeys::new().with_key("k1", OTHER).unwrap();
        let forged = forger
            .mint_at(&sandbox(), now, Duration::from_secs(60))
            .unwrap();
        assert_eq!(keys.verify(&forged, now), Err(TokenError::BadSignature));

        let rotated = keys.clone().with_key("k2", OTHER).unwrap();
        assert!(
            rotated.verify(&token, now).is_ok(),
            "old key still verifies"
        );
        let retired = rotated.retire("k1");
        assert_eq!(
            retired.verify(&token, now),
            Err(TokenError::UnknownKey("k1".into()))
        );

        for junk in ["", "v1", "v1.k1.x", "v2.k1.e30.AAAA", "v1.k1.e30.!!!!"] {
            assert!(keys.verify(junk, now).is_err(), "{junk}");
        }
        assert!(matches!(
            keys.verify(&"a".repeat(2000), now),
            Err(TokenError::TooLong { .. })
        ));
    }

    #[test]
    fn weak_secrets_and_bad_key_ids_are_refused() {
        assert!(matches!(
            TokenKeys::new().with_key("k1", b"short"),
            Err(TokenError::WeakSecret(_))
        ));
        assert!(matches!(
            TokenKeys::new().with_key("k 1", SECRET),
            Err(TokenError::InvalidKeyId(_))
        ));
        let debug = format!("{:?}", TokenKeys::new().with_key("k1", SECRET).unwrap());
        assert!(!debug.contains("0123456789"), "{debug}");
    }
}
