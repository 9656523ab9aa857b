//! The byte scanner every header goes through, from control characters to whole members.
//!
//! It runs on every message, so it reads words rather than bytes where it can and finds each
//! member in one pass; `reference` holds the plain parser the tests compare it to.

use super::{BaggageError, Member};

/// Checks a carrier value for control characters and UTF-8 (tab counts as whitespace).
pub(super) fn check_text<'a>(carrier: &str, value: &'a [u8]) -> Result<&'a str, BaggageError> {
    let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    // Eight bytes at a time, branch-free; the offending byte is looked up only on error.
    if has_control(value)
        && let Some(&byte) = value.iter().find(|&&b| is_control(b))
    {
        return Err(BaggageError::ControlCharacter {
            carrier: carrier.to_owned(),
            byte,
        });
    }
    std::str::from_utf8(value).map_err(|_| BaggageError::InvalidUtf8 {
        carrier: carrier.to_owned(),
    })
}

/// Whether `bytes` holds a control character other than tab: any byte below 0x20 but 0x09, or
/// 0x7f. Each 64-bit word is tested with carry-free byte arithmetic (no carry crosses a byte).
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = !HIGH;
    // The high bit of each zero byte of `x`, and of no other.
    let zero_bytes = |x: u64| !((((x & LOW7) + LOW7) | x) | LOW7);
    let word_has_control = |x: u64| {
        // Tabs become 0x29, which is not a control.
        let x = x | (zero_bytes(x ^ (ONES * 0x09)) >> 2);
        // High bit set for bytes >= 0x20 (the low seven bits plus 0x60 carry into bit 7, or
        // bit 7 was set already).
        let at_least_space = ((x & LOW7) + ONES * 0x60) | x;
        (!at_least_space & HIGH) | zero_bytes(x ^ (ONES * 0x7f)) != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut found = false;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        found |= word_has_control(u64::from_le_bytes(word));
    }
    // The tail, padded with spaces.
    let mut word = [b' '; 8];
    for (to, from) in word.iter_mut().zip(chunks.remainder()) {
        *to = *from;
    }
    found | word_has_control(u64::from_le_bytes(word))
}

pub(super) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without surrounding spaces and tabs. Byte loops rather than `char` patterns: members are
/// short, and the general-purpose searchers cost more than the scan. Both bytes are ASCII, so the
/// ends found are character boundaries.
pub(super) fn trim_ows(s: &str) -> &str {
    let bytes = s.as_bytes();
    let Some(start) = bytes.iter().position(|&b| !is_ows(b)) else {
        return "";
    };
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// Position of the first byte equal to `a` or `b`, eight bytes at a time (members are short:
/// `memchr`'s set-up costs more than it saves, and a byte loop branches on every byte).
pub(super) fn find_either(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of each byte of `x` that is zero, and of no other (no carry crosses bytes).
    let zero_bytes = |x: u64| !((((x & LOW7) + LOW7) | x) | LOW7);
    let (a_word, b_word) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let hits = zero_bytes(word ^ a_word) | zero_bytes(word ^ b_word);
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let tail = chunks.remainder().iter().position(|&x| x == a || x == b)?;
    Some(base + tail)
}

/// RFC 7230 `tchar`, as a table: keys are checked byte by byte on every message.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

pub(super) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Byte classes of the one-pass member scanner.
const CLASS_TCHAR: u8 = 1;
const CLASS_SKIP: u8 = 2; // whitespace or `,`: what lies between members
const CLASS_VALUE_END: u8 = 4; // `,` or `;`
const CLASS_PERCENT: u8 = 8;

const CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if TCHAR[b] {
            class |= CLASS_TCHAR;
        }
        if c == b' ' || c == b'\t' || c == b',' {
            class |= CLASS_SKIP;
        }
        if c == b',' || c == b';' {
            class |= CLASS_VALUE_END;
        }
        if c == b'%' {
            class |= CLASS_PERCENT;
        }
        table[b] = class;
        b += 1;
    }
    table
};

fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// One list-member as [`ScannedMembers`] found it.
pub(super) struct Scanned<'a> {
    /// The member as written, without surrounding whitespace.
    pub(super) raw: &'a str,
    pub(super) member: Result<Member<'a>, &'static str>,
    /// Whether the value holds a `%` (and so may need decoding).
    pub(super) value_has_percent: bool,
}

/// The members of one header in a single pass over its bytes: the same members, and the same
/// results, as splitting on `,` followed by [`Member::parse`] (a property test holds the scanner
/// to that reference), without searching each member three times. A member that is not a plain
/// `token OWS "=" ...` is handed to [`Member::parse`] for its error.
pub(super) struct ScannedMembers<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> ScannedMembers<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }
}

impl<'a> Iterator for ScannedMembers<'a> {
    type Item = Scanned<'a>;

    fn next(&mut self) -> Option<Scanned<'a>> {
        // Index loops guarded by `i < n`: the compiler drops the bounds checks. Every cut is
        // next to an ASCII byte, so on a character boundary.
        let text = self.text;
        let bytes = text.as_bytes();
        let n = bytes.len();
        let slice = |from: usize, to: usize| text.get(from..to).unwrap_or_default();
        let mut i = self.pos;
        while i < n && class(bytes[i]) & CLASS_SKIP != 0 {
            i += 1;
        }
        if i >= n {
            self.pos = n;
            return None;
        }
        let start = i;
        while i < n && class(bytes[i]) & CLASS_TCHAR != 0 {
            i += 1;
        }
        let key_end = i;
        while i < n && is_ows(bytes[i]) {
            i += 1;
        }
        if key_end == start || i >= n || bytes[i] != b'=' {
            // Not `token OWS "="`: an error, worded by the general parser.
            while i < n && bytes[i] != b',' {
                i += 1;
            }
            self.pos = i + 1;
            let raw = trim_ows(slice(start, i));
            return Some(Scanned {
                raw,
                member: Member::parse(raw),
                value_has_percent: raw.contains('%'),
            });
        }
        i += 1;
        while i < n && is_ows(bytes[i]) {
            i += 1;
        }
        let value_start = i;
        let mut seen = 0;
        while i < n {
            let class = class(bytes[i]);
            if class & CLASS_VALUE_END != 0 {
                break;
            }
            seen |= class;
            i += 1;
        }
        let mut value_end = i;
        while value_end > value_start && is_ows(bytes[value_end - 1]) {
            value_end -= 1;
        }
        let mut properties = None;
        if i < n && bytes[i] == b';' {
            i += 1;
            let properties_start = i;
            while i < n && bytes[i] != b',' {
                i += 1;
            }
            properties = Some(trim_ows(slice(properties_start, i)));
        }
        let mut end = i;
        while end > start && is_ows(bytes[end - 1]) {
            end -= 1;
        }
        // `i` is at the `,` that ends the member, or at the end of the text.
        self.pos = i + 1;
        Some(Scanned {
            raw: slice(start, end),
            member: Ok(Member {
                key: slice(start, key_end),
                value: slice(value_start, value_end),
                properties,
            }),
            value_has_percent: seen & CLASS_PERCENT != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::reference::list_members;
    use proptest::prelude::*;

    fn reference_members(text: &str) -> Vec<(&str, Result<Member<'_>, &'static str>)> {
        list_members(text)
            .map(|raw| (raw, Member::parse(raw)))
            .collect()
    }

    fn scanned_members(text: &str) -> Vec<(&str, Result<Member<'_>, &'static str>)> {
        ScannedMembers::new(text)
            .map(|scanned| {
                let has_percent = scanned
                    .member
                    .as_ref()
                    .is_ok_and(|member| member.value.contains('%'));
                if scanned.member.is_ok() {
                    assert_eq!(scanned.value_has_percent, has_percent, "in {text:?}");
                }
                (scanned.raw, scanned.member)
            })
            .collect()
    }

    #[test]
    fn has_control_agrees_with_a_byte_loop() {
        let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        for len in 0..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(
                        has_control(&bytes),
                        is_control(byte),
                        "{byte:#x} at {at} of {len}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn has_control_agrees_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let is_control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
            prop_assert_eq!(has_control(&bytes), bytes.iter().any(|&b| is_control(b)));
        }

        /// The one-pass scanner finds the same members, with the same results, as splitting on
        /// `,` and parsing each member: separators, whitespace and odd bytes everywhere.
        #[test]
        fn the_scanner_agrees_with_split_and_parse(
            text in proptest::string::string_regex("[a-c=;,% \t.é\\x00-]{0,40}").unwrap_or_else(|e| panic!("{e}"))
        ) {
            prop_assert_eq!(scanned_members(&text), reference_members(&text));
        }
    }

    #[test]
    fn the_scanner_agrees_on_the_usual_headers() {
        for text in [
            "",
            ",,, ,",
            "prodbox.sandbox=pr-42,prodbox.actor=alice,prodbox.origin=pr-123",
            " a = b ; p = 1 ; q , c=d=e ,  ",
            "k=v;",
            "k =v",
            "k= v%20x ;p",
            "=v",
            "k",
            "k;x=1",
            "k v=1",
            "k\u{e9}=1",
            "a=1,\tb=2\t,c=%zz",
        ] {
            assert_eq!(scanned_members(text), reference_members(text), "{text:?}");
        }
    }

    #[test]
    fn find_either_agrees_with_a_byte_loop() {
        let text = "ab=c;d,e%f\u{e9}=\u{80}x;;,,%\u{7f}\u{100}=";
        for start in 0..text.len() {
            let bytes = &text.as_bytes()[start..];
            for (a, b) in [
                (b'=', b';'),
                (b',', b','),
                (b'%', b'%'),
                (0xc3, 0x80),
                (0, 0xff),
            ] {
                let naive = bytes.iter().position(|&x| x == a || x == b);
                assert_eq!(find_either(bytes, a, b), naive, "{start} {a} {b}");
            }
        }
    }
}
