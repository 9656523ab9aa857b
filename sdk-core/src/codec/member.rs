//! One list-member's grammar: [`Member`], its parser, and how members are joined into a list.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::scan::{find_either, is_tchar, trim_ows};

/// One parsed list-member, borrowing from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key, a token.
    pub key: &'a str,
    /// The value as written (still percent-encoded), `=` included.
    pub value: &'a str,
    /// The properties after the first `;`, as written, without the leading `;`.
    pub properties: Option<&'a str>,
}

impl<'a> Member<'a> {
    /// Parses one list-member (without surrounding commas).
    pub fn parse(raw: &'a str) -> Result<Self, &'static str> {
        // The first `;` ends the pair, and the first `=` before it ends the key.
        let bytes = raw.as_bytes();
        let (eq, semicolon) = match find_either(bytes, b'=', b';') {
            Some(at) if bytes.get(at) == Some(&b'=') => {
                let after = bytes.get(at + 1..).unwrap_or_default();
                (Some(at), find_either(after, b';', b';').map(|i| at + 1 + i))
            }
            found => (None, found),
        };
        // Both separators are ASCII, so every cut below is on a character boundary.
        let pair_end = semicolon.unwrap_or(raw.len());
        let eq = eq.ok_or("missing '='")?;
        let key = trim_ows(raw.get(..eq).unwrap_or_default());
        if key.is_empty() {
            return Err("empty key");
        }
        // Branch-free: keys are almost always valid, and checked on every message.
        if !key.bytes().fold(true, |ok, b| ok & is_tchar(b)) {
            return Err("key is not a token");
        }
        Ok(Member {
            key,
            value: trim_ows(raw.get(eq + 1..pair_end).unwrap_or_default()),
            properties: semicolon.map(|at| trim_ows(raw.get(at + 1..).unwrap_or_default())),
        })
    }

    /// The value percent-decoded; invalid UTF-8 becomes U+FFFD, as the W3C spec asks.
    pub fn decoded_value(&self) -> Cow<'a, str> {
        percent_decode_str(self.value).decode_utf8_lossy()
    }
}

/// Appends `raw` to a comma-separated list, skipping empty members.
pub(super) fn push_member(out: &mut String, raw: &str) {
    if raw.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(raw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::reference::list_members;

    #[test]
    fn members_split_and_trim_like_str_methods() {
        let text = " a=1 ,\t,b = 2;p ; q,, c=3=4 ;x=y,";
        let ours: Vec<&str> = list_members(text).collect();
        let std: Vec<&str> = text
            .split(',')
            .map(|m| m.trim_matches([' ', '\t']))
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(ours, std);
        let member = Member::parse("b = 2;p ; q").unwrap();
        assert_eq!(
            (member.key, member.value, member.properties),
            ("b", "2", Some("p ; q"))
        );
        let member = Member::parse("c=3=4 ;x=y").unwrap();
        assert_eq!(
            (member.key, member.value, member.properties),
            ("c", "3=4", Some("x=y"))
        );
        assert_eq!(Member::parse("a;b=c"), Err("missing '='"));
        assert_eq!(Member::parse(" =c"), Err("empty key"));
        assert_eq!(Member::parse("a b=c"), Err("key is not a token"));
    }
}
