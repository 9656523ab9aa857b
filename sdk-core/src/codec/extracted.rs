//! What extraction hands back: the claimed sandbox, not yet trusted, and everything else.

use super::ForeignMembers;
use crate::sandbox::{Sandbox, SandboxKey};

/// What [`Codec::extract`](super::Codec::extract) found: the claimed sandbox (not yet trusted)
/// and everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub(super) claimed: bool,
    pub(super) sandbox: Option<Sandbox>,
    pub(super) token: Option<Box<str>>,
    pub(super) foreign: ForeignMembers,
}

impl Extracted {
    /// What a carrier with neither `baggage` nor a legacy carrier holds.
    pub(super) fn nothing() -> Self {
        Self {
            claimed: false,
            sandbox: None,
            token: None,
            foreign: ForeignMembers::default(),
        }
    }

    /// Whether any member or carrier of ours was present, valid or not yet verified.
    pub fn claims_anything(&self) -> bool {
        self.claimed
    }

    /// The claimed sandbox key.
    pub fn key(&self) -> Option<&SandboxKey> {
        self.sandbox.as_ref().map(Sandbox::key)
    }

    /// The claimed actor (read only alongside a key).
    pub fn actor(&self) -> Option<&str> {
        self.sandbox.as_ref().and_then(Sandbox::actor)
    }

    /// The claimed origin (read only alongside a key).
    pub fn origin(&self) -> Option<&str> {
        self.sandbox.as_ref().and_then(Sandbox::origin)
    }

    /// The signed token, if one arrived.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Members that are not ours.
    pub fn foreign(&self) -> &ForeignMembers {
        &self.foreign
    }

    /// The claimed sandbox, as sent (unverified): key, actor and origin.
    pub fn sandbox(&self) -> Option<Sandbox> {
        self.sandbox.clone()
    }
}
