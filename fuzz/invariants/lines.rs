//! The input format of the header-set fuzz targets (`baggage_codec`, `kafka_headers`): one
//! header per line, `name:value`, so that seed files are readable and any bytes still mean
//! something.
//!
//! * lines end at `\n` (a `\r` before it belongs to the value: a control character to refuse);
//! * the name is everything before the first `:` (invalid UTF-8 replaced by U+FFFD), the value
//!   everything after it, less one leading space;
//! * a line without `:` is a header without a value (Kafka's null header value; an empty value
//!   where a protocol has no null);
//! * empty lines are skipped.

/// One header: its name and its value (`None` for a line without `:`).
pub(crate) type Line = (String, Option<Vec<u8>>);

/// The headers of one input, in order.
pub(crate) fn parse(data: &[u8]) -> Vec<Line> {
    data.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (
                    String::from_utf8_lossy(&line[..at]).into_owned(),
                    Some(value.to_vec()),
                )
            }
            None => (String::from_utf8_lossy(line).into_owned(), None),
        })
        .collect()
}

/// Writes headers back in the input format (names must not hold `:` or `\n`, values no `\n`).
pub(crate) fn render(headers: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        if let Some(value) = value {
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
        }
        out.push(b'\n');
    }
    out
}
