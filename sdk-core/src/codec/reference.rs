//! The plain reference parser the tests hold the one-pass scanner to: split on `,`, then trim.
//!
//! Too slow for every message, but plainly right.

use super::scan::{find_either, trim_ows};

/// `s` split around the first ASCII byte `sep` (a character boundary on both sides).
fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let at = find_either(s.as_bytes(), sep, sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// The comma-separated list-members of `text`, trimmed, empty ones skipped: the plain
/// reference the tests hold `ScannedMembers` to.
pub(super) fn list_members(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        loop {
            let current = rest?;
            let member = match split_once_byte(current, b',') {
                Some((member, tail)) => {
                    rest = Some(tail);
                    member
                }
                None => {
                    rest = None;
                    current
                }
            };
            let member = trim_ows(member);
            if !member.is_empty() {
                return Some(member);
            }
        }
    })
}
