//! The members that are not ours: kept exactly as written, in arrival order, to pass on.

use std::sync::Arc;

use super::member::push_member;
use super::scan::trim_ows;
use super::{Codec, Member};

/// Baggage members that are not ours, in arrival order, exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignMembers {
    /// `None` when empty, so the common case allocates nothing.
    raw: Option<Arc<str>>,
    count: usize,
}

impl ForeignMembers {
    /// The members joined with `,`, as they would be written.
    pub fn as_str(&self) -> &str {
        self.raw.as_deref().unwrap_or_default()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each member as written.
    pub fn iter_raw(&self) -> impl Iterator<Item = &str> {
        self.as_str().split(',').filter(|m| !m.is_empty())
    }

    /// Members from raw list-members (each must parse; others are skipped).
    pub(crate) fn from_raw_members<'a>(members: impl IntoIterator<Item = &'a str>) -> Self {
        let mut raw = String::new();
        let mut count = 0;
        for member in members.into_iter().map(trim_ows) {
            if Member::parse(member).is_ok() {
                push_member(&mut raw, member);
                count += 1;
            }
        }
        Self::new(raw, count)
    }

    fn new(raw: String, count: usize) -> Self {
        Self {
            raw: (!raw.is_empty()).then(|| Arc::from(raw)),
            count,
        }
    }

    /// These members without any that `codec` counts as ours (our namespace in any case, its
    /// aliases, other tools' known routing keys): what an untrusted edge may pass on.
    pub fn without_ours(&self, codec: &Codec) -> Self {
        let ours = |raw: &str| Member::parse(raw).map_or(true, |m| codec.is_ours(m.key));
        if !self.iter_raw().any(ours) {
            return self.clone();
        }
        Self::from_raw_members(self.iter_raw().filter(|raw| !ours(raw)))
    }

    /// Each member, parsed.
    pub fn iter(&self) -> impl Iterator<Item = Member<'_>> {
        self.iter_raw().filter_map(|raw| Member::parse(raw).ok())
    }
}

/// Collects the foreign members of one message: the common single member is shared straight
/// from the header text, without joining it into a string first.
#[derive(Default)]
pub(super) struct ForeignBuilder<'a> {
    first: &'a str,
    joined: String,
    count: usize,
}

impl<'a> ForeignBuilder<'a> {
    pub(super) fn push(&mut self, raw: &'a str) {
        match self.count {
            0 => self.first = raw,
            1 => {
                push_member(&mut self.joined, self.first);
                push_member(&mut self.joined, raw);
            }
            _ => push_member(&mut self.joined, raw),
        }
        self.count += 1;
    }

    pub(super) fn finish(self) -> ForeignMembers {
        let raw: Option<Arc<str>> = match self.count {
            0 => None,
            1 => Some(Arc::from(self.first)),
            _ => Some(Arc::from(self.joined)),
        };
        ForeignMembers {
            raw: raw.filter(|raw| !raw.is_empty()),
            count: self.count,
        }
    }
}
